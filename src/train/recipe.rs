//! Training recipes beyond d2l's plain SGD at a constant rate: the optimizer and its settings,
//! a learning-rate schedule with warm-up, label smoothing, gradient clipping and accumulation. The defaults are d2l's, and a run
//! saved before these options existed reads as those defaults.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which optimizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// `torch.optim.SGD` (d2l: no momentum, no weight decay).
    #[default]
    Sgd,
    /// `torch.optim.AdamW` (betas 0.9 and 0.999, eps 1e-8; decoupled weight decay).
    Adamw,
}

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// d2l's: the same rate throughout.
    #[default]
    Constant,
    /// Divided by 10 at 1/2 and 3/4 of the epochs (a `MultiStepLR`).
    Step,
    /// Half a cosine from the rate to 0 over the epochs after warm-up (`CosineAnnealingLR`).
    Cosine,
    /// `OneCycleLR` by epoch: from rate/25 up to the rate over the first 30% (cosine), then down
    /// to rate/(25 * 10^4).
    Onecycle,
}

macro_rules! names {
    ($ty:ty, $what:literal, $($variant:ident => $name:literal),+) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $name),+ })
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(format!(concat!("unknown ", $what, " {:?}: expected {}"), s, [$($name),+].join(", "))),
                }
            }
        }
    };
}
names!(OptimizerName, "optimizer", Sgd => "sgd", Adamw => "adamw");
names!(Schedule, "learning-rate schedule", Constant => "constant", Step => "step", Cosine => "cosine", Onecycle => "onecycle");

/// Everything of a recipe besides the base learning rate (`TrainConfig::lr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    pub optimizer: OptimizerName,
    /// SGD's momentum (0: none).
    pub momentum: f64,
    /// Nesterov momentum (SGD with momentum only).
    pub nesterov: bool,
    /// L2 penalty for SGD, decoupled decay for AdamW.
    pub weight_decay: f64,
    pub lr_schedule: Schedule,
    /// Epochs of linear warm-up from lr / (warm-up epochs + 1) (0: none).
    pub warmup_epochs: usize,
    /// Label smoothing of the cross-entropy loss (0: none).
    pub label_smoothing: f64,
    /// `--clip-grad-norm`: the gradients' total 2-norm is scaled down to at most this before
    /// each update, as `torch.nn.utils.clip_grad_norm_` does (none: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// `--accum-steps`: micro-batches whose gradients add up to one update (1: d2l's, one
    /// batch per update).
    pub accum_steps: usize,
    /// `--mixup-alpha`: MixUp with lam ~ Beta(alpha, alpha) (0: none).
    pub mixup_alpha: f64,
    /// `--cutmix-alpha`: CutMix with lam ~ Beta(alpha, alpha) (0: none); with MixUp, one of the
    /// two per batch, each with probability 1/2.
    pub cutmix_alpha: f64,
    /// `--model-ema`: keep and evaluate an exponential moving average of the weights.
    pub model_ema: bool,
    /// `--model-ema-decay` (torchvision's default 0.99998, before its batch-size adjustment).
    pub model_ema_decay: f64,
    /// `--model-ema-steps`: batches between two updates of the average (torchvision: 32).
    pub model_ema_steps: usize,
}

impl Default for Recipe {
    /// d2l's: plain SGD at a constant rate, one batch per update.
    fn default() -> Self {
        Recipe {
            optimizer: OptimizerName::Sgd,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            lr_schedule: Schedule::Constant,
            warmup_epochs: 0,
            label_smoothing: 0.0,
            clip_grad_norm: None,
            accum_steps: 1,
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            model_ema: false,
            model_ema_decay: 0.99998,
            model_ema_steps: 32,
        }
    }
}

impl Recipe {
    /// Checks the settings, naming the flag at fault.
    pub fn validate(&self, epochs: usize) -> Result<(), String> {
        let unit = |flag: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{flag} must be at least 0 and below 1, got {v}"))
            }
        };
        unit("--momentum", self.momentum)?;
        unit("--label-smoothing", self.label_smoothing)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!("--weight-decay must be 0 or more, got {}", self.weight_decay));
        }
        if self.nesterov && (self.optimizer != OptimizerName::Sgd || self.momentum == 0.0) {
            return Err("--nesterov needs --optimizer sgd with a --momentum above 0".into());
        }
        if self.momentum != 0.0 && self.optimizer != OptimizerName::Sgd {
            return Err("--momentum is SGD's; AdamW keeps its own moving averages".into());
        }
        if let Some(norm) = self.clip_grad_norm.filter(|n| !(n.is_finite() && *n > 0.0)) {
            return Err(format!("--clip-grad-norm must be a positive number, got {norm}"));
        }
        for (flag, alpha) in [("--mixup-alpha", self.mixup_alpha), ("--cutmix-alpha", self.cutmix_alpha)] {
            if !(alpha.is_finite() && alpha >= 0.0) {
                return Err(format!("{flag} must be 0 or more, got {alpha}"));
            }
        }
        if !(0.0..1.0).contains(&self.model_ema_decay) {
            return Err(format!("--model-ema-decay must be at least 0 and below 1, got {}", self.model_ema_decay));
        }
        if self.model_ema_steps == 0 {
            return Err("--model-ema-steps must be at least 1".into());
        }
        if self.accum_steps == 0 {
            return Err("--accum-steps must be at least 1".into());
        }
        if self.warmup_epochs >= epochs {
            return Err(format!("--warmup-epochs {} leaves no epoch of the {epochs} after it", self.warmup_epochs));
        }
        Ok(())
    }

    /// The learning rate of `epoch` (0-based) of `epochs`, from the base rate `lr`.
    pub fn lr_at(&self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        let warmup = self.warmup_epochs;
        if epoch < warmup {
            return lr * (epoch + 1) as f64 / (warmup + 1) as f64;
        }
        // Progress through the epochs after warm-up, 0 at the first.
        let span = (epochs - warmup).max(1) as f64;
        let t = (epoch - warmup) as f64 / span;
        match self.lr_schedule {
            Schedule::Constant => lr,
            Schedule::Step => lr * 0.1f64.powi((t >= 0.5) as i32 + (t >= 0.75) as i32),
            Schedule::Cosine => lr * 0.5 * (1.0 + (PI * t).cos()),
            Schedule::Onecycle => {
                let (start, end) = (lr / 25.0, lr / 25.0 / 1e4);
                let cos = |from: f64, to: f64, p: f64| to + (from - to) * 0.5 * (1.0 + (PI * p).cos());
                if t < 0.3 { cos(start, lr, t / 0.3) } else { cos(lr, end, (t - 0.3) / 0.7) }
            }
        }
    }

    /// d2l's recipe: what the run does when no recipe flag is given.
    pub fn is_d2l(&self) -> bool {
        *self == Recipe::default()
    }

    /// The recipe in one line, for the checkpoint.
    pub fn describe(&self, lr: f64) -> String {
        let mut out = match self.optimizer {
            OptimizerName::Sgd => format!(
                "sgd(lr={lr}, momentum={}, nesterov={}, weight_decay={})",
                self.momentum, self.nesterov, self.weight_decay
            ),
            OptimizerName::Adamw => {
                format!("adamw(lr={lr}, betas=(0.9, 0.999), eps=1e-8, weight_decay={})", self.weight_decay)
            }
        };
        out += &format!(", schedule {}", self.lr_schedule);
        if self.warmup_epochs > 0 {
            out += &format!(" after {} warm-up epochs", self.warmup_epochs);
        }
        if self.label_smoothing > 0.0 {
            out += &format!(", label smoothing {}", self.label_smoothing);
        }
        if let Some(norm) = self.clip_grad_norm {
            out += &format!(", gradients clipped to norm {norm}");
        }
        if self.accum_steps > 1 {
            out += &format!(", {} micro-batches per update", self.accum_steps);
        }
        match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => out += &format!(", MixUp({}) or CutMix({})", self.mixup_alpha, self.cutmix_alpha),
            (true, false) => out += &format!(", MixUp({})", self.mixup_alpha),
            (false, true) => out += &format!(", CutMix({})", self.cutmix_alpha),
            (false, false) => {}
        }
        if self.model_ema {
            out += &format!(
                ", EMA of the weights (decay {} every {} batches)",
                self.model_ema_decay, self.model_ema_steps
            );
        }
        out
    }
}
