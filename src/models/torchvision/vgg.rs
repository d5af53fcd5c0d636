//! torchvision's `vgg11` and `vgg11_bn` (configuration "A"): `features` of 3x3 convolutions
//! (with batch norm in `_bn`) and max pooling, a 7x7 adaptive average pool and `classifier`.

use tch::nn::Path;

use crate::models::NetConfig;
use crate::nn::{
    AdaptiveAvgPool2d, BatchNorm, BiasInit, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential, WeightInit,
};

/// Configuration "A": output channels of each convolution, `None` for a 2x2 max pooling.
const VGG11: [Option<i64>; 13] = [
    Some(64),
    None,
    Some(128),
    None,
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    None,
];

/// `make_layers`: every layer its own index in `features`, ReLU and pooling included.
fn features(p: &Path, in_channels: i64, batch_norm: bool) -> Sequential {
    let mut features = Sequential::new();
    let mut channels = in_channels;
    for out in VGG11 {
        let Some(out) = out else {
            features = features.add(MaxPool2d::new(2, 2));
            continue;
        };
        let conv_init = (WeightInit::KaimingNormalFanOut, Some(BiasInit::Zeros));
        features = features.add_at(p, |p| Conv2d::init(p, [channels, out, 3, 1, 1], conv_init.0, conv_init.1));
        if batch_norm {
            features = features.add_at(p, |p| BatchNorm::new(p, out, 4));
        }
        features = features.add(ReLU);
        channels = out;
    }
    features
}

fn linear(p: &Path, in_features: i64, out_features: i64) -> Linear {
    Linear::init(p, in_features, out_features, WeightInit::Normal(0.01), BiasInit::Zeros)
}

pub fn vgg11(p: &Path, cfg: &NetConfig, batch_norm: bool) -> Sequential {
    let classifier = |p: &Path| {
        Sequential::new()
            .add_at(p, |p| linear(p, 512 * 7 * 7, 4096))
            .add(ReLU)
            .add(Dropout(0.5))
            .add_at(p, |p| linear(p, 4096, 4096))
            .add(ReLU)
            .add(Dropout(0.5))
            .add_at(p, |p| linear(p, 4096, cfg.num_classes))
    };
    Sequential::new()
        .add_named(p, "features", |p| features(p, cfg.in_channels, batch_norm))
        .add(AdaptiveAvgPool2d(7, 7))
        .add(Flatten)
        .add_named(p, "classifier", classifier)
}
