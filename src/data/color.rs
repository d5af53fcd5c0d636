//! torchvision's colour adjustments on uint8 images (`transforms.v2.functional`'s
//! `adjust_brightness`, `adjust_contrast`, `adjust_saturation`, `adjust_hue`) and
//! `ColorJitter`, which applies them in a random order with random factors. Each computes in
//! float32 as torchvision's tensor kernels do, and converts back to bytes as they do
//! (truncating), so that results agree within one grey level (tested against torchvision 0.26).

use super::Image;

/// ITU-R 601-2 luma, as `rgb_to_grayscale` weighs the channels.
fn grey(r: u8, g: u8, b: u8) -> f32 {
    let l = r as f32 * 0.2989f32;
    let l = l + 0.587f32 * g as f32;
    l + 0.114f32 * b as f32
}

/// `_blend`: `image * ratio + other * (1 - ratio)`, clamped to [0, 255] and truncated.
fn blend(value: u8, other: f32, ratio: f32) -> u8 {
    let out = value as f32 * ratio + (1.0 - ratio) * other;
    out.clamp(0.0, 255.0) as u8
}

/// The luma of every pixel, rounded down (the uint8 kernels floor it before blending).
fn floored_grey(image: &Image) -> Vec<f32> {
    let (r, g, b) = (image.plane(0), image.plane(1), image.plane(2));
    (0..r.len()).map(|i| grey(r[i], g[i], b[i]).floor()).collect()
}

/// `adjust_brightness`: every value times `factor`.
pub fn adjust_brightness(mut image: Image, factor: f32) -> Image {
    for v in &mut image.pixels {
        *v = (*v as f32 * factor).clamp(0.0, 255.0) as u8;
    }
    image
}

/// `adjust_contrast`: blended with the mean luma (of the floored luma for colour images).
pub fn adjust_contrast(mut image: Image, factor: f32) -> Image {
    let sum: f64 = if image.channels == 3 {
        floored_grey(&image).iter().map(|&v| v as f64).sum()
    } else {
        image.pixels.iter().map(|&v| v as f64).sum()
    };
    let mean = (sum / (image.height * image.width) as f64) as f32;
    for v in &mut image.pixels {
        *v = blend(*v, mean, factor);
    }
    image
}

/// `adjust_saturation`: blended with each pixel's floored luma; grey images are unchanged.
pub fn adjust_saturation(mut image: Image, factor: f32) -> Image {
    if image.channels != 3 {
        return image;
    }
    let luma = floored_grey(&image);
    for plane in image.pixels.chunks_mut(luma.len()) {
        for (v, &grey) in plane.iter_mut().zip(&luma) {
            *v = blend(*v, grey, factor);
        }
    }
    image
}

/// `_rgb_to_hsv` of one pixel in [0, 1].
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let (maxc, minc) = (r.max(g).max(b), r.min(g).min(b));
    let equal = maxc == minc;
    let range = maxc - minc;
    let s = range / if equal { 1.0 } else { maxc };
    let divisor = if equal { 1.0 } else { range };
    let (rc, gc, bc) = ((maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor);
    let (max_is_r, max_is_g) = (maxc == r, maxc == g);
    let h = if max_is_r {
        bc - gc
    } else if max_is_g {
        (rc + 2.0) - bc
    } else {
        (gc + 4.0) - rc
    };
    let h = (h * (1.0f64 / 6.0) as f32 + 1.0) % 1.0;
    (h, s, maxc)
}

/// `_hsv_to_rgb` of one pixel.
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let sxf = s * f;
    let one_minus_s = 1.0 - s;
    let q = ((1.0 - sxf) * v).clamp(0.0, 1.0);
    let t = ((sxf + one_minus_s) * v).clamp(0.0, 1.0);
    let p = (one_minus_s * v).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// `adjust_hue`: the hue rotated by `factor` (in [-0.5, 0.5], a fraction of the circle); grey
/// images are unchanged.
pub fn adjust_hue(mut image: Image, factor: f32) -> Image {
    if image.channels != 3 {
        return image;
    }
    let n = image.height * image.width;
    let scale = (1.0f64 / 255.0) as f32;
    // `to_dtype(..., scale=True)` back to uint8: times 255.999, truncated.
    let to_byte = |x: f32| (x * (255.0f64 + 1.0 - 1e-3) as f32) as u8;
    let (red, rest) = image.pixels.split_at_mut(n);
    let (green, blue) = rest.split_at_mut(n);
    for ((r, g), b) in red.iter_mut().zip(green.iter_mut()).zip(blue.iter_mut()) {
        let (h, s, v) = rgb_to_hsv(*r as f32 * scale, *g as f32 * scale, *b as f32 * scale);
        let h = (h + factor).rem_euclid(1.0);
        let (nr, ng, nb) = hsv_to_rgb(h, s, v);
        (*r, *g, *b) = (to_byte(nr), to_byte(ng), to_byte(nb));
    }
    image
}

/// `ColorJitter(brightness, contrast, saturation, hue)`'s ranges: factors drawn uniformly from
/// [max(0, 1 - b), 1 + b] (likewise contrast and saturation) and a hue shift from [-h, h]; a 0
/// leaves that adjustment out.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl ColorJitter {
    /// Parses `--color-jitter B,C,S,H` (torchvision's arguments, e.g. `0.4,0.4,0.4,0.1`).
    pub fn parse(text: &str) -> Result<ColorJitter, String> {
        let values: Vec<f32> = text
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("--color-jitter takes four numbers B,C,S,H, got {text:?}"))?;
        let [brightness, contrast, saturation, hue] = values[..] else {
            return Err(format!("--color-jitter takes four numbers B,C,S,H, got {text:?}"));
        };
        if [brightness, contrast, saturation, hue].iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!("--color-jitter's values must be 0 or more, got {text:?}"));
        }
        if hue > 0.5 {
            return Err(format!("--color-jitter's hue must be at most 0.5 (half the circle), got {hue}"));
        }
        Ok(ColorJitter { brightness, contrast, saturation, hue })
    }

    /// The factors one image gets, in the order they apply: each adjustment's index (0
    /// brightness, 1 contrast, 2 saturation, 3 hue) and its factor, adjustments left out omitted.
    pub fn draw(&self, rng: &mut impl rand::Rng) -> Vec<(usize, f32)> {
        use rand::seq::SliceRandom;
        let mut order = [0usize, 1, 2, 3];
        order.shuffle(rng);
        let around_one = |rng: &mut dyn rand::RngCore, spread: f32| {
            let lo = (1.0 - spread).max(0.0);
            lo + (1.0 + spread - lo) * rand::Rng::random::<f32>(rng)
        };
        let factors = [
            (self.brightness > 0.0).then(|| around_one(rng, self.brightness)),
            (self.contrast > 0.0).then(|| around_one(rng, self.contrast)),
            (self.saturation > 0.0).then(|| around_one(rng, self.saturation)),
            (self.hue > 0.0).then(|| self.hue * (2.0 * rng.random::<f32>() - 1.0)),
        ];
        order.into_iter().filter_map(|i| factors[i].map(|f| (i, f))).collect()
    }

    pub fn apply(&self, image: Image, rng: &mut impl rand::Rng) -> Image {
        self.draw(rng).into_iter().fold(image, |image, (i, factor)| match i {
            0 => adjust_brightness(image, factor),
            1 => adjust_contrast(image, factor),
            2 => adjust_saturation(image, factor),
            _ => adjust_hue(image, factor),
        })
    }
}
