//! The channels-last (NHWC) memory format: the same values, laid out so that oneDNN's and cuDNN's
//! fastest convolution and pooling kernels apply.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::ffi::{check, convnets_channels_last, convnets_set_channels_last, new_tensor};

/// How images and convolution weights are laid out in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// Channels-last for the networks it speeds up on the device (each network's entry in the
    /// zoo says which), contiguous (NCHW) otherwise.
    #[default]
    Auto,
    /// NCHW, PyTorch's default.
    Contiguous,
    /// NHWC, the layout of cuDNN's tensor-core kernels.
    ChannelsLast,
}

impl FromStr for MemoryFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(MemoryFormat::Auto),
            "contiguous" => Ok(MemoryFormat::Contiguous),
            "channels-last" => Ok(MemoryFormat::ChannelsLast),
            _ => Err(format!("unknown memory format {s:?}: expected auto, contiguous or channels-last")),
        }
    }
}

/// Re-lays every 4-d tensor (convolution weights) out as channels-last in place; the tensors
/// keep their identity, so optimizers and autograd see the same parameters.
pub fn set_channels_last(tensors: &mut [Tensor]) -> anyhow::Result<()> {
    for t in tensors {
        check(unsafe { convnets_set_channels_last(t.as_mut_ptr()) })?;
    }
    Ok(())
}

/// A channels-last copy of a batch of images (other tensors come back as they are).
pub fn channels_last(t: &Tensor) -> anyhow::Result<Tensor> {
    new_tensor(|out| unsafe { convnets_channels_last(t.as_ptr(), out) })
}
