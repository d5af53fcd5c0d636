//! An exponential moving average of the weights (torchvision's reference recipe,
//! `--model-ema`): every `steps` batches, `ema = decay * ema + (1 - decay) * weights` over
//! the parameters and the batch-norm statistics, the decay adjusted for the batch size and the
//! epochs as torchvision's `train.py` adjusts it, and a copy instead of an average during
//! warm-up.

use tch::{Kind, Tensor};

use super::TrainConfig;
use crate::models::Network;

/// Checkpoint keys of the average start with this.
pub const EMA_PREFIX: &str = "ema.";
const COUNT_KEY: &str = "ema.n_averaged";

pub struct Ema {
    /// The averaged network, laid out and computing as the trained one.
    pub net: Network,
    /// The decay after torchvision's adjustment.
    pub decay: f64,
    steps: usize,
    /// Updates averaged so far (0: the next update copies).
    n_averaged: i64,
}

impl Ema {
    /// An average of `net` for the run `cfg`, starting as a copy of it.
    pub fn new(net: &Network, cfg: &TrainConfig) -> anyhow::Result<Ema> {
        let recipe = &cfg.recipe;
        // torchvision: alpha = (1 - decay) * world * per-process batch * steps / epochs.
        let adjust = cfg.batch_size as f64 * recipe.model_ema_steps as f64 / cfg.epochs as f64;
        let alpha = ((1.0 - recipe.model_ema_decay) * adjust).min(1.0);
        let mut copy = Network::from_info(net.info, net.config, net.device());
        copy.set_precision(net.precision())?;
        copy.set_channels_last(net.channels_last())?;
        let ema = Ema { net: copy, decay: 1.0 - alpha, steps: recipe.model_ema_steps, n_averaged: 0 };
        ema.copy_from(net)?;
        Ok(ema)
    }

    fn copy_from(&self, net: &Network) -> Result<(), tch::TchError> {
        let theirs = net.vs.variables();
        tch::no_grad(|| {
            for (name, mut ours) in self.net.vs.variables() {
                ours.f_copy_(&theirs[&name])?;
            }
            Ok(())
        })
    }

    /// After batch `batch` (0-based) of `epoch`: averages every `steps` batches; copies during
    /// the recipe's warm-up epochs, as torchvision resets its count there.
    pub fn after_batch(
        &mut self,
        net: &Network,
        epoch: usize,
        batch: usize,
        warmup_epochs: usize,
    ) -> anyhow::Result<()> {
        if !batch.is_multiple_of(self.steps) {
            return Ok(());
        }
        if self.n_averaged == 0 {
            self.copy_from(net)?;
        } else {
            let theirs = net.vs.variables();
            tch::no_grad(|| -> Result<(), tch::TchError> {
                for (name, mut ours) in self.net.vs.variables() {
                    let model = &theirs[&name];
                    if ours.is_floating_point() {
                        let averaged = ours.f_mul_scalar(self.decay)?.f_add(&model.f_mul_scalar(1.0 - self.decay)?)?;
                        ours.f_copy_(&averaged)?;
                    } else {
                        // num_batches_tracked: a count, not a quantity to average.
                        ours.f_copy_(model)?;
                    }
                }
                Ok(())
            })?;
        }
        self.n_averaged += 1;
        if epoch < warmup_epochs {
            self.n_averaged = 0;
        }
        Ok(())
    }

    /// The average and its count as checkpoint tensors (`ema.<name>`, `ema.n_averaged`).
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>, tch::TchError> {
        let mut out = vec![(COUNT_KEY.to_string(), Tensor::f_from_slice(&[self.n_averaged])?)];
        out.extend(crate::weights::state_dict(&self.net.vs).into_iter().map(|(k, t)| (format!("{EMA_PREFIX}{k}"), t)));
        Ok(out)
    }

    /// The averaged weights among a checkpoint's `ema.*` tensors, under the network's names
    /// (the count left out).
    pub fn averaged_weights(tensors: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        tensors
            .iter()
            .filter(|(key, _)| key != COUNT_KEY)
            .filter_map(|(key, t)| key.strip_prefix(EMA_PREFIX).map(|name| (name.to_string(), t.shallow_clone())))
            .collect()
    }

    /// Restores what [`Ema::state_dict`] saved.
    pub fn load_state_dict(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        if let Some((_, count)) = tensors.iter().find(|(key, _)| key == COUNT_KEY) {
            self.n_averaged = count.f_to_kind(Kind::Int64)?.f_int64_value(&[0])?;
        }
        let weights = Self::averaged_weights(tensors);
        anyhow::ensure!(!weights.is_empty(), "the checkpoint holds no weight average (ema.*) to resume");
        crate::weights::load_state_dict(&self.net.vs, self.net.info.name, &weights, false)?;
        Ok(())
    }
}
