//! The weights as a PyTorch `state_dict` in safetensors, which `load_state_dict` accepts.

use std::collections::HashMap;

use crate::models::Network;
use crate::weights;

/// `net`'s weights and state under their `state_dict` names, as a safetensors file's bytes
/// (marked `format: pt`, as PyTorch's own safetensors files are); returns them with the count.
pub fn state_dict_file(net: &Network) -> anyhow::Result<(Vec<u8>, usize)> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let named = weights::state_dict(&net.vs);
    Ok((weights::safetensors_bytes(&named, Some(metadata))?, named.len()))
}
