//! Fashion-MNIST as d2l's `load_data_fashion_mnist` serves it: IDX files (gzipped or not) with
//! every field validated, an embedded sample for offline use, torchvision's `Resize` (PIL
//! bilinear) and seeded, shuffled batches prepared on a background thread.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::accel;

/// The ten classes, in label order.
pub const CLASSES: [&str; 10] =
    ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

/// The four files of the data set, without the optional `.gz`.
pub const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

const IMAGES_MAGIC: u32 = 0x0803;
/// Largest data section accepted (Fashion-MNIST's is 47 MB): a gzip bomb stops here.
const MAX_IDX_BYTES: usize = 1 << 32;
const LABELS_MAGIC: u32 = 0x0801;

/// Something wrong with a data file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{dir}: no {name} or {name}.gz; expected the four Fashion-MNIST files ({files}) — `convnets data download` fetches them", files = FILES.join(", "))]
    Missing { dir: String, name: String },
}

fn invalid(file: &str, reason: impl Into<String>) -> DataError {
    DataError::Invalid { file: file.to_string(), reason: reason.into() }
}

/// Images (row-major bytes) and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }
}

/// Reads a big-endian u32 header field.
fn header_u32(header: &[u8], field: usize) -> u32 {
    u32::from_be_bytes(header[4 * field..4 * field + 4].try_into().unwrap())
}

/// Reads an IDX stream's body of exactly `expected` bytes, never allocating more than arrives.
fn read_body(mut reader: impl Read, expected: usize, file: &str) -> Result<Vec<u8>, DataError> {
    let mut body = Vec::new();
    (&mut reader)
        .take(expected as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| invalid(file, format!("cannot decompress or read: {e}")))?;
    match body.len().cmp(&expected) {
        std::cmp::Ordering::Less => Err(invalid(
            file,
            format!("truncated: the header promises {expected} bytes of data, the file has {}", body.len()),
        )),
        std::cmp::Ordering::Greater => {
            Err(invalid(file, format!("trailing data after the {expected} bytes the header promises")))
        }
        std::cmp::Ordering::Equal => Ok(body),
    }
}

/// Wraps the bytes of a file, gunzipping when they start with gzip's magic number.
fn decoder<'a>(bytes: impl Read + 'a, gz: bool) -> Box<dyn Read + 'a> {
    if gz { Box::new(flate2::read::MultiGzDecoder::new(bytes)) } else { Box::new(bytes) }
}

/// Parses an IDX3 image file (magic 0x803): returns (count, rows, cols, pixels).
pub fn parse_images(data: &[u8], file: &str) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let mut reader = decoder(data, gz);
    let mut header = [0u8; 16];
    reader.read_exact(&mut header).map_err(|_| invalid(file, "too short for an IDX image header (16 bytes)"))?;
    let magic = header_u32(&header, 0);
    if magic != IMAGES_MAGIC {
        return Err(invalid(
            file,
            format!("magic number {magic:#010x} is not 0x00000803 (unsigned bytes, 3 dimensions)"),
        ));
    }
    let (count, rows, cols) =
        (header_u32(&header, 1) as usize, header_u32(&header, 2) as usize, header_u32(&header, 3) as usize);
    if rows == 0 || cols == 0 {
        return Err(invalid(file, format!("image size {rows}x{cols} is empty")));
    }
    let expected = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| invalid(file, format!("{count} images of {rows}x{cols} is too large")))?;
    // An uncompressed file must be exactly as long as its header says, checked before reading.
    if !gz && data.len() - 16 != expected {
        return Err(invalid(
            file,
            format!(
                "the header promises {count} images of {rows}x{cols} ({expected} bytes), the file has {} bytes of data",
                data.len() - 16
            ),
        ));
    }
    let pixels = read_body(reader, expected, file)?;
    Ok((count, rows, cols, pixels))
}

/// Parses an IDX1 label file (magic 0x801), checking every label is a class.
pub fn parse_labels(data: &[u8], file: &str) -> Result<Vec<u8>, DataError> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let mut reader = decoder(data, gz);
    let mut header = [0u8; 8];
    reader.read_exact(&mut header).map_err(|_| invalid(file, "too short for an IDX label header (8 bytes)"))?;
    let magic = header_u32(&header, 0);
    if magic != LABELS_MAGIC {
        return Err(invalid(
            file,
            format!("magic number {magic:#010x} is not 0x00000801 (unsigned bytes, 1 dimension)"),
        ));
    }
    let count = header_u32(&header, 1) as usize;
    if count > MAX_IDX_BYTES {
        return Err(invalid(file, format!("{count} labels is too many")));
    }
    if !gz && data.len() - 8 != count {
        return Err(invalid(file, format!("the header promises {count} labels, the file has {}", data.len() - 8)));
    }
    let labels = read_body(reader, count, file)?;
    if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= CLASSES.len()) {
        return Err(invalid(file, format!("label {label} at index {i} is not a class (0-9)")));
    }
    Ok(labels)
}

/// Builds a split from the bytes of its image and label files.
pub fn parse_split(images: &[u8], images_file: &str, labels: &[u8], labels_file: &str) -> Result<Split, DataError> {
    let (count, rows, cols, pixels) = parse_images(images, images_file)?;
    let labels = parse_labels(labels, labels_file)?;
    if labels.len() != count {
        return Err(invalid(labels_file, format!("{} labels for {count} images in {images_file}", labels.len())));
    }
    Ok(Split { images: pixels, labels, rows, cols })
}

/// Where the data came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--data DIR`.
    Flag(PathBuf),
    /// `$CONVNETS_DATA`.
    Env(PathBuf),
    /// The user cache, where `convnets data download` writes.
    Cache(PathBuf),
    /// The sample compiled into the binary.
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Source::Flag(p) => write!(f, "{} (from --data)", p.display()),
            Source::Env(p) => write!(f, "{} (from $CONVNETS_DATA)", p.display()),
            Source::Cache(p) => write!(f, "{} (the user cache)", p.display()),
            Source::Embedded => write!(
                f,
                "the embedded sample (2,000 train / 500 test images; use --data DIR, $CONVNETS_DATA or `convnets data download` for the full set)"
            ),
        }
    }
}

/// The user cache directory for the data set: `$XDG_CACHE_HOME` or `~/.cache`, then
/// `convnets/fashion-mnist`.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("convnets").join("fashion-mnist"))
}

/// Picks the data source: `--data DIR`, then `$CONVNETS_DATA`, then the user cache when it holds
/// the files, then the embedded sample. An explicitly named directory is never skipped.
pub fn resolve_source(flag: Option<&Path>) -> Source {
    if let Some(dir) = flag {
        return Source::Flag(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("CONVNETS_DATA").filter(|v| !v.is_empty()) {
        return Source::Env(PathBuf::from(dir));
    }
    match cache_dir() {
        Some(dir) if FILES.iter().all(|f| find_file(&dir, f).is_some()) => Source::Cache(dir),
        _ => Source::Embedded,
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)].into_iter().find(|p| p.is_file())
}

/// Train and test splits.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub train: Arc<Split>,
    pub test: Arc<Split>,
    pub source: Source,
}

const SAMPLE: [&[u8]; 4] = [
    include_bytes!("../data/sample/train-images-idx3-ubyte.gz"),
    include_bytes!("../data/sample/train-labels-idx1-ubyte.gz"),
    include_bytes!("../data/sample/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../data/sample/t10k-labels-idx1-ubyte.gz"),
];

impl FashionMnist {
    /// Loads from where [`resolve_source`] points.
    pub fn load(flag: Option<&Path>) -> Result<Self, DataError> {
        Self::from_source(resolve_source(flag))
    }

    pub fn from_source(source: Source) -> Result<Self, DataError> {
        let (files, names): (Vec<Vec<u8>>, Vec<String>) = match &source {
            Source::Embedded => (
                SAMPLE.iter().map(|b| b.to_vec()).collect(),
                FILES.iter().map(|f| format!("embedded {f}.gz")).collect(),
            ),
            Source::Flag(dir) | Source::Env(dir) | Source::Cache(dir) => {
                if !dir.is_dir() {
                    return Err(DataError::Io {
                        file: dir.display().to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                    });
                }
                let mut files = Vec::new();
                let mut names = Vec::new();
                for name in FILES {
                    let path = find_file(dir, name)
                        .ok_or_else(|| DataError::Missing { dir: dir.display().to_string(), name: name.to_string() })?;
                    let file = path.display().to_string();
                    files.push(std::fs::read(&path).map_err(|source| DataError::Io { file: file.clone(), source })?);
                    names.push(file);
                }
                (files, names)
            }
        };
        let train = parse_split(&files[0], &names[0], &files[1], &names[1])?;
        let test = parse_split(&files[2], &names[2], &files[3], &names[3])?;
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(invalid(
                &names[2],
                format!("test images are {}x{}, train images {}x{}", test.rows, test.cols, train.rows, train.cols),
            ));
        }
        Ok(FashionMnist { train: Arc::new(train), test: Arc::new(test), source })
    }
}

/// One fixed-point filter per output pixel of one axis, as Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc` make them for the bilinear filter.
#[derive(Debug, Clone)]
struct AxisCoeffs {
    /// First input index of each output pixel.
    start: Vec<usize>,
    /// Weights (22-bit fixed point) of each output pixel, starting at `start`.
    weights: Vec<Vec<i32>>,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

impl AxisCoeffs {
    fn bilinear(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the bilinear filter's support is 1
        let mut start = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // C casts truncate toward zero, then clamp to the image.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (lo..hi)
                .map(|i| {
                    let x = ((i as f64 - center + 0.5) / filter_scale).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    if scaled < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 }
                })
                .collect();
            start.push(lo);
            weights.push(fixed);
        }
        AxisCoeffs { start, weights }
    }

    /// Filters along the rows of `src` (rows of `width` pixels): output row `o` combines input
    /// rows `start[o]..` with its weights, for every pixel at once. Pillow accumulates in
    /// 32-bit ints; the weights of an output sum to 2^22, so 255 * 2^22 fits.
    #[inline(always)]
    fn filter_rows(&self, src: &[u8], width: usize, out: &mut [u8]) {
        let mut acc = vec![0i32; width];
        for (o, out_row) in out.chunks_exact_mut(width).enumerate() {
            acc.fill(1 << (PRECISION_BITS - 1));
            let first = self.start[o];
            for (k, &w) in self.weights[o].iter().enumerate() {
                let row = &src[(first + k) * width..(first + k + 1) * width];
                acc.iter_mut().zip(row).for_each(|(a, &p)| *a += p as i32 * w);
            }
            out_row.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a >> PRECISION_BITS).clamp(0, 255) as u8);
        }
    }
}

/// A `rows` x `cols` image, transposed.
fn transpose(image: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows * cols];
    for (r, row) in image.chunks_exact(cols).enumerate() {
        for (c, &p) in row.iter().enumerate() {
            out[c * rows + r] = p;
        }
    }
    out
}

/// torchvision's `Resize((out_h, out_w))` on a grey PIL image: Pillow's bilinear resampling
/// (half-pixel centres, antialiased when shrinking), horizontal pass then vertical, each rounded
/// to uint8 as Pillow does. Identical to Pillow 13 for enlargements (all of d2l's resizes) and
/// for many reductions; where Pillow 13 runs the vertical pass first (some mixed or shrinking
/// resizes), a few pixels can differ by one grey level.
#[derive(Debug, Clone)]
pub struct Resize {
    in_size: (usize, usize),
    out_size: (usize, usize),
    horizontal: AxisCoeffs,
    vertical: AxisCoeffs,
}

impl Resize {
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Self {
        assert!(in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0, "resize needs non-empty sizes");
        Resize {
            in_size: (in_h, in_w),
            out_size: (out_h, out_w),
            horizontal: AxisCoeffs::bilinear(in_w, out_w),
            vertical: AxisCoeffs::bilinear(in_h, out_h),
        }
    }

    /// Resizes one image into `out` (`out_h * out_w` bytes).
    pub fn apply_into(&self, image: &[u8], out: &mut [u8]) {
        let ((in_h, in_w), (out_h, out_w)) = (self.in_size, self.out_size);
        assert_eq!(image.len(), in_h * in_w);
        assert_eq!(out.len(), out_h * out_w);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.apply_avx2(image, out) };
        }
        self.apply_portable(image, out)
    }

    /// The same code compiled for AVX2, whose 8-lane 32-bit multiplies the filter loops need to
    /// vectorise (the x86-64 baseline has none): about 3x faster.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(&self, image: &[u8], out: &mut [u8]) {
        self.apply_portable(image, out)
    }

    #[inline(always)]
    fn apply_portable(&self, image: &[u8], out: &mut [u8]) {
        let ((in_h, in_w), (out_h, out_w)) = (self.in_size, self.out_size);
        if (in_h, in_w) == (out_h, out_w) {
            // Pillow copies when neither axis changes.
            out.copy_from_slice(image);
            return;
        }
        // Pillow skips a pass whose axis keeps its size.
        let wide: Vec<u8> = if in_w == out_w {
            image.to_vec()
        } else {
            // The horizontal pass is the vertical filter run on the transposed image, so that
            // both passes combine whole contiguous rows.
            let columns = transpose(image, in_h, in_w);
            let mut wide_columns = vec![0u8; out_w * in_h];
            self.horizontal.filter_rows(&columns, in_h, &mut wide_columns);
            transpose(&wide_columns, out_w, in_h)
        };
        if in_h == out_h {
            out.copy_from_slice(&wide);
            return;
        }
        self.vertical.filter_rows(&wide, out_w, out);
    }

    pub fn apply(&self, image: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.out_size.0 * self.out_size.1];
        self.apply_into(image, &mut out);
        out
    }
}

/// A batch as the pipeline delivers it: pixels `[B, 1, H, W]` as uint8 (a quarter of the bytes
/// of floats to prepare and to copy to a GPU) and labels `[B]` (int64).
pub struct Batch {
    pub pixels: Tensor,
    pub labels: Tensor,
}

impl Batch {
    /// The network's input on `device`: ToTensor's floats in [0, 1] (`pixel / 255`, exactly as
    /// torchvision computes them), converted where they are used.
    pub fn images(&self, device: Device) -> Result<Tensor, tch::TchError> {
        to_input(&self.pixels.f_to_device(device)?)
    }
}

/// uint8 pixels as floats in [0, 1], on the device that holds them.
fn to_input(pixels: &Tensor) -> Result<Tensor, tch::TchError> {
    pixels.f_to_kind(Kind::Float)?.f_div_scalar(255.0)
}

/// Builds the batch of `indices` from `split`, resized to `size` x `size` when given.
pub fn make_batch(split: &Split, indices: &[usize], size: Option<usize>) -> anyhow::Result<Batch> {
    make_batch_for(split, indices, size, Device::Cpu)
}

/// [`make_batch`] in the host memory `device` copies from fastest (page-locked for a GPU).
fn make_batch_for(split: &Split, indices: &[usize], size: Option<usize>, device: Device) -> anyhow::Result<Batch> {
    let (h, w) = size.map_or((split.rows, split.cols), |s| (s, s));
    let shape = [indices.len() as i64, 1, h as i64, w as i64];
    let images = accel::empty_host_u8(&shape, device)?;
    // SAFETY: a new, contiguous uint8 CPU tensor of exactly this many bytes, owned here alone;
    // writing the pixels in place saves a copy of the whole batch (12 MB at 224x224).
    // (An empty tensor may have no storage: a slice then needs a dangling, non-null pointer.)
    let len = indices.len() * h * w;
    let start = if len == 0 { std::ptr::NonNull::dangling().as_ptr() } else { images.data_ptr() as *mut u8 };
    let pixels = unsafe { std::slice::from_raw_parts_mut(start, len) };
    match size.filter(|_| (h, w) != (split.rows, split.cols)) {
        // Resizing is the expensive part: spread it over the cores.
        Some(s) => {
            let resize = Resize::new(split.rows, split.cols, s, s);
            pixels
                .par_chunks_mut(h * w)
                .zip(indices.par_iter())
                .for_each(|(out, &i)| resize.apply_into(split.image(i), out));
        }
        // A plain copy is cheaper than waking a thread pool that competes with libtorch's.
        None => pixels.chunks_mut(h * w).zip(indices).for_each(|(out, &i)| out.copy_from_slice(split.image(i))),
    }
    let labels: Vec<i64> = indices.iter().map(|&i| split.labels[i] as i64).collect();
    Ok(Batch { pixels: images, labels: Tensor::f_from_slice(&labels)? })
}

/// The order of the training set in `epoch`: a shuffle that depends only on the seed and the
/// epoch, so a resumed run sees the same batches as an uninterrupted one.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Batches of `order` (the last one partial), prepared on a background thread a few batches
/// ahead so the network does not wait for resizing.
pub fn batches(
    split: Arc<Split>,
    order: Vec<usize>,
    batch_size: usize,
    size: Option<usize>,
) -> Receiver<anyhow::Result<Batch>> {
    host_batches(split, order, batch_size, size, Device::Cpu)
}

/// [`batches`], in host memory meant for copies to `device`.
fn host_batches(
    split: Arc<Split>,
    order: Vec<usize>,
    batch_size: usize,
    size: Option<usize>,
    device: Device,
) -> Receiver<anyhow::Result<Batch>> {
    let (tx, rx) = sync_channel(3);
    std::thread::spawn(move || {
        for chunk in order.chunks(batch_size) {
            let batch = make_batch_for(&split, chunk, size, device);
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return; // the consumer stopped early, or will stop at this error
            }
        }
    });
    rx
}

/// A batch on the device that trains on it: images as the network's input (see
/// [`Batch::images`]), labels, and the labels still on the host for counting.
pub struct DeviceBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub host_labels: Tensor,
}

/// [`batches`] delivered on `device`. On a GPU the copy of batch i+1 is queued on a stream of its
/// own (from page-locked memory) as soon as batch i is handed out, so it runs during the step on
/// batch i instead of before the step on batch i+1.
pub fn device_batches(
    split: Arc<Split>,
    order: Vec<usize>,
    batch_size: usize,
    size: Option<usize>,
    device: Device,
) -> DeviceBatches {
    DeviceBatches { host: host_batches(split, order, batch_size, size, device), device, in_flight: None }
}

/// The iterator [`device_batches`] returns.
pub struct DeviceBatches {
    host: Receiver<anyhow::Result<Batch>>,
    device: Device,
    in_flight: Option<InFlight>,
}

/// A batch whose copy to the device has been queued.
struct InFlight {
    pixels: Tensor,
    labels: Tensor,
    host_labels: Tensor,
}

impl DeviceBatches {
    fn start_copy(&self, batch: Batch) -> anyhow::Result<InFlight> {
        Ok(InFlight {
            pixels: accel::copy_async(&batch.pixels, self.device)?,
            labels: accel::copy_async(&batch.labels, self.device)?,
            host_labels: batch.labels,
        })
    }

    fn next_batch(&mut self) -> anyhow::Result<Option<DeviceBatch>> {
        let current = match self.in_flight.take() {
            Some(copying) => copying,
            None => match self.host.recv() {
                Ok(batch) => self.start_copy(batch?)?,
                Err(_) => return Ok(None),
            },
        };
        let InFlight { mut pixels, mut labels, host_labels } = current;
        // Only this batch's copy is queued yet, so the step waits for it and for no other.
        accel::wait_copied(&mut pixels)?;
        accel::wait_copied(&mut labels)?;
        // On a CPU a copy is done when it returns: nothing to overlap, so no reason to wait for
        // the next batch before handing this one out.
        if self.device.is_cuda()
            && let Ok(batch) = self.host.recv()
        {
            self.in_flight = Some(self.start_copy(batch?)?);
        }
        Ok(Some(DeviceBatch { images: to_input(&pixels)?, labels, host_labels }))
    }
}

impl Iterator for DeviceBatches {
    type Item = anyhow::Result<DeviceBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

/// Counts, class balance and pixel statistics of a split (`convnets data info`).
pub fn describe(split: &Split) -> String {
    let mut counts = [0usize; 10];
    for &l in &split.labels {
        counts[l as usize] += 1;
    }
    let n = split.images.len() as f64;
    let mean = split.images.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / n;
    let var = split.images.iter().map(|&p| (p as f64 / 255.0 - mean).powi(2)).sum::<f64>() / n;
    let mut out = format!(
        "{} images of {}x{}, pixel mean {:.4}, std {:.4} (scaled to [0, 1])\n",
        split.len(),
        split.rows,
        split.cols,
        mean,
        var.sqrt()
    );
    for (class, count) in CLASSES.iter().zip(counts) {
        out += &format!("  {class:<11} {count:>6} ({:.1}%)\n", 100.0 * count as f64 / split.len().max(1) as f64);
    }
    out
}

/// Where `convnets data download` looks, in order: the official bucket over HTTPS, then the
/// copy in the Fashion-MNIST repository. `$CONVNETS_MIRRORS` (comma-separated base URLs)
/// replaces the list.
pub const MIRRORS: [&str; 2] = [
    "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];

/// md5 of the official `.gz` files, as published, in [`FILES`] order.
pub const OFFICIAL_MD5: [&str; 4] = [
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79",
    "bb300cfdad3c16e7a12a480ee83cd310",
];

/// The mirrors to use: `$CONVNETS_MIRRORS` or [`MIRRORS`].
pub fn mirrors() -> Vec<String> {
    match std::env::var("CONVNETS_MIRRORS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(|m| m.trim().to_string()).collect(),
        _ => MIRRORS.iter().map(|m| m.to_string()).collect(),
    }
}

fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let response = ureq::get(url).call().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    response.into_body().into_reader().take(64 << 20).read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// Downloads the four files into `dir`, trying each mirror in turn; a file is written (atomically)
/// only once its md5 matches `md5` (the official sums by default). Files already present with
/// the right sum are kept. Reports progress through `log`.
pub fn download(dir: &Path, mirrors: &[String], md5: &[&str; 4], mut log: impl FnMut(&str)) -> anyhow::Result<()> {
    use md5::Digest;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let hex = |bytes: &[u8]| format!("{:x}", md5::Md5::digest(bytes));
    for (name, expected) in FILES.iter().zip(md5) {
        let file = format!("{name}.gz");
        let path = dir.join(&file);
        if std::fs::read(&path).is_ok_and(|b| hex(&b) == *expected) {
            log(&format!("{file}: already present, md5 ok"));
            continue;
        }
        let mut failures = Vec::new();
        let mut done = false;
        for mirror in mirrors {
            let url = format!("{}/{file}", mirror.trim_end_matches('/'));
            match fetch(&url) {
                Ok(bytes) if hex(&bytes) == *expected => {
                    crate::weights::write_atomic(&path, &bytes)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    log(&format!("{file}: {} bytes from {url}, md5 ok", bytes.len()));
                    done = true;
                    break;
                }
                Ok(bytes) => failures.push(format!("{url}: md5 {} is not {expected}", hex(&bytes))),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        if !done {
            anyhow::bail!("could not download {file}:\n  {}", failures.join("\n  "));
        }
    }
    Ok(())
}
