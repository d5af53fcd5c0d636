//! d2l's `evaluate_accuracy_gpu`, with the confusion matrix and per-class accuracy of
//! `convnets eval`; in a distributed run every rank counts its share and the counts are summed.

use std::sync::Arc;

use tch::Device;

use super::{RunFailed, predict};
use crate::accel::Replayer;
use crate::data::{self, Split};
use crate::distributed::DataParallel;
use crate::models::Network;

/// The batch of an evaluation that failed, and why.
pub(crate) struct EvalFailed {
    pub batch: usize,
    pub batches: usize,
    pub error: anyhow::Error,
}

/// Accuracy and confusion matrix (rows: true class, columns: predicted) of a split.
pub struct Evaluation {
    pub accuracy: f64,
    pub confusion: Vec<Vec<u64>>,
}

/// d2l's `evaluate_accuracy_gpu`: eval mode, no gradients, batches in order.
pub fn evaluate(net: &Network, split: &Arc<Split>, batch_size: usize, prep: &data::Prep) -> anyhow::Result<Evaluation> {
    evaluate_once(net, split, batch_size, prep, false)
}

/// [`evaluate`] with flip test-time augmentation: each image's class probabilities averaged with
/// those of its horizontal mirror.
pub fn evaluate_with_flips(
    net: &Network,
    split: &Arc<Split>,
    batch_size: usize,
    prep: &data::Prep,
) -> anyhow::Result<Evaluation> {
    evaluate_once(net, split, batch_size, prep, true)
}

fn evaluate_once(
    net: &Network,
    split: &Arc<Split>,
    batch_size: usize,
    prep: &data::Prep,
    flip_tta: bool,
) -> anyhow::Result<Evaluation> {
    evaluate_with(&mut net.replayer(), net, None, split, batch_size, prep, flip_tta).map_err(|failed| {
        RunFailed {
            net: net.info.name.to_string(),
            phase: "evaluation",
            at: format!("batch {} of {}", failed.batch, failed.batches),
            cause: crate::error::error_line(&failed.error),
            note: String::new(),
        }
        .into()
    })
}

/// [`evaluate`] through `replayer`, which a training run keeps from epoch to epoch (one graph
/// capture per run, not one per epoch), as one of `replicas` when given.
pub(crate) fn evaluate_with(
    replayer: &mut Replayer,
    net: &Network,
    replicas: Option<&DataParallel>,
    split: &Arc<Split>,
    batch_size: usize,
    prep: &data::Prep,
    flip_tta: bool,
) -> Result<Evaluation, EvalFailed> {
    let classes = net.config.num_classes as usize;
    let mut confusion = vec![vec![0u64; classes]; classes];
    // A replica evaluates every world-th example (no padding: each is counted once) with rank
    // 0's batch-norm statistics, and the counts are summed: the accuracy of the whole set.
    let (rank, world) = replicas.map_or((0, 1), |r| (r.rank(), r.size()));
    let order: Vec<usize> = (rank..split.len()).step_by(world).collect();
    let batches = order.len().div_ceil(batch_size);
    if let Some(replicas) = replicas {
        replicas.broadcast_buffers(&net.vs).map_err(|error| EvalFailed { batch: 1, batches, error })?;
    }
    let _guard = tch::no_grad_guard();
    for (i, batch) in data::device_batches(split.clone(), order, batch_size, prep.clone(), net.device()).enumerate() {
        let counted = batch.and_then(|batch| {
            let predicted = if flip_tta {
                let probabilities = |x: &tch::Tensor| -> anyhow::Result<tch::Tensor> {
                    Ok(net.forward_t(x, false)?.f_softmax(1, tch::Kind::Float)?)
                };
                let both = probabilities(&batch.images)?.f_add(&probabilities(&batch.images.f_flip([3])?)?)?;
                both.f_argmax(1, false)?
            } else {
                predict(replayer, net, &batch.images)?
            };
            let predicted = Vec::<i64>::try_from(predicted.f_to_device(Device::Cpu)?)?;
            let truth = Vec::<i64>::try_from(&batch.host_labels)?;
            for (&t, &p) in truth.iter().zip(&predicted) {
                let (t, p) = (t as usize, p as usize);
                anyhow::ensure!(t < classes, "label {t} is not one of the network's {classes} classes");
                confusion[t][p] += 1;
            }
            Ok(())
        });
        counted.map_err(|error| EvalFailed { batch: i + 1, batches, error })?;
    }
    if let Some(replicas) = replicas {
        let counts: Vec<f64> = confusion.iter().flatten().map(|&c| c as f64).collect();
        let summed = replicas.sum(&counts).map_err(|error| EvalFailed { batch: batches, batches, error })?;
        for (cell, total) in confusion.iter_mut().flatten().zip(summed) {
            *cell = total as u64;
        }
    }
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    Ok(Evaluation { accuracy: correct as f64 / split.len().max(1) as f64, confusion })
}

impl Evaluation {
    /// Per-class accuracy and the confusion matrix as a table, classes named by `classes`.
    pub fn report(&self, classes: &[String]) -> String {
        let name = |c: usize| classes.get(c).map_or("?", String::as_str);
        let mut out = format!("test acc {:.3}\n\n{:<11} {:>8} {:>7}\n", self.accuracy, "class", "acc", "count");
        for (c, row) in self.confusion.iter().enumerate() {
            let count: u64 = row.iter().sum();
            out += &format!("{:<11} {:>8.3} {count:>7}\n", name(c), row[c] as f64 / count.max(1) as f64);
        }
        out += "\nconfusion matrix (rows: true class, columns: predicted)\n";
        out += &format!("{:<11}", "");
        for c in 0..self.confusion.len() {
            out += &format!(" {c:>5}");
        }
        out += "\n";
        for (c, row) in self.confusion.iter().enumerate() {
            out += &format!("{:<11}", format!("{c} {}", name(c)).chars().take(11).collect::<String>());
            for v in row {
                out += &format!(" {v:>5}");
            }
            out += "\n";
        }
        out
    }
}
