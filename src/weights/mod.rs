//! Weights in and out under PyTorch's `state_dict` names (`0.weight`, `1.running_mean`,
//! `4.0.conv1.weight`, ...): safetensors files read and written with the `safetensors` crate
//! (validated, never trusted), PyTorch `.pt`/`.pth` files through libtorch, and loading into a
//! network with every missing, unexpected or misshapen key named.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("weights do not fit {network}: {problems}{hint}", problems = .problems.join("; "),
        hint = if *.partial_possible { " (--allow-partial loads the keys that fit)" } else { "" })]
    Mismatch { network: String, problems: Vec<String>, partial_possible: bool },
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Parses safetensors bytes into named CPU tensors, sorted by name.
pub fn parse_safetensors(bytes: &[u8], file: &str) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let unreadable = |reason: String| WeightsError::Unreadable { file: file.to_string(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| unreadable(format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind =
            kind_of(view.dtype()).ok_or_else(|| unreadable(format!("{name}: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads named tensors from a `.safetensors` file, or a PyTorch `.pt`/`.pth`/`.bin` state_dict.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let file = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "pt" | "pth" | "bin" => {
            if !path.is_file() {
                let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
                return Err(WeightsError::Io { file, source });
            }
            let mut named = Tensor::loadz_multi_with_device(path, Device::Cpu).map_err(|e| {
                // libtorch's message runs on with a C++ backtrace: keep its first line.
                let message = e.to_string();
                let first = message.lines().next().unwrap_or("").trim_start_matches("Internal torch error: ");
                let hint = if message.contains("Expected GenericDict") {
                    "; libtorch reads plain dicts of tensors but not the OrderedDict that state_dict() returns: \
                     re-save with torch.save(dict(model.state_dict()), path), or use safetensors"
                } else {
                    ""
                };
                WeightsError::Unreadable {
                    file: file.clone(),
                    reason: format!("not a PyTorch state_dict libtorch can read: {first}{hint}"),
                }
            })?;
            named.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(named)
        }
        _ => {
            let bytes = std::fs::read(path).map_err(|source| WeightsError::Io { file: file.clone(), source })?;
            parse_safetensors(&bytes, &file)
        }
    }
}

/// Serializes named tensors as safetensors, with optional string metadata.
pub fn safetensors_bytes(
    named: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        let t = tensor.to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).ok_or_else(|| anyhow::anyhow!("{name}: cannot store {:?}", t.kind()))?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut data, numel);
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, data));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, data)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

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
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut given: BTreeMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
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
