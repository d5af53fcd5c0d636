//! The run directory: created only once everything is checked, probed for writing, cleared of
//! what a killed run left half-written, and given the run's `config.json`.

use std::path::Path;

use super::TrainConfig;
use crate::atomic::{remove_stale_temporaries, write_atomic};
use crate::error::usage;

/// The file that holds a run's configuration, as JSON.
pub const CONFIG_FILE: &str = "config.json";

/// Makes `dir` ready for the run `config` describes, or says why it cannot be (a usage error:
/// the user chooses another `--out`).
pub fn prepare(dir: &Path, config: &TrainConfig) -> anyhow::Result<()> {
    let shown = dir.display();
    std::fs::create_dir_all(dir).map_err(|e| usage(format!("cannot create {shown}: {e}; choose another --out")))?;
    let probe = dir.join(".convnets-write-test");
    std::fs::write(&probe, b"").map_err(|e| usage(format!("cannot write in {shown}: {e}; choose another --out")))?;
    let _ = std::fs::remove_file(probe);
    remove_stale_temporaries(dir);
    write_config(dir, config)
}

/// Writes `config.json` in `dir`, atomically.
pub fn write_config(dir: &Path, config: &TrainConfig) -> anyhow::Result<()> {
    let path = dir.join(CONFIG_FILE);
    write_atomic(&path, &serde_json::to_vec_pretty(config)?)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
