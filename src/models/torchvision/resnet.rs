//! torchvision's `resnet18`, `resnet34` and `resnet50`: `BasicBlock` and `Bottleneck` (V1.5,
//! striding in the 3x3 convolution), `downsample` shortcuts, `layer1`..`layer4` and `fc`.

use tch::Tensor;
use tch::nn::Path;

use super::conv_no_bias;
use crate::models::NetConfig;
use crate::nn::{
    BatchNorm, BiasInit, Conv2d, Ctx, Flatten, Fwd, GlobalAvgPool2d, Layer, Linear, MaxPool2d, ReLU, Sequential,
    WeightInit,
};

/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, torchvision's for every convolution.
const CONV_INIT: WeightInit = WeightInit::KaimingNormalFanOut;

/// The shortcut of a block that changes channels or resolution: a strided 1x1 convolution and
/// batch norm (`downsample.0`, `downsample.1`).
fn downsample(p: &Path, in_planes: i64, out_planes: i64, stride: i64) -> Sequential {
    Sequential::new()
        .add_at(p, |p| conv_no_bias(p, [in_planes, out_planes, 1, stride, 0], CONV_INIT))
        .add_at(p, |p| BatchNorm::new(p, out_planes, 4))
}

/// The shortcut sum and its ReLU, shared by both blocks: `relu(out + identity)`.
fn add_shortcut(cx: &mut Ctx, out: &Tensor, x: &Tensor, downsample: Option<&Sequential>) -> Fwd {
    let identity = match downsample {
        Some(downsample) => cx.call(downsample, x)?,
        None => x.shallow_clone(),
    };
    let sum = cx.add(out, &identity)?;
    cx.relu(&sum)
}

/// ResNet-18's and ResNet-34's block: two 3x3 convolutions (the first strided).
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<Sequential>,
}

impl BasicBlock {
    const EXPANSION: i64 = 1;

    pub fn new(p: &Path, in_planes: i64, planes: i64, stride: i64) -> Self {
        BasicBlock {
            conv1: conv_no_bias(&(p / "conv1"), [in_planes, planes, 3, stride, 1], CONV_INIT),
            bn1: BatchNorm::new(&(p / "bn1"), planes, 4),
            conv2: conv_no_bias(&(p / "conv2"), [planes, planes, 3, 1, 1], CONV_INIT),
            bn2: BatchNorm::new(&(p / "bn2"), planes, 4),
            downsample: (stride != 1 || in_planes != planes)
                .then(|| downsample(&(p / "downsample"), in_planes, planes, stride)),
        }
    }
}

impl Layer for BasicBlock {
    fn type_name(&self) -> &'static str {
        "BasicBlock"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        let out = cx.call(&self.conv1, x)?;
        let out = cx.call(&self.bn1, &out)?;
        let out = cx.relu(&out)?;
        let out = cx.call(&self.conv2, &out)?;
        let out = cx.call(&self.bn2, &out)?;
        add_shortcut(cx, &out, x, self.downsample.as_ref())
    }
    fn children(&self) -> Vec<&dyn Layer> {
        let mut children: Vec<&dyn Layer> = vec![&self.conv1, &self.bn1, &self.conv2, &self.bn2];
        children.extend(self.downsample.as_ref().map(|d| d as &dyn Layer));
        children
    }
}

/// ResNet-50's block: 1x1 down to `planes`, 3x3 (strided), 1x1 up to 4 x `planes`.
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Conv2d,
    bn3: BatchNorm,
    downsample: Option<Sequential>,
}

impl Bottleneck {
    const EXPANSION: i64 = 4;

    pub fn new(p: &Path, in_planes: i64, planes: i64, stride: i64) -> Self {
        let out_planes = planes * Self::EXPANSION;
        Bottleneck {
            conv1: conv_no_bias(&(p / "conv1"), [in_planes, planes, 1, 1, 0], CONV_INIT),
            bn1: BatchNorm::new(&(p / "bn1"), planes, 4),
            conv2: conv_no_bias(&(p / "conv2"), [planes, planes, 3, stride, 1], CONV_INIT),
            bn2: BatchNorm::new(&(p / "bn2"), planes, 4),
            conv3: conv_no_bias(&(p / "conv3"), [planes, out_planes, 1, 1, 0], CONV_INIT),
            bn3: BatchNorm::new(&(p / "bn3"), out_planes, 4),
            downsample: (stride != 1 || in_planes != out_planes)
                .then(|| downsample(&(p / "downsample"), in_planes, out_planes, stride)),
        }
    }
}

impl Layer for Bottleneck {
    fn type_name(&self) -> &'static str {
        "Bottleneck"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        let out = cx.call(&self.conv1, x)?;
        let out = cx.call(&self.bn1, &out)?;
        let out = cx.relu(&out)?;
        let out = cx.call(&self.conv2, &out)?;
        let out = cx.call(&self.bn2, &out)?;
        let out = cx.relu(&out)?;
        let out = cx.call(&self.conv3, &out)?;
        let out = cx.call(&self.bn3, &out)?;
        add_shortcut(cx, &out, x, self.downsample.as_ref())
    }
    fn children(&self) -> Vec<&dyn Layer> {
        let mut children: Vec<&dyn Layer> =
            vec![&self.conv1, &self.bn1, &self.conv2, &self.bn2, &self.conv3, &self.bn3];
        children.extend(self.downsample.as_ref().map(|d| d as &dyn Layer));
        children
    }
}

/// Which block a ResNet stacks.
#[derive(Clone, Copy)]
enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    fn expansion(self) -> i64 {
        match self {
            Block::Basic => BasicBlock::EXPANSION,
            Block::Bottleneck => Bottleneck::EXPANSION,
        }
    }
}

/// `_make_layer`: `blocks` blocks of `planes`, the first one strided.
fn make_layer(p: &Path, block: Block, in_planes: i64, planes: i64, blocks: usize, stride: i64) -> Sequential {
    let mut layer = Sequential::new();
    let mut in_planes = in_planes;
    for i in 0..blocks {
        let stride = if i == 0 { stride } else { 1 };
        layer = match block {
            Block::Basic => layer.add_at(p, |p| BasicBlock::new(p, in_planes, planes, stride)),
            Block::Bottleneck => layer.add_at(p, |p| Bottleneck::new(p, in_planes, planes, stride)),
        };
        in_planes = planes * block.expansion();
    }
    layer
}

/// torchvision's `ResNet`: a 7x7 stem, four layers of blocks, global pooling and `fc`.
fn resnet(p: &Path, cfg: &NetConfig, block: Block, layers: [usize; 4]) -> Sequential {
    let mut net = Sequential::new()
        .add_named(p, "conv1", |p| conv_no_bias(p, [cfg.in_channels, 64, 7, 2, 3], CONV_INIT))
        .add_named(p, "bn1", |p| BatchNorm::new(p, 64, 4))
        .add(ReLU)
        .add(MaxPool2d::padded(3, 2, 1));
    let mut in_planes = 64;
    for (i, (&blocks, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        let stride = if i == 0 { 1 } else { 2 };
        net = net.add_named(p, &format!("layer{}", i + 1), |p| make_layer(p, block, in_planes, planes, blocks, stride));
        in_planes = planes * block.expansion();
    }
    net.add(GlobalAvgPool2d).add(Flatten).add_named(p, "fc", |p| {
        Linear::init(p, in_planes, cfg.num_classes, WeightInit::PytorchDefault, BiasInit::PytorchDefault)
    })
}

pub fn resnet18(p: &Path, cfg: &NetConfig) -> Sequential {
    resnet(p, cfg, Block::Basic, [2, 2, 2, 2])
}

pub fn resnet34(p: &Path, cfg: &NetConfig) -> Sequential {
    resnet(p, cfg, Block::Basic, [3, 4, 6, 3])
}

pub fn resnet50(p: &Path, cfg: &NetConfig) -> Sequential {
    resnet(p, cfg, Block::Bottleneck, [3, 4, 6, 3])
}
