//! `nn.Conv2d`.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;
use tch::nn::Path;

use super::fused::{self, ConvCall, Epilogue, FoldCache, Fusable};
use super::init::{self, BiasInit, WeightInit};
use super::layer::{check_window, expect_image, kernel_output};
use super::{Ctx, Fwd, InLayer, Layer, LayerError};
use crate::ffi::convnets_conv2d_one_channel;
use crate::onnx::{self, OnnxGraph};

#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    /// `None` for `bias=False` (a convolution followed by batch norm, as torchvision's).
    pub bias: Option<Tensor>,
    in_channels: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    /// Evaluation's fused calls' folded weights.
    folded: FoldCache,
}

impl Conv2d {
    /// `nn.Conv2d(in, out, kernel_size, stride, padding)` with d2l's Xavier init.
    pub fn new(p: &Path, in_channels: i64, out_channels: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        Self::init(
            p,
            [in_channels, out_channels, kernel, stride, padding],
            WeightInit::XavierUniform,
            Some(BiasInit::PytorchDefault),
        )
    }

    /// `nn.Conv2d(in, out, kernel, stride, padding, bias=bias.is_some())` given as
    /// `[in, out, kernel, stride, padding]`, initialised by `weight` and `bias`.
    pub fn init(
        p: &Path,
        [in_channels, out_channels, kernel, stride, padding]: [i64; 5],
        weight: WeightInit,
        bias: Option<BiasInit>,
    ) -> Self {
        let weight = init::weight(p, &[out_channels, in_channels, kernel, kernel], weight);
        let bias = bias.map(|b| init::bias(p, out_channels, in_channels * kernel * kernel, b));
        Conv2d { weight, bias, in_channels, kernel, stride, padding, folded: FoldCache::default() }
    }
}

impl Conv2d {
    /// `self(x)` and `epilogue` in one fused call (see [`fused`]), `None` where it does not apply.
    pub(crate) fn forward_fused(&self, x: &Tensor, epilogue: &Epilogue) -> Option<Fwd> {
        if let Err(e) = self.check_input(x) {
            return Some(Err(e));
        }
        let conv = ConvCall {
            weight: &self.weight,
            bias: self.bias.as_ref(),
            stride: self.stride,
            padding: self.padding,
            folded: &self.folded,
        };
        fused::run(conv, x, epilogue)
    }

    /// `self(x)` by the shim's kernel for a first layer on grey images (LeNet's): one input
    /// channel, stride 1, a contiguous (NCHW) map on the CPU that needs no gradient itself, where
    /// oneDNN's im2col path is slow (above all its bfloat16 weight gradient); `None` where it
    /// declines, for libtorch's own.
    fn one_channel(&self, x: &Tensor) -> Option<Fwd> {
        let bias = self.bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr() as *const _);
        kernel_output(x, &ONE_CHANNEL_CONV_CALLS, |out| {
            // SAFETY: `x`, the weight and the bias (or NULL) are live tensors.
            unsafe {
                convnets_conv2d_one_channel(x.as_ptr(), self.weight.as_ptr(), bias, self.stride, self.padding, out)
            }
        })
    }

    /// A 4-d input with this layer's channels, large enough for its window.
    fn check_input(&self, x: &Tensor) -> Result<(), LayerError> {
        let (h, w) = expect_image(x, self.in_channels)?;
        check_window(x, h, w, self.kernel, self.stride, self.padding)
    }
}

static ONE_CHANNEL_CONV_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many one-channel convolutions this process has computed with the shim's kernel.
pub fn one_channel_conv_calls() -> u64 {
    ONE_CHANNEL_CONV_CALLS.load(Ordering::Relaxed)
}

impl Layer for Conv2d {
    fn type_name(&self) -> &'static str {
        "Conv2d"
    }
    fn forward(&self, x: &Tensor, _: &mut Ctx) -> Fwd {
        self.check_input(x)?;
        let (s, p) = (self.stride, self.padding);
        if self.in_channels == 1
            && let Some(y) = self.one_channel(x)
        {
            return y;
        }
        x.f_conv2d(&self.weight, self.bias.as_ref(), [s, s], [p, p], [1, 1], 1).in_layer(x)
    }
    fn parameters(&self) -> Vec<&Tensor> {
        std::iter::once(&self.weight).chain(&self.bias).collect()
    }
    fn fusable(&self) -> Option<Fusable<'_>> {
        Some(Fusable::Conv(self))
    }
    fn mult_adds(&self, out: &[i64]) -> i64 {
        let params: i64 = self.parameters().iter().map(|t| t.numel() as i64).sum();
        params * out.iter().product::<i64>() / out[1]
    }
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        Some((|| {
            let mut inputs = vec![input.to_string(), graph.parameter(&self.weight, &self.weight.size())?];
            if let Some(bias) = &self.bias {
                inputs.push(graph.parameter(bias, &bias.size())?);
            }
            let attributes = vec![
                onnx::ints("kernel_shape", &[k, k]),
                onnx::ints("strides", &[s, s]),
                onnx::ints("pads", &[p, p, p, p]),
                onnx::ints("dilations", &[1, 1]),
                onnx::int("group", 1),
            ];
            Ok(graph.node("Conv", inputs, attributes))
        })())
    }
}
