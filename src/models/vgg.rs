//! VGG (d2l 7.2): networks built from repeated blocks.

use tch::nn::Path;

use super::NetConfig;
use crate::nn::{Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential};

/// VGG-11: five blocks, (number of convolutions, output channels) each.
pub const VGG11_ARCH: [(usize, i64); 5] = [(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)];

/// A VGG block: `num_convs` 3x3 convolutions with padding 1 and ReLU, then a 2x2 max pool that
/// halves height and width.
pub fn vgg_block(p: &Path, num_convs: usize, in_channels: i64, out_channels: i64) -> Sequential {
    let mut block = Sequential::new();
    let mut in_channels = in_channels;
    for _ in 0..num_convs {
        block = block.add_at(p, |p| Conv2d::new(p, in_channels, out_channels, 3, 1, 1)).add(ReLU);
        in_channels = out_channels;
    }
    block.add(MaxPool2d::new(2, 2))
}

/// VGG from its block architecture, every block's channels divided by `width_ratio` (d2l trains
/// VGG-11 with ratio 4 on Fashion-MNIST). The classifier expects 7x7 feature maps, so inputs of
/// about 224x224.
pub fn vgg(p: &Path, conv_arch: &[(usize, i64)], width_ratio: i64, cfg: &NetConfig) -> Sequential {
    let mut net = Sequential::new();
    let mut in_channels = cfg.in_channels;
    for &(num_convs, out_channels) in conv_arch {
        let out_channels = out_channels / width_ratio;
        net = net.add_at(p, |p| vgg_block(p, num_convs, in_channels, out_channels));
        in_channels = out_channels;
    }
    net.add(Flatten)
        .add_at(p, |p| Linear::new(p, in_channels * 7 * 7, 4096))
        .add(ReLU)
        .add(Dropout(0.5))
        .add_at(p, |p| Linear::new(p, 4096, 4096))
        .add(ReLU)
        .add(Dropout(0.5))
        .add_at(p, |p| Linear::new(p, 4096, cfg.num_classes))
}
