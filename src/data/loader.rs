//! Batches: seeded epoch orders, uint8 batches prepared on a background thread, and their
//! delivery to the device that trains on them.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::kernels::to_floats;
use super::{Normalize, Pipeline, Resize, Split};
use crate::accel;
use crate::error::catch_panic;

/// A batch as the pipeline delivers it: pixels `[B, C, H, W]` as uint8 (a quarter of the bytes
/// of floats to prepare and to copy to a GPU) and labels `[B]` (int64).
pub struct Batch {
    pub pixels: Tensor,
    pub labels: Tensor,
}

impl Batch {
    /// The network's input on `device`: ToTensor's floats in [0, 1] (`pixel / 255`, exactly as
    /// torchvision computes them), normalised when asked, converted where they are used.
    pub fn images(&self, device: Device, normalize: Option<&Normalize>) -> Result<Tensor, tch::TchError> {
        to_input(&self.pixels.f_to_device(device)?, normalize)
    }
}

/// uint8 pixels as floats in [0, 1] (then normalised), on the device that holds them.
fn to_input(pixels: &Tensor, normalize: Option<&Normalize>) -> Result<Tensor, tch::TchError> {
    if pixels.device() == Device::Cpu && pixels.kind() == Kind::Uint8 && pixels.dim() == 4 {
        return host_input(pixels, normalize);
    }
    let x = pixels.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?;
    match normalize {
        Some(n) => n.apply(&x),
        None => Ok(x),
    }
}

/// [`to_input`] on the CPU in one pass over the batch, with the same float operations per
/// pixel as libtorch's three (`/ 255`, `- mean`, `/ std`), so the same values: four passes over
/// a 224x224 batch were a tenth of an image folder's pipeline.
fn host_input(pixels: &Tensor, normalize: Option<&Normalize>) -> Result<Tensor, tch::TchError> {
    let pixels = pixels.f_contiguous()?;
    let shape = pixels.size();
    let (channels, plane) = (shape[1] as usize, (shape[2] * shape[3]) as usize);
    let len = pixels.numel();
    let out = Tensor::f_empty(&shape, (Kind::Float, Device::Cpu))?;
    if len == 0 {
        return Ok(out);
    }
    // SAFETY: both tensors are contiguous CPU tensors of `len` elements of these types; `out`
    // is new and owned here alone.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(pixels.data_ptr() as *const u8, len),
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, len),
        )
    };
    for (i, (dst, src)) in dst.chunks_mut(plane).zip(src.chunks(plane)).enumerate() {
        let (mean, std) = match normalize {
            Some(n) => (n.mean[i % channels] as f32, n.std[i % channels] as f32),
            None => (0.0, 1.0), // x - 0 and x / 1 are exact: the same values as no Normalize
        };
        to_floats(src, dst, mean, std);
    }
    Ok(out)
}

/// How a split's images become a batch: the transforms, and the seed and epoch their random
/// draws depend on (with the image's index).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prep {
    pub pipeline: Pipeline,
    pub seed: u64,
    pub epoch: usize,
    /// Applied to the floats on the device (`--normalize`).
    pub normalize: Option<Normalize>,
}

impl Prep {
    /// d2l's: resized to `size` x `size` when given, nothing else.
    pub fn d2l(size: Option<usize>) -> Self {
        Prep { pipeline: Pipeline::d2l(size), seed: 0, epoch: 0, normalize: None }
    }
}

/// Builds the batch of `indices` from `split`, as `prep` says.
pub fn make_batch(split: &Split, indices: &[usize], prep: &Prep) -> anyhow::Result<Batch> {
    make_batch_for(split, indices, prep, Device::Cpu)
}

/// [`make_batch`] in the host memory `device` copies from fastest (page-locked for a GPU).
fn make_batch_for(split: &Split, indices: &[usize], prep: &Prep, device: Device) -> anyhow::Result<Batch> {
    let in_memory = split.files.is_empty();
    let (h, w) = if in_memory {
        prep.pipeline.output_size(split.rows, split.cols)
    } else {
        prep.pipeline.fixed_size().ok_or_else(|| {
            anyhow::anyhow!("an image folder's images differ in size: its transforms must end in a crop")
        })?
    };
    let c = split.channels;
    let shape = [indices.len() as i64, c as i64, h as i64, w as i64];
    let images = accel::empty_host_u8(&shape, device)?;
    // SAFETY: a new, contiguous uint8 CPU tensor of exactly this many bytes, owned here alone;
    // writing the pixels in place saves a copy of the whole batch (12 MB at 224x224).
    // (An empty tensor may have no storage: a slice then needs a dangling, non-null pointer.)
    let len = indices.len() * c * h * w;
    let start = if len == 0 { std::ptr::NonNull::dangling().as_ptr() } else { images.data_ptr() as *mut u8 };
    let pixels = unsafe { std::slice::from_raw_parts_mut(start, len) };
    match prep.pipeline.resize_only().filter(|_| in_memory) {
        // d2l's resize is the expensive part: spread it over the cores, a plane at a time
        // (colour images are resized channel by channel, as Pillow does).
        Some(Some(s)) if (s, s) != (split.rows, split.cols) => {
            let resize = Resize::new(split.rows, split.cols, s, s);
            let plane = split.rows * split.cols;
            pixels.par_chunks_mut(c * h * w).zip(indices.par_iter()).for_each(|(out, &i)| {
                for (out, src) in out.chunks_mut(h * w).zip(split.image(i).chunks(plane)) {
                    resize.apply_into(src, out);
                }
            });
        }
        // A plain copy is cheaper than waking a thread pool that competes with libtorch's.
        Some(_) => pixels.chunks_mut(c * h * w).zip(indices).for_each(|(out, &i)| out.copy_from_slice(split.image(i))),
        // Augmentation, or an image folder's files: each image decoded and transformed (with
        // its own draws) in parallel.
        None => pixels.par_chunks_mut(c * h * w).zip(indices.par_iter()).try_for_each(|(out, &i)| {
            let image = prep.pipeline.apply(split.load(i)?, prep.seed, prep.epoch, i);
            anyhow::ensure!(image.pixels.len() == out.len(), "image {i} came out {}x{}", image.height, image.width);
            out.copy_from_slice(&image.pixels);
            Ok(())
        })?,
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
pub fn batches(split: Arc<Split>, order: Vec<usize>, batch_size: usize, prep: Prep) -> Receiver<anyhow::Result<Batch>> {
    host_batches(split, order, batch_size, prep, Device::Cpu)
}

/// [`batches`], in host memory meant for copies to `device`.
fn host_batches(
    split: Arc<Split>,
    order: Vec<usize>,
    batch_size: usize,
    prep: Prep,
    device: Device,
) -> Receiver<anyhow::Result<Batch>> {
    let (tx, rx) = sync_channel(3);
    std::thread::spawn(move || {
        for chunk in order.chunks(batch_size) {
            // A panic here must reach the consumer as an error: ending this thread would end
            // the epoch early, silently.
            let batch = catch_panic("preparing a batch", || make_batch_for(&split, chunk, &prep, device));
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
    prep: Prep,
    device: Device,
) -> DeviceBatches {
    let normalize = prep.normalize.clone();
    DeviceBatches { host: host_batches(split, order, batch_size, prep, device), device, in_flight: None, normalize }
}

/// The iterator [`device_batches`] returns.
pub struct DeviceBatches {
    host: Receiver<anyhow::Result<Batch>>,
    device: Device,
    in_flight: Option<InFlight>,
    normalize: Option<Normalize>,
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
        Ok(Some(DeviceBatch { images: to_input(&pixels, self.normalize.as_ref())?, labels, host_labels }))
    }
}

impl Iterator for DeviceBatches {
    type Item = anyhow::Result<DeviceBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_pass_conversion_gives_libtorchs_values_bit_for_bit() {
        let values: Vec<u8> = (0..=255u8).cycle().take(2 * 3 * 16 * 16).collect();
        let pixels = Tensor::from_slice(&values).view([2, 3, 16, 16]);
        let normalize = Normalize { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] };
        for n in [None, Some(&normalize)] {
            let ours = host_input(&pixels, n).unwrap();
            let x = pixels.to_kind(Kind::Float).f_div_scalar(255.0).unwrap();
            let libtorch = match n {
                Some(n) => n.apply(&x).unwrap(),
                None => x,
            };
            assert!(ours.equal(&libtorch), "normalize {n:?}");
        }
    }
}
