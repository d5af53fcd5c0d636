//! LeNet with batch normalization (d2l 7.5), with the built-in layer or the one written from
//! tensor operations.

use tch::nn::Path;

use super::NetConfig;
use crate::nn::{AvgPool2d, BatchNorm, Conv2d, Flatten, Layer, Linear, ScratchBatchNorm, Sequential, Sigmoid};

/// Which batch normalization LeNet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// `nn.BatchNorm2d` / `nn.BatchNorm1d`.
    BuiltIn,
    /// The chapter's `BatchNorm(num_features, num_dims)`.
    Scratch,
}

/// LeNet for 28x28 inputs with a batch norm after every convolution and hidden Linear layer.
pub fn lenet_bn(p: &Path, cfg: &NetConfig, norm: Norm) -> Sequential {
    let bn = |p: &Path, features: i64, dims: usize| -> Box<dyn Layer> {
        match norm {
            Norm::BuiltIn => Box::new(BatchNorm::new(p, features, dims)),
            Norm::Scratch => Box::new(ScratchBatchNorm::new(p, features, dims)),
        }
    };
    Sequential::new()
        .add_at(p, |p| Conv2d::new(p, cfg.in_channels, 6, 5, 1, 0))
        .add_at(p, |p| bn(p, 6, 4))
        .add(Sigmoid)
        .add(AvgPool2d::new(2, 2))
        .add_at(p, |p| Conv2d::new(p, 6, 16, 5, 1, 0))
        .add_at(p, |p| bn(p, 16, 4))
        .add(Sigmoid)
        .add(AvgPool2d::new(2, 2))
        .add(Flatten)
        .add_at(p, |p| Linear::new(p, 16 * 4 * 4, 120))
        .add_at(p, |p| bn(p, 120, 2))
        .add(Sigmoid)
        .add_at(p, |p| Linear::new(p, 120, 84))
        .add_at(p, |p| bn(p, 84, 2))
        .add(Sigmoid)
        .add_at(p, |p| Linear::new(p, 84, cfg.num_classes))
}
