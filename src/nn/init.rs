//! d2l's initialisation: Xavier-uniform weights on every Conv2d and Linear, PyTorch's default
//! biases.

use tch::Tensor;
use tch::nn::{Init, Path};

/// PyTorch's default bias init: uniform in +-1/sqrt(fan_in).
pub(crate) fn default_bias(p: &Path, out: i64, fan_in: i64) -> Tensor {
    let bound = 1.0 / (fan_in as f64).sqrt();
    p.var("bias", &[out], Init::Uniform { lo: -bound, up: bound })
}

/// Xavier (Glorot) uniform, d2l's `init_weights` for every Conv2d and Linear weight.
pub(crate) fn xavier_uniform(p: &Path, dims: &[i64], fan_in: i64, fan_out: i64) -> Tensor {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    p.var("weight", dims, Init::Uniform { lo: -bound, up: bound })
}
