//! What the page shows: each run's status, progress, configuration, chart points and epochs, and
//! the [`Board`] a training run publishes them on.

use serde::Serialize;
use tokio::sync::watch;

use crate::train::{BatchDone, EpochRecord, History, Observer, Point, Progress, RunStart, TrainConfig};

/// One run as the page shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunView {
    pub name: String,
    /// `running`, `finished`, `stopped` or `failed: <why>`.
    pub status: String,
    pub config: Option<TrainConfig>,
    pub progress: Progress,
    pub points: Vec<Point>,
    pub epochs: Vec<EpochRecord>,
}

impl RunView {
    pub(super) fn from_history(name: String, config: TrainConfig, history: &History, status: &str) -> Self {
        let progress = Progress { epoch: history.epochs.len(), epochs: config.epochs, batch: 0, batches: 0 };
        RunView {
            name,
            status: status.into(),
            config: Some(config),
            progress,
            points: history.points.clone(),
            epochs: history.epochs.clone(),
        }
    }
}

/// Everything the page shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct View {
    pub runs: Vec<RunView>,
}

/// The live state of one training run, published to every connected page.
#[derive(Clone)]
pub struct Board {
    view: watch::Sender<View>,
}

impl Default for Board {
    fn default() -> Self {
        Board { view: watch::Sender::new(View::default()) }
    }
}

impl Board {
    /// A reporter that publishes a training run on this board.
    pub fn observer(&self) -> BoardObserver {
        BoardObserver { board: self.clone() }
    }

    /// Changes the run's view and publishes it.
    pub fn update(&self, change: impl FnOnce(&mut RunView)) {
        self.view.send_modify(|view| {
            if view.runs.is_empty() {
                view.runs.push(RunView::default());
            }
            change(&mut view.runs[0]);
        });
    }

    /// Every change the board publishes, from the current state on.
    pub(super) fn subscribe(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// What the page would show now.
    pub fn snapshot(&self) -> View {
        self.view.borrow().clone()
    }
}

/// Publishes a training run on a [`Board`], point by point.
pub struct BoardObserver {
    board: Board,
}

impl Observer for BoardObserver {
    fn started(&mut self, start: &RunStart) -> anyhow::Result<()> {
        let name =
            start.dir.file_name().map_or_else(|| start.dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let progress = Progress {
            epoch: start.first_epoch + 1,
            epochs: start.config.epochs,
            batch: 0,
            batches: start.batches_per_epoch,
        };
        self.board.update(|view| {
            view.name = name;
            view.status = "running".into();
            view.config = Some(start.config.clone());
            view.progress = progress;
            view.points = start.history.points.clone();
            view.epochs = start.history.epochs.clone();
        });
        Ok(())
    }

    fn batch(&mut self, batch: &BatchDone) -> anyhow::Result<()> {
        self.board.update(|view| view.progress = batch.progress);
        Ok(())
    }

    fn point(&mut self, point: &Point) -> anyhow::Result<()> {
        self.board.update(|view| view.points.push(point.clone()));
        Ok(())
    }

    fn epoch(&mut self, record: &EpochRecord, _history: &History) -> anyhow::Result<()> {
        self.board.update(|view| view.epochs.push(record.clone()));
        Ok(())
    }

    fn finished(&mut self, _history: &History) -> anyhow::Result<()> {
        self.board.update(|view| view.status = "finished".into());
        Ok(())
    }
}
