//! Fine-tuning, as d2l's computer-vision chapter does it: a pretrained network's weights but
//! its classifier, a new classifier for the data set's classes, and optionally a frozen
//! backbone or a head that learns faster than the rest.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::{TrainConfig, load_checkpoint, optimizer};
use crate::models::Network;
use crate::weights;

/// How a run was fine-tuned; kept in `config.json` and the checkpoint, so that `--resume`
/// rebuilds the same parameter groups and frozen layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    /// The run directory or weight file the weights came from.
    pub pretrained: PathBuf,
    /// The classifier layers made anew for this data set (`state_dict` prefixes, e.g. `fc`).
    pub head: Vec<String>,
    /// `--freeze-backbone`: only the head learns; the rest runs as in evaluation.
    pub freeze_backbone: bool,
    /// `--head-lr-scale`: the head's learning rate over the rest's (d2l: 10).
    pub head_lr_scale: f64,
}

impl FineTune {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.head_lr_scale.is_finite() && self.head_lr_scale > 0.0) {
            return Err(format!("--head-lr-scale must be a positive number, got {}", self.head_lr_scale));
        }
        Ok(())
    }

    /// One line for logs and the checkpoint: `fine-tuned from DIR: new fc at 10x the rate`.
    pub fn describe(&self) -> String {
        let head = self.head.join(", ");
        let training = match (self.freeze_backbone, self.head_lr_scale) {
            (true, _) => "trained alone, the backbone frozen".to_string(),
            (false, 1.0) => "at the same rate as the backbone".to_string(),
            (false, scale) => format!("at {scale}x the backbone's rate"),
        };
        format!("fine-tuned from {}: new {head} {training}", self.pretrained.display())
    }
}

/// Weights to start from, and the configuration of the run that trained them when they come
/// from a run directory.
pub struct Pretrained {
    pub tensors: Vec<(String, Tensor)>,
    pub run: Option<TrainConfig>,
}

/// The weights of a run directory's checkpoint or of a weight file (PyTorch's
/// `.pth`/`.pt`/`.bin`, from under `key` in a checkpoint, or safetensors).
pub fn pretrained_weights(source: &Path, key: Option<&str>) -> anyhow::Result<Pretrained> {
    if source.is_dir() {
        let checkpoint = load_checkpoint(source, Device::Cpu)?;
        return Ok(Pretrained { tensors: weights::state_dict(&checkpoint.net.vs), run: Some(checkpoint.state.config) });
    }
    let tensors = weights::read_tensors_under(source, key)?;
    // A checkpoint file given directly: its optimizer state is not the network's.
    let tensors = tensors.into_iter().filter(|(name, _)| !name.starts_with(optimizer::STATE_PREFIX)).collect();
    Ok(Pretrained { tensors, run: None })
}

/// Loads `tensors` into every layer of `net` but its [`Network::head`], which is drawn anew as
/// d2l initialises a new classifier; returns the head. Every other weight must be there with
/// its shape: a file of another network, or of another input channel count, is refused.
pub fn load_pretrained(net: &Network, tensors: &[(String, Tensor)]) -> anyhow::Result<Vec<String>> {
    let head = net.head();
    weights::load_state_dict_except(&net.vs, net.info.name, tensors, false, &head)?;
    let variables = net.vs.variables();
    for prefix in &head {
        let (weight, bias) = (variables.get(&format!("{prefix}.weight")), variables.get(&format!("{prefix}.bias")));
        if let (Some(weight), Some(bias)) = (weight, bias) {
            crate::nn::reset_linear(weight, bias)?;
        }
    }
    Ok(head)
}
