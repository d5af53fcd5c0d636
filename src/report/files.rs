//! The run directory's results, rewritten atomically after every epoch: `metrics.json` and
//! `metrics.csv` (the points d2l's Animator plots, with each epoch's learning rate) and the chart
//! as `chart.svg` and `chart.png`.

use std::path::{Path, PathBuf};

use super::plot;
use crate::atomic::write_atomic;
use crate::train::{EpochRecord, History, Observer, RunStart};

/// Writes the results files of a run after each of its epochs.
#[derive(Default)]
pub struct ResultFiles {
    dir: PathBuf,
    epochs: usize,
}

impl Observer for ResultFiles {
    fn started(&mut self, start: &RunStart) -> anyhow::Result<()> {
        (self.dir, self.epochs) = (start.dir.to_path_buf(), start.config.epochs);
        Ok(())
    }

    fn epoch(&mut self, _record: &EpochRecord, history: &History) -> anyhow::Result<()> {
        write_results(&self.dir, history, self.epochs)
    }
}

/// Writes `metrics.json`, `metrics.csv`, `chart.svg` and `chart.png`, each atomically.
pub fn write_results(dir: &Path, history: &History, epochs: usize) -> anyhow::Result<()> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["x", "train_loss", "train_acc", "test_acc", "lr"])?;
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for p in &history.points {
        // The learning rate of the epoch the point belongs to (an epoch ends at x = its number).
        let epoch = (p.x.ceil() as usize).max(1);
        let lr = history.epochs.get(epoch - 1).and_then(|e| e.lr);
        csv.write_record([format!("{:.6}", p.x), cell(p.train_loss), cell(p.train_acc), cell(p.test_acc), cell(lr)])?;
    }
    let files: [(&str, Vec<u8>); 4] = [
        ("metrics.json", serde_json::to_vec_pretty(history)?),
        ("metrics.csv", csv.into_inner()?),
        ("chart.svg", plot::training_svg(history, epochs)?.into_bytes()),
        ("chart.png", plot::training_png(history, epochs)?),
    ];
    for (name, bytes) in files {
        let path = dir.join(name);
        write_atomic(&path, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
