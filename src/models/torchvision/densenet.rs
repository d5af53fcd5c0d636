//! torchvision's `densenet121`: `features` (conv0, norm0, relu0, pool0, four `_DenseBlock`s of
//! `_DenseLayer`s with bottleneck 1x1 convolutions, `_Transition`s, norm5), then ReLU, global
//! average pooling and `classifier`.

use tch::Tensor;
use tch::nn::Path;

use super::conv_no_bias;
use crate::models::NetConfig;
use crate::nn::{
    AvgPool2d, BatchNorm, BiasInit, Ctx, Flatten, Fwd, GlobalAvgPool2d, Layer, Linear, MaxPool2d, ReLU, Sequential,
    WeightInit,
};

/// `kaiming_normal_` with its defaults (fan_in), torchvision's DenseNet convolution init.
const CONV_INIT: WeightInit = WeightInit::KaimingNormalFanIn;
const GROWTH_RATE: i64 = 32;
const BN_SIZE: i64 = 4;
const BLOCK_CONFIG: [usize; 4] = [6, 12, 24, 16];
const NUM_INIT_FEATURES: i64 = 64;

/// `_DenseLayer`: batch norm, ReLU, 1x1 convolution to `bn_size * growth_rate`, batch norm,
/// ReLU, 3x3 convolution to `growth_rate` new channels.
fn dense_layer(p: &Path, in_features: i64) -> Sequential {
    let width = BN_SIZE * GROWTH_RATE;
    Sequential::module("_DenseLayer")
        .add_named(p, "norm1", |p| BatchNorm::new(p, in_features, 4))
        .add(ReLU)
        .add_named(p, "conv1", |p| conv_no_bias(p, [in_features, width, 1, 1, 0], CONV_INIT))
        .add_named(p, "norm2", |p| BatchNorm::new(p, width, 4))
        .add(ReLU)
        .add_named(p, "conv2", |p| conv_no_bias(p, [width, GROWTH_RATE, 3, 1, 1], CONV_INIT))
}

/// `_DenseBlock`: each layer sees the concatenation of the block's input and every earlier
/// layer's output (`denselayer1`, `denselayer2`, ...).
pub struct DenseBlock {
    layers: Vec<Sequential>,
}

impl DenseBlock {
    fn new(p: &Path, num_layers: usize, in_features: i64) -> Self {
        let layers = (0..num_layers as i64)
            .map(|i| dense_layer(&(p / format!("denselayer{}", i + 1)), in_features + i * GROWTH_RATE))
            .collect();
        DenseBlock { layers }
    }
}

impl Layer for DenseBlock {
    fn type_name(&self) -> &'static str {
        "_DenseBlock"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        cx.dense_block(self.layers.iter().map(|l| l as &dyn Layer), x, GROWTH_RATE)
    }
    fn children(&self) -> Vec<&dyn Layer> {
        self.layers.iter().map(|l| l as &dyn Layer).collect()
    }
}

/// `_Transition`: batch norm, ReLU, 1x1 convolution halving the channels, 2x2 average pooling.
fn transition(p: &Path, in_features: i64, out_features: i64) -> Sequential {
    Sequential::module("_Transition")
        .add_named(p, "norm", |p| BatchNorm::new(p, in_features, 4))
        .add(ReLU)
        .add_named(p, "conv", |p| conv_no_bias(p, [in_features, out_features, 1, 1, 0], CONV_INIT))
        .add(AvgPool2d::new(2, 2))
}

pub fn densenet121(p: &Path, cfg: &NetConfig) -> Sequential {
    let mut num_features = NUM_INIT_FEATURES;
    let features = |p: &Path| {
        let mut features = Sequential::new()
            .add_named(p, "conv0", |p| conv_no_bias(p, [cfg.in_channels, NUM_INIT_FEATURES, 7, 2, 3], CONV_INIT))
            .add_named(p, "norm0", |p| BatchNorm::new(p, NUM_INIT_FEATURES, 4))
            .add(ReLU)
            .add(MaxPool2d::padded(3, 2, 1));
        for (i, &num_layers) in BLOCK_CONFIG.iter().enumerate() {
            let block = DenseBlock::new(&(p / format!("denseblock{}", i + 1)), num_layers, num_features);
            features = features.add(block);
            num_features += num_layers as i64 * GROWTH_RATE;
            if i != BLOCK_CONFIG.len() - 1 {
                let out = num_features / 2;
                features = features.add_named(p, &format!("transition{}", i + 1), |p| transition(p, num_features, out));
                num_features = out;
            }
        }
        features.add_named(p, "norm5", |p| BatchNorm::new(p, num_features, 4))
    };
    let net = Sequential::new().add_named(p, "features", features);
    net.add(ReLU).add(GlobalAvgPool2d).add(Flatten).add_named(p, "classifier", |p| {
        Linear::init(p, num_features, cfg.num_classes, WeightInit::PytorchDefault, BiasInit::Zeros)
    })
}
