//! torchvision's `Normalize`, and the per-channel statistics people compute for it.

use super::Image;

/// torchvision's `Normalize(mean, std)` after `ToTensor()`: per channel, `(x - mean) / std` on
/// values in [0, 1]. Applied where the batch is converted to floats (on the device).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalize {
    /// ImageNet's statistics, which torchvision's published weights expect.
    pub fn imagenet() -> Normalize {
        Normalize { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }

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
