//! torchvision's `alexnet`: the one-GPU variant of the paper (64-192-384-256-256 channels),
//! `features`, a 6x6 adaptive average pool and `classifier`, PyTorch's default initialisation.

use tch::nn::Path;

use crate::models::NetConfig;
use crate::nn::{
    AdaptiveAvgPool2d, BiasInit, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential, WeightInit,
};

fn conv(p: &Path, shape: [i64; 5]) -> Conv2d {
    Conv2d::init(p, shape, WeightInit::PytorchDefault, Some(BiasInit::PytorchDefault))
}

fn linear(p: &Path, in_features: i64, out_features: i64) -> Linear {
    Linear::init(p, in_features, out_features, WeightInit::PytorchDefault, BiasInit::PytorchDefault)
}

pub fn alexnet(p: &Path, cfg: &NetConfig) -> Sequential {
    let features = |p: &Path| {
        Sequential::new()
            .add_at(p, |p| conv(p, [cfg.in_channels, 64, 11, 4, 2]))
            .add(ReLU)
            .add(MaxPool2d::new(3, 2))
            .add_at(p, |p| conv(p, [64, 192, 5, 1, 2]))
            .add(ReLU)
            .add(MaxPool2d::new(3, 2))
            .add_at(p, |p| conv(p, [192, 384, 3, 1, 1]))
            .add(ReLU)
            .add_at(p, |p| conv(p, [384, 256, 3, 1, 1]))
            .add(ReLU)
            .add_at(p, |p| conv(p, [256, 256, 3, 1, 1]))
            .add(ReLU)
            .add(MaxPool2d::new(3, 2))
    };
    let classifier = |p: &Path| {
        Sequential::new()
            .add(Dropout(0.5))
            .add_at(p, |p| linear(p, 256 * 6 * 6, 4096))
            .add(ReLU)
            .add(Dropout(0.5))
            .add_at(p, |p| linear(p, 4096, 4096))
            .add(ReLU)
            .add_at(p, |p| linear(p, 4096, cfg.num_classes))
    };
    Sequential::new().add_named(p, "features", features).add(AdaptiveAvgPool2d(6, 6)).add(Flatten).add_named(
        p,
        "classifier",
        classifier,
    )
}
