//! DenseNet (d2l 7.7): each convolution's output is concatenated to its input.

use tch::Tensor;
use tch::nn::Path;

use super::NetConfig;
use crate::nn::{AvgPool2d, BatchNorm, Conv2d, Ctx, Flatten, Fwd, GlobalAvgPool2d, Layer, Linear, ReLU, Sequential};

/// Batch norm, ReLU, then a 3x3 convolution (ResNet's improved pre-activation order).
pub fn conv_block(p: &Path, input_channels: i64, num_channels: i64) -> Sequential {
    Sequential::new()
        .add_at(p, |p| BatchNorm::new(p, input_channels, 4))
        .add(ReLU)
        .add_at(p, |p| Conv2d::new(p, input_channels, num_channels, 3, 1, 1))
}

/// A dense block: `num_convs` conv blocks, each seeing the concatenation of the block's input
/// and every earlier output, so channels grow by `num_channels` (the growth rate) per block.
pub struct DenseBlock {
    net: Sequential,
    growth_rate: i64,
}

impl DenseBlock {
    pub fn new(p: &Path, num_convs: usize, input_channels: i64, num_channels: i64) -> Self {
        let mut net = Sequential::new();
        let p = p / "net";
        for i in 0..num_convs as i64 {
            net = net.add_at(&p, |p| conv_block(p, i * num_channels + input_channels, num_channels));
        }
        DenseBlock { net, growth_rate: num_channels }
    }
}

impl Layer for DenseBlock {
    fn type_name(&self) -> &'static str {
        "DenseBlock"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        // The blocks of `net` run one by one; `net` itself is never called.
        // Each block's input and output are concatenated on the channel axis.
        cx.within(&self.net, |cx| cx.dense_block(self.net.layers.iter().map(|b| b.as_ref()), x, self.growth_rate))
    }
    fn children(&self) -> Vec<&dyn Layer> {
        vec![&self.net]
    }
}

/// Batch norm, ReLU, a 1x1 convolution to `num_channels`, and 2x2 average pooling that halves
/// height and width: keeps a dense network's channel count in check.
pub fn transition_block(p: &Path, input_channels: i64, num_channels: i64) -> Sequential {
    Sequential::new()
        .add_at(p, |p| BatchNorm::new(p, input_channels, 4))
        .add(ReLU)
        .add_at(p, |p| Conv2d::new(p, input_channels, num_channels, 1, 1, 0))
        .add(AvgPool2d::new(2, 2))
}

/// d2l's DenseNet: ResNet's first module (`b1`), four dense blocks of four conv blocks each with growth rate
/// 32, transition blocks halving channels between them, and a global-pooling head.
pub fn densenet(p: &Path, cfg: &NetConfig) -> Sequential {
    const GROWTH_RATE: i64 = 32;
    const NUM_CONVS_IN_DENSE_BLOCKS: [usize; 4] = [4, 4, 4, 4];
    let mut net = Sequential::new().add_at(p, |p| super::resnet::b1(p, cfg.in_channels));
    let mut num_channels = 64;
    for (i, &num_convs) in NUM_CONVS_IN_DENSE_BLOCKS.iter().enumerate() {
        net = net.add_at(p, |p| DenseBlock::new(p, num_convs, num_channels, GROWTH_RATE));
        num_channels += num_convs as i64 * GROWTH_RATE;
        if i != NUM_CONVS_IN_DENSE_BLOCKS.len() - 1 {
            net = net.add_at(p, |p| transition_block(p, num_channels, num_channels / 2));
            num_channels /= 2;
        }
    }
    net.add_at(p, |p| BatchNorm::new(p, num_channels, 4))
        .add(ReLU)
        .add(GlobalAvgPool2d)
        .add(Flatten)
        .add_at(p, |p| Linear::new(p, num_channels, cfg.num_classes))
}
