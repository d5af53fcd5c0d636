//! Evaluation's fused layers: a convolution with what follows it (an eval-mode batch norm folded
//! into its weights, a ReLU or sigmoid, ResNet's shortcut sum), or a linear layer with its
//! activation, in one oneDNN call (`csrc/fused.cpp`), where the steps one by one would each read
//! and write the whole activation again. Only the evaluation of a channels-last network, with
//! nothing recording the pass, fuses ([`Ctx`] decides): summaries, shape traces and exports see
//! every layer.

use std::ffi::CStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;
use torch_sys::C_tensor;

use super::layer::shape_error;
use super::{Conv2d, Ctx, Fwd, Layer, Linear};
use crate::ffi::{ConvnetsNorm, check, convnets_conv2d_pointwise, convnets_linear_pointwise};

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

/// The convolution of a fused call: its weight, bias, stride and padding.
pub(crate) struct ConvCall<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub stride: i64,
    pub padding: i64,
}

/// `conv` and `epilogue` on `x` (whose shape the convolution has checked) in one fused call;
/// `None` where the shim declines it (see `csrc/fused.cpp`) or the batch norm does not fit the
/// convolution (then the layers one by one report it).
pub(crate) fn run(conv: ConvCall<'_>, x: &Tensor, epilogue: &Epilogue<'_>) -> Option<Fwd> {
    let out_channels = conv.weight.size()[0];
    if epilogue.norm.as_ref().is_some_and(|n| n.features != out_channels || !n.spatial) {
        return None;
    }
    let norm = epilogue.norm.as_ref().map(|n| ConvnetsNorm {
        weight: n.weight.as_ptr(),
        bias: n.bias.as_ptr(),
        mean: n.mean.as_ptr(),
        var: n.var.as_ptr(),
        eps: n.eps,
    });
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let result = check(unsafe {
        convnets_conv2d_pointwise(
            x.as_ptr(),
            conv.weight.as_ptr(),
            conv.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            conv.stride,
            conv.padding,
            norm.as_ref().map_or(std::ptr::null(), |n| n as *const ConvnetsNorm),
            epilogue.shortcut.map_or(std::ptr::null(), |t| t.as_ptr()),
            epilogue.activation.post_op().as_ptr(),
            &mut out,
        )
    });
    fused_output(result, out, x)
}

/// `activation(linear(x))` in one fused call, `x` checked by the layer; `None` where the shim
/// declines it.
pub(crate) fn run_linear(weight: &Tensor, bias: &Tensor, x: &Tensor, activation: Activation) -> Option<Fwd> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let result = check(unsafe {
        convnets_linear_pointwise(x.as_ptr(), weight.as_ptr(), bias.as_ptr(), activation.post_op().as_ptr(), &mut out)
    });
    fused_output(result, out, x)
}

/// What a shim call left in `out`: the fused output, `None` where it declined, or its error as
/// the layer's.
fn fused_output(result: anyhow::Result<()>, out: *mut C_tensor, x: &Tensor) -> Option<Fwd> {
    match result {
        Err(e) => Some(Err(shape_error(x, crate::error::error_line(&e)))),
        Ok(()) if out.is_null() => None,
        Ok(()) => {
            FUSED_CALLS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: a tensor the shim allocated with `new`, now owned by the returned Tensor.
            Some(Ok(unsafe { Tensor::from_ptr(out) }))
        }
    }
}

/// The start of `layers` that one fused call can compute: a convolution, then a batch norm, an
/// activation or both; or a linear layer and an activation. Returns the fused output and how many
/// layers it stands for, or `None` where the layers must run one by one.
pub(crate) fn run_sequence(layers: &[Box<dyn Layer>], x: &Tensor, cx: &mut Ctx) -> Option<(Fwd, usize)> {
    if !cx.fusing() {
        return None; // a training or traced pass: no layer to look at
    }
    let conv = match layers.first()?.fusable()? {
        Fusable::Conv(conv) => conv,
        Fusable::Linear(linear) => {
            let activation = Activation::of(layers.get(1)?.as_ref())?;
            let y = cx.fused(linear, 2, |x| linear.forward_fused(x, activation), x)?;
            return Some((y, 2));
        }
        Fusable::Norm(_) => return None,
    };
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
    let epilogue = Epilogue { norm, shortcut: None, activation: activation.unwrap_or(Activation::Identity) };
    let y = cx.fused(conv, used, |x| conv.forward_fused(x, &epilogue), x)?;
    Some((y, used))
}
