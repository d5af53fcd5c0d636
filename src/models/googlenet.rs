//! GoogLeNet (d2l 7.4): Inception blocks, parallel paths concatenated on channels.

use tch::Tensor;
use tch::nn::Path;

use super::NetConfig;
use crate::nn::{Conv2d, Ctx, Flatten, Fwd, GlobalAvgPool2d, Layer, Linear, MaxPool2d, ReLU, Sequential};

/// The Inception block: four parallel paths whose outputs keep height and width and are
/// concatenated on the channel axis. `c1`..`c4` are each path's output channels.
pub struct Inception {
    p1_1: Conv2d,
    p2_1: Conv2d,
    p2_2: Conv2d,
    p3_1: Conv2d,
    p3_2: Conv2d,
    p4_1: MaxPool2d,
    p4_2: Conv2d,
}

impl Inception {
    pub fn new(p: &Path, in_channels: i64, c1: i64, c2: (i64, i64), c3: (i64, i64), c4: i64) -> Self {
        Inception {
            // Path 1: a 1x1 convolution.
            p1_1: Conv2d::new(&(p / "p1_1"), in_channels, c1, 1, 1, 0),
            // Path 2: 1x1 convolution, then 3x3 with padding 1.
            p2_1: Conv2d::new(&(p / "p2_1"), in_channels, c2.0, 1, 1, 0),
            p2_2: Conv2d::new(&(p / "p2_2"), c2.0, c2.1, 3, 1, 1),
            // Path 3: 1x1 convolution, then 5x5 with padding 2.
            p3_1: Conv2d::new(&(p / "p3_1"), in_channels, c3.0, 1, 1, 0),
            p3_2: Conv2d::new(&(p / "p3_2"), c3.0, c3.1, 5, 1, 2),
            // Path 4: 3x3 max pooling, then a 1x1 convolution.
            p4_1: MaxPool2d::padded(3, 1, 1),
            p4_2: Conv2d::new(&(p / "p4_2"), in_channels, c4, 1, 1, 0),
        }
    }
}

impl Layer for Inception {
    fn type_name(&self) -> &'static str {
        "Inception"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        // Each path's convolutions are followed by a ReLU.
        let p1 = cx.conv_relu(&self.p1_1, x)?;
        let p2 = cx.conv_relu(&self.p2_1, x)?;
        let p2 = cx.conv_relu(&self.p2_2, &p2)?;
        let p3 = cx.conv_relu(&self.p3_1, x)?;
        let p3 = cx.conv_relu(&self.p3_2, &p3)?;
        let p4 = cx.call(&self.p4_1, x)?;
        let p4 = cx.conv_relu(&self.p4_2, &p4)?;
        // Concatenate the paths' outputs on the channel axis.
        cx.cat(&[&p1, &p2, &p3, &p4])
    }
    fn children(&self) -> Vec<&dyn Layer> {
        vec![&self.p1_1, &self.p2_1, &self.p2_2, &self.p3_1, &self.p3_2, &self.p4_1, &self.p4_2]
    }
}

/// GoogLeNet for 96x96 inputs (d2l's reduced input; global average pooling takes any size).
pub fn googlenet(p: &Path, cfg: &NetConfig) -> Sequential {
    // b1: a 7x7 convolution with 64 channels.
    let b1 = |p: &Path| {
        Sequential::new()
            .add_at(p, |p| Conv2d::new(p, cfg.in_channels, 64, 7, 2, 3))
            .add(ReLU)
            .add(MaxPool2d::padded(3, 2, 1))
    };
    // b2: a 1x1 convolution, then a 3x3 one tripling the channels (Inception's second path).
    let b2 = |p: &Path| {
        Sequential::new()
            .add_at(p, |p| Conv2d::new(p, 64, 64, 1, 1, 0))
            .add(ReLU)
            .add_at(p, |p| Conv2d::new(p, 64, 192, 3, 1, 1))
            .add(ReLU)
            .add(MaxPool2d::padded(3, 2, 1))
    };
    // b3: two Inception blocks, 256 and 480 output channels.
    let b3 = |p: &Path| {
        Sequential::new()
            .add_at(p, |p| Inception::new(p, 192, 64, (96, 128), (16, 32), 32))
            .add_at(p, |p| Inception::new(p, 256, 128, (128, 192), (32, 96), 64))
            .add(MaxPool2d::padded(3, 2, 1))
    };
    // b4: five Inception blocks.
    let b4 = |p: &Path| {
        Sequential::new()
            .add_at(p, |p| Inception::new(p, 480, 192, (96, 208), (16, 48), 64))
            .add_at(p, |p| Inception::new(p, 512, 160, (112, 224), (24, 64), 64))
            .add_at(p, |p| Inception::new(p, 512, 128, (128, 256), (24, 64), 64))
            .add_at(p, |p| Inception::new(p, 512, 112, (144, 288), (32, 64), 64))
            .add_at(p, |p| Inception::new(p, 528, 256, (160, 320), (32, 128), 128))
            .add(MaxPool2d::padded(3, 2, 1))
    };
    // b5: two Inception blocks, then global average pooling to 1024 features.
    let b5 = |p: &Path| {
        Sequential::new()
            .add_at(p, |p| Inception::new(p, 832, 256, (160, 320), (32, 128), 128))
            .add_at(p, |p| Inception::new(p, 832, 384, (192, 384), (48, 128), 128))
            .add(GlobalAvgPool2d)
            .add(Flatten)
    };
    Sequential::new()
        .add_at(p, b1)
        .add_at(p, b2)
        .add_at(p, b3)
        .add_at(p, b4)
        .add_at(p, b5)
        .add_at(p, |p| Linear::new(p, 1024, cfg.num_classes))
}
