//! The runs of a directory as the page shows them, read from their files (`convnets serve`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{RunView, View};
use crate::report::tensorboard::event_file;
use crate::train::{CHECKPOINT_FILE, History, TrainConfig};

/// The runs under `dir`, by name.
pub fn scan_runs(dir: &Path) -> View {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.join("config.json").is_file()).collect())
        .unwrap_or_default();
    if dir.join("config.json").is_file() {
        dirs.push(dir.to_path_buf());
    }
    dirs.sort();
    View { runs: dirs.iter().filter_map(|d| read_run(d)).collect() }
}

/// A run directory as the page shows it: finished when every epoch is done, running while its
/// event file (appended at every point) changed in the last two minutes, stopped otherwise.
fn read_run(dir: &Path) -> Option<RunView> {
    let config: TrainConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let history: History =
        std::fs::read(dir.join("metrics.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let recently = |path: Option<PathBuf>| {
        path.and_then(|p| p.metadata().ok()?.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(120))
    };
    let status = if history.epochs.len() >= config.epochs && dir.join(CHECKPOINT_FILE).is_file() {
        "finished"
    } else if recently(event_file(dir)) {
        "running"
    } else {
        "stopped"
    };
    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    Some(RunView::from_history(name, config, &history, status))
}
