//! The checkpoint: one safetensors file holding the weights under PyTorch's `state_dict` names,
//! the optimizer's state, and the run's configuration and history in its metadata, rewritten
//! atomically after every epoch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::optimizer::{self, Optimizer};
use super::{EMA_PREFIX, Ema, History, TrainConfig};
use crate::atomic::write_atomic;
use crate::models::Network;
use crate::weights;

/// What a checkpoint holds besides the weights (safetensors metadata, one atomic file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    pub config: TrainConfig,
    /// Epochs completed.
    pub epoch: usize,
    /// The optimizer and schedule; their state, if any, is in the checkpoint's `optimizer.*`
    /// tensors.
    pub optimizer: String,
    pub history: History,
}

impl CheckpointState {
    pub fn new(config: TrainConfig, epoch: usize, history: History) -> Self {
        let mut optimizer = config.recipe.describe(config.lr);
        if let Some(finetune) = &config.finetune {
            optimizer = format!("{optimizer}; {}", finetune.describe());
        }
        CheckpointState { format: CHECKPOINT_FORMAT.into(), config, epoch, optimizer, history }
    }
}

const CHECKPOINT_FORMAT: &str = "convnets-checkpoint-1";
const STATE_KEY: &str = "convnets.checkpoint";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// A loaded checkpoint: the network with its weights, the run's state and the optimizer's.
pub struct Checkpoint {
    pub net: Network,
    pub state: CheckpointState,
    /// The optimizer's tensors (`optimizer.*`; none for d2l's plain SGD).
    pub optimizer: Vec<(String, Tensor)>,
    /// The moving average of the weights (`ema.*`; `--model-ema` runs only).
    pub ema: Vec<(String, Tensor)>,
}

/// Finds the checkpoint file of a run directory, or takes the file itself.
pub fn checkpoint_path(run_or_file: &Path) -> PathBuf {
    if run_or_file.is_dir() { run_or_file.join(CHECKPOINT_FILE) } else { run_or_file.to_path_buf() }
}

/// Loads a checkpoint written by [`train`] onto `device`.
pub fn load_checkpoint(run_or_file: &Path, device: Device) -> anyhow::Result<Checkpoint> {
    let path = checkpoint_path(run_or_file);
    let file = path.display().to_string();
    let bytes = std::fs::read(&path)
        .map_err(|e| anyhow::anyhow!("{file}: {e} (expected a run directory or its {CHECKPOINT_FILE})"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a valid safetensors checkpoint: {e}"))?;
    let state_json = meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)).ok_or_else(|| {
        anyhow::anyhow!("{file}: a safetensors file but not a convnets checkpoint (no training state)")
    })?;
    let state: CheckpointState =
        serde_json::from_str(state_json).map_err(|e| anyhow::anyhow!("{file}: corrupt training state: {e}"))?;
    state.config.validate().map_err(|e| anyhow::anyhow!("{file}: corrupt training state: {e}"))?;
    if state.format != CHECKPOINT_FORMAT {
        anyhow::bail!("{file}: checkpoint format {} is not {CHECKPOINT_FORMAT}", state.format);
    }
    let mut net = Network::new(&state.config.net, state.config.net_config(), device)?;
    net.set_precision(state.config.precision)?;
    net.set_channels_last(net.info.uses_channels_last(state.config.memory_format, device))?;
    let tensors = weights::parse_safetensors(&bytes, &file)?;
    // The network's weights; the optimizer's state (see optimizer.rs) is read on resume.
    let (optimizer, weights): (Vec<_>, Vec<_>) =
        tensors.into_iter().partition(|(name, _)| name.starts_with(optimizer::STATE_PREFIX));
    let (ema, weights): (Vec<_>, Vec<_>) = weights.into_iter().partition(|(name, _)| name.starts_with(EMA_PREFIX));
    weights::load_state_dict(&net.vs, &state.config.net, &weights, false)?;
    if state.config.finetune.as_ref().is_some_and(|f| f.freeze_backbone) {
        net.freeze_backbone();
    }
    Ok(Checkpoint { net, state, optimizer, ema })
}

/// Writes `checkpoint.safetensors` in `dir` atomically: weights and state, one file.
pub fn save_checkpoint(
    dir: &Path,
    net: &Network,
    optimizer: Option<&Optimizer>,
    ema: Option<&Ema>,
    state: &CheckpointState,
) -> anyhow::Result<()> {
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    let mut tensors = weights::state_dict(&net.vs);
    if let Some(optimizer) = optimizer {
        tensors.extend(optimizer.state_dict()?);
    }
    if let Some(ema) = ema {
        tensors.extend(ema.state_dict()?);
    }
    let bytes = weights::safetensors_bytes(&tensors, Some(metadata))?;
    let path = dir.join(CHECKPOINT_FILE);
    write_atomic(&path, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
