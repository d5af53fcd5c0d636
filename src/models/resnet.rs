//! ResNet-18 (d2l 7.6): residual blocks whose output is F(X) + X.

use tch::Tensor;
use tch::nn::Path;

use super::NetConfig;
use crate::nn::{BatchNorm, Conv2d, Ctx, Flatten, Fwd, GlobalAvgPool2d, Layer, Linear, MaxPool2d, ReLU, Sequential};

/// The residual block: two 3x3 convolutions with batch norm, plus the shortcut, optionally
/// through a 1x1 convolution when channels or resolution change.
pub struct Residual {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Option<Conv2d>,
    bn1: BatchNorm,
    bn2: BatchNorm,
}

impl Residual {
    pub fn new(p: &Path, input_channels: i64, num_channels: i64, use_1x1conv: bool, strides: i64) -> Self {
        Residual {
            conv1: Conv2d::new(&(p / "conv1"), input_channels, num_channels, 3, strides, 1),
            conv2: Conv2d::new(&(p / "conv2"), num_channels, num_channels, 3, 1, 1),
            conv3: use_1x1conv.then(|| Conv2d::new(&(p / "conv3"), input_channels, num_channels, 1, strides, 0)),
            bn1: BatchNorm::new(&(p / "bn1"), num_channels, 4),
            bn2: BatchNorm::new(&(p / "bn2"), num_channels, 4),
        }
    }
}

impl Layer for Residual {
    fn type_name(&self) -> &'static str {
        "Residual"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        // Y = relu(bn1(conv1(X))); evaluation fuses each line into one call.
        let y = cx.conv_norm_relu(&self.conv1, &self.bn1, x)?;
        // relu(bn2(conv2(Y)) + shortcut): add the block's input, through conv3 where it changes
        // shape (the seed's `Y += Y` is a bug).
        cx.conv_norm_add_relu(&self.conv2, &self.bn2, &y, |cx| match &self.conv3 {
            Some(conv3) => cx.call(conv3, x),
            None => Ok(x.shallow_clone()),
        })
    }
    fn children(&self) -> Vec<&dyn Layer> {
        let mut children: Vec<&dyn Layer> = vec![&self.conv1, &self.conv2];
        if let Some(conv3) = &self.conv3 {
            children.push(conv3);
        }
        children.extend([&self.bn1 as &dyn Layer, &self.bn2]);
        children
    }
}

/// A stage of `num_residuals` residual blocks; all but the first stage halve height and width
/// and change channels in their first block.
pub fn resnet_block(
    p: &Path,
    input_channels: i64,
    num_channels: i64,
    num_residuals: usize,
    first_block: bool,
) -> Sequential {
    let mut stage = Sequential::new();
    for i in 0..num_residuals {
        stage = if i == 0 && !first_block {
            stage.add_at(p, |p| Residual::new(p, input_channels, num_channels, true, 2))
        } else {
            stage.add_at(p, |p| Residual::new(p, num_channels, num_channels, false, 1))
        };
    }
    stage
}

/// ResNet's first module: GoogLeNet's 7x7 convolution and 3x3 max pooling, with batch norm
/// after the convolution. DenseNet starts with it too.
pub fn b1(p: &Path, in_channels: i64) -> Sequential {
    Sequential::new()
        .add_at(p, |p| Conv2d::new(p, in_channels, 64, 7, 2, 3))
        .add_at(p, |p| BatchNorm::new(p, 64, 4))
        .add(ReLU)
        .add(MaxPool2d::padded(3, 2, 1))
}

/// ResNet-18: a GoogLeNet-like stem with batch norm, four stages of two residual blocks,
/// global average pooling and one Linear layer.
pub fn resnet18(p: &Path, cfg: &NetConfig) -> Sequential {
    Sequential::new()
        .add_at(p, |p| b1(p, cfg.in_channels))
        .add_at(p, |p| resnet_block(p, 64, 64, 2, true))
        .add_at(p, |p| resnet_block(p, 64, 128, 2, false))
        .add_at(p, |p| resnet_block(p, 128, 256, 2, false))
        .add_at(p, |p| resnet_block(p, 256, 512, 2, false))
        .add(GlobalAvgPool2d)
        .add(Flatten)
        .add_at(p, |p| Linear::new(p, 512, cfg.num_classes))
}
