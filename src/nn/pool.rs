//! Pooling: `nn.MaxPool2d`, `nn.AvgPool2d` and global average pooling.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;

use super::layer::{check_pool_window, check_window, expect_image, kernel_output, stateless};
use super::{Ctx, Fwd, InLayer, Layer};
use crate::ffi::{convnets_avg_pool2x2, convnets_max_pool_nhwc};
use crate::onnx::{self, OnnxGraph};

#[derive(Debug)]
pub struct MaxPool2d {
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    /// `ceil_mode=True`: the output size rounds up, a last partial window included
    /// (torchvision's GoogLeNet).
    pub ceil_mode: bool,
}

impl MaxPool2d {
    pub fn new(kernel: i64, stride: i64) -> Self {
        Self::padded(kernel, stride, 0)
    }
    pub fn padded(kernel: i64, stride: i64, padding: i64) -> Self {
        MaxPool2d { kernel, stride, padding, ceil_mode: false }
    }
    /// `nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)`.
    pub fn ceil(kernel: i64, stride: i64, padding: i64) -> Self {
        MaxPool2d { kernel, stride, padding, ceil_mode: true }
    }
}
stateless!(MaxPool2d, "MaxPool2d", |s, x, _cx| {
    let (h, w) = expect_image(x, x.size().get(1).copied().unwrap_or(-1))?;
    check_pool_window(x, h, w, [s.kernel, s.stride, s.padding], s.ceil_mode)?;
    let (k, st, p) = (s.kernel, s.stride, s.padding);
    if let Some(pooled) = max_pool_nhwc(x, [k, st, p], s.ceil_mode) {
        return pooled;
    }
    x.f_max_pool2d([k, k], [st, st], [p, p], [1, 1], s.ceil_mode).in_layer(x)
}, onnx: |s, graph, input| {
    let (k, st, p) = (s.kernel, s.stride, s.padding);
    let attributes = vec![
        onnx::ints("kernel_shape", &[k, k]),
        onnx::ints("strides", &[st, st]),
        onnx::ints("pads", &[p, p, p, p]),
        onnx::int("ceil_mode", s.ceil_mode as i64),
    ];
    Ok(graph.node("MaxPool", vec![input.into()], attributes))
});

/// `max_pool2d(x, kernel, stride, padding, ceil_mode)` by the shim's kernel for channels-last maps
/// on the CPU that need no gradient (evaluation), which computes libtorch's values without the map
/// of the maxima's positions libtorch writes for a backward pass; `None` where it declines
/// (training, another layout or device), for libtorch's own.
fn max_pool_nhwc(x: &Tensor, [kernel, stride, padding]: [i64; 3], ceil_mode: bool) -> Option<Fwd> {
    kernel_output(x, &MAX_POOL_KERNEL_CALLS, |out| {
        // SAFETY: `x` is a live tensor.
        unsafe { convnets_max_pool_nhwc(x.as_ptr(), kernel, stride, padding, ceil_mode, out) }
    })
}

static MAX_POOL_KERNEL_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many max poolings this process has computed with the shim's kernel.
pub fn max_pool_kernel_calls() -> u64 {
    MAX_POOL_KERNEL_CALLS.load(Ordering::Relaxed)
}

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
    if (k, st) == (2, 2)
        && let Some(pooled) = avg_pool2x2(x)
    {
        return pooled;
    }
    x.f_avg_pool2d([k, k], [st, st], [0, 0], false, true, None::<i64>).in_layer(x)
}, onnx: |s, graph, input| {
    let (k, st) = (s.kernel, s.stride);
    let attributes = vec![onnx::ints("kernel_shape", &[k, k]), onnx::ints("strides", &[st, st])];
    Ok(graph.node("AveragePool", vec![input.into()], attributes))
});

/// `avg_pool2d(x, 2, 2)` by the shim's kernel for contiguous (NCHW) maps on the CPU, which
/// computes libtorch's values several times faster (LeNet's pooling); `None` where it declines
/// (another layout or device), for libtorch's own.
fn avg_pool2x2(x: &Tensor) -> Option<Fwd> {
    // SAFETY: `x` is a live tensor.
    kernel_output(x, &POOL_KERNEL_CALLS, |out| unsafe { convnets_avg_pool2x2(x.as_ptr(), out) })
}

static POOL_KERNEL_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many 2x2 average poolings this process has computed with the shim's kernel.
pub fn avg_pool_kernel_calls() -> u64 {
    POOL_KERNEL_CALLS.load(Ordering::Relaxed)
}

/// `nn.AdaptiveAvgPool2d((1, 1))`: global average pooling.
#[derive(Debug)]
pub struct GlobalAvgPool2d;
stateless!(GlobalAvgPool2d, "AdaptiveAvgPool2d", |_s, x, _cx| {
    expect_image(x, x.size().get(1).copied().unwrap_or(-1))?;
    x.f_adaptive_avg_pool2d([1, 1]).in_layer(x)
}, onnx: |_s, graph, input| Ok(graph.node("GlobalAveragePool", vec![input.into()], Vec::new())));

/// `nn.AdaptiveAvgPool2d((h, w))`: averages over windows that split the input into `h` x `w`
/// cells (AlexNet's 6x6 and VGG's 7x7 before their classifiers).
#[derive(Debug)]
pub struct AdaptiveAvgPool2d(pub i64, pub i64);

impl Layer for AdaptiveAvgPool2d {
    fn type_name(&self) -> &'static str {
        "AdaptiveAvgPool2d"
    }
    fn forward(&self, x: &Tensor, _: &mut Ctx) -> Fwd {
        expect_image(x, x.size().get(1).copied().unwrap_or(-1))?;
        x.f_adaptive_avg_pool2d([self.0, self.1]).in_layer(x)
    }
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        // ONNX has no adaptive pooling: the windows are fixed only where the output divides
        // the input (at 224x224, AlexNet's 6x6 and VGG's 7x7 are the input itself).
        let Some(&[_, _, h, w]) = graph.shape(input).as_deref() else {
            return Some(Err(format!("{input} has no known 4-d shape")));
        };
        let (oh, ow) = (self.0, self.1);
        Some(match (h % oh, w % ow) {
            _ if (h, w) == (oh, ow) => Ok(input.to_string()),
            (0, 0) => {
                let (kh, kw) = (h / oh, w / ow);
                let attributes = vec![onnx::ints("kernel_shape", &[kh, kw]), onnx::ints("strides", &[kh, kw])];
                Ok(graph.node("AveragePool", vec![input.into()], attributes))
            }
            _ => Err(format!(
                "adaptive average pooling of {h}x{w} to {oh}x{ow} has uneven windows; export at an input size it divides"
            )),
        })
    }
}
