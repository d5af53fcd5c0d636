//! What DistributedDataParallel does around a training step, for a network replicated on every
//! rank: the same starting weights everywhere, gradients averaged in buckets, batch-norm buffers
//! from rank 0 (or batch statistics over all ranks with `--sync-bn`), and sums of metrics.

use std::sync::Mutex;
use std::time::Instant;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::ProcessGroup;
use super::c10d::GradBuckets;

/// DDP's default bucket size (`bucket_cap_mb=25`): few enough all-reduces that their latency
/// does not dominate, small enough that a bucket's copy stays cheap.
const BUCKET_BYTES: usize = 25 << 20;

/// DDP's first bucket when it overlaps backward (1 MiB): small, so that communication starts
/// as soon as the last layers' gradients are ready.
const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// A network's replicas across the ranks of `group`.
pub struct DataParallel {
    /// The buckets of the parameters being trained, keyed by their addresses, once a CPU update
    /// has made them. Declared before `group`: they refer to it, and fields drop in order.
    overlapped: Mutex<Option<(Vec<usize>, GradBuckets)>>,
    pub group: ProcessGroup,
    /// `--sync-bn`: batch norm normalises with the statistics of the whole global batch.
    pub sync_bn: bool,
    traffic: Mutex<AllReduceTraffic>,
}

/// What the gradient all-reduces have cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AllReduceTraffic {
    pub steps: u64,
    /// Bytes all-reduced per rank (gradients and the loss).
    pub bytes: u64,
    /// Wall time in the all-reduces, copies to and from the buckets included; where they
    /// overlap backward (on the CPU), the time waited for them after it.
    pub seconds: f64,
    /// Buckets all-reduced while backward overlapped them, and how many of those started
    /// before backward ended.
    pub overlapped_buckets: u64,
    pub started_in_backward: u64,
}

impl DataParallel {
    pub fn new(group: ProcessGroup, sync_bn: bool) -> Self {
        DataParallel { overlapped: Mutex::default(), group, sync_bn, traffic: Mutex::default() }
    }

    /// The gradient all-reduces' totals since the start.
    pub fn traffic(&self) -> AllReduceTraffic {
        *self.traffic.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn rank(&self) -> usize {
        self.group.rank
    }

    pub fn size(&self) -> usize {
        self.group.size
    }

    /// What batch norm normalises with in training: every rank's batch (`--sync-bn`), or, by
    /// default, this rank's share alone.
    pub fn sync_bn(&self) -> Option<&dyn crate::nn::SyncBatchNorm> {
        self.sync_bn.then_some(&self.group as &dyn crate::nn::SyncBatchNorm)
    }

    /// Rank 0's weights and buffers on every rank (DDP's constructor does the same): fresh
    /// networks start alike, and a resumed run continues rank 0's checkpoint.
    pub fn broadcast_variables(&self, vs: &VarStore) -> anyhow::Result<()> {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0)); // the same order on every rank
        let tensors: Vec<Tensor> = variables.into_iter().map(|(_, t)| t).collect();
        self.broadcast_all(&tensors)
    }

    /// Rank 0's batch-norm running statistics on every rank: what DDP's default
    /// `broadcast_buffers=True` does before each forward pass, so the replicas evaluate and
    /// save the same model.
    pub fn broadcast_buffers(&self, vs: &VarStore) -> anyhow::Result<()> {
        let trainable: Vec<usize> = vs.trainable_variables().iter().map(|t| t.data_ptr() as usize).collect();
        let mut buffers: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| !trainable.contains(&(t.data_ptr() as usize))).collect();
        buffers.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<Tensor> = buffers.into_iter().map(|(_, t)| t).collect();
        self.broadcast_all(&tensors)
    }

    /// Broadcasts `tensors` from rank 0 in place, in buckets of one element type each (float
    /// weights and statistics, int64 `num_batches_tracked`).
    fn broadcast_all(&self, tensors: &[Tensor]) -> anyhow::Result<()> {
        let _no_grad = tch::no_grad_guard();
        // The same order of element types on every rank.
        let mut kinds: Vec<Kind> = tensors.iter().map(|t| t.kind()).collect();
        kinds.sort_by_key(|k| format!("{k:?}"));
        kinds.dedup();
        for kind in kinds {
            let of_kind: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
            for bucket in buckets(&of_kind) {
                let flat = flatten(&bucket, |t| Ok(t.shallow_clone()))?;
                self.group.broadcast(&flat, 0)?;
                unflatten_into(&flat, &bucket)?;
            }
        }
        Ok(())
    }

    /// Averages the gradients of `params` over the ranks, in buckets, and returns `loss`
    /// averaged too (carried in the first bucket, so every rank sees the same loss and takes the
    /// same decision on divergence). A parameter without a gradient on this rank has none on the
    /// others (every rank runs the same graph) and is left without one.
    pub fn average_gradients(&self, params: &[&Tensor], loss: &Tensor) -> anyhow::Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let started = Instant::now();
        let world = self.size() as f64;
        let mut loss_mean = None;
        let mut bytes = 0;
        let with_grad: Vec<&Tensor> = params.iter().copied().filter(|p| p.grad().defined()).collect();
        for (i, bucket) in buckets(&with_grad).into_iter().enumerate() {
            let mut flat = flatten(&bucket, |p| Ok(p.grad()))?;
            if i == 0 {
                flat = Tensor::f_cat(
                    &[flat, loss.detach().f_to_kind(Kind::Float)?.f_reshape([1])?.f_to_device(Device::Cpu)?],
                    0,
                )?;
            }
            self.group.all_reduce_sum(&flat)?;
            bytes += flat.numel() as u64 * 4;
            let _ = flat.f_div_scalar_(world)?;
            if i == 0 {
                let n = flat.size()[0];
                loss_mean = Some(flat.f_narrow(0, n - 1, 1)?.f_reshape([])?);
                flat = flat.f_narrow(0, 0, n - 1)?;
            }
            let grads: Vec<Tensor> = bucket.iter().map(|p| p.grad()).collect();
            let grads: Vec<&Tensor> = grads.iter().collect();
            unflatten_into(&flat, &grads)?;
        }
        let mean = match loss_mean {
            Some(mean) => mean,
            None => {
                // No gradients at all: the loss alone.
                let mean = on_host(&loss.detach().f_to_kind(Kind::Float)?)?;
                self.group.all_reduce_sum(&mean)?;
                bytes += 4;
                mean.f_div_scalar(world)?
            }
        };
        let mean = mean.f_to_device(loss.device())?;
        let mut traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        traffic.steps += 1;
        traffic.bytes += bytes;
        traffic.seconds += started.elapsed().as_secs_f64();
        Ok(mean)
    }

    /// Arms the all-reduce of `params`' gradients to overlap the backward pass of `loss`, the
    /// last micro-batch of an update, when they are float tensors on the CPU; [`Self::finish_overlapped`]
    /// then ends it. Returns whether it did: on a GPU the gradients are averaged after backward
    /// ([`Self::average_gradients`]).
    pub fn overlap_backward(&self, params: &[Tensor], loss: &Tensor) -> anyhow::Result<bool> {
        if params.is_empty() || !params.iter().all(|p| p.device() == Device::Cpu && p.kind() == Kind::Float) {
            return Ok(false);
        }
        let key: Vec<usize> = params.iter().map(|p| p.data_ptr() as usize).collect();
        let mut overlapped = self.overlapped.lock().unwrap_or_else(|e| e.into_inner());
        if overlapped.as_ref().is_none_or(|(made_for, _)| *made_for != key) {
            *overlapped = None; // its hooks go before the new ones come
            *overlapped = Some((key, GradBuckets::new(&self.group, params, FIRST_BUCKET_BYTES, BUCKET_BYTES)?));
        }
        let (_, buckets) = overlapped.as_ref().expect("made above");
        buckets.arm(loss)?;
        Ok(true)
    }

    /// Ends the update [`Self::overlap_backward`] armed, once its backward pass has run: the ranks'
    /// mean in every gradient it armed for, and their mean loss (on `loss`'s device).
    pub fn finish_overlapped(&self, loss: &Tensor) -> anyhow::Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let started = Instant::now();
        let overlapped = self.overlapped.lock().unwrap_or_else(|e| e.into_inner());
        let (_, buckets) = overlapped.as_ref().ok_or_else(|| anyhow::anyhow!("no backward pass was armed"))?;
        let (mean, started_in_backward) = buckets.finish()?;
        let mut traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        traffic.steps += 1;
        traffic.bytes += buckets.bytes;
        traffic.seconds += started.elapsed().as_secs_f64();
        traffic.overlapped_buckets += buckets.count as u64;
        traffic.started_in_backward += started_in_backward as u64;
        Ok(mean.f_to_device(loss.device())?)
    }

    /// Element-wise sums of `values` over the ranks (exact for counts below 2^53).
    pub fn sum(&self, values: &[f64]) -> anyhow::Result<Vec<f64>> {
        let t = Tensor::f_from_slice(values)?;
        self.group.all_reduce_sum(&t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }
}

/// This rank's share of an epoch's `order`, as torch's `DistributedSampler` (without
/// `drop_last`) takes it: the order padded with its own first indices to a multiple of `size`,
/// then every `size`-th index from `rank` on. Batch k of every rank together are then batch k of
/// the single-process run, for a batch size that the ranks split evenly.
pub fn shard(order: &[usize], rank: usize, size: usize) -> Vec<usize> {
    if order.is_empty() {
        return Vec::new();
    }
    let total = order.len().div_ceil(size) * size;
    (rank..total).step_by(size).map(|i| order[i % order.len()]).collect()
}

/// Tensors grouped into buckets of at most [`BUCKET_BYTES`] (a larger tensor alone), in order.
fn buckets<'a>(tensors: &[&'a Tensor]) -> Vec<Vec<&'a Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0;
    for &t in tensors {
        let size = t.numel() * 4;
        if out.is_empty() || bytes + size > BUCKET_BYTES {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("a bucket was just pushed").push(t);
    }
    out
}

/// One flat tensor on the host holding `of(t)` for each tensor, in order.
fn flatten(tensors: &[&Tensor], of: impl Fn(&Tensor) -> anyhow::Result<Tensor>) -> anyhow::Result<Tensor> {
    let flat: Vec<Tensor> =
        tensors.iter().map(|t| of(t)?.f_reshape([-1]).map_err(Into::into)).collect::<anyhow::Result<_>>()?;
    Ok(on_host(&Tensor::f_cat(&flat, 0)?)?)
}

/// Copies consecutive slices of `flat` back into `targets` (in place, on their devices).
fn unflatten_into(flat: &Tensor, targets: &[&Tensor]) -> anyhow::Result<()> {
    let mut offset = 0;
    for t in targets {
        let n = t.numel() as i64;
        let values = flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
        t.shallow_clone().f_copy_(&values)?;
        offset += n;
    }
    Ok(())
}

/// A contiguous copy on the CPU, where Gloo works (the tensor itself when it is one already).
fn on_host(t: &Tensor) -> Result<Tensor, tch::TchError> {
    t.f_to_device(Device::Cpu)?.f_contiguous()
}
