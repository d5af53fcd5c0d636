//! Faults and pauses injected on purpose through the environment, so that the error paths (one
//! line, the checkpoint kept, `--resume`, the other ranks stopping) can be tested on any machine,
//! and a test can act on a run in a state it knows instead of guessing when that state comes.
//!
//! - `CONVNETS_FAIL_AT=EPOCH:BATCH[:RANK]` makes that training step fail inside libtorch.
//! - `CONVNETS_HOLD_AT=EPOCH:BATCH[:RANK]` holds the run just before that training step: it
//!   prints `held at epoch E, batch B` on stderr and waits until the file that
//!   `CONVNETS_HOLD_RELEASE` names exists, or, without one, until it is killed.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::usage;

/// A training step of a run (1-based epoch and batch), on one rank or on all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepAt {
    pub epoch: usize,
    pub batch: usize,
    /// In a distributed run, only this rank's step (all ranks' when not given).
    pub rank: Option<usize>,
}

impl StepAt {
    /// Whether this is step `batch` of `epoch` (1-based) on `rank`.
    pub fn is(&self, epoch: usize, batch: usize, rank: usize) -> bool {
        (self.epoch, self.batch) == (epoch, batch) && self.rank.is_none_or(|r| r == rank)
    }

    fn from_env(var: &str) -> anyhow::Result<Option<StepAt>> {
        let Ok(value) = std::env::var(var) else { return Ok(None) };
        let numbers: Option<Vec<usize>> = value.split(':').map(|n| n.parse().ok()).collect();
        match numbers.as_deref() {
            Some(&[epoch, batch]) => Ok(Some(StepAt { epoch, batch, rank: None })),
            Some(&[epoch, batch, rank]) => Ok(Some(StepAt { epoch, batch, rank: Some(rank) })),
            _ => Err(usage(format!("{var}={value}: expected EPOCH:BATCH[:RANK], e.g. 2:3"))),
        }
    }
}

/// What the environment injects into a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Injected {
    /// `CONVNETS_FAIL_AT`.
    pub fail: Option<StepAt>,
    /// `CONVNETS_HOLD_AT`.
    pub hold: Option<StepAt>,
    /// `CONVNETS_HOLD_RELEASE`.
    pub release: Option<PathBuf>,
}

impl Injected {
    pub fn from_env() -> anyhow::Result<Injected> {
        Ok(Injected {
            fail: StepAt::from_env("CONVNETS_FAIL_AT")?,
            hold: StepAt::from_env("CONVNETS_HOLD_AT")?,
            release: std::env::var_os("CONVNETS_HOLD_RELEASE").map(PathBuf::from),
        })
    }

    /// Holds the run here when `CONVNETS_HOLD_AT` names step `batch` of `epoch` on `rank`.
    pub fn hold_if_at(&self, epoch: usize, batch: usize, rank: usize) {
        if !self.hold.is_some_and(|h| h.is(epoch, batch, rank)) {
            return;
        }
        // Every rank of a run prints this line at the same moment.
        crate::error::stderr_line(&format!("held at epoch {epoch}, batch {batch}"));
        match &self.release {
            Some(file) => {
                while !file.exists() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            None => loop {
                std::thread::park();
            },
        }
    }
}
