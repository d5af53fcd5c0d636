//! Evaluation's fused layers: a convolution or linear layer with what follows it (an eval-mode
//! batch norm folded into its weights, a ReLU or sigmoid, ResNet's shortcut sum) in one call
//! (`csrc/fused.cpp`), where the steps one by one would each read and write the whole activation
//! again: one oneDNN call in a channels-last network, libtorch's own convolution or matrix
//! product with the activation in place in an NCHW one (the LeNets). A batch norm that comes
//! first, with the ReLU after it (DenseNet's pre-activation order), is one pass of the shim's
//! over a channels-last map (`csrc/norm_relu.cpp`). Only evaluation with nothing
//! recording the pass fuses ([`Ctx`] decides): summaries, shape traces and exports see every
//! layer.

use std::ffi::{CStr, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;

use super::layer::kernel_output;
use super::{Conv2d, Ctx, Fwd, Layer, Linear};
use crate::ffi::{
    ConvnetsNorm, convnets_batch_norm_relu_eval, convnets_conv2d_pointwise, convnets_fold_cache_free,
    convnets_fold_cache_new, convnets_fuses_bf16, convnets_linear_pointwise,
};

/// The activation a fused layer applies last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Identity,
    Relu,
    Sigmoid,
}

impl Activation {
    /// The activation layer `layer` is, if it is one.
    fn of(layer: &dyn Layer) -> Option<Activation> {
        match layer.type_name() {
            "ReLU" => Some(Activation::Relu),
            "Sigmoid" => Some(Activation::Sigmoid),
            _ => None,
        }
    }

    fn post_op(self) -> &'static CStr {
        match self {
            Activation::Identity => c"none",
            Activation::Relu => c"relu",
            Activation::Sigmoid => c"sigmoid",
        }
    }
}

/// An eval-mode batch norm's per-channel tensors: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub struct Norm<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
    pub eps: f64,
    /// The channels (features) it normalises, and whether it follows a 4-d (N, C, H, W) output.
    pub features: i64,
    pub spatial: bool,
}

impl Norm<'_> {
    /// The shim's view of it (pointers into these tensors, valid while they are).
    fn to_c(&self) -> ConvnetsNorm {
        ConvnetsNorm {
            weight: self.weight.as_ptr(),
            bias: self.bias.as_ptr(),
            mean: self.mean.as_ptr(),
            var: self.var.as_ptr(),
            eps: self.eps,
        }
    }
}

/// A convolution's or linear layer's weights with the batch norm after it folded in (and cast to
/// the type it computes in), kept by the shim from one fused call to the next while the tensors
/// they came from are unchanged (the weights' version counters, the batch norm's values), so
/// that evaluation folds once per change of weights rather than once per batch.
pub(crate) struct FoldCache(*mut c_void);

// SAFETY: the shim's cache locks itself for each call that reads or refills it.
unsafe impl Send for FoldCache {}
unsafe impl Sync for FoldCache {}

impl Default for FoldCache {
    fn default() -> Self {
        // SAFETY: no arguments; a null cache (out of memory) means calls fold every time.
        FoldCache(unsafe { convnets_fold_cache_new() })
    }
}

impl Drop for FoldCache {
    fn drop(&mut self) {
        // SAFETY: created by convnets_fold_cache_new, freed once, here (null is a no-op).
        unsafe { convnets_fold_cache_free(self.0) }
    }
}

impl std::fmt::Debug for FoldCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FoldCache")
    }
}

/// What a layer is to fusion ([`Layer::fusable`]).
pub enum Fusable<'a> {
    Conv(&'a Conv2d),
    Linear(&'a Linear),
    Norm(Norm<'a>),
}

/// What follows a convolution into its fused call.
pub(crate) struct Epilogue<'a> {
    pub norm: Option<Norm<'a>>,
    /// Added before the activation (ResNet's shortcut).
    pub shortcut: Option<&'a Tensor>,
    pub activation: Activation,
}

/// Whether evaluation fuses layers (`CONVNETS_FUSED_EVAL=off` turns it off, to compare or to
/// rule it out).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("CONVNETS_FUSED_EVAL").map_or(true, |v| v != "off"))
}

static FUSED_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many fused calls this process has made.
pub fn fused_calls() -> u64 {
    FUSED_CALLS.load(Ordering::Relaxed)
}

/// Whether evaluation fuses layers that compute in bfloat16 (`--precision bf16`): oneDNN's
/// bfloat16 kernels need AVX-512 (F, BW, VL and DQ, as libtorch checks). On a CPU without them,
/// bf16 evaluation runs layer by layer, as training does.
pub fn fuses_bf16() -> bool {
    // SAFETY: no arguments; reads libtorch's CPU capabilities, which the shim asks once.
    unsafe { convnets_fuses_bf16() != 0 }
}

/// The convolution of a fused call: its weight, bias, stride, padding and folded weights.
pub(crate) struct ConvCall<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub stride: i64,
    pub padding: i64,
    pub folded: &'a FoldCache,
}

/// `conv` and `epilogue` on `x` (whose shape the convolution has checked) in one fused call;
/// `None` where the shim declines it (see `csrc/fused.cpp`) or the batch norm does not fit the
/// convolution (then the layers one by one report it).
pub(crate) fn run(conv: ConvCall<'_>, x: &Tensor, epilogue: &Epilogue<'_>) -> Option<Fwd> {
    let out_channels = conv.weight.size()[0];
    if epilogue.norm.as_ref().is_some_and(|n| n.features != out_channels || !n.spatial) {
        return None;
    }
    let norm = epilogue.norm.as_ref().map(Norm::to_c);
    // SAFETY: every pointer is a live tensor or null where the shim takes null.
    kernel_output(x, &FUSED_CALLS, |out| unsafe {
        convnets_conv2d_pointwise(
            x.as_ptr(),
            conv.weight.as_ptr(),
            conv.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            conv.stride,
            conv.padding,
            norm.as_ref().map_or(std::ptr::null(), |n| n as *const ConvnetsNorm),
            epilogue.shortcut.map_or(std::ptr::null(), |t| t.as_ptr()),
            epilogue.activation.post_op().as_ptr(),
            conv.folded.0,
            out,
        )
    })
}

/// The linear layer of a fused call, its folded weights, and whether it goes through oneDNN (in
/// channels-last networks) or libtorch's own matrix product.
pub(crate) struct LinearCall<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub folded: &'a FoldCache,
    pub onednn: bool,
}

/// `activation(norm(linear(x)))` in one fused call, `x` checked by the layer; `None` where the
/// shim declines it or the batch norm does not fit the layer.
pub(crate) fn run_linear(
    linear: LinearCall<'_>,
    x: &Tensor,
    norm: Option<&Norm<'_>>,
    activation: Activation,
) -> Option<Fwd> {
    if norm.is_some_and(|n| n.features != linear.weight.size()[0] || n.spatial) {
        return None;
    }
    let norm = norm.map(Norm::to_c);
    // SAFETY: every pointer is a live tensor or null where the shim takes null.
    kernel_output(x, &FUSED_CALLS, |out| unsafe {
        convnets_linear_pointwise(
            x.as_ptr(),
            linear.weight.as_ptr(),
            linear.bias.as_ptr(),
            norm.as_ref().map_or(std::ptr::null(), |n| n as *const ConvnetsNorm),
            activation.post_op().as_ptr(),
            i32::from(linear.onednn),
            linear.folded.0,
            out,
        )
    })
}

/// `relu(norm(x))` in one pass over a 4-d map, `x` checked against the batch norm here; `None`
/// where it does not fit (then the layers one by one report it) or the shim declines it (another
/// layout or type, or a gradient to track).
fn run_norm_relu(norm: &Norm<'_>, x: &Tensor) -> Option<Fwd> {
    let size = x.size();
    if !norm.spatial || size.len() != 4 || size[1] != norm.features {
        return None;
    }
    // SAFETY: every pointer is a live tensor.
    kernel_output(x, &FUSED_CALLS, |out| unsafe {
        convnets_batch_norm_relu_eval(
            x.as_ptr(),
            norm.weight.as_ptr(),
            norm.bias.as_ptr(),
            norm.mean.as_ptr(),
            norm.var.as_ptr(),
            norm.eps,
            out,
        )
    })
}

/// The start of `layers` that one fused call can compute: a convolution, then a batch norm, an
/// activation or both; a linear layer and an activation; or a batch norm and a ReLU. Returns the
/// fused output and how many layers it stands for, or `None` where the layers must run one by one.
pub(crate) fn run_sequence(layers: &[Box<dyn Layer>], x: &Tensor, cx: &mut Ctx) -> Option<(Fwd, usize)> {
    if !cx.fusing() {
        return None; // a training or traced pass: no layer to look at
    }
    let head = layers.first()?.fusable()?;
    if let Fusable::Norm(norm) = &head {
        let relu = layers.get(1).and_then(|l| Activation::of(l.as_ref())) == Some(Activation::Relu);
        return relu.then(|| cx.fused(layers[0].as_ref(), 2, |x| run_norm_relu(norm, x), x)).flatten().map(|y| (y, 2));
    }
    // What follows the head into its call: a batch norm, an activation, or both.
    let mut used = 1;
    let norm = match layers.get(used).and_then(|l| l.fusable()) {
        Some(Fusable::Norm(norm)) => {
            used += 1;
            Some(norm)
        }
        _ => None,
    };
    let activation = layers.get(used).and_then(|l| Activation::of(l.as_ref()));
    used += activation.is_some() as usize;
    if used == 1 {
        return None; // nothing to fuse into it
    }
    let activation = activation.unwrap_or(Activation::Identity);
    let y = match head {
        Fusable::Conv(conv) => {
            let epilogue = Epilogue { norm, shortcut: None, activation };
            cx.fused(conv, used, |x| conv.forward_fused(x, &epilogue), x)?
        }
        Fusable::Linear(linear) => {
            let onednn = cx.channels_last;
            cx.fused(linear, used, |x| linear.forward_fused(x, norm.as_ref(), activation, onednn), x)?
        }
        Fusable::Norm(_) => unreachable!("returned above"),
    };
    Some((y, used))
}
