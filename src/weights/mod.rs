//! Weights in and out under PyTorch's `state_dict` names (`0.weight`, `1.running_mean`,
//! `4.0.conv1.weight`, ...): safetensors files (`safetensors`), the files `torch.save` writes,
//! read without running anything (`pytorch`, through a restricted unpickler, `pickle`), and a
//! network's state dict taken out and loaded back (`state_dict`).

mod pickle;
mod pytorch;
mod safetensors;
mod state_dict;

use std::path::Path;

use tch::Tensor;

pub use self::safetensors::{parse_safetensors, safetensors_bytes};
pub use pickle::PickleError;
pub use state_dict::{LoadReport, batch_norm_alias, is_under, load_state_dict, load_state_dict_except, state_dict};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("weights do not fit {network}: {problems}{hint}", problems = first_problems(.problems),
        hint = if *.partial_possible { " (--allow-partial loads the keys that fit)" } else { "" })]
    Mismatch { network: String, problems: Vec<String>, partial_possible: bool },
}

/// The first few problems and how many more there are: a file of another network has hundreds.
fn first_problems(problems: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > SHOWN {
        text += &format!("; and {} more", problems.len() - SHOWN);
    }
    text
}

/// Reads named tensors from a `.safetensors` file, or from a PyTorch `.pt`/`.pth`/`.bin` file
/// (a state dict, as `torch.save(model.state_dict())` writes it), sorted by name.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, WeightsError> {
    read_tensors_under(path, None)
}

/// [`read_tensors`], the state dict of a PyTorch checkpoint taken from under `key` (`model`,
/// `state_dict`, ...) when given.
pub fn read_tensors_under(path: &Path, key: Option<&str>) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| {
        let source = match source.kind() {
            std::io::ErrorKind::NotFound => std::io::Error::new(source.kind(), "no such file"),
            _ => source,
        };
        WeightsError::Io { file: file.clone(), source }
    })?;
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "pt" | "pth" | "bin" => pytorch::read(&bytes, &file, key),
        _ if key.is_some() => Err(WeightsError::Unreadable {
            file,
            reason: "--key picks a state dict inside a PyTorch checkpoint; a safetensors file holds one".into(),
        }),
        _ => parse_safetensors(&bytes, &file),
    }
}

/// [`read_tensors_under`] of a file's bytes read elsewhere: PyTorch's formats (zip or legacy).
pub fn read_pytorch_bytes(bytes: &[u8], file: &str, key: Option<&str>) -> Result<Vec<(String, Tensor)>, WeightsError> {
    pytorch::read(bytes, file, key)
}
