//! torchvision's `RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)`, applied as
//! its reference recipe applies it: to each image of a batch after `ToTensor` and `Normalize`,
//! so the erased box holds zeros of the normalised tensor.

use rand::{Rng, SeedableRng};
use tch::{TchError, Tensor};

/// Where one image is erased: rows `top..top + height`, columns `left..left + width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erasure {
    pub top: i64,
    pub left: i64,
    pub height: i64,
    pub width: i64,
}

impl Erasure {
    /// Zeroes the box in every channel of `images` (N, C, H, W), in place.
    pub fn erase(&self, images: &Tensor) -> Result<(), TchError> {
        let _ = images.f_narrow(2, self.top, self.height)?.f_narrow(3, self.left, self.width)?.f_fill_(0.0)?;
        Ok(())
    }
}

/// `RandomErasing.get_params` after the coin with probability `p`: up to ten tries at a box of
/// 2% to 33% of the area with an aspect ratio from 0.3 to 3.3 (log-uniform) that fits inside
/// the `h` x `w` image; none when the coin or every try fails.
pub fn draw(p: f64, h: i64, w: i64, rng: &mut impl Rng) -> Option<Erasure> {
    if rng.random::<f64>() >= p {
        return None;
    }
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (0.3f64.ln(), 3.3f64.ln());
    for _ in 0..10 {
        let erase_area = area * rng.random_range(0.02..0.33);
        let aspect = rng.random_range(log_lo..log_hi).exp();
        // Python's round(), as torchvision calls it.
        let height = (erase_area * aspect).sqrt().round_ties_even() as i64;
        let width = (erase_area / aspect).sqrt().round_ties_even() as i64;
        if !(height < h && width < w) {
            continue;
        }
        let top = rng.random_range(0..=h - height);
        let left = rng.random_range(0..=w - width);
        return Some(Erasure { top, left, height, width });
    }
    None
}

/// Erases each image of the (N, C, H, W) batch `x` with probability `p`, in place (the batch is
/// the caller's own, so the erased images need no copy), the draws of image k depending on `key`
/// and k alone.
pub fn random_erasing_(x: &Tensor, p: f64, key: u64) -> Result<(), TchError> {
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    for k in 0..size[0] {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key ^ (k as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        if let Some(e) = draw(p, h, w, &mut rng) {
            e.erase(&x.f_narrow(0, k, 1)?)?;
        }
    }
    Ok(())
}
