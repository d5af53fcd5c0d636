//! The [`Layer`] trait every layer and block implements, the error a layer reports, and the
//! input checks leaves make before computing.

use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, Ordering};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use super::Ctx;
use super::fused::Fusable;
use crate::ffi::check;
use crate::onnx::OnnxGraph;

/// A layer that could not compute its output: an input it cannot take, or a failure inside
/// libtorch (then `reason` starts with `libtorch:`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{layer} received shape {shape:?}: {reason}")]
pub struct LayerError {
    /// The layer as torchsummary names its row, e.g. `Linear-15`.
    pub layer: String,
    /// The shape the layer received.
    pub shape: Vec<i64>,
    pub reason: String,
}

/// The result of a forward pass.
pub type Fwd = Result<Tensor, LayerError>;

/// One layer of a network: a leaf such as `Conv2d`, or a block such as `Residual`.
pub trait Layer: Send {
    /// The PyTorch class name, as summaries print it.
    fn type_name(&self) -> &'static str;
    /// Computes the output; blocks run their children through `cx.call`.
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd;
    /// The trainable tensors this layer owns directly (not those of its children).
    fn parameters(&self) -> Vec<&Tensor> {
        Vec::new()
    }
    /// Multiply-adds of one call, by torchinfo's rules.
    fn mult_adds(&self, _output_shape: &[i64]) -> i64 {
        0
    }
    /// Pure containers (`Sequential`) get no torchsummary row of their own.
    fn is_container(&self) -> bool {
        false
    }
    /// Direct children, in registration order.
    fn children(&self) -> Vec<&dyn Layer> {
        Vec::new()
    }
    /// What this leaf is to evaluation's fused calls: a convolution or linear layer that the
    /// layers after it may join, or a batch norm that can join a convolution.
    fn fusable(&self) -> Option<Fusable<'_>> {
        None
    }
    /// A training-mode call of this leaf and the ReLU after it in one kernel, where it has one
    /// for `x` (a batch norm of a channels-last float32 map); `None` where the two run one by
    /// one. Only [`Ctx`] calls it, for a pass that records nothing.
    fn train_with_relu(&self, _x: &Tensor) -> Option<Fwd> {
        None
    }
    /// A leaf's eval-mode computation as ONNX nodes reading the value `input`; returns the
    /// value it produces. `None` for a layer whose work is its children's and its functional
    /// steps' (`Ctx::relu`, `Ctx::add`, `Ctx::cat`), which are exported as they run.
    fn onnx(&self, _graph: &mut OnnxGraph, _input: &str) -> Option<Result<String, String>> {
        None
    }
}

impl Layer for Box<dyn Layer> {
    fn type_name(&self) -> &'static str {
        self.as_ref().type_name()
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        self.as_ref().forward(x, cx)
    }
    fn parameters(&self) -> Vec<&Tensor> {
        self.as_ref().parameters()
    }
    fn mult_adds(&self, output_shape: &[i64]) -> i64 {
        self.as_ref().mult_adds(output_shape)
    }
    fn is_container(&self) -> bool {
        self.as_ref().is_container()
    }
    fn children(&self) -> Vec<&dyn Layer> {
        self.as_ref().children()
    }
    fn fusable(&self) -> Option<Fusable<'_>> {
        self.as_ref().fusable()
    }
    fn train_with_relu(&self, x: &Tensor) -> Option<Fwd> {
        self.as_ref().train_with_relu(x)
    }
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        self.as_ref().onnx(graph, input)
    }
}

/// The error of a layer that received `x`, for `reason` (the layer's name is filled in by
/// [`Ctx::call`]).
pub(crate) fn shape_error(x: &Tensor, reason: impl Into<String>) -> LayerError {
    LayerError { layer: String::new(), shape: x.size(), reason: reason.into() }
}

/// The output of one of the shim's kernels that may decline (`csrc/`), computing a layer on `x`:
/// `call` passes its out-parameter on and returns the shim's result. Its error is the layer's;
/// `None` where it left the out-parameter NULL (the caller then computes the layer with
/// libtorch); else the tensor, counted in `calls`.
pub(crate) fn kernel_output(
    x: &Tensor,
    calls: &AtomicU64,
    call: impl FnOnce(*mut *mut C_tensor) -> *mut c_char,
) -> Option<Fwd> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    match check(call(&mut out)) {
        Err(e) => Some(Err(shape_error(x, crate::error::error_line(&e)))),
        Ok(()) if out.is_null() => None,
        Ok(()) => {
            calls.fetch_add(1, Ordering::Relaxed);
            // SAFETY: a tensor the shim allocated with `new`, now owned by the returned Tensor.
            Some(Ok(unsafe { Tensor::from_ptr(out) }))
        }
    }
}

/// Turns libtorch's error from an operation on `x` into the [`LayerError`] of the layer running it
/// ([`Ctx::call`] names the layer).
pub trait InLayer<T> {
    fn in_layer(self, x: &Tensor) -> Result<T, LayerError>;
}

impl<T> InLayer<T> for Result<T, TchError> {
    fn in_layer(self, x: &Tensor) -> Result<T, LayerError> {
        self.map_err(|e| shape_error(x, crate::error::torch_error(&e)))
    }
}

/// Checks a 4-d input with `channels` channels, returning its height and width.
pub fn expect_image(x: &Tensor, channels: i64) -> Result<(i64, i64), LayerError> {
    match x.size()[..] {
        [_, c, h, w] if c == channels => Ok((h, w)),
        [_, c, _, _] => Err(shape_error(x, format!("expects {channels} channels, got {c}"))),
        _ => Err(shape_error(x, "expects a 4-d (N, C, H, W) input")),
    }
}

/// Output size of a sliding window, as PyTorch computes it: rounded down, or up with
/// `ceil_mode` (then a last window must still start inside the input or its left padding).
fn window_out(size: i64, kernel: i64, stride: i64, padding: i64, ceil_mode: bool) -> i64 {
    let span = size + 2 * padding - kernel;
    if !ceil_mode {
        return span.div_euclid(stride) + 1;
    }
    let out = (span + stride - 1).div_euclid(stride) + 1;
    if (out - 1) * stride >= size + padding { out - 1 } else { out }
}

/// Checks that a `k`x`k` window with stride `s` and padding `p` leaves an output on `h`x`w`.
pub(crate) fn check_window(x: &Tensor, h: i64, w: i64, k: i64, s: i64, p: i64) -> Result<(), LayerError> {
    check_pool_window(x, h, w, [k, s, p], false)
}

/// [`check_window`] for a pooling window `[kernel, stride, padding]`, rounding up in `ceil_mode`.
pub(crate) fn check_pool_window(
    x: &Tensor,
    h: i64,
    w: i64,
    [k, s, p]: [i64; 3],
    ceil_mode: bool,
) -> Result<(), LayerError> {
    let (oh, ow) = (window_out(h, k, s, p, ceil_mode), window_out(w, k, s, p, ceil_mode));
    if oh < 1 || ow < 1 {
        return Err(shape_error(
            x,
            format!("a {k}x{k} window (stride {s}, padding {p}) on {h}x{w} leaves {oh}x{ow}: the input is too small"),
        ));
    }
    Ok(())
}

/// Counts the trainable values of a layer and everything below it.
pub fn count_parameters(layer: &dyn Layer) -> i64 {
    let own: i64 = layer.parameters().iter().map(|t| t.numel() as i64).sum();
    own + layer.children().into_iter().map(count_parameters).sum::<i64>()
}

/// A layer without parameters that maps a tensor to a tensor, and its ONNX form (the value it
/// produces from the value `input`).
macro_rules! stateless {
    ($(#[$doc:meta])* $name:ident, $type_name:literal, |$s:ident, $x:ident, $cx:ident| $body:expr,
     onnx: |$os:ident, $graph:ident, $input:ident| $onnx:expr) => {
        $(#[$doc])*
        impl Layer for $name {
            fn type_name(&self) -> &'static str {
                $type_name
            }
            fn forward(&self, $x: &Tensor, $cx: &mut Ctx) -> Fwd {
                let $s = self;
                $body
            }
            fn onnx(&self, $graph: &mut OnnxGraph, $input: &str) -> Option<Result<String, String>> {
                let $os = self;
                Some($onnx)
            }
        }
    };
}
pub(crate) use stateless;
