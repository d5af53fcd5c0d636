//! The optimizers, with every call fallible (tch's `nn::Optimizer` unwraps libtorch's errors,
//! which turns a CUDA failure during a step into a panic).
//!
//! d2l's plain SGD runs as libtorch's own `torch::optim::SGD` (the update PyTorch makes, bit for
//! bit). SGD with momentum or weight decay and AdamW are written here from tensor operations, as
//! PyTorch defines them, because their state (momentum buffers, moving averages, the step
//! count) must go into the checkpoint for `--resume` to continue exactly, and libtorch's C API
//! does not expose it.

use tch::nn::VarStore;
use tch::{COptimizer, Kind, TchError, Tensor};

use super::recipe::{OptimizerName, Recipe};
use crate::ffi::{check, convnets_add_scaled, convnets_add_scaled_, new_tensor};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
/// Checkpoint keys of optimizer state start with this.
pub const STATE_PREFIX: &str = "optimizer.";

pub struct Optimizer {
    recipe: Recipe,
    lr: f64,
    /// d2l's plain SGD, as libtorch runs it.
    libtorch: Option<COptimizer>,
    /// The trainable tensors and their `state_dict` names.
    params: Vec<(String, Tensor)>,
    /// Per parameter, the factor of its group's learning rate: `head_lr_scale` for a
    /// fine-tuned network's new classifier, 1 for everything else.
    lr_scales: Vec<f64>,
    /// Per parameter, created at its first step: SGD's momentum buffer, or AdamW's first and
    /// second moment estimates.
    state: Vec<Vec<Tensor>>,
    steps: i64,
}

impl Optimizer {
    /// d2l's optimizer: plain SGD at rate `lr`.
    pub fn d2l(vs: &VarStore, lr: f64) -> Result<Self, TchError> {
        Self::new(vs, lr, &Recipe::default())
    }

    /// The optimizer of `recipe` over every trainable variable of `vs` (batch-norm running
    /// statistics are not trainable).
    pub fn new(vs: &VarStore, lr: f64, recipe: &Recipe) -> Result<Self, TchError> {
        Self::grouped(vs, lr, recipe, &[], 1.0)
    }

    /// [`Optimizer::new`] with two parameter groups, as d2l's fine-tuning makes them: the
    /// variables under the `head` prefixes (a new classifier) at `head_lr_scale` times the rate
    /// of the rest. Variables that take no gradient (a frozen backbone) are left out.
    pub fn grouped(
        vs: &VarStore,
        lr: f64,
        recipe: &Recipe,
        head: &[String],
        head_lr_scale: f64,
    ) -> Result<Self, TchError> {
        let names: std::collections::HashMap<usize, String> =
            vs.variables().into_iter().map(|(name, t)| (t.data_ptr() as usize, name)).collect();
        let params: Vec<(String, Tensor)> = vs
            .trainable_variables()
            .into_iter()
            .filter(|t| t.requires_grad())
            .map(|t| (names.get(&(t.data_ptr() as usize)).cloned().unwrap_or_default(), t))
            .collect();
        let lr_scales: Vec<f64> =
            params.iter().map(|(n, _)| if crate::weights::is_under(n, head) { head_lr_scale } else { 1.0 }).collect();
        let plain_sgd = recipe.optimizer == OptimizerName::Sgd && recipe.momentum == 0.0 && recipe.weight_decay == 0.0;
        let libtorch = if plain_sgd {
            // libtorch's groups: 0 at the base rate, 1 (when there is a head) at the head's.
            let mut optimizer = COptimizer::sgd(lr, 0.0, 0.0, 0.0, false)?;
            for ((_, t), &scale) in params.iter().zip(&lr_scales) {
                optimizer.add_parameters(t, (scale != 1.0) as usize)?;
            }
            Some(optimizer)
        } else {
            None
        };
        let state = params.iter().map(|_| Vec::new()).collect();
        let mut optimizer = Optimizer { recipe: recipe.clone(), lr, lr_scales, libtorch, params, state, steps: 0 };
        optimizer.set_lr(lr)?;
        Ok(optimizer)
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate of the following steps (a schedule's, at each epoch).
    pub fn set_lr(&mut self, lr: f64) -> Result<(), TchError> {
        if let Some(optimizer) = &mut self.libtorch {
            optimizer.set_learning_rate_group(0, lr)?;
            if let Some(&scale) = self.lr_scales.iter().find(|&&s| s != 1.0) {
                optimizer.set_learning_rate_group(1, lr * scale)?;
            }
        }
        self.lr = lr;
        Ok(())
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) -> Result<(), TchError> {
        if let Some(optimizer) = &self.libtorch {
            return optimizer.zero_grad();
        }
        for (_, p) in &self.params {
            let mut grad = p.grad();
            if grad.defined() {
                grad.f_zero_().map(drop)?;
            }
        }
        Ok(())
    }

    /// One update of every parameter from its gradient.
    pub fn step(&mut self) -> Result<(), TchError> {
        if let Some(optimizer) = &self.libtorch {
            return optimizer.step();
        }
        self.steps += 1;
        let wd = self.recipe.weight_decay;
        let _no_grad = tch::no_grad_guard();
        for (((_, p), state), scale) in self.params.iter().zip(&mut self.state).zip(&self.lr_scales) {
            let lr = self.lr * scale;
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let mut p = p.shallow_clone();
            match self.recipe.optimizer {
                OptimizerName::Sgd => {
                    // torch.optim.SGD: d = g + wd p; buf = m buf + d (buf = d at first);
                    // d = d + m buf (Nesterov) or buf; p -= lr d. Each `x + a y` as libtorch's
                    // `add(y, alpha=a)` computes it, so the steps round as libtorch's do.
                    let mut d = if wd != 0.0 { add_scaled(&grad, &p, wd)? } else { grad };
                    let m = self.recipe.momentum;
                    if m != 0.0 {
                        match state.first_mut() {
                            Some(buf) => {
                                buf.f_mul_scalar_(m)?.f_add_(&d).map(drop)?;
                            }
                            None => state.push(d.f_detach_copy()?),
                        }
                        let buf = &state[0];
                        d = if self.recipe.nesterov { add_scaled(&d, buf, m)? } else { buf.shallow_clone() };
                    }
                    add_scaled_(&mut p, &d, -lr)?;
                }
                OptimizerName::Adamw => {
                    // torch.optim.AdamW: decay p, then the bias-corrected Adam update.
                    if state.is_empty() {
                        state.push(p.f_zeros_like()?);
                        state.push(p.f_zeros_like()?);
                    }
                    p.f_mul_scalar_(1.0 - lr * wd).map(drop)?;
                    state[0].f_mul_scalar_(BETA1)?.f_add_(&grad.f_mul_scalar(1.0 - BETA1)?).map(drop)?;
                    state[1].f_mul_scalar_(BETA2)?.f_add_(&grad.f_mul(&grad)?.f_mul_scalar(1.0 - BETA2)?).map(drop)?;
                    let t = self.steps as i32;
                    let (bias1, bias2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
                    let denom = state[1].f_sqrt()?.f_div_scalar(bias2.sqrt())?.f_add_scalar(EPS)?;
                    p.f_sub_(&state[0].f_div(&denom)?.f_mul_scalar(lr / bias1)?).map(drop)?;
                }
            }
        }
        Ok(())
    }

    /// The state to checkpoint: `optimizer.<parameter>.<slot>` tensors and `optimizer.steps`.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>, TchError> {
        let mut out = vec![(format!("{STATE_PREFIX}steps"), Tensor::f_from_slice(&[self.steps])?)];
        for ((name, _), state) in self.params.iter().zip(&self.state) {
            for (slot, t) in state.iter().enumerate() {
                out.push((format!("{STATE_PREFIX}{name}.{slot}"), t.shallow_clone()));
            }
        }
        Ok(out)
    }

    /// Restores what [`Optimizer::state_dict`] saved.
    pub fn load_state_dict(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        for (key, value) in tensors {
            let Some(rest) = key.strip_prefix(STATE_PREFIX) else { continue };
            if rest == "steps" {
                self.steps = value.f_int64_value(&[0])?;
                continue;
            }
            let (name, slot) = rest.rsplit_once('.').ok_or_else(|| anyhow::anyhow!("{key}: not optimizer state"))?;
            let slot: usize = slot.parse().map_err(|_| anyhow::anyhow!("{key}: not optimizer state"))?;
            let index = self
                .params
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| anyhow::anyhow!("{key}: the network has no parameter {name}"))?;
            let (_, param) = &self.params[index];
            let value = value.f_to_device(param.device())?.f_to_kind(Kind::Float)?;
            anyhow::ensure!(value.size() == param.size(), "{key}: shape {:?}, not {:?}", value.size(), param.size());
            let state = &mut self.state[index];
            if state.len() <= slot {
                state.resize_with(slot + 1, Tensor::new);
            }
            state[slot] = value;
        }
        anyhow::ensure!(
            self.state.iter().all(|s| s.iter().all(|t| t.defined())),
            "the checkpoint's optimizer state is incomplete"
        );
        Ok(())
    }
}

/// `t + alpha * other`, rounded as libtorch's `add(other, alpha)` rounds it (one fused
/// multiply-add per value on CPUs with FMA; `t.f_add(&other.f_mul_scalar(alpha))` rounds twice,
/// and a few steps of that ulp were enough to tip a max-pooling tie and part from libtorch).
fn add_scaled(t: &Tensor, other: &Tensor, alpha: f64) -> Result<Tensor, TchError> {
    new_tensor(|out| unsafe { convnets_add_scaled(t.as_ptr(), other.as_ptr(), alpha, out) }).map_err(shim_error)
}

/// `t += alpha * other`, as [`add_scaled`] computes it.
fn add_scaled_(t: &mut Tensor, other: &Tensor, alpha: f64) -> Result<(), TchError> {
    check(unsafe { convnets_add_scaled_(t.as_mut_ptr(), other.as_ptr(), alpha) }).map_err(shim_error)
}

/// The shim's error as the optimizer reports libtorch's.
fn shim_error(error: anyhow::Error) -> TchError {
    TchError::Torch(error.to_string().trim_start_matches("libtorch: ").to_string())
}
