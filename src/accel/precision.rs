//! Mixed precision: bfloat16 through libtorch's own autocast, on the CPU and on CUDA.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::ffi::{check, convnets_autocast_bf16, convnets_cpu_bf16_convolutions_faster, convnets_cpu_has_bf16};

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

/// What `--precision` asks for: one precision, or `auto`, which each network resolves on its
/// device (`ModelInfo::precision_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    Fixed(Precision),
    Auto,
}

impl Default for PrecisionChoice {
    /// fp32, as d2l trains.
    fn default() -> Self {
        PrecisionChoice::Fixed(Precision::Fp32)
    }
}

impl FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PrecisionChoice::Auto),
            _ => s
                .parse()
                .map(PrecisionChoice::Fixed)
                .map_err(|_| format!("unknown precision {s:?}: expected fp32, bf16 or auto")),
        }
    }
}

/// What `auto` picked, and why (printed, so a user sees which arithmetic trained their network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoPrecision {
    pub precision: Precision,
    pub reason: &'static str,
}

/// What this CPU's bfloat16 convolutions are to its float32 ones (`cpu_bf16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuBf16 {
    /// No bfloat16 arithmetic in hardware: libtorch emulates it.
    Emulated,
    /// In hardware, but measured less than 1.2 times as fast as float32.
    Slower,
    /// In hardware, and measured at least 1.2 times as fast as float32.
    Faster,
}

/// `auto`'s rule: bf16 only on a CPU whose bfloat16 convolutions are faster than its float32
/// ones (`cpu_bf16`, asked only for a CPU), and only for a network measured faster in bf16 on
/// such a CPU, with the same accuracy (docs/benchmarks.md).
pub fn auto_precision(
    device: Device,
    cpu_bf16: impl FnOnce() -> CpuBf16,
    faster_in_bf16_on_cpu: bool,
) -> AutoPrecision {
    let (precision, reason) = if device.is_cuda() {
        (Precision::Fp32, "auto chooses bf16 on CPUs only")
    } else if !faster_in_bf16_on_cpu {
        (Precision::Fp32, "this network is not faster in bf16 on a CPU")
    } else if let cpu @ (CpuBf16::Emulated | CpuBf16::Slower) = cpu_bf16() {
        let reason = if cpu == CpuBf16::Emulated {
            "this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX)"
        } else {
            "this CPU's bfloat16 convolutions measured no faster than its float32 ones"
        };
        (Precision::Fp32, reason)
    } else {
        (Precision::Bf16, "this CPU has bfloat16 arithmetic and the network trains faster in bf16")
    };
    AutoPrecision { precision, reason }
}

/// The line `--precision bf16` prints on a CPU without bfloat16 arithmetic, where libtorch emulates
/// it: LeNet-BN trained 15x slower than in fp32 on a 2-core AVX2 EPYC (docs/benchmarks.md).
pub fn emulated_bf16_warning(device: Device, precision: Precision, cpu_has_bf16: bool) -> Option<&'static str> {
    (!device.is_cuda() && precision == Precision::Bf16 && !cpu_has_bf16).then_some(
        "warning: this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX), so bf16 is emulated, many times \
         slower than fp32 (--precision auto chooses fp32 here)",
    )
}

/// What this CPU's bfloat16 convolutions are to its float32 ones: emulated without the
/// instructions (`cpu_has_bf16`), else whether one timed convolution ran at least 1.2 times as fast
/// in bfloat16 (the instructions alone do not say: on two Emerald Rapids cores with AVX512-BF16
/// every network trained slower in bf16, docs/benchmarks.md); asked once, taking under a tenth
/// of a second where it times.
pub fn cpu_bf16() -> CpuBf16 {
    static WHAT: OnceLock<CpuBf16> = OnceLock::new();
    *WHAT.get_or_init(|| {
        if !cpu_has_bf16() {
            return CpuBf16::Emulated;
        }
        let mut faster = 0;
        // A probe that fails says nothing for bf16: keep fp32.
        // SAFETY: writes one integer.
        let measured = check(unsafe { convnets_cpu_bf16_convolutions_faster(&mut faster) }).is_ok();
        if measured && faster != 0 { CpuBf16::Faster } else { CpuBf16::Slower }
    })
}

/// Whether this CPU does bfloat16 arithmetic in hardware (libtorch's cpuinfo: AVX512-BF16, or
/// AMX-BF16 with the kernel's permission); asked once.
pub fn cpu_has_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let mut has = 0;
        // Reading cpuinfo's flags cannot fail in a way that would make bf16 right to use.
        check(unsafe { convnets_cpu_has_bf16(&mut has) }).is_ok() && has != 0
    })
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
