//! MixUp and CutMix, as torchvision's reference recipe applies them to each batch: a batch mixed
//! with itself rolled by one, the one-hot labels mixed in the same proportion. Each batch's
//! draws depend on the seed, the epoch, the batch and the rank alone, so `--resume` mixes as an
//! uninterrupted run does.

use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution};
use tch::{Kind, TchError, Tensor};

/// How one batch is mixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mix {
    /// `MixUp`: `lam * x + (1 - lam) * x.roll(1, 0)`.
    MixUp { lam: f64 },
    /// `CutMix`: the box rows `top..bottom`, columns `left..right` taken from the rolled batch;
    /// the labels mixed by the area kept.
    CutMix { top: i64, bottom: i64, left: i64, right: i64 },
}

/// The key of a batch's random draws, from (seed, epoch, batch, rank): each batch-level
/// augmentation salts it with a constant of its own.
pub fn batch_key([seed, epoch, batch, rank]: [u64; 4]) -> u64 {
    seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ batch.wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ rank.wrapping_mul(0x94D0_49BB_1331_11EB)
}

/// Draws the mix of the batch `at` (seed, epoch, batch, rank) for images of `height` x `width`:
/// MixUp with `mixup_alpha`, CutMix with `cutmix_alpha` (0 leaves one out), one of the two with
/// probability 1/2 when both are on (torchvision's `RandomChoice`). None when both are 0.
pub fn draw(mixup_alpha: f64, cutmix_alpha: f64, at: [u64; 4], height: i64, width: i64) -> Option<Mix> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(batch_key(at) ^ 0x6D69_7875_7063_7574);
    let cutmix = match (mixup_alpha > 0.0, cutmix_alpha > 0.0) {
        (false, false) => return None,
        (true, true) => rng.random_bool(0.5),
        (mixup, _) => !mixup,
    };
    let alpha = if cutmix { cutmix_alpha } else { mixup_alpha };
    let lam = Beta::new(alpha, alpha).map_or(0.5, |beta| beta.sample(&mut rng));
    if !cutmix {
        return Some(Mix::MixUp { lam });
    }
    // torchvision's CutMix: a box centred uniformly, sides sqrt(1 - lam) of the image's.
    let (r_x, r_y) = (rng.random_range(0..width), rng.random_range(0..height));
    let r = 0.5 * (1.0 - lam).sqrt();
    let (half_w, half_h) = ((r * width as f64) as i64, (r * height as f64) as i64);
    Some(Mix::CutMix {
        top: (r_y - half_h).max(0),
        bottom: (r_y + half_h).min(height),
        left: (r_x - half_w).max(0),
        right: (r_x + half_w).min(width),
    })
}

impl Mix {
    /// The share of the labels the batch's own images keep.
    pub fn lam(&self, height: i64, width: i64) -> f64 {
        match *self {
            Mix::MixUp { lam } => lam,
            Mix::CutMix { top, bottom, left, right } => {
                1.0 - ((right - left) * (bottom - top)) as f64 / (width * height) as f64
            }
        }
    }

    /// The mixed batch and its labels as class probabilities (N, `num_classes`).
    pub fn apply(&self, x: &Tensor, labels: &Tensor, num_classes: i64) -> Result<(Tensor, Tensor), TchError> {
        let size = x.size();
        let (h, w) = (size[2], size[3]);
        let lam = self.lam(h, w);
        let rolled = x.f_roll([1], [0])?;
        let mixed = match *self {
            Mix::MixUp { lam } => rolled.f_mul_scalar(1.0 - lam)?.f_add_(&x.f_mul_scalar(lam)?)?,
            Mix::CutMix { top, bottom, left, right } => {
                let out = x.f_detach_copy()?;
                let region = |t: &Tensor| t.f_narrow(2, top, bottom - top)?.f_narrow(3, left, right - left);
                region(&out)?.f_copy_(&region(&rolled)?)?;
                out
            }
        };
        let one_hot = labels.f_one_hot(num_classes)?.f_to_kind(Kind::Float)?;
        let soft = one_hot.f_roll([1], [0])?.f_mul_scalar(1.0 - lam)?.f_add_(&one_hot.f_mul_scalar(lam)?)?;
        Ok((mixed, soft))
    }
}
