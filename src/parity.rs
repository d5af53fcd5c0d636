//! Numerical parity with PyTorch: replays a parity file (PyTorch's weights, input, outputs and
//! gradients for one train step; see `tests/golden/README.md`) and compares every item.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Context;
use tch::{Device, Kind, TchError, Tensor};

use crate::models::{NetConfig, Network};
use crate::nn::{Layer, cross_entropy};
use crate::weights;

/// Relative tolerance of logits, loss and running statistics.
pub const OUTPUT_TOLERANCE: f64 = 1e-5;
/// Relative tolerance of gradients (a backward pass sums more terms in a different order).
pub const GRADIENT_TOLERANCE: f64 = 1e-4;

// Errors are relative: |ours - theirs| / max(|theirs|, floor). The floor keeps values near zero
// from turning float32 rounding noise into huge relative errors: it is the largest magnitude of
// the item itself (logits, statistics), or of all gradients of the network for a gradient.
// Gradients that are zero in exact arithmetic (checked in float64) hold only noise on both sides
// and are reported as skipped.

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pass,
    Fail,
    Skipped(String),
}

/// One compared item: a logits tensor, the loss, a gradient or a running statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub name: String,
    pub max_abs: f64,
    pub max_rel: f64,
    pub tolerance: f64,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub network: String,
    pub items: Vec<Item>,
}

impl Report {
    /// Every compared item passed (skipped ones aside).
    pub fn passed(&self) -> bool {
        self.items.iter().all(|i| i.status != Status::Fail)
    }

    pub fn count(&self, status: fn(&Status) -> bool) -> usize {
        self.items.iter().filter(|i| status(&i.status)).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "{:<40} {:>11} {:>11} {:>9}  result", "item", "max abs", "max rel", "tol")?;
        for i in &self.items {
            match &i.status {
                Status::Skipped(why) => {
                    writeln!(f, "{:<40} {:>11} {:>11} {:>9}  skipped: {why}", i.name, "-", "-", "-")?
                }
                s => writeln!(
                    f,
                    "{:<40} {:>11.3e} {:>11.3e} {:>9.0e}  {}",
                    i.name,
                    i.max_abs,
                    i.max_rel,
                    i.tolerance,
                    if *s == Status::Pass { "pass" } else { "FAIL" }
                )?,
            }
        }
        write!(
            f,
            "{}: {} passed, {} failed, {} skipped",
            self.network,
            self.count(|s| *s == Status::Pass),
            self.count(|s| *s == Status::Fail),
            self.count(|s| matches!(s, Status::Skipped(_)))
        )
    }
}

fn max_abs(t: &Tensor) -> Result<f64, TchError> {
    if t.numel() == 0 { Ok(0.0) } else { t.f_abs()?.f_max()?.f_to_kind(Kind::Double)?.f_double_value(&[]) }
}

/// Compares `ours` with PyTorch's `theirs` elementwise, relative to `|theirs|` but never to
/// less than `floor` (or the item's own largest magnitude, when larger).
pub fn compare(name: &str, ours: &Tensor, theirs: &Tensor, tolerance: f64, floor: f64) -> Result<Item, TchError> {
    let (a, b) = (ours.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?, theirs.f_to_kind(Kind::Double)?);
    // The from-scratch batch norm keeps (C) values as (1, C) or (1, C, 1, 1).
    let a = if a.size() != b.size() && a.numel() == b.numel() { a.f_reshape(b.size())? } else { a };
    if a.size() != b.size() {
        let reason = format!("shape {:?} vs PyTorch's {:?}", a.size(), b.size());
        return Ok(Item {
            name: name.into(),
            max_abs: f64::INFINITY,
            max_rel: f64::INFINITY,
            tolerance,
            status: Status::Fail,
        }
        .with_reason(reason));
    }
    let diff = a.f_sub(&b)?.f_abs()?;
    let max_abs = max_abs(&diff)?;
    let floor = floor.max(self::max_abs(&b)?).max(f64::MIN_POSITIVE);
    let max_rel = if diff.numel() == 0 {
        0.0
    } else {
        diff.f_div(&b.f_abs()?.f_clamp_min(floor)?)?.f_max()?.f_double_value(&[])?
    };
    let status = if max_rel <= tolerance { Status::Pass } else { Status::Fail };
    Ok(Item { name: name.into(), max_abs, max_rel, tolerance, status })
}

impl Item {
    fn with_reason(mut self, reason: String) -> Self {
        self.name = format!("{} ({reason})", self.name);
        self
    }

    fn skipped(name: &str, reason: &str) -> Self {
        Item { name: name.into(), max_abs: 0.0, max_rel: 0.0, tolerance: 0.0, status: Status::Skipped(reason.into()) }
    }
}

/// The gradients of the same train step computed in float64, where rounding noise is a billion
/// times smaller: tells gradients that are exactly zero from small ones.
fn exact_gradients(
    name: &str,
    config: NetConfig,
    params: &[(String, Tensor)],
    input: &Tensor,
    target: &Tensor,
) -> anyhow::Result<std::collections::HashMap<String, Tensor>> {
    let mut net = Network::new(name, config, Device::Cpu)?;
    weights::load_state_dict(&net.vs, name, params, false)?;
    net.vs.double();
    let loss = cross_entropy(&net.forward_train_without_dropout(&input.f_to_kind(Kind::Double)?)?, target, 0.0)?;
    loss.f_backward()?;
    Ok(net.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).map(|(k, v)| (k, v.grad())).collect())
}

/// A variable by its PyTorch name, or by its from-scratch batch norm alias.
fn find<'a>(variables: &'a std::collections::HashMap<String, Tensor>, name: &str) -> Option<&'a Tensor> {
    variables.get(name).or_else(|| weights::batch_norm_alias(name).and_then(|alias| variables.get(&alias)))
}

fn uses_dropout(net: &Network) -> bool {
    fn walk(layer: &dyn Layer) -> bool {
        layer.type_name() == "Dropout" || layer.children().into_iter().any(walk)
    }
    walk(&net.body)
}

/// A parity file holding this key was made with every dropout at p = 0 in training.
pub const DROPOUT_OFF: &str = "dropout_off";

/// A parity file holding this key has no weights: they come from [`formula_weights`].
pub const WEIGHTS_FORMULA: &str = "weights_formula";

/// Weights for every tensor of `net`'s state dict from a formula that `bench/torchvision_reference.py`
/// computes too, so that a parity file of a large network need not carry them. For the k-th
/// name in sorted order and its i-th value: b = sin(0.7 i + 1.3 k + 0.1) in float64; weights of
/// two or more dimensions b * sqrt(6 / fan_in), batch-norm weights 1 + 0.2 b, running variances
/// 0.5 + b^2, biases and running means 0.1 b, `num_batches_tracked` 0.
pub fn formula_weights(net: &Network) -> Result<Vec<(String, Tensor)>, TchError> {
    let mut named: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
        .iter()
        .enumerate()
        .map(|(k, (name, t))| {
            let shape = t.size();
            let n = t.numel();
            let fan_in = if shape.is_empty() { 1 } else { (n as i64 / shape[0].max(1)).max(1) };
            let value = |i: usize| {
                let b = (0.7 * i as f64 + (1.3 * k as f64 + 0.1)).sin();
                match () {
                    _ if name.ends_with("num_batches_tracked") => 0.0,
                    _ if shape.len() >= 2 => b * (6.0 / fan_in as f64).sqrt(),
                    _ if name.ends_with("running_var") => 0.5 + b * b,
                    _ if name.ends_with("running_mean") || name.ends_with("bias") => 0.1 * b,
                    _ => 1.0 + 0.2 * b,
                }
            };
            let values: Vec<f32> = (0..n).map(|i| value(i) as f32).collect();
            let tensor = Tensor::f_from_slice(&values)?.f_reshape(&shape)?.f_to_kind(t.kind())?;
            Ok((name.clone(), tensor))
        })
        .collect()
}

/// Replays the parity file at `path` on the network `name`; a failure names the network.
pub fn run(path: &Path, name: &str) -> anyhow::Result<Report> {
    replay(path, name).with_context(|| format!("parity {name}"))
}

fn replay(path: &Path, name: &str) -> anyhow::Result<Report> {
    let tensors: BTreeMap<String, Tensor> = weights::read_tensors(path)?.into_iter().collect();
    let file = path.display();
    let get =
        |key: &str| tensors.get(key).ok_or_else(|| anyhow::anyhow!("{file}: no '{key}' tensor; not a parity file"));
    let input = get("input")?;
    let target = get("target")?.f_to_kind(Kind::Int64)?;
    if input.dim() != 4 {
        anyhow::bail!("{file}: 'input' has shape {:?}, expected (N, C, H, W)", input.size());
    }
    let logits = get("logits_eval")?;
    let config = NetConfig { in_channels: input.size()[1], num_classes: logits.size().get(1).copied().unwrap_or(10) };
    let net = Network::new(name, config, Device::Cpu)?;
    let params: Vec<(String, Tensor)> = if tensors.contains_key(WEIGHTS_FORMULA) {
        formula_weights(&net)?
    } else {
        tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("param.").map(|k| (k.to_string(), t.shallow_clone())))
            .collect()
    };
    weights::load_state_dict(&net.vs, name, &params, false)?;
    net.check_input(&input.size()[1..])?;

    let mut items = Vec::new();
    let logits_eval = tch::no_grad(|| net.forward_t(input, false))?;
    items.push(compare("logits_eval", &logits_eval, logits, OUTPUT_TOLERANCE, 0.0)?);

    // A file made with dropout at p = 0 compares training steps of networks that have it.
    let dropout_off = tensors.contains_key(DROPOUT_OFF);
    let logits_train =
        if dropout_off { net.forward_train_without_dropout(input)? } else { net.forward_t(input, true)? };
    let loss = cross_entropy(&logits_train, &target, 0.0)?;
    loss.f_backward()?;
    let grads: Vec<&String> = tensors.keys().filter(|k| k.starts_with("grad.")).collect();
    if uses_dropout(&net) && !dropout_off {
        let why = "dropout draws different masks in PyTorch and libtorch";
        items.push(Item::skipped("logits_train", why));
        items.push(Item::skipped("loss_train", why));
        items.extend(grads.iter().map(|k| Item::skipped(k, why)));
    } else {
        items.push(compare("logits_train", &logits_train, get("logits_train")?, OUTPUT_TOLERANCE, 0.0)?);
        items.push(compare(
            "loss_train",
            &loss.f_reshape([-1])?,
            &get("loss_train")?.f_reshape([-1])?,
            OUTPUT_TOLERANCE,
            0.0,
        )?);
        let variables = net.vs.variables();
        let mut gradient_scale = 0.0f64;
        for key in &grads {
            gradient_scale = gradient_scale.max(max_abs(&tensors[key.as_str()])?);
        }
        let exact = exact_gradients(name, config, &params, input, &target)?;
        for key in grads {
            let param = &key["grad.".len()..];
            let exact_size = find(&exact, param).map(max_abs).transpose()?;
            if exact_size.is_some_and(|size| size <= 1e-9 * gradient_scale) {
                let why = format!(
                    "zero in exact arithmetic (float64 gives {:.1e}; e.g. a bias feeding a batch norm, which removes constants): both float32 values are rounding noise (PyTorch's up to {:.1e})",
                    exact_size.unwrap_or(0.0),
                    max_abs(&tensors[key.as_str()])?
                );
                items.push(Item::skipped(key, &why));
                continue;
            }
            let item = match find(&variables, param) {
                Some(var) => compare(key, &var.grad(), &tensors[key.as_str()], GRADIENT_TOLERANCE, gradient_scale)?,
                None => Item {
                    name: key.clone(),
                    max_abs: f64::NAN,
                    max_rel: f64::NAN,
                    tolerance: 0.0,
                    status: Status::Fail,
                }
                .with_reason(format!("{name} has no parameter {param}")),
            };
            items.push(item);
        }
    }
    let variables = net.vs.variables();
    for (key, theirs) in tensors.iter().filter(|(k, _)| k.starts_with("after_train.")) {
        let state = &key["after_train.".len()..];
        if state.ends_with("running_var") && variables.contains_key(&state.replace("running_var", "moving_var")) {
            let why = "the from-scratch batch norm tracks the biased batch variance, as the seed does";
            items.push(Item::skipped(key, why));
            continue;
        }
        items.push(match find(&variables, state) {
            Some(ours) => compare(key, ours, theirs, OUTPUT_TOLERANCE, 0.0)?,
            None => {
                Item { name: key.clone(), max_abs: f64::NAN, max_rel: f64::NAN, tolerance: 0.0, status: Status::Fail }
                    .with_reason(format!("{name} has no state {state}"))
            }
        });
    }
    Ok(Report { network: name.to_string(), items })
}
