//! One step: d2l's training step (alone or as a replica of a distributed run) and evaluation's
//! prediction, each replayable from a CUDA graph.

use tch::{Kind, TchError, Tensor};

use super::Optimizer;
use crate::accel::Replayer;
use crate::distributed::DataParallel;
use crate::models::Network;
use crate::nn::cross_entropy;

/// d2l's training step: zero the gradients, forward, cross-entropy, backward, SGD step. Returns
/// the loss and the number of correct predictions as tensors on the device, so that the step
/// queues work without waiting for it (what a CUDA graph capture needs); the caller reads them.
pub fn train_step(
    net: &Network,
    opt: &mut Optimizer,
    label_smoothing: f64,
    x: &Tensor,
    y: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    replica_train_step(net, None, opt, label_smoothing, x, y)
}

/// [`train_step`] of one of the `replicas` of a distributed run (when given): DDP's buffer
/// broadcast before the forward pass (unless batch norm syncs), the gradients averaged over the
/// ranks before the step, so that every rank takes the step of the whole global batch.
pub fn replica_train_step(
    net: &Network,
    replicas: Option<&DataParallel>,
    opt: &mut Optimizer,
    label_smoothing: f64,
    x: &Tensor,
    y: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    let options = StepOptions { label_smoothing, clip_grad_norm: None };
    micro_batch_step(net, replicas, opt, &options, MicroBatch::WHOLE, x, y)
}

/// What a training step does besides d2l's.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOptions {
    pub label_smoothing: f64,
    /// `--clip-grad-norm`: the largest total 2-norm of the gradients an update uses.
    pub clip_grad_norm: Option<f64>,
}

/// Where a batch sits in a group of `len` micro-batches whose gradients add up to one update
/// (`--accum-steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicroBatch {
    pub index: usize,
    pub len: usize,
}

impl MicroBatch {
    /// A batch that is an update of its own (d2l's).
    pub const WHOLE: MicroBatch = MicroBatch { index: 0, len: 1 };

    /// Batch `i` of an epoch of `batches`, updating every `accum_steps` batches; the epoch's
    /// last group holds what is left.
    pub fn of(i: usize, batches: usize, accum_steps: usize) -> MicroBatch {
        let start = i / accum_steps * accum_steps;
        MicroBatch { index: i - start, len: accum_steps.min(batches - start) }
    }
}

/// One batch (`y`: class indices, or class probabilities (N, C) of a mixed batch) of a
/// gradient-accumulation group: the gradients are cleared at the group's first
/// batch, each batch's loss counts 1/len of the update, and the group's last batch averages the
/// gradients over the ranks, clips them and steps. Returns this batch's loss (the ranks' mean
/// at an update) and correct predictions.
pub fn micro_batch_step(
    net: &Network,
    replicas: Option<&DataParallel>,
    opt: &mut Optimizer,
    options: &StepOptions,
    micro: MicroBatch,
    x: &Tensor,
    y: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    if micro.index == 0 {
        opt.zero_grad()?;
    }
    if let Some(replicas) = replicas.filter(|r| !r.sync_bn) {
        replicas.broadcast_buffers(&net.vs)?;
    }
    let y_hat = net.forward_synced(x, true, replicas.and_then(DataParallel::sync_bn))?;
    let mut loss = cross_entropy(&y_hat, y, options.label_smoothing)?;
    let update = micro.index + 1 == micro.len;
    let params = if update { net.vs.trainable_variables() } else { Vec::new() };
    // On the CPU, an update's gradients travel between the ranks while backward still runs.
    let overlapped = match replicas {
        Some(replicas) if update => replicas.overlap_backward(&params, &loss)?,
        _ => false,
    };
    if micro.len > 1 {
        loss.f_div_scalar(micro.len as f64)?.f_backward()?;
    } else {
        loss.f_backward()?;
    }
    if update {
        if let Some(replicas) = replicas {
            // All ranks then take the same step: that of the whole global batch.
            loss = match overlapped {
                true => replicas.finish_overlapped(&loss)?,
                false => replicas.average_gradients(&params.iter().collect::<Vec<_>>(), &loss)?,
            };
        }
        if let Some(max_norm) = options.clip_grad_norm {
            let _norm_before = clip_grad_norm(&params, max_norm)?;
        }
        opt.step()?;
    }
    // Mixed labels count as their larger share's class, as torchvision's reference counts them.
    let classes = if y.is_floating_point() { y.f_argmax(1, false)? } else { y.shallow_clone() };
    let correct = tch::no_grad(|| y_hat.f_argmax(1, false)?.f_eq_tensor(&classes)?.f_sum(Kind::Int64))?;
    Ok((loss.detach(), correct))
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: the 2-norm of every gradient's 2-norm,
/// and each gradient multiplied by `min(1, max_norm / (norm + 1e-6))`, on the device (no wait).
/// Returns the norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Tensor, TchError> {
    let _no_grad = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return Tensor::f_zeros([], (Kind::Float, tch::Device::Cpu));
    }
    let norms = grads.iter().map(|g| g.f_norm()).collect::<Result<Vec<_>, _>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let coefficient = total.f_add_scalar(1e-6)?.f_reciprocal()?.f_mul_scalar(max_norm)?.f_clamp_max(1.0)?;
    for g in &grads {
        let _ = g.shallow_clone().f_mul_(&coefficient)?;
    }
    Ok(total)
}

/// [`replica_train_step`] through `replayer`: replayed from a captured CUDA graph once the shapes repeat.
/// Read the results before the next call (a replay rewrites them).
pub fn replayed_train_step(
    replayer: &mut Replayer,
    net: &Network,
    replicas: Option<&DataParallel>,
    opt: &mut Optimizer,
    label_smoothing: f64,
    x: &Tensor,
    y: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    let out = replayer.run(&[x, y], |xy| {
        let (loss, correct) = replica_train_step(net, replicas, opt, label_smoothing, xy[0], xy[1])?;
        Ok(vec![loss, correct])
    })?;
    Ok((out[0].shallow_clone(), out[1].shallow_clone()))
}

/// Eval-mode predictions (the argmax class of each image) for the batch `x`, through `replayer`.
pub fn predict(replayer: &mut Replayer, net: &Network, x: &Tensor) -> anyhow::Result<Tensor> {
    let out = replayer.run(&[x], |x| Ok(vec![net.forward_t(x[0], false)?.f_argmax(1, false)?]))?;
    Ok(out[0].shallow_clone())
}
