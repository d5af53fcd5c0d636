//! Memory: host buffers a GPU copies from fastest, copies that overlap computation, glibc's
//! allocator kept from returning blocks, large CPU blocks reused from step to step, and the GPU
//! allocator's peak.

use tch::{Device, Tensor};

use crate::ffi::{
    check, convnets_large_cpu_block_stats, convnets_release_large_cpu_blocks, convnets_reuse_large_cpu_blocks,
};
#[cfg(feature = "cuda")]
use crate::ffi::{
    convnets_copy_to_cuda_async, convnets_cuda_peak_allocated, convnets_cuda_reset_peak, convnets_empty_pinned_u8,
    convnets_wait_copied, new_tensor,
};

/// An uninitialised uint8 CPU tensor of `shape` that `device` copies from fastest: page-locked
/// memory when `device` is a GPU (the copy then runs while the host goes on), ordinary memory
/// otherwise, or when no page-locked memory is left (it only makes the copy faster).
pub fn empty_host_u8(shape: &[i64], device: Device) -> anyhow::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if device.is_cuda()
        && let Ok(pinned) =
            new_tensor(|out| unsafe { convnets_empty_pinned_u8(shape.as_ptr(), shape.len() as i32, out) })
    {
        return Ok(pinned);
    }
    let _ = device;
    Ok(Tensor::f_empty(shape, (tch::Kind::Uint8, Device::Cpu))?)
}

/// A copy of the CPU tensor `host` on `device` that may still be in flight: on a GPU it is
/// queued on a copy stream of its own, so it overlaps the step the GPU is running, and must pass
/// through [`wait_copied`] before it is used.
pub fn copy_async(host: &Tensor, device: Device) -> anyhow::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(index) = device {
        return new_tensor(|out| unsafe { convnets_copy_to_cuda_async(host.as_ptr(), index as i32, out) });
    }
    Ok(host.f_to_device(device)?)
}

/// Makes the work queued from now on wait for the [`copy_async`] copies queued so far (a no-op
/// on the CPU, where copies are done when they return).
pub fn wait_copied(copied: &mut Tensor) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    if copied.device().is_cuda() {
        check(unsafe { convnets_wait_copied(copied.as_mut_ptr()) })?;
    }
    let _ = copied;
    Ok(())
}

/// Where glibc's malloc stops serving blocks from its heap and [`reuse_large_cpu_blocks`] starts
/// keeping them.
const LARGE_BLOCK: u64 = 64 << 20;

/// Makes glibc's malloc serve allocations below 64 MiB from its heap instead of a fresh `mmap`
/// each time. By default, blocks over an adaptive threshold (at most 32 MiB) are mapped and
/// unmapped on every use, and each reuse then pays a page fault and zeroing per 4 KiB page: on a
/// CPU, a training step allocates its activations and gradients anew every time. Returns whether
/// malloc took the setting (glibc only; elsewhere nothing changes). The price is a higher
/// resident peak, as freed heap memory is reused rather than returned: 64 MiB is the largest
/// threshold that kept every network's peak below PyTorch's at d2l's settings (at 128 MiB VGG's
/// was above it; docs/benchmarks.md). The image pipeline's per-batch blocks (decoded photos,
/// crops, a 224x224 batch's floats) are smaller, so they are reused too: `convnets data bench`
/// ran as fast as with 256 MiB (2026-12-02). Called once, by the binary, before anything else.
///
/// A threshold the user gives glibc itself (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or
/// `GLIBC_TUNABLES`) is left as it is: trading memory for speed is theirs to choose (VGG's 411 MB
/// activations train 1.7x as fast with a 1 GiB threshold, at 1.6x the peak; docs/benchmarks.md).
pub fn keep_large_allocations_on_the_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        let tunables = std::env::var("GLIBC_TUNABLES").ok();
        let users = |variable: &str, tunable: &str| {
            glibc_setting(std::env::var(variable).ok().as_deref(), tunables.as_deref(), tunable)
        };
        let (users_mmap, users_trim) =
            (users("MALLOC_MMAP_THRESHOLD_", "mmap_threshold"), users("MALLOC_TRIM_THRESHOLD_", "trim_threshold"));
        // SAFETY: mallopt only sets malloc parameters; it is safe to call at any time.
        let mmap_set = users_mmap.is_some() || unsafe { mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK as i32) == 1 };
        // Setting the mmap threshold stops glibc adapting it, and with it the trim threshold,
        // which glibc would keep at twice the mmap threshold; left at its 128 KiB default, the
        // heap's top is handed back and faulted in again every step (LeNet: 12-13k -> 14.5-16k
        // examples/s with it). Twice the mmap threshold, at least 128 MiB, as glibc would adapt it.
        let trim = users_mmap.unwrap_or(LARGE_BLOCK).saturating_mul(2).clamp(128 << 20, i32::MAX as u64) as i32;
        // SAFETY: as above.
        let trim_set = users_trim.is_some() || unsafe { mallopt(M_TRIM_THRESHOLD, trim) == 1 };
        mmap_set && trim_set
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Makes libtorch's CPU tensors of 64 MiB and more come from an allocator that keeps them when
/// they are freed and hands them to the next request of the same size, or of up to half it
/// (`csrc/cpu_blocks.cpp`). A training step allocates the same large activations and gradients
/// every step; freshly mapped ones cost a page fault and the zeroing of each page, a fifth of
/// VGG's step on 2 cores. `torch.compile` reuses its buffers in the same way. The total never
/// grows past a quarter more than the most the tensors alive at once need (see the C++ file), but
/// kept blocks are not returned to the system until a request of another size needs the room,
/// memory runs out, or [`release_large_cpu_blocks`] is called. Called once, by the binary,
/// before anything else; `CONVNETS_CPU_BLOCK_CACHE=off` leaves libtorch's own allocator in place.
pub fn reuse_large_cpu_blocks() -> anyhow::Result<bool> {
    if std::env::var("CONVNETS_CPU_BLOCK_CACHE").is_ok_and(|value| value == "off") {
        return Ok(false);
    }
    check(unsafe { convnets_reuse_large_cpu_blocks(LARGE_BLOCK as i64) })?;
    Ok(true)
}

/// Frees the blocks [`reuse_large_cpu_blocks`]' allocator keeps, starts its peak afresh from the
/// blocks in use now, and returns the free memory of glibc's heap to the system. `convnets bench`
/// calls it before each network, so that one network's kept blocks neither count in the next
/// one's peak memory nor raise the bound of what it may keep.
pub fn release_large_cpu_blocks() -> anyhow::Result<()> {
    // SAFETY: no arguments; the shim does nothing to the cache when it is not installed.
    check(unsafe { convnets_release_large_cpu_blocks() })?;
    Ok(())
}

/// What [`reuse_large_cpu_blocks`]' allocator has done so far (all zeros when it is not
/// installed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LargeCpuBlocks {
    /// Bytes kept for reuse, not in use now.
    pub kept_bytes: u64,
    /// The most bytes of large blocks in use at once so far (since the last
    /// [`release_large_cpu_blocks`]); in use and kept together stay within a quarter above it.
    pub peak_in_use_bytes: u64,
    /// Requests served with a kept block.
    pub reused: u64,
    /// Requests served with a freshly allocated block.
    pub fresh: u64,
}

/// The counts of [`reuse_large_cpu_blocks`]' allocator now.
pub fn large_cpu_blocks() -> anyhow::Result<LargeCpuBlocks> {
    let (mut kept_bytes, mut peak_in_use_bytes, mut reused, mut fresh) = (0i64, 0i64, 0i64, 0i64);
    check(unsafe { convnets_large_cpu_block_stats(&mut kept_bytes, &mut peak_in_use_bytes, &mut reused, &mut fresh) })?;
    Ok(LargeCpuBlocks {
        kept_bytes: kept_bytes as u64,
        peak_in_use_bytes: peak_in_use_bytes as u64,
        reused: reused as u64,
        fresh: fresh as u64,
    })
}

/// The value, in bytes, that glibc's malloc takes for `tunable` (`mmap_threshold`,
/// `trim_threshold`) from its environment: `GLIBC_TUNABLES`' `glibc.malloc.<tunable>=N` entry,
/// else the plain variable's value (`MALLOC_MMAP_THRESHOLD_=N`). With both set, glibc takes
/// whichever comes first in the environment; either way the user has chosen.
fn glibc_setting(plain: Option<&str>, tunables: Option<&str>, tunable: &str) -> Option<u64> {
    let key = format!("glibc.malloc.{tunable}=");
    let from_tunables = tunables.and_then(|t| t.split(':').find_map(|entry| entry.strip_prefix(key.as_str())));
    from_tunables.or(plain).and_then(|value| glibc_number(value.trim()))
}

/// A number as glibc's tunables read it: `0x` hexadecimal, a leading `0` octal, else decimal;
/// anything else (or trailing characters) makes glibc ignore the setting.
fn glibc_number(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.len() > 1
        && let Some(octal) = text.strip_prefix('0')
    {
        u64::from_str_radix(octal, 8).ok()
    } else {
        text.parse().ok()
    }
}

/// The most memory tensors held on `device` since the last [`reset_peak_memory`], in MiB (CUDA
/// only; on the CPU the process's peak resident size is the figure, see `bench`).
pub fn peak_memory_mib(device: Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(index) = device {
        let mut bytes = 0i64;
        check(unsafe { convnets_cuda_peak_allocated(index as i32, &mut bytes) }).ok()?;
        return Some(bytes as f64 / (1 << 20) as f64);
    }
    let _ = device;
    None
}

pub fn reset_peak_memory(device: Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(index) = device {
        let _ = check(unsafe { convnets_cuda_reset_peak(index as i32) });
    }
    let _ = device;
}

#[cfg(test)]
mod tests {
    use super::glibc_setting;

    #[test]
    fn a_users_own_malloc_threshold_is_read_as_glibc_reads_it() {
        assert_eq!(glibc_setting(Some("1073741824"), None, "mmap_threshold"), Some(1 << 30));
        let tunables = "glibc.malloc.check=0:glibc.malloc.mmap_threshold=1048576";
        assert_eq!(glibc_setting(Some("5"), Some(tunables), "mmap_threshold"), Some(1 << 20));
        assert_eq!(glibc_setting(None, Some(tunables), "trim_threshold"), None);
        assert_eq!(glibc_setting(None, None, "mmap_threshold"), None);
        assert_eq!(glibc_setting(Some("lots"), None, "mmap_threshold"), None, "glibc ignores what is not a number");
        assert_eq!(glibc_setting(Some("0x40000000"), None, "mmap_threshold"), Some(1 << 30));
        assert_eq!(glibc_setting(None, Some("glibc.malloc.mmap_threshold=0X100000"), "mmap_threshold"), Some(1 << 20));
        assert_eq!(glibc_setting(Some("0100"), None, "mmap_threshold"), Some(64), "a leading 0 is octal");
        assert_eq!(glibc_setting(Some("0"), None, "mmap_threshold"), Some(0));
        assert_eq!(glibc_setting(Some("0x"), None, "mmap_threshold"), None);
        assert_eq!(glibc_setting(Some("1g"), None, "mmap_threshold"), None);
    }
}
