//! Image transforms as torchvision applies them to PIL images.

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
    transpose_strided(image, cols, rows, cols)
}

/// [`transpose`] of the `rows` x `cols` region whose row r starts at `image[r * stride]`.
fn transpose_strided(image: &[u8], stride: usize, rows: usize, cols: usize) -> Vec<u8> {
    // Square blocks transposed in registers (16x16 with SSE2, 8x8 in u64s elsewhere): a
    // byte-by-byte transpose of a photo-sized plane was an eighth of an image folder's pipeline.
    let mut out = vec![0u8; rows * cols];
    #[cfg(target_arch = "x86_64")]
    let (done_rows, done_cols) = {
        let (full_rows, full_cols) = (rows / 16 * 16, cols / 16 * 16);
        for r0 in (0..full_rows).step_by(16) {
            for c0 in (0..full_cols).step_by(16) {
                transpose_16x16(&image[r0 * stride + c0..], stride, &mut out[c0 * rows + r0..], rows);
            }
        }
        (full_rows, full_cols)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (done_rows, done_cols) = (0, 0);
    let (full_rows, full_cols) = (rows / 8 * 8, cols / 8 * 8);
    for r0 in (0..full_rows).step_by(8) {
        for c0 in (0..full_cols).step_by(8) {
            if r0 < done_rows && c0 < done_cols {
                continue;
            }
            let mut block = [0u64; 8];
            for (i, word) in block.iter_mut().enumerate() {
                let at = (r0 + i) * stride + c0;
                *word = u64::from_le_bytes(image[at..at + 8].try_into().expect("8 bytes"));
            }
            transpose_8x8(&mut block);
            for (j, word) in block.iter().enumerate() {
                let at = (c0 + j) * rows + r0;
                out[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    // The ragged right and bottom edges, byte by byte.
    for r in 0..rows {
        let start = if r < full_rows { full_cols } else { 0 };
        for c in start..cols {
            out[c * rows + r] = image[r * stride + c];
        }
    }
    out
}

/// Transposes the 16x16 bytes at `src` (rows `stride` apart) into `dst` (rows `dst_stride`
/// apart): four rounds of SSE2 byte unpacks, each interleaving register i with register i + 8,
/// turn rows into columns (a perfect-shuffle network).
#[cfg(target_arch = "x86_64")]
fn transpose_16x16(src: &[u8], stride: usize, dst: &mut [u8], dst_stride: usize) {
    use std::arch::x86_64::*;
    assert!(src.len() >= 15 * stride + 16 && dst.len() >= 15 * dst_stride + 16, "16x16 blocks in bounds");
    // SAFETY: SSE2 is part of x86-64; the 16 loads and 16 stores of 16 bytes lie within `src`
    // and `dst`, as asserted just above.
    unsafe {
        let mut r = [_mm_setzero_si128(); 16];
        for (i, row) in r.iter_mut().enumerate() {
            *row = _mm_loadu_si128(src.as_ptr().add(i * stride) as *const __m128i);
        }
        for _ in 0..4 {
            let mut next = [_mm_setzero_si128(); 16];
            for i in 0..8 {
                next[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
                next[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
            }
            r = next;
        }
        for (j, column) in r.iter().enumerate() {
            _mm_storeu_si128(dst.as_mut_ptr().add(j * dst_stride) as *mut __m128i, *column);
        }
    }
}

/// Transposes the 8x8 byte matrix whose row i is `block[i]` (byte j of a word is column j).
#[inline(always)]
fn transpose_8x8(block: &mut [u64; 8]) {
    for (shift, mask) in [(8, 0x00FF_00FF_00FF_00FFu64), (16, 0x0000_FFFF_0000_FFFF), (32, 0x0000_0000_FFFF_FFFF)] {
        let step = shift / 8;
        for i in 0..8 {
            if i & step == 0 {
                let (a, b) = (block[i], block[i + step]);
                let t = ((a >> shift) ^ b) & mask;
                block[i + step] = b ^ t;
                block[i] = a ^ (t << shift);
            }
        }
    }
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
        assert_eq!(image.len(), self.in_size.0 * self.in_size.1);
        self.apply_region(image, self.in_size.1, out)
    }

    /// Resizes the region of a larger image whose row r starts at `image[r * stride]` (what a
    /// crop then a resize computes, without copying the crop).
    pub fn apply_region(&self, image: &[u8], stride: usize, out: &mut [u8]) {
        let ((in_h, in_w), (out_h, out_w)) = (self.in_size, self.out_size);
        assert!(stride >= in_w && image.len() >= (in_h - 1) * stride + in_w, "the region lies inside the image");
        assert_eq!(out.len(), out_h * out_w);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.apply_avx2(image, stride, out) };
        }
        self.apply_portable(image, stride, out)
    }

    /// The same code compiled for AVX2, whose 8-lane 32-bit multiplies the filter loops need to
    /// vectorise (the x86-64 baseline has none): about 3x faster.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(&self, image: &[u8], stride: usize, out: &mut [u8]) {
        self.apply_portable(image, stride, out)
    }

    #[inline(always)]
    fn apply_portable(&self, image: &[u8], stride: usize, out: &mut [u8]) {
        let ((in_h, in_w), (out_h, out_w)) = (self.in_size, self.out_size);
        let rows = || image.chunks(stride).take(in_h).map(|row| &row[..in_w]);
        if (in_h, in_w) == (out_h, out_w) {
            // Pillow copies when neither axis changes.
            out.chunks_exact_mut(out_w).zip(rows()).for_each(|(o, row)| o.copy_from_slice(row));
            return;
        }
        // Pillow skips a pass whose axis keeps its size.
        let wide: Vec<u8> = if in_w == out_w {
            rows().flatten().copied().collect()
        } else {
            // The horizontal pass is the vertical filter run on the transposed image, so that
            // both passes combine whole contiguous rows (vectorised: faster than Pillow's
            // pixel-by-pixel horizontal loop, even with the two transposes).
            let columns = transpose_strided(image, stride, in_h, in_w);
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

/// An image as the transforms see it: `channels` planes of `height` x `width` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub pixels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Image {
    fn plane(&self, c: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.pixels[c * n..(c + 1) * n]
    }

    /// The `h` x `w` region at row `top`, column `left`; outside the image, zeros (padding).
    fn crop(&self, top: i64, left: i64, h: usize, w: usize) -> Image {
        let mut pixels = vec![0u8; self.channels * h * w];
        // The columns of the region inside the image, as offsets into a source row and an
        // output row: each row is then one slice copy.
        let first = left.clamp(0, self.width as i64);
        let end = (left + w as i64).clamp(0, self.width as i64);
        let (src, dst, len) = (first as usize, (first - left) as usize, (end - first).max(0) as usize);
        for c in 0..self.channels {
            let plane = self.plane(c);
            let out = &mut pixels[c * h * w..(c + 1) * h * w];
            for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
                let sy = top + y as i64;
                if len == 0 || sy < 0 || sy >= self.height as i64 {
                    continue;
                }
                let row = &plane[sy as usize * self.width..(sy as usize + 1) * self.width];
                out_row[dst..dst + len].copy_from_slice(&row[src..src + len]);
            }
        }
        Image { pixels, channels: self.channels, height: h, width: w }
    }

    /// Pillow's bilinear resize to `h` x `w`, plane by plane.
    fn resize(&self, h: usize, w: usize) -> Image {
        if (h, w) == (self.height, self.width) {
            return self.clone();
        }
        self.resized_crop(0, 0, self.height, self.width, h, w)
    }

    /// The `h` x `w` region at row `top`, column `left` (inside the image), resized to
    /// `out_h` x `out_w`: a crop then a resize, without copying the crop.
    fn resized_crop(&self, top: usize, left: usize, h: usize, w: usize, out_h: usize, out_w: usize) -> Image {
        let resize = Resize::new(h, w, out_h, out_w);
        let mut pixels = vec![0u8; self.channels * out_h * out_w];
        for (c, out) in pixels.chunks_mut(out_h * out_w).enumerate() {
            resize.apply_region(&self.plane(c)[top * self.width + left..], self.width, out);
        }
        Image { pixels, channels: self.channels, height: out_h, width: out_w }
    }

    fn flip_horizontally(mut self) -> Image {
        for row in self.pixels.chunks_mut(self.width) {
            row.reverse();
        }
        self
    }
}

/// One of torchvision's transforms, on uint8 images (ToTensor's division by 255 and Normalize
/// happen on the device, see the loader).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// `Resize((s, s))`.
    Resize(usize),
    /// `Resize(s)`: the shorter side to `s`, the longer in proportion (rounded down).
    ResizeShorter(usize),
    /// `CenterCrop(s)`.
    CenterCrop(usize),
    /// `RandomCrop(s, padding=p)`: zero padding, then a uniformly placed crop.
    RandomCrop { size: usize, padding: usize },
    /// `RandomResizedCrop(s)`: scale (0.08, 1), ratio (3/4, 4/3), bilinear.
    RandomResizedCrop(usize),
    /// `RandomHorizontalFlip()`: p = 0.5.
    RandomHorizontalFlip,
}

impl Transform {
    /// Whether the transform draws random numbers (training-time augmentation).
    pub fn is_random(self) -> bool {
        matches!(self, Transform::RandomCrop { .. } | Transform::RandomResizedCrop(_) | Transform::RandomHorizontalFlip)
    }

    pub fn apply(self, image: Image, rng: &mut impl rand::Rng) -> Image {
        let (h, w) = (image.height, image.width);
        match self {
            Transform::Resize(s) => image.resize(s, s),
            Transform::ResizeShorter(s) => {
                let (short, long) = (h.min(w), h.max(w));
                let long = s * long / short;
                if h <= w { image.resize(s, long) } else { image.resize(long, s) }
            }
            Transform::CenterCrop(s) => {
                // Python's round(), as torchvision calls it: halves go to the even neighbour.
                let top = ((h as f64 - s as f64) / 2.0).round_ties_even() as i64;
                let left = ((w as f64 - s as f64) / 2.0).round_ties_even() as i64;
                image.crop(top, left, s, s)
            }
            Transform::RandomCrop { size, padding } => {
                let p = padding as i64;
                let top = rng.random_range(0..=(h as i64 + 2 * p - size as i64).max(0)) - p;
                let left = rng.random_range(0..=(w as i64 + 2 * p - size as i64).max(0)) - p;
                image.crop(top, left, size, size)
            }
            Transform::RandomResizedCrop(s) => {
                let (top, left, ch, cw) = resized_crop_box(h, w, rng);
                image.resized_crop(top, left, ch, cw, s, s)
            }
            Transform::RandomHorizontalFlip => {
                if rng.random_bool(0.5) {
                    image.flip_horizontally()
                } else {
                    image
                }
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3):
/// (top, left, height, width).
fn resized_crop_box(height: usize, width: usize, rng: &mut impl rand::Rng) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = ((3f64 / 4.0).ln(), (4f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..1.0);
        let ratio = rng.random_range(log_lo..log_hi).exp();
        // Python's round(), as torchvision calls it.
        let w = (target * ratio).sqrt().round_ties_even() as usize;
        let h = (target / ratio).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            return (rng.random_range(0..=height - h), rng.random_range(0..=width - w), h, w);
        }
    }
    // The fallback: a central crop of the largest box within the ratios.
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < 3.0 / 4.0 {
        ((width as f64 / (3.0 / 4.0)).round_ties_even() as usize, width)
    } else if in_ratio > 4.0 / 3.0 {
        (height, (height as f64 * 4.0 / 3.0).round_ties_even() as usize)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// The transforms of one split, in order, and where their random draws come from: each image's
/// draws depend only on the seed, the epoch and the image's index, so a resumed run sees the
/// same augmented images as an uninterrupted one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pipeline {
    pub transforms: Vec<Transform>,
}

impl Pipeline {
    /// d2l's: `Resize((s, s))` when a size is given, else nothing.
    pub fn d2l(size: Option<usize>) -> Self {
        Pipeline { transforms: size.map(Transform::Resize).into_iter().collect() }
    }

    /// Whether the pipeline is at most one square resize (the fast path of the loader).
    pub fn resize_only(&self) -> Option<Option<usize>> {
        match self.transforms[..] {
            [] => Some(None),
            [Transform::Resize(s)] => Some(Some(s)),
            _ => None,
        }
    }

    /// Applies the transforms to image `index` in `epoch` of a run seeded with `seed`.
    pub fn apply(&self, image: Image, seed: u64, epoch: usize, index: usize) -> Image {
        use rand::SeedableRng;
        let key = seed
            ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key);
        self.transforms.iter().fold(image, |image, t| t.apply(image, &mut rng))
    }

    /// The (height, width) of every image the pipeline makes, whatever their size: it ends
    /// with a square resize or crop (flips aside).
    pub fn fixed_size(&self) -> Option<(usize, usize)> {
        self.transforms.iter().fold(None, |size, t| match *t {
            Transform::Resize(s)
            | Transform::CenterCrop(s)
            | Transform::RandomResizedCrop(s)
            | Transform::RandomCrop { size: s, .. } => Some((s, s)),
            Transform::ResizeShorter(_) => None,
            Transform::RandomHorizontalFlip => size,
        })
    }

    /// The (height, width) the pipeline makes of an `h` x `w` image.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.transforms.iter().fold((h, w), |(h, w), t| match *t {
            Transform::Resize(s)
            | Transform::CenterCrop(s)
            | Transform::RandomResizedCrop(s)
            | Transform::RandomCrop { size: s, .. } => (s, s),
            Transform::ResizeShorter(s) => {
                let long = s * h.max(w) / h.min(w);
                if h <= w { (s, long) } else { (long, s) }
            }
            Transform::RandomHorizontalFlip => (h, w),
        })
    }
}

/// torchvision's `Normalize(mean, std)` after `ToTensor()`: per channel, `(x - mean) / std` on
/// values in [0, 1]. Applied where the batch is converted to floats (on the device).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalize {
    /// Per-channel mean and standard deviation of `images` (planes of `channels`, values
    /// scaled to [0, 1]), as people compute them for `Normalize`: over every pixel.
    pub fn of(images: &[Image]) -> Normalize {
        let channels = images.first().map_or(1, |i| i.channels);
        let (mut sum, mut sum_sq, mut count) = (vec![0f64; channels], vec![0f64; channels], vec![0f64; channels]);
        for image in images {
            for c in 0..channels {
                for &p in image.plane(c) {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sum_sq[c] += v * v;
                    count[c] += 1.0;
                }
            }
        }
        let mean: Vec<f64> = (0..channels).map(|c| sum[c] / count[c].max(1.0)).collect();
        let std = (0..channels)
            .map(|c| (sum_sq[c] / count[c].max(1.0) - mean[c] * mean[c]).max(0.0).sqrt().max(1e-6))
            .collect();
        Normalize { mean, std }
    }

    /// `(x - mean) / std` for a batch `x` of shape (N, C, H, W).
    pub fn apply(&self, x: &tch::Tensor) -> Result<tch::Tensor, tch::TchError> {
        let c = self.mean.len() as i64;
        let column = |values: &[f64]| -> Result<tch::Tensor, tch::TchError> {
            tch::Tensor::f_from_slice(values)?.f_to_kind(tch::Kind::Float)?.f_to(x.device())?.f_view([1, c, 1, 1])
        };
        x.f_sub(&column(&self.mean)?)?.f_div(&column(&self.std)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_a_region_in_place_equals_cropping_then_resizing() {
        let (h, w) = (37, 53);
        let pixels: Vec<u8> = (0..3 * h * w).map(|i| (i * 131 % 253) as u8).collect();
        let image = Image { pixels, channels: 3, height: h, width: w };
        for (top, left, ch, cw, s) in
            [(0, 0, 37, 53, 24), (5, 9, 20, 31, 24), (3, 0, 34, 17, 40), (0, 2, 9, 9, 9), (1, 1, 30, 8, 8)]
        {
            let expected = image.crop(top as i64, left as i64, ch, cw).resize(s, s);
            assert_eq!(image.resized_crop(top, left, ch, cw, s, s), expected, "{ch}x{cw} at {top},{left} to {s}");
        }
    }

    #[test]
    fn the_block_transpose_is_the_transpose_for_every_shape() {
        for rows in [1, 7, 8, 9, 16, 23, 40] {
            for cols in [1, 3, 8, 15, 17, 32, 41] {
                let image: Vec<u8> = (0..rows * cols).map(|i| (i * 37 % 251) as u8).collect();
                let expected: Vec<u8> =
                    (0..cols).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| image[r * cols + c]).collect();
                assert_eq!(transpose(&image, rows, cols), expected, "{rows}x{cols}");
            }
        }
    }
}
