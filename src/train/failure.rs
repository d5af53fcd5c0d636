//! How a run stops when it cannot go on: a diverging loss, a failure inside libtorch or the data
//! pipeline, a device out of memory (with a batch size that fits); each is one line that says
//! what is kept and how to continue.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{Optimizer, train_step};
use crate::accel::device_name;
use crate::models::Network;

/// What a failed run leaves behind, for the end of its error message.
pub(crate) fn kept_checkpoint(completed_epochs: usize, dir: &Path) -> String {
    if completed_epochs > 0 {
        format!(
            "The checkpoint of epoch {completed_epochs} is kept: `convnets train --resume {}` continues from it.",
            dir.display()
        )
    } else {
        "No epoch had completed, so there is no checkpoint.".to_string()
    }
}

/// The loss stopped being a number.
#[derive(Debug, thiserror::Error)]
#[error(
    "training diverged at epoch {epoch}, batch {batch}: the loss is {loss}{last}. {kept} \
     Try a lower --lr (this run used {lr})",
    last = match .last_finite { Some(l) => format!(" (last finite loss {l:.4})"), None => String::new() },
    kept = if *.epoch > 1 {
        format!("The checkpoint of epoch {} is kept.", .epoch - 1)
    } else {
        "No epoch had completed, so there is no checkpoint.".to_string()
    }
)]
pub struct Diverged {
    pub epoch: usize,
    pub batch: usize,
    pub loss: f64,
    pub last_finite: Option<f64>,
    pub lr: f64,
}

/// libtorch (or the data pipeline) failed during a run: which network, where, why, and what is
/// kept. One line: libtorch's message without its C++ stack (see
/// [`crate::error::libtorch_message`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{net}: {phase} failed at {at}: {cause}{note}",
    cause = if .note.is_empty() { .cause.as_str() } else { .cause.trim_end_matches('.') },
    note = if .note.is_empty() { String::new() } else { format!(". {}", .note) }
)]
pub struct RunFailed {
    pub net: String,
    /// `training` or `evaluation`.
    pub phase: &'static str,
    /// Where: `epoch 3, batch 17 of 235`, `batch 2 of 40`.
    pub at: String,
    pub cause: String,
    /// What the user can do next (resume, a batch size that fits); may be empty.
    pub note: String,
}

/// A training step ran out of memory on a batch of shape `input`.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub(crate) struct OutOfMemory {
    pub error: anyhow::Error,
    pub input: Vec<i64>,
}

/// What to tell a user whose step ran out of memory: a batch size whose training step was just
/// run and fitted. (The run is over: these trial steps change nothing that is kept.)
pub(crate) fn out_of_memory_note(net: &Network, opt: &mut Optimizer, input: &[i64], device: Device) -> String {
    let batch_size = input[0] as usize;
    let fits = fitting_batch_size(batch_size, |b| {
        let shape: Vec<i64> = std::iter::once(b as i64).chain(input[1..].iter().copied()).collect();
        let x = Tensor::f_zeros(&shape, (Kind::Float, device))?;
        let y = Tensor::f_zeros([b as i64], (Kind::Int64, device))?;
        train_step(net, opt, 0.0, &x, &y)?.0.f_double_value(&[])?;
        Ok(())
    });
    match fits {
        Some(b) => format!("A training step with --batch-size {b} fits on {}: rerun with it.", device_name(device)),
        None => format!("Not even one example fits on {}; free its memory or use --device cpu.", device_name(device)),
    }
}

/// The largest of `batch_size / 2`, `/ 4`, ... down to 1 for which `try_step` succeeds.
pub fn fitting_batch_size(batch_size: usize, mut try_step: impl FnMut(usize) -> anyhow::Result<()>) -> Option<usize> {
    std::iter::successors(Some(batch_size / 2), |&b| (b > 1).then_some(b / 2))
        .filter(|&b| b >= 1)
        .find(|&b| try_step(b).is_ok())
}

/// libtorch's out-of-memory messages (CUDA's and the CPU allocator's).
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory") || message.contains("DefaultCPUAllocator: can't allocate memory")
}

/// Memory the kernel says is available (`MemAvailable` in /proc/meminfo), in bytes.
pub(crate) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}
