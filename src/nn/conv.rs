//! `nn.Conv2d`.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;
use tch::nn::Path;

use super::fused::{self, ConvCall, Epilogue, FoldCache, Fusable};
use super::init::{self, BiasInit, WeightInit};
use super::layer::{check_window, expect_image, kernel_output};
use super::{Ctx, Fwd, InLayer, Layer, LayerError};
use crate::ffi::{
    self, convnets_conv2d_one_channel, convnets_conv2d_train, convnets_set_conv_weight_grad_policy,
    convnets_set_winograd_policy, convnets_winograd_calls,
};
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

    /// `self(x)` for training with the shim's weight gradient (matrix products over blocks of
    /// output positions, where oneDNN's AVX2 kernel is slow; for 3x3 stride-1 layers, Winograd's
    /// algorithm for all three products): a convolution of a channels-last float32 CPU map whose
    /// weight needs its gradient; `None` where it declines, for libtorch's.
    fn training(&self, x: &Tensor) -> Option<Fwd> {
        let bias = self.bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr());
        kernel_output(x, &TRAINING_CONV_CALLS, |out| {
            // SAFETY: `x`, the weight and the bias (or NULL) are live tensors.
            unsafe { convnets_conv2d_train(x.as_ptr(), self.weight.as_ptr(), bias, self.stride, self.padding, out) }
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

static TRAINING_CONV_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many training convolutions this process has run with the shim's weight gradient.
pub fn training_conv_kernel_calls() -> u64 {
    TRAINING_CONV_CALLS.load(Ordering::Relaxed)
}

/// Where one of the shim's convolution kernels stands in for oneDNN's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPolicy {
    /// Where it was measured faster than oneDNN's kernels on this CPU's vector width (the default):
    /// Winograd's algorithm everywhere, the weight gradient by blocks without AVX-512 and, with
    /// it, only in the layers Winograd's algorithm takes.
    Auto = 0,
    /// Wherever it applies (for tests and measurements on any CPU).
    Always = 1,
    /// Nowhere: oneDNN's kernel everywhere.
    Never = 2,
}

/// Sets where training's convolutions take the shim's weight gradient, for the whole process.
pub fn set_weight_grad_kernel(policy: KernelPolicy) {
    // SAFETY: takes a plain integer; the shim rejects unknown ones with an error message.
    let result = ffi::check(unsafe { convnets_set_conv_weight_grad_policy(policy as i32) });
    debug_assert!(result.is_ok(), "{result:?}");
}

/// Sets where stride-1 convolutions take Winograd's algorithm (`csrc/winograd.cpp`): evaluation's
/// fused 3x3 and 5x5 layers, and training's 3x3 forward, input gradient and weight gradient where
/// the shim's training convolution runs. For the whole process.
pub fn set_winograd_kernel(policy: KernelPolicy) {
    // SAFETY: takes a plain integer; the shim rejects unknown ones with an error message.
    let result = ffi::check(unsafe { convnets_set_winograd_policy(policy as i32) });
    debug_assert!(result.is_ok(), "{result:?}");
}

/// How many products (forward passes, input gradients and weight gradients) this process has
/// computed by Winograd's algorithm.
pub fn winograd_conv_calls() -> u64 {
    // SAFETY: reads a counter.
    unsafe { convnets_winograd_calls() }
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
        if self.weight.requires_grad()
            && let Some(y) = self.training(x)
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
