//! What a person at the terminal sees of a run: d2l's lines (`training on cpu`, the final loss
//! and accuracies, examples/sec), a line per epoch, and a progress bar while an epoch runs.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tch::Device;

use crate::accel::device_name;
use crate::train::{BatchDone, EpochRecord, History, Observer, RunStart};

/// Prints a run as d2l's `train_ch6` does, with a progress bar on a terminal.
pub struct Console {
    device: Device,
    epochs: usize,
    bar: ProgressBar,
}

impl Default for Console {
    fn default() -> Self {
        Console { device: Device::Cpu, epochs: 0, bar: ProgressBar::hidden() }
    }
}

impl Observer for Console {
    fn started(&mut self, start: &RunStart) -> anyhow::Result<()> {
        (self.device, self.epochs) = (start.device, start.config.epochs);
        match start.world {
            1 => println!("training on {}", device_name(start.device)),
            world => println!("training on {} x {world} processes", device_name(start.device)),
        }
        Ok(())
    }

    fn batch(&mut self, batch: &BatchDone) -> anyhow::Result<()> {
        let progress = batch.progress;
        if progress.batch == 1 {
            self.bar = progress_bar(progress.batches as u64, progress.epoch, progress.epochs);
        }
        self.bar.set_message(format!(
            "loss {:.3}, train acc {:.3}, {:.1} examples/sec",
            batch.train_loss, batch.train_acc, batch.examples_per_sec
        ));
        self.bar.inc(1);
        Ok(())
    }

    fn epoch(&mut self, record: &EpochRecord, _history: &History) -> anyhow::Result<()> {
        self.bar.finish_and_clear();
        let ema = record.ema_test_acc.map(|acc| format!(", EMA {acc:.3}")).unwrap_or_default();
        eprintln!(
            "epoch {}/{}: loss {:.3}, train acc {:.3}, test acc {:.3}{ema}, {:.1} s",
            record.epoch, self.epochs, record.train_loss, record.train_acc, record.test_acc, record.wall_seconds
        );
        Ok(())
    }

    fn finished(&mut self, history: &History) -> anyhow::Result<()> {
        if let Some(last) = history.epochs.last() {
            println!("loss {:.3}, train acc {:.3}, test acc {:.3}", last.train_loss, last.train_acc, last.test_acc);
            println!("{:.1} examples/sec on {}", history.examples_per_sec(), device_name(self.device));
        }
        Ok(())
    }

    fn failed(&mut self, _error: &anyhow::Error) {
        self.bar.abandon();
    }
}

/// An epoch's progress bar on a terminal; hidden when stderr is not one (a log file, a test).
fn progress_bar(len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}
