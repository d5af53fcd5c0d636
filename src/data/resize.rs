//! torchvision's `Resize` on a PIL image: Pillow's bilinear resampling, fixed-point, half-pixel
//! centres, antialiased when shrinking.

use super::kernels::{transpose, transpose_strided};

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
