//! torchvision's versions of the chapter's families (`torchvision.models`), with its module
//! structure, its `state_dict` names and shapes and its initialisation, so that the weights it
//! publishes load as they are and ours load back into it: 3-channel 224x224 ImageNet input by
//! default, any channel and class count.

pub mod alexnet;
pub mod densenet;
pub mod googlenet;
pub mod resnet;
pub mod vgg;

use tch::nn::Path;

use crate::nn::{BatchNorm, Conv2d, ReLU, Sequential, WeightInit};

/// A convolution without bias (batch norm follows), as torchvision's `conv3x3`/`conv1x1`:
/// `[in, out, kernel, stride, padding]`.
pub(crate) fn conv_no_bias(p: &Path, shape: [i64; 5], init: WeightInit) -> Conv2d {
    Conv2d::init(p, shape, init, None)
}

/// Convolution without bias, batch norm and ReLU, named `conv` and `bn` as in torchvision's
/// `BasicConv2d` (GoogLeNet's, whose batch norm has eps 0.001).
pub(crate) fn basic_conv2d(p: &Path, shape: [i64; 5], init: WeightInit, eps: f64) -> Sequential {
    Sequential::module("BasicConv2d")
        .add_named(p, "conv", |p| conv_no_bias(p, shape, init))
        .add_named(p, "bn", |p| BatchNorm::with_eps(p, shape[1], 4, eps))
        .add(ReLU)
}
