//! Network in Network (d2l 7.3): a per-pixel MLP as 1x1 convolutions, no fully connected head.

use tch::nn::Path;

use super::NetConfig;
use crate::nn::{Conv2d, Dropout, Flatten, GlobalAvgPool2d, MaxPool2d, ReLU, Sequential};

/// A NiN block: one ordinary convolution, then two 1x1 convolutions acting as a per-pixel MLP.
pub fn nin_block(p: &Path, in_channels: i64, out_channels: i64, kernel: i64, stride: i64, padding: i64) -> Sequential {
    Sequential::new()
        .add_at(p, |p| Conv2d::new(p, in_channels, out_channels, kernel, stride, padding))
        .add(ReLU)
        .add_at(p, |p| Conv2d::new(p, out_channels, out_channels, 1, 1, 0))
        .add(ReLU)
        .add_at(p, |p| Conv2d::new(p, out_channels, out_channels, 1, 1, 0))
        .add(ReLU)
}

/// NiN: the last block has one channel per class, averaged over space.
pub fn nin(p: &Path, cfg: &NetConfig) -> Sequential {
    Sequential::new()
        .add_at(p, |p| nin_block(p, cfg.in_channels, 96, 11, 4, 0))
        .add(MaxPool2d::new(3, 2))
        .add_at(p, |p| nin_block(p, 96, 256, 5, 1, 2))
        .add(MaxPool2d::new(3, 2))
        .add_at(p, |p| nin_block(p, 256, 384, 3, 1, 1))
        .add(MaxPool2d::new(3, 2))
        .add(Dropout(0.5))
        .add_at(p, |p| nin_block(p, 384, cfg.num_classes, 3, 1, 1))
        .add(GlobalAvgPool2d)
        .add(Flatten)
}
