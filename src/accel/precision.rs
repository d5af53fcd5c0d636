//! Mixed precision: bfloat16 through libtorch's own autocast, on the CPU and on CUDA.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::ffi::{check, convnets_autocast_bf16};

/// The arithmetic of the forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 everywhere, as d2l trains.
    #[default]
    Fp32,
    /// Autocast-style mixed precision: convolutions and matrix products in bfloat16 (libtorch's
    /// autocast lists decide op by op), weights, gradients, SGD and the loss in float32.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {s:?}: expected fp32 or bf16")),
        }
    }
}

/// Autocast switched on for this thread's forward passes on `device` while it lives. The
/// backward pass follows the dtypes the forward pass chose, so it needs no autocast of its own.
pub struct Autocast {
    cuda: bool,
}

impl Autocast {
    /// `None` for float32 (nothing to switch).
    pub fn enter(device: Device, precision: Precision) -> anyhow::Result<Option<Autocast>> {
        if precision == Precision::Fp32 {
            return Ok(None);
        }
        let cuda = device.is_cuda();
        check(unsafe { convnets_autocast_bf16(cuda as i32, 1) })?;
        Ok(Some(Autocast { cuda }))
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // Switching off cannot fail for a device type that was switched on.
        let _ = check(unsafe { convnets_autocast_bf16(self.cuda as i32, 0) });
    }
}
