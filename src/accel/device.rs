//! Devices as the command line names them (`auto`, `cpu`, `cuda:N`) and as d2l prints them.

use tch::Device;

use crate::ffi::{check, convnets_shim_threads};

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`; `auto` is d2l's `try_gpu()`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let cuda = |index: usize| {
        if !cfg!(feature = "cuda") {
            Err(format!(
                "device {s}: this convnets was built without the `cuda` feature; rebuild with `cargo build --release --features cuda`, or use --device cpu"
            ))
        } else if (index as i64) >= tch::Cuda::device_count() {
            Err(format!("device {s}: no such CUDA device ({} visible); use --device cpu", tch::Cuda::device_count()))
        } else {
            Ok(Device::Cuda(index))
        }
    };
    match s {
        "auto" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => cuda(i),
            None => Err(format!("unknown device '{s}': use auto, cpu, cuda or cuda:N")),
        },
    }
}

/// A device as d2l prints it: `cpu`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// Waits until `device` has finished the work queued so far (a no-op on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// How many threads the shim's own CPU kernels (`csrc/`: pooling, LeNet's batch norm) share their
/// work among: libtorch's thread count where the shim was built with its OpenMP runtime, else 1.
pub fn shim_threads() -> i32 {
    let mut threads = 1;
    // SAFETY: `threads` outlives the call.
    match check(unsafe { convnets_shim_threads(&mut threads) }) {
        Ok(()) => threads,
        Err(_) => 1,
    }
}
