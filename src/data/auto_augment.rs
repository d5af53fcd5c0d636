//! torchvision's automatic augmentation policies on uint8 images (`transforms.v2`'s
//! `RandAugment`, `TrivialAugmentWide`, `AutoAugment` and `AugMix`): the same operations, magnitude
//! tables and choices, with the random draws taken from the image's own generator (seed, epoch,
//! image) like every other augmentation here. Each operation computes as torchvision's tensor
//! kernel does, in float32 where it does, so that results agree with it (tested against
//! torchvision 0.26 at fixed magnitudes).

use rand::Rng;
use rand_distr::{Distribution, Gamma};

use super::Image;
use super::color::{adjust_brightness, adjust_contrast, adjust_saturation};

/// One operation of the policies, by torchvision's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
    Invert,
}

impl Op {
    /// Every operation, in the order of torchvision's RandAugment space with Invert last (the
    /// spaces below are slices of it).
    pub const ALL: [Op; 15] = [
        Op::Identity,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Rotate,
        Op::Brightness,
        Op::Color,
        Op::Contrast,
        Op::Sharpness,
        Op::Posterize,
        Op::Solarize,
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
    ];

    /// torchvision's name of the operation (`"ShearX"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::ShearX => "ShearX",
            Op::ShearY => "ShearY",
            Op::TranslateX => "TranslateX",
            Op::TranslateY => "TranslateY",
            Op::Rotate => "Rotate",
            Op::Brightness => "Brightness",
            Op::Color => "Color",
            Op::Contrast => "Contrast",
            Op::Sharpness => "Sharpness",
            Op::Posterize => "Posterize",
            Op::Solarize => "Solarize",
            Op::AutoContrast => "AutoContrast",
            Op::Equalize => "Equalize",
            Op::Invert => "Invert",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// How the geometric operations sample the image: nearest by default, bilinear for AugMix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Bilinear,
}

/// Applies `op` at `magnitude` (already signed), as torchvision's `_apply_image_or_video_transform`
/// does with no fill (zeros outside the image).
pub fn apply_op(image: Image, op: Op, magnitude: f64, interpolation: Interpolation) -> Image {
    let (h, w) = (image.height as f64, image.width as f64);
    match op {
        Op::Identity => image,
        // Shears about the top-left corner, by the angle whose tangent is the magnitude.
        Op::ShearX => {
            let shear = [magnitude.atan().to_degrees(), 0.0];
            affine(&image, 0.0, [0.0, 0.0], shear, [-0.5 * w, -0.5 * h], interpolation)
        }
        Op::ShearY => {
            let shear = [0.0, magnitude.atan().to_degrees()];
            affine(&image, 0.0, [0.0, 0.0], shear, [-0.5 * w, -0.5 * h], interpolation)
        }
        // Whole pixels (Python's int() truncates).
        Op::TranslateX => affine(&image, 0.0, [magnitude.trunc(), 0.0], [0.0, 0.0], [0.0, 0.0], interpolation),
        Op::TranslateY => affine(&image, 0.0, [0.0, magnitude.trunc()], [0.0, 0.0], [0.0, 0.0], interpolation),
        Op::Rotate => rotate(image, magnitude, interpolation),
        Op::Brightness => adjust_brightness(image, (1.0 + magnitude) as f32),
        Op::Color => adjust_saturation(image, (1.0 + magnitude) as f32),
        Op::Contrast => adjust_contrast(image, (1.0 + magnitude) as f32),
        Op::Sharpness => adjust_sharpness(image, 1.0 + magnitude),
        Op::Posterize => posterize(image, magnitude as u32),
        Op::Solarize => solarize(image, 255.0 * magnitude),
        Op::AutoContrast => autocontrast(image),
        Op::Equalize => equalize(image),
        Op::Invert => invert(image),
    }
}

/// `_get_inverse_affine_matrix`: the output-to-input map of a rotation by `angle` degrees,
/// a translation and shears (degrees) about `center` (relative to the image's centre).
fn inverse_affine_matrix(center: [f64; 2], angle: f64, translate: [f64; 2], shear: [f64; 2]) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (shear[0].to_radians(), shear[1].to_radians());
    let [cx, cy] = center;
    let [tx, ty] = translate;
    let cos_sy = sy.cos();
    let tan_sx = sx.tan();
    let rot_minus_sy = rot - sy;
    let (cx_plus_tx, cy_plus_ty) = (cx + tx, cy + ty);
    let a = rot_minus_sy.cos() / cos_sy;
    let b = -(a * tan_sx + rot.sin());
    let c = rot_minus_sy.sin() / cos_sy;
    let d = rot.cos() - c * tan_sx;
    let mut m = [d, -b, 0.0, -c, a, 0.0];
    m[2] += cx - m[0] * cx_plus_tx - m[1] * cy_plus_ty;
    m[5] += cy - m[3] * cx_plus_tx - m[4] * cy_plus_ty;
    m
}

/// `affine_image` with scale 1: the matrix about `center`, then the grid sampled.
fn affine(
    image: &Image,
    angle: f64,
    translate: [f64; 2],
    shear: [f64; 2],
    center: [f64; 2],
    interpolation: Interpolation,
) -> Image {
    sample_grid(image, inverse_affine_matrix(center, angle, translate, shear), interpolation)
}

/// `rotate_image` without expanding: exact turns by index, other angles through the grid.
fn rotate(image: Image, angle: f64, interpolation: Interpolation) -> Image {
    let angle = angle.rem_euclid(360.0);
    let square = image.height == image.width;
    match angle {
        0.0 => image,
        180.0 => turn(&image, 2),
        90.0 if square => turn(&image, 1),
        270.0 if square => turn(&image, 3),
        _ => sample_grid(&image, inverse_affine_matrix([0.0, 0.0], -angle, [0.0, 0.0], [0.0, 0.0]), interpolation),
    }
}

/// `torch.rot90(image, k, dims=(-2, -1))`: `k` quarter turns counter-clockwise.
fn turn(image: &Image, k: usize) -> Image {
    let (h, w) = (image.height, image.width);
    let (out_h, out_w) = if k % 2 == 1 { (w, h) } else { (h, w) };
    let mut pixels = vec![0u8; image.pixels.len()];
    for c in 0..image.channels {
        let plane = image.plane(c);
        let out = &mut pixels[c * h * w..(c + 1) * h * w];
        for y in 0..out_h {
            for x in 0..out_w {
                let (sy, sx) = match k {
                    1 => (x, w - 1 - y),
                    2 => (h - 1 - y, w - 1 - x),
                    _ => (h - 1 - x, y),
                };
                out[y * out_w + x] = plane[sy * w + sx];
            }
        }
    }
    Image { pixels, channels: image.channels, height: out_h, width: out_w }
}

/// `_affine_grid` then `grid_sample(..., padding_mode="zeros", align_corners=False)` and the
/// rounding back to bytes, in float32 as torchvision computes them: every output pixel's centre
/// through `matrix` (pixel units about the image's centre) to a point of the input.
fn sample_grid(image: &Image, matrix: [f64; 6], interpolation: Interpolation) -> Image {
    let (h, w) = (image.height, image.width);
    let theta = matrix.map(|v| v as f32);
    let (half_w, half_h) = (0.5 * w as f32, 0.5 * h as f32);
    // theta transposed and divided by the half sizes, as `_affine_grid` rescales it.
    let (gx_x, gx_y, gx_1) = (theta[0] / half_w, theta[1] / half_w, theta[2] / half_w);
    let (gy_x, gy_y, gy_1) = (theta[3] / half_h, theta[4] / half_h, theta[5] / half_h);
    let n = h * w;
    let mut pixels = vec![0u8; image.pixels.len()];
    // The index of an input pixel, none outside the image (zeros padding).
    let index = |y: f32, x: f32| -> Option<usize> {
        let (y, x) = (y as i64, x as i64);
        ((0..h as i64).contains(&y) && (0..w as i64).contains(&x)).then(|| y as usize * w + x as usize)
    };
    for i in 0..h {
        let y = i as f32 - (h as f32 - 1.0) * 0.5;
        for j in 0..w {
            let x = j as f32 - (w as f32 - 1.0) * 0.5;
            let gx = x * gx_x + y * gx_y + gx_1;
            let gy = x * gy_x + y * gy_y + gy_1;
            // grid_sample's unnormalisation without aligned corners.
            let ix = (gx + 1.0) * half_w - 0.5;
            let iy = (gy + 1.0) * half_h - 0.5;
            let out = i * w + j;
            match interpolation {
                Interpolation::Nearest => {
                    if let Some(source) = index(round_even(iy), round_even(ix)) {
                        for c in 0..image.channels {
                            pixels[c * n + out] = image.pixels[c * n + source];
                        }
                    }
                }
                Interpolation::Bilinear => {
                    let (x0, y0) = (floor(ix), floor(iy));
                    let (x1, y1) = (x0 + 1.0, y0 + 1.0);
                    let taps = [
                        (index(y0, x0), (x1 - ix) * (y1 - iy)),
                        (index(y0, x1), (ix - x0) * (y1 - iy)),
                        (index(y1, x0), (x1 - ix) * (iy - y0)),
                        (index(y1, x1), (ix - x0) * (iy - y0)),
                    ];
                    for c in 0..image.channels {
                        let plane = &image.pixels[c * n..(c + 1) * n];
                        let value = taps
                            .iter()
                            .fold(0.0f32, |sum, &(at, weight)| sum + at.map_or(0.0, |k| plane[k] as f32) * weight);
                        pixels[c * n + out] = round_even(value).clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
    Image { pixels, channels: image.channels, height: h, width: w }
}

/// `v` rounded to the nearest integer, halves to even, for |v| < 2^22: adding and taking away
/// 1.5 * 2^23 leaves no fraction bits, and the float unit rounds halves to even. (The baseline
/// x86-64 target has no rounding instruction: `round_ties_even` is a library call per value.)
fn round_even(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT) - SHIFT
}

/// `v` rounded down, for |v| < 2^31.
fn floor(v: f32) -> f32 {
    let t = v as i32 as f32;
    if t > v { t - 1.0 } else { t }
}

/// `adjust_sharpness`: the inner pixels blended with a smoothed copy (3x3, 5 in the middle and
/// 1 around, over 13, rounded); the border unchanged.
fn adjust_sharpness(mut image: Image, factor: f64) -> Image {
    let (h, w) = (image.height, image.width);
    if h <= 2 || w <= 2 {
        return image;
    }
    let (a, b) = ((1.0f64 / 13.0) as f32, (5.0f64 / 13.0) as f32);
    let alpha = (1.0 - factor) as f32;
    let n = h * w;
    for plane in image.pixels.chunks_mut(n) {
        let source = plane.to_vec();
        for y in 1..h - 1 {
            let (above, row, below) =
                (&source[(y - 1) * w..y * w], &source[y * w..(y + 1) * w], &source[(y + 1) * w..]);
            for x in 1..w - 1 {
                // The sum in the kernel's order, row by row.
                let mut blurred = 0.0f32;
                blurred += a * above[x - 1] as f32;
                blurred += a * above[x] as f32;
                blurred += a * above[x + 1] as f32;
                blurred += a * row[x - 1] as f32;
                blurred += b * row[x] as f32;
                blurred += a * row[x + 1] as f32;
                blurred += a * below[x - 1] as f32;
                blurred += a * below[x] as f32;
                blurred += a * below[x + 1] as f32;
                let v = row[x] as f32;
                let out = v + alpha * (round_even(blurred) - v);
                plane[y * w + x] = out.clamp(0.0, 255.0) as u8;
            }
        }
    }
    image
}

/// `posterize`: the `bits` high bits of every value kept.
fn posterize(mut image: Image, bits: u32) -> Image {
    if bits >= 8 {
        return image;
    }
    let mask = (((1u32 << bits) - 1) << (8 - bits)) as u8;
    for v in &mut image.pixels {
        *v &= mask;
    }
    image
}

/// `solarize`: values at or above `threshold` inverted.
fn solarize(mut image: Image, threshold: f64) -> Image {
    let threshold = threshold as f32;
    for v in &mut image.pixels {
        if *v as f32 >= threshold {
            *v = 255 - *v;
        }
    }
    image
}

/// `autocontrast`: each channel stretched from its own minimum and maximum to 0 and 255.
fn autocontrast(mut image: Image) -> Image {
    let n = image.height * image.width;
    for plane in image.pixels.chunks_mut(n) {
        let (lo, hi) = plane.iter().fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let (minimum, inv_scale) =
            if lo == hi { (0.0f32, 1.0f32) } else { (lo as f32, (hi as f32 - lo as f32) * (1.0f64 / 255.0) as f32) };
        for v in plane.iter_mut() {
            *v = ((*v as f32 - minimum) / inv_scale).clamp(0.0, 255.0) as u8;
        }
    }
    image
}

/// `equalize`: each channel through Pillow's histogram-equalisation table (a channel of one
/// value, or almost, is left as it is).
fn equalize(mut image: Image) -> Image {
    let n = image.height * image.width;
    for plane in image.pixels.chunks_mut(n) {
        let mut histogram = [0usize; 256];
        for &v in plane.iter() {
            histogram[v as usize] += 1;
        }
        let last = histogram.iter().rposition(|&count| count > 0).unwrap_or(0);
        let step = (n - histogram[last]) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0u8; 256];
        let mut cumulative = 0;
        for k in 1..256 {
            cumulative += histogram[k - 1];
            lut[k] = ((cumulative + step / 2) / step).min(255) as u8;
        }
        for v in plane.iter_mut() {
            *v = lut[*v as usize];
        }
    }
    image
}

fn invert(mut image: Image) -> Image {
    for v in &mut image.pixels {
        *v = 255 - *v;
    }
    image
}

/// `torch.linspace(start, end, steps)` in float32: from the start for the first half, from the
/// end for the rest, each value rounded once (ATen's kernel fuses the multiply and the add).
fn linspace(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { step.mul_add(-((steps - 1 - i) as f32), end) })
        .collect()
}

/// `(top - torch.arange(bins) / ((bins - 1) / spread)).round().int()`: Posterize's bits.
fn posterize_bits(top: f32, spread: f64, bins: usize) -> Vec<f32> {
    let divisor = ((bins - 1) as f64 / spread) as f32;
    (0..bins).map(|k| (top - k as f32 / divisor).round_ties_even()).collect()
}

/// The magnitude table and sign of one operation in one policy's space.
pub struct Magnitudes {
    /// The `bins` magnitudes, none for operations that take no magnitude.
    pub values: Option<Vec<f32>>,
    /// Whether a drawn magnitude is negated with probability 1/2.
    pub signed: bool,
}

impl Magnitudes {
    /// Bin `bin`'s magnitude, negated when `torch.rand(()) <= 0.5` for a signed operation; 0
    /// for an operation without magnitudes.
    pub fn draw(&self, bin: usize, rng: &mut impl Rng) -> f64 {
        let Some(values) = &self.values else { return 0.0 };
        let magnitude = values[bin] as f64;
        if self.signed && rng.random::<f32>() <= 0.5 { -magnitude } else { magnitude }
    }
}

/// Which of torchvision's augmentation spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    RandAugment,
    TrivialAugmentWide,
    AutoAugment,
    AugMix,
}

impl Space {
    /// The space's operations, in torchvision's order.
    pub fn ops(self) -> &'static [Op] {
        use Op::*;
        match self {
            // All but Invert.
            Space::RandAugment | Space::TrivialAugmentWide => &Op::ALL[..14],
            // All but Identity.
            Space::AutoAugment => &Op::ALL[1..],
            Space::AugMix => &[
                ShearX,
                ShearY,
                TranslateX,
                TranslateY,
                Rotate,
                Posterize,
                Solarize,
                AutoContrast,
                Equalize,
                Brightness,
                Color,
                Contrast,
                Sharpness,
            ],
        }
    }

    /// `_AUGMENTATION_SPACE[op](bins, height, width)`.
    pub fn magnitudes(self, op: Op, bins: usize, height: usize, width: usize) -> Magnitudes {
        let wide = self == Space::TrivialAugmentWide;
        let (shear, rotate, colour) = if wide { (0.99, 135.0, 0.99) } else { (0.3, 30.0, 0.9) };
        let translate = |side: usize| match self {
            Space::TrivialAugmentWide => 32.0,
            Space::AugMix => side as f64 / 3.0,
            _ => 150.0 / 331.0 * side as f64,
        };
        let signed = |values| Magnitudes { values: Some(values), signed: true };
        let unsigned = |values| Magnitudes { values: Some(values), signed: false };
        match op {
            Op::ShearX | Op::ShearY => signed(linspace(0.0, shear, bins)),
            Op::TranslateX => signed(linspace(0.0, translate(width), bins)),
            Op::TranslateY => signed(linspace(0.0, translate(height), bins)),
            Op::Rotate => signed(linspace(0.0, rotate, bins)),
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => signed(linspace(0.0, colour, bins)),
            Op::Posterize => unsigned(match self {
                Space::TrivialAugmentWide => posterize_bits(8.0, 6.0, bins),
                Space::AugMix => posterize_bits(4.0, 4.0, bins),
                _ => posterize_bits(8.0, 4.0, bins),
            }),
            Op::Solarize => unsigned(linspace(1.0, 0.0, bins)),
            Op::Identity | Op::AutoContrast | Op::Equalize | Op::Invert => Magnitudes { values: None, signed: false },
        }
    }
}

/// AutoAugment's learned policies (torchvision's `AutoAugmentPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    ImageNet,
    Cifar10,
    Svhn,
}

/// One step of a learned sub-policy: the operation, its probability and its magnitude bin.
type Step = (Op, f32, Option<usize>);

impl Policy {
    /// The policy's 25 sub-policies of two steps each, as torchvision lists them.
    pub fn sub_policies(self) -> [[Step; 2]; 25] {
        use Op::*;
        match self {
            Policy::ImageNet => [
                [(Posterize, 0.4, Some(8)), (Rotate, 0.6, Some(9))],
                [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
                [(Equalize, 0.8, None), (Equalize, 0.6, None)],
                [(Posterize, 0.6, Some(7)), (Posterize, 0.6, Some(6))],
                [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
                [(Equalize, 0.4, None), (Rotate, 0.8, Some(8))],
                [(Solarize, 0.6, Some(3)), (Equalize, 0.6, None)],
                [(Posterize, 0.8, Some(5)), (Equalize, 1.0, None)],
                [(Rotate, 0.2, Some(3)), (Solarize, 0.6, Some(8))],
                [(Equalize, 0.6, None), (Posterize, 0.4, Some(6))],
                [(Rotate, 0.8, Some(8)), (Color, 0.4, Some(0))],
                [(Rotate, 0.4, Some(9)), (Equalize, 0.6, None)],
                [(Equalize, 0.0, None), (Equalize, 0.8, None)],
                [(Invert, 0.6, None), (Equalize, 1.0, None)],
                [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
                [(Rotate, 0.8, Some(8)), (Color, 1.0, Some(2))],
                [(Color, 0.8, Some(8)), (Solarize, 0.8, Some(7))],
                [(Sharpness, 0.4, Some(7)), (Invert, 0.6, None)],
                [(ShearX, 0.6, Some(5)), (Equalize, 1.0, None)],
                [(Color, 0.4, Some(0)), (Equalize, 0.6, None)],
                [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
                [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
                [(Invert, 0.6, None), (Equalize, 1.0, None)],
                [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
                [(Equalize, 0.8, None), (Equalize, 0.6, None)],
            ],
            Policy::Cifar10 => [
                [(Invert, 0.1, None), (Contrast, 0.2, Some(6))],
                [(Rotate, 0.7, Some(2)), (TranslateX, 0.3, Some(9))],
                [(Sharpness, 0.8, Some(1)), (Sharpness, 0.9, Some(3))],
                [(ShearY, 0.5, Some(8)), (TranslateY, 0.7, Some(9))],
                [(AutoContrast, 0.5, None), (Equalize, 0.9, None)],
                [(ShearY, 0.2, Some(7)), (Posterize, 0.3, Some(7))],
                [(Color, 0.4, Some(3)), (Brightness, 0.6, Some(7))],
                [(Sharpness, 0.3, Some(9)), (Brightness, 0.7, Some(9))],
                [(Equalize, 0.6, None), (Equalize, 0.5, None)],
                [(Contrast, 0.6, Some(7)), (Sharpness, 0.6, Some(5))],
                [(Color, 0.7, Some(7)), (TranslateX, 0.5, Some(8))],
                [(Equalize, 0.3, None), (AutoContrast, 0.4, None)],
                [(TranslateY, 0.4, Some(3)), (Sharpness, 0.2, Some(6))],
                [(Brightness, 0.9, Some(6)), (Color, 0.2, Some(8))],
                [(Solarize, 0.5, Some(2)), (Invert, 0.0, None)],
                [(Equalize, 0.2, None), (AutoContrast, 0.6, None)],
                [(Equalize, 0.2, None), (Equalize, 0.6, None)],
                [(Color, 0.9, Some(9)), (Equalize, 0.6, None)],
                [(AutoContrast, 0.8, None), (Solarize, 0.2, Some(8))],
                [(Brightness, 0.1, Some(3)), (Color, 0.7, Some(0))],
                [(Solarize, 0.4, Some(5)), (AutoContrast, 0.9, None)],
                [(TranslateY, 0.9, Some(9)), (TranslateY, 0.7, Some(9))],
                [(AutoContrast, 0.9, None), (Solarize, 0.8, Some(3))],
                [(Equalize, 0.8, None), (Invert, 0.1, None)],
                [(TranslateY, 0.7, Some(9)), (AutoContrast, 0.9, None)],
            ],
            Policy::Svhn => [
                [(ShearX, 0.9, Some(4)), (Invert, 0.2, None)],
                [(ShearY, 0.9, Some(8)), (Invert, 0.7, None)],
                [(Equalize, 0.6, None), (Solarize, 0.6, Some(6))],
                [(Invert, 0.9, None), (Equalize, 0.6, None)],
                [(Equalize, 0.6, None), (Rotate, 0.9, Some(3))],
                [(ShearX, 0.9, Some(4)), (AutoContrast, 0.8, None)],
                [(ShearY, 0.9, Some(8)), (Invert, 0.4, None)],
                [(ShearY, 0.9, Some(5)), (Solarize, 0.2, Some(6))],
                [(Invert, 0.9, None), (AutoContrast, 0.8, None)],
                [(Equalize, 0.6, None), (Rotate, 0.9, Some(3))],
                [(ShearX, 0.9, Some(4)), (Solarize, 0.3, Some(3))],
                [(ShearY, 0.8, Some(8)), (Invert, 0.7, None)],
                [(Equalize, 0.9, None), (TranslateY, 0.6, Some(6))],
                [(Invert, 0.9, None), (Equalize, 0.6, None)],
                [(Contrast, 0.3, Some(3)), (Rotate, 0.8, Some(4))],
                [(Invert, 0.8, None), (TranslateY, 0.0, Some(2))],
                [(ShearY, 0.7, Some(6)), (Solarize, 0.4, Some(8))],
                [(Invert, 0.6, None), (Rotate, 0.8, Some(4))],
                [(ShearY, 0.3, Some(7)), (TranslateX, 0.9, Some(3))],
                [(ShearX, 0.1, Some(6)), (Invert, 0.6, None)],
                [(Solarize, 0.7, Some(2)), (TranslateY, 0.6, Some(7))],
                [(ShearY, 0.8, Some(4)), (Invert, 0.8, None)],
                [(ShearX, 0.7, Some(9)), (TranslateY, 0.8, Some(3))],
                [(ShearY, 0.8, Some(5)), (AutoContrast, 0.7, None)],
                [(ShearX, 0.7, Some(2)), (Invert, 0.1, None)],
            ],
        }
    }
}

/// `--auto-augment`: one of torchvision's automatic policies, with the reference recipe's
/// settings (`--ra-magnitude`, `--augmix-severity`). A run records it as
/// `{"policy": "ra", "magnitude": 9}` (the magnitude for `ra` alone, the severity for `augmix`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(into = "Recorded", try_from = "Recorded")]
pub enum AutoAugment {
    /// `RandAugment(num_ops=2, magnitude)`, 31 magnitude bins.
    RandAugment { magnitude: usize },
    /// `TrivialAugmentWide()`, 31 magnitude bins.
    TrivialAugmentWide,
    /// `AutoAugment(policy)`.
    Learned(Policy),
    /// `AugMix(severity)`: three chains of one to three operations, mixed with Dirichlet(1)
    /// weights and blended with the image by a Beta(1, 1) share, bilinear geometry.
    AugMix { severity: usize },
}

impl AutoAugment {
    /// The names torchvision's reference `--auto-augment` takes.
    pub const NAMES: &str = "ra, ta_wide, augmix, imagenet, cifar10 or svhn";

    /// Parses `--auto-augment NAME` with the recipe's RandAugment magnitude and AugMix severity.
    pub fn parse(name: &str, ra_magnitude: usize, augmix_severity: usize) -> Result<AutoAugment, String> {
        let policy = match name {
            "ra" => {
                if ra_magnitude > 30 {
                    return Err(format!("--ra-magnitude must be 0 to 30 (31 bins), got {ra_magnitude}"));
                }
                AutoAugment::RandAugment { magnitude: ra_magnitude }
            }
            "ta_wide" => AutoAugment::TrivialAugmentWide,
            "augmix" => {
                if !(1..=10).contains(&augmix_severity) {
                    return Err(format!("--augmix-severity must be 1 to 10, got {augmix_severity}"));
                }
                AutoAugment::AugMix { severity: augmix_severity }
            }
            "imagenet" => AutoAugment::Learned(Policy::ImageNet),
            "cifar10" => AutoAugment::Learned(Policy::Cifar10),
            "svhn" => AutoAugment::Learned(Policy::Svhn),
            other => return Err(format!("--auto-augment takes {}, got {other:?}", Self::NAMES)),
        };
        Ok(policy)
    }

    /// The name `--auto-augment` takes for this policy.
    pub fn name(&self) -> &'static str {
        match self {
            AutoAugment::RandAugment { .. } => "ra",
            AutoAugment::TrivialAugmentWide => "ta_wide",
            AutoAugment::AugMix { .. } => "augmix",
            AutoAugment::Learned(Policy::ImageNet) => "imagenet",
            AutoAugment::Learned(Policy::Cifar10) => "cifar10",
            AutoAugment::Learned(Policy::Svhn) => "svhn",
        }
    }

    /// The operations one image gets, in order, with their signed magnitudes (none for AugMix,
    /// whose draws are an [`AugMixDraw`]).
    pub fn draw_ops(&self, height: usize, width: usize, rng: &mut impl Rng) -> Vec<(Op, f64)> {
        match *self {
            AutoAugment::RandAugment { magnitude } => (0..2)
                .map(|_| {
                    let space = Space::RandAugment;
                    let op = space.ops()[rng.random_range(0..space.ops().len())];
                    (op, space.magnitudes(op, 31, height, width).draw(magnitude, rng))
                })
                .collect(),
            AutoAugment::TrivialAugmentWide => {
                let space = Space::TrivialAugmentWide;
                let op = space.ops()[rng.random_range(0..space.ops().len())];
                let bin = rng.random_range(0..31);
                vec![(op, space.magnitudes(op, 31, height, width).draw(bin, rng))]
            }
            AutoAugment::Learned(policy) => {
                let sub_policy = policy.sub_policies()[rng.random_range(0..25)];
                let mut ops = Vec::new();
                for (op, probability, bin) in sub_policy {
                    // Applied when `torch.rand(()) <= probability`.
                    if rng.random::<f32>() > probability {
                        continue;
                    }
                    let magnitudes = Space::AutoAugment.magnitudes(op, 10, height, width);
                    ops.push((op, magnitudes.draw(bin.unwrap_or(0), rng)));
                }
                ops
            }
            AutoAugment::AugMix { .. } => Vec::new(),
        }
    }

    pub fn apply(&self, image: Image, rng: &mut impl Rng) -> Image {
        let (h, w) = (image.height, image.width);
        match *self {
            AutoAugment::AugMix { severity } => AugMixDraw::draw(severity, h, w, rng).mix(image),
            _ => self
                .draw_ops(h, w, rng)
                .into_iter()
                .fold(image, |image, (op, magnitude)| apply_op(image, op, magnitude, Interpolation::Nearest)),
        }
    }
}

/// torchvision's reference recipe's `--ra-magnitude` default.
pub const RA_MAGNITUDE: usize = 9;
/// torchvision's reference recipe's `--augmix-severity` default.
pub const AUGMIX_SEVERITY: usize = 3;

/// How a run's files record an [`AutoAugment`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Recorded {
    policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    magnitude: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    severity: Option<usize>,
}

impl From<AutoAugment> for Recorded {
    fn from(policy: AutoAugment) -> Recorded {
        let (magnitude, severity) = match policy {
            AutoAugment::RandAugment { magnitude } => (Some(magnitude), None),
            AutoAugment::AugMix { severity } => (None, Some(severity)),
            _ => (None, None),
        };
        Recorded { policy: policy.name().to_string(), magnitude, severity }
    }
}

impl TryFrom<Recorded> for AutoAugment {
    type Error = String;
    fn try_from(recorded: Recorded) -> Result<AutoAugment, String> {
        AutoAugment::parse(
            &recorded.policy,
            recorded.magnitude.unwrap_or(RA_MAGNITUDE),
            recorded.severity.unwrap_or(AUGMIX_SEVERITY),
        )
    }
}

/// `Dirichlet(alpha, ..., alpha)` over `n` parts, from Gamma(alpha, 1) draws.
fn dirichlet(alpha: f64, n: usize, rng: &mut impl Rng) -> Vec<f64> {
    let gamma = Gamma::new(alpha, 1.0).expect("alpha is positive");
    let draws: Vec<f64> = (0..n).map(|_| gamma.sample(rng)).collect();
    let total: f64 = draws.iter().sum();
    draws.iter().map(|d| d / total).collect()
}

/// AugMix's number of chains (torchvision's default, with chains of 1 to 3 steps, alpha 1 and
/// all operations).
const AUGMIX_WIDTH: usize = 3;

/// One image's AugMix draws: the share of the image itself, and each chain's weight and steps.
#[derive(Debug, Clone, PartialEq)]
pub struct AugMixDraw {
    /// Beta(1, 1)'s share of the original image.
    pub keep: f32,
    /// Each chain's weight (Dirichlet(1, 1, 1) times the rest) and its operations in order.
    pub chains: Vec<(f32, Vec<(Op, f64)>)>,
}

impl AugMixDraw {
    /// `AugMix(severity)`'s draws for an image of `height` x `width`.
    pub fn draw(severity: usize, height: usize, width: usize, rng: &mut impl Rng) -> AugMixDraw {
        let share = dirichlet(1.0, 2, rng);
        let weights = dirichlet(1.0, AUGMIX_WIDTH, rng);
        let space = Space::AugMix;
        let chains = weights
            .iter()
            .map(|weight| {
                let depth = rng.random_range(1..=3);
                let steps = (0..depth)
                    .map(|_| {
                        let op = space.ops()[rng.random_range(0..space.ops().len())];
                        let bin = rng.random_range(0..severity);
                        (op, space.magnitudes(op, 10, height, width).draw(bin, rng))
                    })
                    .collect();
                ((weight * share[1]) as f32, steps)
            })
            .collect();
        AugMixDraw { keep: share[0] as f32, chains }
    }

    /// The image times its share plus each chain's result (bilinear geometry) times its weight,
    /// in float32, truncated back to bytes.
    pub fn mix(&self, image: Image) -> Image {
        let mut mix: Vec<f32> = image.pixels.iter().map(|&v| self.keep * v as f32).collect();
        for (weight, steps) in &self.chains {
            let chain = steps
                .iter()
                .fold(image.clone(), |chain, &(op, magnitude)| apply_op(chain, op, magnitude, Interpolation::Bilinear));
            for (m, &v) in mix.iter_mut().zip(&chain.pixels) {
                *m += weight * v as f32;
            }
        }
        Image { pixels: mix.iter().map(|&v| v.clamp(0.0, 255.0) as u8).collect(), ..image }
    }
}
