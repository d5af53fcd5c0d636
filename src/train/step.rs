//! One step: d2l's training step (alone or as a replica of a distributed run) and evaluation's
//! prediction, each replayable from a CUDA graph.

use tch::{Kind, Tensor};

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
    opt.zero_grad()?;
    if let Some(replicas) = replicas.filter(|r| !r.sync_bn) {
        replicas.broadcast_buffers(&net.vs)?;
    }
    let y_hat = net.forward_synced(x, true, replicas.and_then(DataParallel::sync_bn))?;
    let mut loss = cross_entropy(&y_hat, y, label_smoothing)?;
    loss.f_backward()?;
    if let Some(replicas) = replicas {
        // All ranks then take the same step: that of the whole global batch.
        let params = net.vs.trainable_variables();
        loss = replicas.average_gradients(&params.iter().collect::<Vec<_>>(), &loss)?;
    }
    opt.step()?;
    let correct = tch::no_grad(|| y_hat.f_argmax(1, false)?.f_eq_tensor(y)?.f_sum(Kind::Int64))?;
    Ok((loss.detach(), correct))
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
