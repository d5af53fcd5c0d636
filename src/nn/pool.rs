//! Pooling: `nn.MaxPool2d`, `nn.AvgPool2d` and global average pooling.

use tch::Tensor;

use super::layer::{check_window, expect_image, stateless};
use super::{Ctx, Fwd, InLayer, Layer};
use crate::onnx::{self, OnnxGraph};

#[derive(Debug)]
pub struct MaxPool2d {
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
}

impl MaxPool2d {
    pub fn new(kernel: i64, stride: i64) -> Self {
        Self::padded(kernel, stride, 0)
    }
    pub fn padded(kernel: i64, stride: i64, padding: i64) -> Self {
        MaxPool2d { kernel, stride, padding }
    }
}
stateless!(MaxPool2d, "MaxPool2d", |s, x, _cx| {
    let (h, w) = expect_image(x, x.size().get(1).copied().unwrap_or(-1))?;
    check_window(x, h, w, s.kernel, s.stride, s.padding)?;
    let (k, st, p) = (s.kernel, s.stride, s.padding);
    x.f_max_pool2d([k, k], [st, st], [p, p], [1, 1], false).in_layer(x)
}, onnx: |s, graph, input| {
    let (k, st, p) = (s.kernel, s.stride, s.padding);
    let attributes = vec![onnx::ints("kernel_shape", &[k, k]), onnx::ints("strides", &[st, st]), onnx::ints("pads", &[p, p, p, p])];
    Ok(graph.node("MaxPool", vec![input.into()], attributes))
});

#[derive(Debug)]
pub struct AvgPool2d {
    pub kernel: i64,
    pub stride: i64,
}

impl AvgPool2d {
    pub fn new(kernel: i64, stride: i64) -> Self {
        AvgPool2d { kernel, stride }
    }
}
stateless!(AvgPool2d, "AvgPool2d", |s, x, _cx| {
    let (h, w) = expect_image(x, x.size().get(1).copied().unwrap_or(-1))?;
    check_window(x, h, w, s.kernel, s.stride, 0)?;
    let (k, st) = (s.kernel, s.stride);
    x.f_avg_pool2d([k, k], [st, st], [0, 0], false, true, None::<i64>).in_layer(x)
}, onnx: |s, graph, input| {
    let (k, st) = (s.kernel, s.stride);
    let attributes = vec![onnx::ints("kernel_shape", &[k, k]), onnx::ints("strides", &[st, st])];
    Ok(graph.node("AveragePool", vec![input.into()], attributes))
});

/// `nn.AdaptiveAvgPool2d((1, 1))`: global average pooling.
#[derive(Debug)]
pub struct GlobalAvgPool2d;
stateless!(GlobalAvgPool2d, "AdaptiveAvgPool2d", |_s, x, _cx| {
    expect_image(x, x.size().get(1).copied().unwrap_or(-1))?;
    x.f_adaptive_avg_pool2d([1, 1]).in_layer(x)
}, onnx: |_s, graph, input| Ok(graph.node("GlobalAveragePool", vec![input.into()], Vec::new())));
