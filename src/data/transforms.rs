//! torchvision's transforms on uint8 images (ToTensor's division by 255 and Normalize happen
//! where the batch becomes floats, see `loader`), and the pipeline of one split, whose random
//! draws depend on the seed, the epoch and the image alone.

use super::{AutoAugment, ColorJitter, Resize};

/// An image as the transforms see it: `channels` planes of `height` x `width` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub pixels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Image {
    /// Channel `c`'s plane.
    pub fn plane(&self, c: usize) -> &[u8] {
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

    fn flip_vertically(mut self) -> Image {
        let n = self.height * self.width;
        for plane in self.pixels.chunks_mut(n) {
            for y in 0..self.height / 2 {
                let (top, bottom) = plane.split_at_mut((self.height - 1 - y) * self.width);
                top[y * self.width..(y + 1) * self.width].swap_with_slice(&mut bottom[..self.width]);
            }
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
    /// `RandomResizedCrop(s, scale, ratio)`, bilinear.
    RandomResizedCrop(usize, CropArea),
    /// `RandomHorizontalFlip()`: p = 0.5.
    RandomHorizontalFlip,
    /// `RandomVerticalFlip()`: p = 0.5.
    RandomVerticalFlip,
    /// `ColorJitter(brightness, contrast, saturation, hue)`.
    ColorJitter(ColorJitter),
    /// `RandAugment`, `TrivialAugmentWide`, `AutoAugment` or `AugMix`.
    AutoAugment(AutoAugment),
}

impl std::fmt::Display for Transform {
    /// As torchvision's `repr` names the transform.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match *self {
            Transform::Resize(s) => write!(f, "Resize(({s}, {s}))"),
            Transform::ResizeShorter(s) => write!(f, "Resize({s})"),
            Transform::CenterCrop(s) => write!(f, "CenterCrop({s})"),
            Transform::RandomCrop { size, padding } => write!(f, "RandomCrop({size}, padding={padding})"),
            Transform::RandomResizedCrop(s, area) if area == CropArea::DEFAULT => write!(f, "RandomResizedCrop({s})"),
            Transform::RandomResizedCrop(s, CropArea { scale: [s0, s1], ratio: [r0, r1] }) => {
                write!(f, "RandomResizedCrop({s}, scale=({s0}, {s1}), ratio=({r0}, {r1}))")
            }
            Transform::RandomHorizontalFlip => write!(f, "RandomHorizontalFlip()"),
            Transform::RandomVerticalFlip => write!(f, "RandomVerticalFlip()"),
            Transform::ColorJitter(j) => write!(
                f,
                "ColorJitter(brightness={}, contrast={}, saturation={}, hue={})",
                j.brightness, j.contrast, j.saturation, j.hue
            ),
            Transform::AutoAugment(a) => match a {
                AutoAugment::RandAugment { magnitude } => write!(f, "RandAugment(num_ops=2, magnitude={magnitude})"),
                AutoAugment::TrivialAugmentWide => write!(f, "TrivialAugmentWide()"),
                AutoAugment::Learned(_) => {
                    write!(f, "AutoAugment(policy=AutoAugmentPolicy.{})", a.name().to_uppercase())
                }
                AutoAugment::AugMix { severity } => write!(f, "AugMix(severity={severity})"),
            },
        }
    }
}

impl Transform {
    /// Whether the transform draws random numbers (training-time augmentation).
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Transform::RandomCrop { .. }
                | Transform::RandomResizedCrop(..)
                | Transform::RandomHorizontalFlip
                | Transform::RandomVerticalFlip
                | Transform::ColorJitter(_)
                | Transform::AutoAugment(_)
        )
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
            Transform::RandomResizedCrop(s, area) => {
                let (top, left, ch, cw) = area.draw_box(h, w, rng);
                image.resized_crop(top, left, ch, cw, s, s)
            }
            Transform::RandomHorizontalFlip => {
                if rng.random_bool(0.5) {
                    image.flip_horizontally()
                } else {
                    image
                }
            }
            Transform::RandomVerticalFlip => {
                if rng.random_bool(0.5) {
                    image.flip_vertically()
                } else {
                    image
                }
            }
            Transform::ColorJitter(jitter) => jitter.apply(image, rng),
            Transform::AutoAugment(policy) => policy.apply(image, rng),
        }
    }
}

/// `RandomResizedCrop`'s `scale` (the crop's share of the image's area) and `ratio` (its width
/// over its height) ranges.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CropArea {
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
}

impl CropArea {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3).
    pub const DEFAULT: CropArea = CropArea { scale: [0.08, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0] };

    /// Checks the ranges as torchvision's transform would use them; the messages name the
    /// flags `{flags}scale` and `{flags}ratio` (`--train-crop-` for `train`, `--crop-` for
    /// `augment`).
    pub fn validate(&self, flags: &str) -> Result<(), String> {
        let [s0, s1] = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(format!("{flags}scale must be LO,HI with 0 < LO <= HI <= 1, got {s0},{s1}"));
        }
        let [r0, r1] = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(format!("{flags}ratio must be LO,HI with 0 < LO <= HI, got {r0},{r1}"));
        }
        Ok(())
    }

    /// `RandomResizedCrop.get_params`: (top, left, height, width) of the crop of a `height` x
    /// `width` image.
    pub fn draw_box(&self, height: usize, width: usize, rng: &mut impl rand::Rng) -> (usize, usize, usize, usize) {
        let between = |rng: &mut dyn rand::RngCore, lo: f64, hi: f64| {
            if lo < hi { rand::Rng::random_range(rng, lo..hi) } else { lo }
        };
        let area = (height * width) as f64;
        let [min_ratio, max_ratio] = self.ratio;
        for _ in 0..10 {
            let target = area * between(rng, self.scale[0], self.scale[1]);
            let ratio = between(rng, min_ratio.ln(), max_ratio.ln()).exp();
            // Python's round(), as torchvision calls it.
            let w = (target * ratio).sqrt().round_ties_even() as usize;
            let h = (target / ratio).sqrt().round_ties_even() as usize;
            if 0 < w && w <= width && 0 < h && h <= height {
                return (rng.random_range(0..=height - h), rng.random_range(0..=width - w), h, w);
            }
        }
        // The fallback: a central crop of the largest box within the ratios.
        let in_ratio = width as f64 / height as f64;
        let (h, w) = if in_ratio < min_ratio {
            ((width as f64 / min_ratio).round_ties_even() as usize, width)
        } else if in_ratio > max_ratio {
            (height, (height as f64 * max_ratio).round_ties_even() as usize)
        } else {
            (height, width)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }
}

/// Parses `LO,HI` for a range flag.
pub fn parse_range(text: &str) -> Result<[f64; 2], String> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected two numbers LO,HI, got {text:?}"))?;
    match values[..] {
        [lo, hi] => Ok([lo, hi]),
        _ => Err(format!("expected two numbers LO,HI, got {text:?}")),
    }
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
            | Transform::RandomResizedCrop(s, _)
            | Transform::RandomCrop { size: s, .. } => Some((s, s)),
            Transform::ResizeShorter(_) => None,
            Transform::RandomHorizontalFlip
            | Transform::RandomVerticalFlip
            | Transform::ColorJitter(_)
            | Transform::AutoAugment(_) => size,
        })
    }

    /// The (height, width) the pipeline makes of an `h` x `w` image.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.transforms.iter().fold((h, w), |(h, w), t| match *t {
            Transform::Resize(s)
            | Transform::CenterCrop(s)
            | Transform::RandomResizedCrop(s, _)
            | Transform::RandomCrop { size: s, .. } => (s, s),
            Transform::ResizeShorter(s) => {
                let long = s * h.max(w) / h.min(w);
                if h <= w { (s, long) } else { (long, s) }
            }
            Transform::RandomHorizontalFlip
            | Transform::RandomVerticalFlip
            | Transform::ColorJitter(_)
            | Transform::AutoAugment(_) => (h, w),
        })
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
}
