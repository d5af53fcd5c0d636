//! What a training run tells its reporters: the small trait through which the console, the run
//! directory's files, TensorBoard and the live view (the `report` module) follow a run, so that the
//! loop knows nothing of them.

use std::path::Path;

use serde::Serialize;
use tch::Device;

use super::{EpochRecord, History, Point, TrainConfig};

/// Where a run stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Progress {
    /// The epoch under way (1-based); 0 before the first.
    pub epoch: usize,
    pub epochs: usize,
    /// Batches done in that epoch, of `batches`; 0 of 0 when unknown.
    pub batch: usize,
    pub batches: usize,
}

/// A run about to train its first epoch (or, resumed, its next).
pub struct RunStart<'a> {
    pub dir: &'a Path,
    pub config: &'a TrainConfig,
    /// What the run measured before this start (a resumed run's history; empty otherwise).
    pub history: &'a History,
    /// Epochs already complete.
    pub first_epoch: usize,
    pub batches_per_epoch: usize,
    pub device: Device,
    /// Processes training together (1 unless distributed).
    pub world: usize,
}

/// A training batch is done.
pub struct BatchDone {
    pub progress: Progress,
    /// The epoch's running loss and accuracy (over every rank at d2l's chart points).
    pub train_loss: f64,
    pub train_acc: f64,
    /// The epoch's training speed so far, over every rank.
    pub examples_per_sec: f64,
}

/// A reporter of a training run. Every method has a default that does nothing; an error fails
/// the run (a reporter that cannot write its file says so).
pub trait Observer {
    fn started(&mut self, _start: &RunStart) -> anyhow::Result<()> {
        Ok(())
    }
    fn batch(&mut self, _batch: &BatchDone) -> anyhow::Result<()> {
        Ok(())
    }
    /// A point of d2l's chart: training metrics 5 times per epoch, test accuracy at its end.
    fn point(&mut self, _point: &Point) -> anyhow::Result<()> {
        Ok(())
    }
    /// An epoch is complete and its checkpoint written; `history` includes it.
    fn epoch(&mut self, _record: &EpochRecord, _history: &History) -> anyhow::Result<()> {
        Ok(())
    }
    /// Every epoch is complete.
    fn finished(&mut self, _history: &History) -> anyhow::Result<()> {
        Ok(())
    }
    /// The run stopped with `error` (which the caller reports).
    fn failed(&mut self, _error: &anyhow::Error) {}
}
