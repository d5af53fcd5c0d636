//! Weight initialisation: d2l's (Xavier-uniform weights on every Conv2d and Linear, PyTorch's
//! default biases) and the schemes torchvision's networks use.

use tch::Tensor;
use tch::nn::{Init, Path};

/// How a Conv2d or Linear weight of shape (out, in, ...) starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// d2l's `init_weights`: Xavier (Glorot) uniform.
    XavierUniform,
    /// PyTorch's own default (`kaiming_uniform_(a=sqrt(5))`): uniform in +-1/sqrt(fan_in).
    PytorchDefault,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")` (torchvision's ResNet and VGG).
    KaimingNormalFanOut,
    /// `kaiming_normal_()` with its defaults, fan_in (torchvision's DenseNet).
    KaimingNormalFanIn,
    /// Normal with mean 0 (VGG's Linear layers: 0.01; GoogLeNet's truncated normal at +-2,
    /// which with a standard deviation of 0.01 never truncates anything).
    Normal(f64),
}

/// How a bias starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BiasInit {
    /// PyTorch's default: uniform in +-1/sqrt(fan_in).
    PytorchDefault,
    Zeros,
}

/// A weight of shape `dims` (out, in, kh, kw) or (out, in).
pub(crate) fn weight(p: &Path, dims: &[i64], init: WeightInit) -> Tensor {
    let receptive: i64 = dims[2..].iter().product();
    let (fan_in, fan_out) = (dims[1] * receptive, dims[0] * receptive);
    let init = match init {
        WeightInit::XavierUniform => {
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
            Init::Uniform { lo: -bound, up: bound }
        }
        WeightInit::PytorchDefault => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform { lo: -bound, up: bound }
        }
        WeightInit::KaimingNormalFanOut => Init::Randn { mean: 0.0, stdev: (2.0 / fan_out as f64).sqrt() },
        WeightInit::KaimingNormalFanIn => Init::Randn { mean: 0.0, stdev: (2.0 / fan_in as f64).sqrt() },
        WeightInit::Normal(stdev) => Init::Randn { mean: 0.0, stdev },
    };
    p.var("weight", dims, init)
}

/// A bias of `out` values for a layer with `fan_in` inputs per output.
pub(crate) fn bias(p: &Path, out: i64, fan_in: i64, init: BiasInit) -> Tensor {
    let init = match init {
        BiasInit::PytorchDefault => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform { lo: -bound, up: bound }
        }
        BiasInit::Zeros => Init::Const(0.0),
    };
    p.var("bias", &[out], init)
}
