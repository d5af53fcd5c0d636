//! torchvision's `googlenet`: `BasicConv2d` (convolution, batch norm with eps 0.001, ReLU),
//! `Inception` blocks whose "5x5" branch is a 3x3 convolution as torchvision builds it, max
//! pooling with `ceil_mode=True`, and `transform_input`, which its published weights expect.

use tch::Tensor;
use tch::nn::Path;

use super::basic_conv2d;
use crate::models::NetConfig;
use crate::nn::{
    BiasInit, Ctx, Dropout, Flatten, Fwd, GlobalAvgPool2d, InLayer, Layer, Linear, MaxPool2d, Sequential, WeightInit,
    expect_image,
};
use crate::onnx::OnnxGraph;

/// torchvision's truncated normal (std 0.01, cut at +-2, which is 200 standard deviations out).
const INIT: WeightInit = WeightInit::Normal(0.01);
const BN_EPS: f64 = 0.001;

fn conv(p: &Path, shape: [i64; 5]) -> Sequential {
    basic_conv2d(p, shape, INIT, BN_EPS)
}

/// The Inception block: four branches concatenated on channels.
pub struct Inception {
    branch1: Sequential,
    branch2: Sequential,
    branch3: Sequential,
    branch4: Sequential,
}

impl Inception {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &Path,
        in_channels: i64,
        ch1x1: i64,
        ch3x3red: i64,
        ch3x3: i64,
        ch5x5red: i64,
        ch5x5: i64,
        pool_proj: i64,
    ) -> Self {
        Inception {
            branch1: conv(&(p / "branch1"), [in_channels, ch1x1, 1, 1, 0]),
            branch2: Sequential::new()
                .add_at(&(p / "branch2"), |p| conv(p, [in_channels, ch3x3red, 1, 1, 0]))
                .add_at(&(p / "branch2"), |p| conv(p, [ch3x3red, ch3x3, 3, 1, 1])),
            // torchvision's "5x5" branch: a 3x3 convolution (kept so its weights load).
            branch3: Sequential::new()
                .add_at(&(p / "branch3"), |p| conv(p, [in_channels, ch5x5red, 1, 1, 0]))
                .add_at(&(p / "branch3"), |p| conv(p, [ch5x5red, ch5x5, 3, 1, 1])),
            branch4: Sequential::new()
                .add(MaxPool2d::ceil(3, 1, 1))
                .add_at(&(p / "branch4"), |p| conv(p, [in_channels, pool_proj, 1, 1, 0])),
        }
    }
}

impl Layer for Inception {
    fn type_name(&self) -> &'static str {
        "Inception"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        let b1 = cx.call(&self.branch1, x)?;
        let b2 = cx.call(&self.branch2, x)?;
        let b3 = cx.call(&self.branch3, x)?;
        let b4 = cx.call(&self.branch4, x)?;
        cx.cat(&[&b1, &b2, &b3, &b4])
    }
    fn children(&self) -> Vec<&dyn Layer> {
        vec![&self.branch1, &self.branch2, &self.branch3, &self.branch4]
    }
}

/// `transform_input=True`: maps ImageNet-normalised channels to the [-1, 1] scaling the
/// weights were trained with, `x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5`.
pub struct TransformInput;

impl TransformInput {
    const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
    const STD: [f64; 3] = [0.229, 0.224, 0.225];

    fn scale_and_shift() -> ([f32; 3], [f32; 3]) {
        let scale = Self::STD.map(|s| (s / 0.5) as f32);
        let shift = Self::MEAN.map(|m| ((m - 0.5) / 0.5) as f32);
        (scale, shift)
    }
}

impl Layer for TransformInput {
    fn type_name(&self) -> &'static str {
        "TransformInput"
    }
    fn forward(&self, x: &Tensor, _: &mut Ctx) -> Fwd {
        expect_image(x, 3)?;
        let (scale, shift) = Self::scale_and_shift();
        let column = |v: [f32; 3]| Tensor::f_from_slice(&v)?.f_to(x.device())?.f_view([1, 3, 1, 1]);
        let y = (|| x.f_mul(&column(scale)?)?.f_add(&column(shift)?))().in_layer(x)?;
        y.f_to_kind(x.kind()).in_layer(x)
    }
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        let (scale, shift) = Self::scale_and_shift();
        let scale = graph.constant(&scale, &[1, 3, 1, 1]);
        let shift = graph.constant(&shift, &[1, 3, 1, 1]);
        let scaled = graph.node("Mul", vec![input.into(), scale], Vec::new());
        Some(Ok(graph.node("Add", vec![scaled, shift], Vec::new())))
    }
}

/// The auxiliary classifiers' weights (`aux1`, `aux2`): part of torchvision's `state_dict`, so
/// that its files load and ours load into it, but never run (torchvision runs them only in
/// its own training, adding their losses; fine-tuning drops them).
fn aux_classifier(p: &Path, in_channels: i64, num_classes: i64) {
    fn freeze(layer: &dyn Layer) {
        for t in layer.parameters() {
            let _ = t.set_requires_grad(false);
        }
        layer.children().into_iter().for_each(freeze);
    }
    // Unused weights take no gradient, so no optimizer touches them.
    freeze(&conv(&(p / "conv"), [in_channels, 128, 1, 1, 0]));
    freeze(&Linear::init(&(p / "fc1"), 2048, 1024, INIT, BiasInit::PytorchDefault));
    freeze(&Linear::init(&(p / "fc2"), 1024, num_classes, INIT, BiasInit::PytorchDefault));
}

pub fn googlenet(p: &Path, cfg: &NetConfig) -> Sequential {
    let mut net = Sequential::new();
    if cfg.in_channels == 3 {
        net = net.add(TransformInput);
    }
    net = net
        .add_named(p, "conv1", |p| conv(p, [cfg.in_channels, 64, 7, 2, 3]))
        .add(MaxPool2d::ceil(3, 2, 0))
        .add_named(p, "conv2", |p| conv(p, [64, 64, 1, 1, 0]))
        .add_named(p, "conv3", |p| conv(p, [64, 192, 3, 1, 1]))
        .add(MaxPool2d::ceil(3, 2, 0));
    let stages: [&[(&str, [i64; 7])]; 3] = [
        &[("inception3a", [192, 64, 96, 128, 16, 32, 32]), ("inception3b", [256, 128, 128, 192, 32, 96, 64])],
        &[
            ("inception4a", [480, 192, 96, 208, 16, 48, 64]),
            ("inception4b", [512, 160, 112, 224, 24, 64, 64]),
            ("inception4c", [512, 128, 128, 256, 24, 64, 64]),
            ("inception4d", [512, 112, 144, 288, 32, 64, 64]),
            ("inception4e", [528, 256, 160, 320, 32, 128, 128]),
        ],
        &[("inception5a", [832, 256, 160, 320, 32, 128, 128]), ("inception5b", [832, 384, 192, 384, 48, 128, 128])],
    ];
    for (i, stage) in stages.iter().enumerate() {
        for &(name, c) in stage.iter() {
            net = net.add_named(p, name, |p| Inception::new(p, c[0], c[1], c[2], c[3], c[4], c[5], c[6]));
        }
        match i {
            0 => net = net.add(MaxPool2d::ceil(3, 2, 0)),
            1 => net = net.add(MaxPool2d::ceil(2, 2, 0)),
            _ => {}
        }
    }
    aux_classifier(&(p / "aux1"), 512, cfg.num_classes);
    aux_classifier(&(p / "aux2"), 528, cfg.num_classes);
    net.add(GlobalAvgPool2d)
        .add(Flatten)
        .add(Dropout(0.2))
        .add_named(p, "fc", |p| Linear::init(p, 1024, cfg.num_classes, INIT, BiasInit::PytorchDefault))
}
