//! What a run has measured so far: d2l's chart points and a record per epoch.

use serde::{Deserialize, Serialize};

/// One point of d2l's Animator: train metrics 5 times per epoch, test accuracy at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
    pub test_acc: Option<f64>,
}

/// The summary of one finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    pub examples: usize,
    /// Seconds of timed training steps in this epoch.
    pub step_seconds: f64,
    pub wall_seconds: f64,
    /// The learning rate of the epoch (runs saved before it was recorded: none).
    #[serde(default)]
    pub lr: Option<f64>,
    /// The test accuracy of the weights' moving average (`--model-ema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_test_acc: Option<f64>,
}

/// Everything measured so far; stored in the checkpoint and as `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub points: Vec<Point>,
    pub epochs: Vec<EpochRecord>,
}

impl History {
    /// d2l's figure: examples of the last epoch x epochs / summed step time.
    pub fn examples_per_sec(&self) -> f64 {
        let seconds: f64 = self.epochs.iter().map(|e| e.step_seconds).sum();
        let last = self.epochs.last().map_or(0, |e| e.examples);
        last as f64 * self.epochs.len() as f64 / seconds
    }
}
