//! A network's weights as a PyTorch `state_dict`: taken out under their names, and loaded back
//! with every missing, unexpected or misshapen key named; weights of either batch norm load
//! into the other.

use std::collections::BTreeMap;

use tch::Tensor;
use tch::nn::VarStore;

use super::WeightsError;

/// The network's weights and state (BatchNorm statistics), sorted by name.
pub fn state_dict(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// What loading changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Problems skipped under `allow_partial`.
    pub skipped: Vec<String>,
}

/// Names under which the built-in batch norm (first) and the from-scratch one (second) keep
/// the same values; the from-scratch layer's are shaped (1, C) or (1, C, 1, 1) instead of (C).
const BATCH_NORM_ALIASES: [(&str, &str); 4] =
    [("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_var")];

/// The name the other batch norm gives the value called `name` (`1.weight` <-> `1.gamma`).
pub fn batch_norm_alias(name: &str) -> Option<String> {
    let (prefix, leaf) = name.rsplit_once('.')?;
    BATCH_NORM_ALIASES.iter().find_map(|&(builtin, scratch)| match leaf {
        l if l == builtin => Some(format!("{prefix}.{scratch}")),
        l if l == scratch => Some(format!("{prefix}.{builtin}")),
        _ => None,
    })
}

/// Lets weights of either batch norm load into the other: renames and reshapes the aliases
/// above, drops the built-in layer's `num_batches_tracked` where the target has none, and sets
/// it to 0 where the source had none (as PyTorch does for checkpoints that predate it).
fn translate_batch_norm(given: &mut BTreeMap<String, Tensor>, variables: &BTreeMap<String, Tensor>) {
    for (name, var) in variables {
        let Some(alias_key) = batch_norm_alias(name) else { continue };
        if given.contains_key(name)
            || variables.contains_key(&alias_key)
            || given.get(&alias_key).is_none_or(|t| t.numel() != var.numel())
        {
            continue;
        }
        let tensor = given.remove(&alias_key).expect("checked above");
        given.insert(name.clone(), tensor.reshape(var.size()));
        let (prefix, _) = name.rsplit_once('.').expect("aliases have a prefix");
        let tracked = format!("{prefix}.num_batches_tracked");
        if !variables.contains_key(&tracked) {
            given.remove(&tracked);
        }
    }
    for (name, var) in variables {
        if let Some(prefix) = name.strip_suffix(".num_batches_tracked")
            && !given.contains_key(name)
            && given.contains_key(&format!("{prefix}.running_mean"))
        {
            given.insert(name.clone(), var.zeros_like());
        }
    }
}

/// Copies `tensors` into the variables of `vs` with the same names, converting dtypes. Every
/// variable must be given with its exact shape and every tensor must name a variable, unless
/// `allow_partial`, which loads what fits and reports the rest. Weights of the built-in batch
/// norm load into the from-scratch one and back.
pub fn load_state_dict(
    vs: &VarStore,
    network: &str,
    tensors: &[(String, Tensor)],
    allow_partial: bool,
) -> Result<LoadReport, WeightsError> {
    load_state_dict_except(vs, network, tensors, allow_partial, &[])
}

/// Whether the `state_dict` name `name` belongs to a module under one of `prefixes` (`fc.weight`
/// is under `fc`; `fc2.weight` is not).
pub fn is_under(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| name.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('.')))
}

/// [`load_state_dict`] of everything but the layers under the `except` prefixes (a classifier
/// that fine-tuning replaces): their variables keep their values, and tensors given for them
/// are ignored.
pub fn load_state_dict_except(
    vs: &VarStore,
    network: &str,
    tensors: &[(String, Tensor)],
    allow_partial: bool,
    except: &[String],
) -> Result<LoadReport, WeightsError> {
    let excepted = |name: &str| is_under(name, except);
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().filter(|(n, _)| !excepted(n)).collect();
    let mut given: BTreeMap<String, Tensor> =
        tensors.iter().filter(|(n, _)| !excepted(n)).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    translate_batch_norm(&mut given, &variables);
    let mut problems = Vec::new();
    let mut fitting = Vec::new();
    for (name, var) in &variables {
        match given.get(name) {
            None => problems.push(format!("missing key {name}")),
            Some(t) if t.size() != var.size() => {
                problems.push(format!("{name} has shape {:?}, the network needs {:?}", t.size(), var.size()))
            }
            Some(t) => fitting.push((name.clone(), var, t)),
        }
    }
    for name in given.keys().filter(|n| !variables.contains_key(*n)) {
        problems.push(format!("unexpected key {name}"));
    }
    if !problems.is_empty() && !allow_partial {
        return Err(WeightsError::Mismatch {
            network: network.to_string(),
            problems,
            partial_possible: !fitting.is_empty(),
        });
    }
    tch::no_grad(|| {
        for (_, var, t) in &fitting {
            var.shallow_clone().copy_(&t.to_device(var.device()).to_kind(var.kind()));
        }
    });
    Ok(LoadReport { loaded: fitting.into_iter().map(|f| f.0).collect(), skipped: problems })
}
