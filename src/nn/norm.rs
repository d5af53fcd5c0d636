//! Batch normalization: PyTorch's built-in layer, the chapter's from-scratch one, and the hook
//! through which a distributed run normalises with the statistics of every replica's batch.

use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, Ordering};

use tch::nn::Path;
use tch::{Kind, TchError, Tensor};
use torch_sys::C_tensor;

use super::fused::{Fusable, Norm};
use super::layer::{kernel_output, shape_error};
use super::{Ctx, Fwd, InLayer, Layer, LayerError};
use crate::ffi::{
    convnets_batch_norm_relu_train, convnets_batch_norm_train, convnets_batch_norm_train_biased_running_var,
};
use crate::onnx::{self, OnnxGraph};

/// Training-mode batch norm over the batches of all replicas of a distributed run (PyTorch's
/// `SyncBatchNorm`): implemented by the process group, asked for by [`BatchNorm`] through
/// [`Ctx::sync_bn`], so that layers know nothing of how replicas talk.
pub trait SyncBatchNorm: Send + Sync {
    /// Normalises `x` with the mean and variance of every replica's batch and updates the running
    /// statistics from them (momentum as PyTorch defines it), differentiably.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> anyhow::Result<Tensor>;
}

/// PyTorch's built-in `nn.BatchNorm1d` / `nn.BatchNorm2d`: running statistics are buffers,
/// updated with momentum 0.1 and the unbiased batch variance.
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    num_features: i64,
    dims: usize,
    eps: f64,
}

impl BatchNorm {
    pub const MOMENTUM: f64 = 0.1;
    pub const EPS: f64 = 1e-5;

    /// `nn.BatchNorm2d(num_features)` for `dims == 4`, `nn.BatchNorm1d` for `dims == 2`.
    pub fn new(p: &Path, num_features: i64, dims: usize) -> Self {
        Self::with_eps(p, num_features, dims, Self::EPS)
    }

    /// [`BatchNorm::new`] with another epsilon (torchvision's GoogLeNet: 0.001).
    pub fn with_eps(p: &Path, num_features: i64, dims: usize, eps: f64) -> Self {
        assert!(dims == 2 || dims == 4, "batch norm follows 2-d or 4-d inputs");
        BatchNorm {
            weight: p.ones("weight", &[num_features]),
            bias: p.zeros("bias", &[num_features]),
            running_mean: p.zeros_no_train("running_mean", &[num_features]),
            running_var: p.ones_no_train("running_var", &[num_features]),
            num_batches_tracked: p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false),
            num_features,
            dims,
            eps,
        }
    }
}

/// Shared input check of both batch norms: the right rank and channel count, and, in training,
/// more than one value per channel (the variance of one value is undefined).
fn check_batch_norm(x: &Tensor, features: i64, dims: usize, train: bool) -> Result<(), LayerError> {
    let shape = x.size();
    if shape.len() != dims || shape[1] != features {
        let expected = if dims == 4 { "(N, C, H, W)" } else { "(N, C)" };
        return Err(shape_error(x, format!("expects {expected} with C = {features}")));
    }
    let per_channel = shape[0] * shape[2..].iter().product::<i64>();
    if train && per_channel < 2 {
        return Err(shape_error(x, "training needs more than one value per channel: use a batch of at least 2"));
    }
    Ok(())
}

impl BatchNorm {
    /// The eval-mode computation, for a fused call to fold into the layer before it.
    pub fn norm(&self) -> Norm<'_> {
        Norm {
            weight: &self.weight,
            bias: &self.bias,
            mean: &self.running_mean,
            var: &self.running_var,
            eps: self.eps,
            features: self.num_features,
            spatial: self.dims == 4,
        }
    }
}

/// A training-mode batch norm kernel of the shim's (`csrc/batch_norm.cpp`,
/// `csrc/norm_relu.cpp`): the input, the layer's tensors, momentum and epsilon, and the output's
/// out-parameter.
type TrainKernel = unsafe extern "C" fn(
    *const C_tensor,
    *const C_tensor,
    *const C_tensor,
    *const C_tensor,
    *const C_tensor,
    f64,
    f64,
    *mut *mut C_tensor,
) -> *mut c_char;

impl BatchNorm {
    /// Training-mode batch norm by the shim's kernel for contiguous (NCHW) float32 or bfloat16
    /// maps on the CPU, whose per-channel sums run in vector lanes where libtorch's add one value
    /// at a time (LeNet's batch norms); `None` where it declines, for libtorch's own.
    fn train_by_kernel(&self, x: &Tensor) -> Option<Fwd> {
        self.call_kernel(convnets_batch_norm_train, &NORM_KERNEL_CALLS, x)
    }

    /// `kernel` on `x` with this layer's tensors, counted in `calls`; `None` where it declines.
    fn call_kernel(&self, kernel: TrainKernel, calls: &AtomicU64, x: &Tensor) -> Option<Fwd> {
        let tensors = [&self.weight, &self.bias, &self.running_mean, &self.running_var];
        call_train_kernel(kernel, calls, x, tensors, Self::MOMENTUM, self.eps)
    }

    /// Counts a training-mode call, as PyTorch's layer does.
    fn count_batch(&self, x: &Tensor) -> Result<(), LayerError> {
        tch::no_grad(|| self.num_batches_tracked.shallow_clone().f_add_scalar_(1).map(drop)).in_layer(x)
    }
}

/// `kernel` on `x` with a layer's weight, bias, running mean and running variance, counted in
/// `calls`; `None` where it declines.
fn call_train_kernel(
    kernel: TrainKernel,
    calls: &AtomicU64,
    x: &Tensor,
    [w, b, mean, var]: [&Tensor; 4],
    momentum: f64,
    eps: f64,
) -> Option<Fwd> {
    // SAFETY: every pointer is a live tensor.
    kernel_output(x, calls, |out| unsafe {
        kernel(x.as_ptr(), w.as_ptr(), b.as_ptr(), mean.as_ptr(), var.as_ptr(), momentum, eps, out)
    })
}

static NORM_KERNEL_CALLS: AtomicU64 = AtomicU64::new(0);
static NORM_RELU_KERNEL_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many training-mode batch norms (built-in and from scratch) this process has computed
/// with the shim's kernel for NCHW maps.
pub fn batch_norm_kernel_calls() -> u64 {
    NORM_KERNEL_CALLS.load(Ordering::Relaxed)
}

/// How many training-mode batch norms this process has computed together with the ReLU after
/// them, by the shim's kernel for channels-last maps.
pub fn batch_norm_relu_kernel_calls() -> u64 {
    NORM_RELU_KERNEL_CALLS.load(Ordering::Relaxed)
}

impl Layer for BatchNorm {
    fn type_name(&self) -> &'static str {
        if self.dims == 4 { "BatchNorm2d" } else { "BatchNorm1d" }
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        check_batch_norm(x, self.num_features, self.dims, cx.train)?;
        if cx.train {
            self.count_batch(x)?;
        }
        if let (true, Some(sync)) = (cx.train, cx.sync_bn) {
            let (w, b, mean, var) = (&self.weight, &self.bias, &self.running_mean, &self.running_var);
            return sync
                .batch_norm(x, w, b, mean, var, Self::MOMENTUM, self.eps)
                .map_err(|e| shape_error(x, crate::error::error_line(&e)));
        }
        if cx.train
            && let Some(y) = self.train_by_kernel(x)
        {
            return y;
        }
        Tensor::f_batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            cx.train,
            Self::MOMENTUM,
            self.eps,
            true,
        )
        .in_layer(x)
    }
    fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.weight, &self.bias]
    }
    fn mult_adds(&self, out: &[i64]) -> i64 {
        (self.weight.numel() + self.bias.numel()) as i64 * out[0]
    }
    fn fusable(&self) -> Option<Fusable<'_>> {
        Some(Fusable::Norm(self.norm()))
    }
    /// The shim's kernel for a channels-last float32 or bfloat16 map (csrc/norm_relu.cpp): the
    /// batch norm's statistics in one pass, its output and the ReLU's in one more, the ReLU's mask
    /// recomputed in the backward pass, where the two layers one by one take 14 passes over the
    /// map.
    fn train_with_relu(&self, x: &Tensor) -> Option<Fwd> {
        if let Err(e) = check_batch_norm(x, self.num_features, self.dims, true) {
            return Some(Err(e));
        }
        let y = self.call_kernel(convnets_batch_norm_relu_train, &NORM_RELU_KERNEL_CALLS, x)?;
        Some(self.count_batch(x).and(y))
    }
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        let values = [&self.weight, &self.bias, &self.running_mean, &self.running_var];
        Some(batch_norm_onnx(graph, input, values, self.num_features, self.eps))
    }
}

/// Eval-mode batch norm (running statistics) as ONNX's BatchNormalization, whose scale, bias,
/// mean and variance are (C) vectors: the same node for both batch norms.
fn batch_norm_onnx(
    graph: &mut OnnxGraph,
    input: &str,
    values: [&Tensor; 4],
    features: i64,
    eps: f64,
) -> Result<String, String> {
    let mut inputs = vec![input.to_string()];
    for value in values {
        inputs.push(graph.parameter(value, &[features])?);
    }
    Ok(graph.node("BatchNormalization", inputs, vec![onnx::float("epsilon", eps as f32)]))
}

/// The chapter's batch normalization written from tensor operations (d2l's `BatchNorm`).
///
/// gamma and beta are trainable; the moving mean and variance are state kept in the var store,
/// so they are saved with the model and follow it to a device. The mode comes from the
/// module's training flag (not from whether autograd is on, the seed's bug), eps is 1e-5, and
/// the moving averages keep 0.9 of the old value, as in the seed: unlike the built-in layer they
/// track the biased batch variance.
///
/// On NCHW float32 or bfloat16 CPU maps (LeNet's convolutions' outputs) training runs the same
/// arithmetic in the shim's batch norm kernel (a bfloat16 map computed in float, its output float32
/// as the formula's product with the float32 gamma is), two passes over the map forward and two
/// backward where the tensor operations below take about ten each way; the test
/// `from_scratch_batch_norm_trains_as_its_tensor_operations_do` holds it to them.
#[derive(Debug)]
pub struct ScratchBatchNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub moving_mean: Tensor,
    pub moving_var: Tensor,
    num_features: i64,
    dims: usize,
}

impl ScratchBatchNorm {
    pub const MOMENTUM: f64 = 0.9;
    pub const EPS: f64 = 1e-5;

    /// `BatchNorm(num_features, num_dims)`: `num_dims` 2 follows a Linear, 4 a Conv2d.
    pub fn new(p: &Path, num_features: i64, dims: usize) -> Self {
        assert!(dims == 2 || dims == 4, "batch norm follows 2-d or 4-d inputs");
        let shape: &[i64] = if dims == 2 { &[1, num_features] } else { &[1, num_features, 1, 1] };
        ScratchBatchNorm {
            gamma: p.ones("gamma", shape),
            beta: p.zeros("beta", shape),
            moving_mean: p.zeros_no_train("moving_mean", shape),
            moving_var: p.ones_no_train("moving_var", shape),
            num_features,
            dims,
        }
    }

    /// The training step's arithmetic by the shim's kernel for NCHW float32 or bfloat16 CPU maps
    /// (the moving averages keep `MOMENTUM` of the old value, so the new one's weight is
    /// `1 - MOMENTUM`); `None` where it declines (2-d inputs among them).
    fn train_by_kernel(&self, x: &Tensor) -> Option<Fwd> {
        let tensors = [&self.gamma, &self.beta, &self.moving_mean, &self.moving_var];
        let kernel = convnets_batch_norm_train_biased_running_var;
        call_train_kernel(kernel, &NORM_KERNEL_CALLS, x, tensors, 1.0 - Self::MOMENTUM, Self::EPS)
    }
}

impl Layer for ScratchBatchNorm {
    fn type_name(&self) -> &'static str {
        "BatchNorm"
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        check_batch_norm(x, self.num_features, self.dims, cx.train)?;
        if cx.train
            && let Some(y) = self.train_by_kernel(x)
        {
            return y;
        }
        let compute = || -> Result<Tensor, TchError> {
            let x_hat = if cx.train {
                // Per feature over the batch (2-d), per channel over batch and space (4-d).
                let axes: &[i64] = if self.dims == 2 { &[0] } else { &[0, 2, 3] };
                let mean = x.f_mean_dim(axes, true, x.kind())?;
                let centered = x.f_sub(&mean)?;
                let var = centered.f_square()?.f_mean_dim(axes, true, x.kind())?;
                tch::no_grad(|| -> Result<(), TchError> {
                    let m = Self::MOMENTUM;
                    let moving = |old: &Tensor, batch: &Tensor| {
                        old.f_mul_scalar(m)?.f_add(&batch.detach().f_mul_scalar(1.0 - m)?)
                    };
                    let new_mean = moving(&self.moving_mean, &mean)?;
                    let new_var = moving(&self.moving_var, &var)?;
                    self.moving_mean.shallow_clone().f_copy_(&new_mean)?;
                    self.moving_var.shallow_clone().f_copy_(&new_var)
                })?;
                centered.f_div(&var.f_add_scalar(Self::EPS)?.f_sqrt()?)?
            } else {
                x.f_sub(&self.moving_mean)?.f_div(&self.moving_var.f_add_scalar(Self::EPS)?.f_sqrt()?)?
            };
            self.gamma.f_mul(&x_hat)?.f_add(&self.beta)
        };
        compute().in_layer(x)
    }
    fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.gamma, &self.beta]
    }
    fn fusable(&self) -> Option<Fusable<'_>> {
        // Its eval-mode formula is built-in batch norm's, with the moving statistics.
        Some(Fusable::Norm(Norm {
            weight: &self.gamma,
            bias: &self.beta,
            mean: &self.moving_mean,
            var: &self.moving_var,
            eps: Self::EPS,
            features: self.num_features,
            spatial: self.dims == 4,
        }))
    }
    fn mult_adds(&self, out: &[i64]) -> i64 {
        (self.gamma.numel() + self.beta.numel()) as i64 * out[0]
    }
    /// In eval mode this layer computes what the built-in one does, so it exports as it does.
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        let values = [&self.gamma, &self.beta, &self.moving_mean, &self.moving_var];
        Some(batch_norm_onnx(graph, input, values, self.num_features, Self::EPS))
    }
}
