//! Speed: bf16 mixed precision through libtorch's own autocast, the channels-last (NHWC) layout
//! (same values, faster kernels on a GPU), and CUDA graphs that replay a whole training step
//! with one launch. tch 0.24 exposes none of these in the form needed, so they go through a
//! small C++ shim (`csrc/accel.cpp`, compiled by `build.rs`).

use std::ffi::{CStr, c_char, c_void};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};
use torch_sys::C_tensor;

use crate::models::ModelInfo;

unsafe extern "C" {
    fn convnets_autocast_bf16(cuda: i32, enabled: i32) -> *mut c_char;
    fn convnets_set_channels_last(t: *mut C_tensor) -> *mut c_char;
    fn convnets_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
}

#[cfg(feature = "cuda")]
unsafe extern "C" {
    fn convnets_graph_new(out: *mut *mut c_void) -> *mut c_char;
    fn convnets_graph_free(g: *mut c_void);
    fn convnets_graph_begin(g: *mut c_void) -> *mut c_char;
    fn convnets_graph_end(g: *mut c_void) -> *mut c_char;
    fn convnets_graph_replay(g: *mut c_void) -> *mut c_char;
    fn convnets_cuda_peak_allocated(device: i32, out: *mut i64) -> *mut c_char;
    fn convnets_cuda_reset_peak(device: i32) -> *mut c_char;
    fn convnets_empty_pinned_u8(sizes: *const i64, ndim: i32, out: *mut *mut C_tensor) -> *mut c_char;
    fn convnets_copy_to_cuda_async(host: *const C_tensor, device: i32, out: *mut *mut C_tensor) -> *mut c_char;
    fn convnets_wait_copied(t: *mut C_tensor) -> *mut c_char;
}

/// Turns the shim's error convention (NULL or a malloc'ed message) into a `Result`.
pub(crate) fn check(message: *mut c_char) -> anyhow::Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string from malloc, ours to free.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { libc_free(message.cast()) };
    Err(anyhow::anyhow!("libtorch: {}", crate::libtorch_message(&text)))
}

unsafe extern "C" {
    #[link_name = "free"]
    fn libc_free(p: *mut c_void);
}

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

/// How images and convolution weights are laid out in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// Channels-last for the networks it speeds up on the device (see
    /// `ModelInfo::channels_last_on_cuda` and `channels_last_on_cpu`), contiguous (NCHW) otherwise.
    #[default]
    Auto,
    /// NCHW, PyTorch's default.
    Contiguous,
    /// NHWC, the layout of cuDNN's tensor-core kernels.
    ChannelsLast,
}

impl MemoryFormat {
    /// Whether `net` on `device` runs channels-last.
    pub fn channels_last(self, device: Device, info: &ModelInfo) -> bool {
        match self {
            MemoryFormat::Auto if device.is_cuda() => info.channels_last_on_cuda,
            MemoryFormat::Auto => info.channels_last_on_cpu,
            MemoryFormat::Contiguous => false,
            MemoryFormat::ChannelsLast => true,
        }
    }
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

/// Re-lays every 4-d tensor (convolution weights) out as channels-last in place; the tensors
/// keep their identity, so optimizers and autograd see the same parameters.
pub fn set_channels_last(tensors: &mut [Tensor]) -> anyhow::Result<()> {
    for t in tensors {
        check(unsafe { convnets_set_channels_last(t.as_mut_ptr()) })?;
    }
    Ok(())
}

/// The tensor a shim function makes: `call` passes its out-parameter on and returns the shim's
/// result.
fn new_tensor(call: impl FnOnce(*mut *mut C_tensor) -> *mut c_char) -> anyhow::Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(call(&mut out))?;
    // SAFETY: on success the shim stored a new, owned at::Tensor.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// A channels-last copy of a batch of images (other tensors come back as they are).
pub fn channels_last(t: &Tensor) -> anyhow::Result<Tensor> {
    new_tensor(|out| unsafe { convnets_channels_last(t.as_ptr(), out) })
}

/// Whether this build can capture CUDA graphs.
pub const GRAPHS_AVAILABLE: bool = cfg!(feature = "cuda");

/// A captured sequence of CUDA work, replayed with one launch.
pub struct CudaGraph {
    #[cfg(feature = "cuda")]
    handle: *mut c_void,
}

impl CudaGraph {
    /// Captures the CUDA work `f` queues (it is recorded, not run: replay it to run it). `f` must
    /// not read values back to the host. Tensors `f` creates live in the graph's own memory and
    /// are rewritten by every replay.
    #[cfg(feature = "cuda")]
    pub fn capture<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(CudaGraph, T)> {
        let mut handle = std::ptr::null_mut();
        check(unsafe { convnets_graph_new(&mut handle) })?;
        let graph = CudaGraph { handle };
        check(unsafe { convnets_graph_begin(graph.handle) })?;
        // The capture must end whatever `f` does, or the stream stays in capture mode.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let ended = check(unsafe { convnets_graph_end(graph.handle) });
        let value = match result {
            Ok(value) => value?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        ended?;
        Ok((graph, value))
    }

    #[cfg(not(feature = "cuda"))]
    pub fn capture<T>(_f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(CudaGraph, T)> {
        anyhow::bail!("CUDA graphs need a build with the `cuda` feature")
    }

    pub fn replay(&self) -> anyhow::Result<()> {
        #[cfg(feature = "cuda")]
        return check(unsafe { convnets_graph_replay(self.handle) });
        #[cfg(not(feature = "cuda"))]
        unreachable!("no CudaGraph exists without the cuda feature")
    }
}

#[cfg(feature = "cuda")]
impl Drop for CudaGraph {
    fn drop(&mut self) {
        unsafe { convnets_graph_free(self.handle) }
    }
}

/// Runs a function of a few tensors, and on CUDA replays it from a captured graph once the
/// same input shapes have come [`Replayer::EAGER_CALLS`] times in a row (cuDNN's autotuner and lazy
/// initialisation happen in those eager calls). Inputs of another shape, such as an epoch's
/// short last batch, run eagerly. d2l's shapes are static, so nearly every step is a replay:
/// one launch instead of hundreds. Off unless asked for (`--cuda-graphs`): a capture or replay
/// that fails is reported once, and the replayer goes on eagerly.
pub struct Replayer {
    enabled: bool,
    last_shapes: Vec<Vec<i64>>,
    repeats: usize,
    captured: Option<Captured>,
}

struct Captured {
    graph: CudaGraph,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

impl Replayer {
    /// Eager calls with the same shapes before a capture.
    pub const EAGER_CALLS: usize = 3;

    /// Graphs are used when asked for, on a CUDA device, in a build that has them.
    pub fn new(device: Device, graphs: bool) -> Self {
        Replayer {
            enabled: graphs && device.is_cuda() && GRAPHS_AVAILABLE,
            last_shapes: Vec::new(),
            repeats: 0,
            captured: None,
        }
    }

    /// Whether this replayer will capture graphs (a CUDA device, graphs asked for and built in).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn graphed(&self) -> bool {
        self.captured.is_some()
    }

    /// `f(inputs)`, eagerly or replayed. Replayed outputs are the graph's own tensors: read them
    /// before the next call.
    pub fn run(
        &mut self,
        inputs: &[&Tensor],
        mut f: impl FnMut(&[&Tensor]) -> anyhow::Result<Vec<Tensor>>,
    ) -> anyhow::Result<Vec<Tensor>> {
        if !self.enabled {
            return f(inputs);
        }
        match self.graphed_run(inputs, &mut f) {
            Ok(Some(outputs)) => Ok(outputs),
            Ok(None) => f(inputs),
            Err(GraphFailure(error)) => {
                // Neither a failed capture nor a failed launch has run the step: running it
                // eagerly now gives the numbers the graph would have.
                eprintln!("warning: {}; continuing without CUDA graphs", crate::error_line(&error));
                self.enabled = false;
                self.captured = None;
                f(inputs)
            }
        }
    }

    /// The replayed (or just captured) outputs, `None` when this call runs eagerly, or the
    /// failure of the graph machinery. A failure of `f` during a capture counts as one (work a
    /// capture forbids fails there); run eagerly again, `f` reports its own errors.
    fn graphed_run(
        &mut self,
        inputs: &[&Tensor],
        f: &mut impl FnMut(&[&Tensor]) -> anyhow::Result<Vec<Tensor>>,
    ) -> Result<Option<Vec<Tensor>>, GraphFailure> {
        let shapes: Vec<Vec<i64>> = inputs.iter().map(|t| t.size()).collect();
        if let Some(c) = &self.captured {
            if !c.inputs.iter().map(|t| t.size()).eq(shapes.iter().cloned()) {
                return Ok(None);
            }
            for (to, from) in c.inputs.iter().zip(inputs) {
                to.shallow_clone().f_copy_(from).map_err(|e| GraphFailure(e.into()))?;
            }
            c.graph.replay().map_err(|e| GraphFailure(e.context("replaying a CUDA graph failed")))?;
            return Ok(Some(c.outputs.iter().map(|t| t.shallow_clone()).collect()));
        }
        if shapes == self.last_shapes {
            self.repeats += 1;
        } else {
            self.last_shapes = shapes;
            self.repeats = 1;
        }
        if self.repeats <= Self::EAGER_CALLS {
            return Ok(None);
        }
        let statics = inputs
            .iter()
            .map(|t| t.f_zeros_like().and_then(|mut s| s.f_copy_(t).map(|_| s)))
            .collect::<Result<Vec<Tensor>, _>>()
            .map_err(|e| GraphFailure(e.into()))?;
        let (graph, outputs) = CudaGraph::capture(|| f(&statics.iter().collect::<Vec<_>>()))
            .map_err(|e| GraphFailure(e.context("capturing a CUDA graph failed")))?;
        graph.replay().map_err(|e| GraphFailure(e.context("replaying a CUDA graph failed")))?;
        let result = outputs.iter().map(|t| t.shallow_clone()).collect();
        self.captured = Some(Captured { graph, inputs: statics, outputs });
        Ok(Some(result))
    }
}

/// The graph machinery failed (not the function captured): the replayer falls back to eager.
struct GraphFailure(anyhow::Error);

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

/// Makes glibc's malloc serve allocations below 64 MiB from its heap instead of a fresh `mmap`
/// each time. By default, blocks over an adaptive threshold (at most 32 MiB) are mapped and
/// unmapped on every use, and each reuse then pays a page fault and zeroing per 4 KiB page: on a
/// CPU, a training step allocates its activations and gradients anew every time. Returns whether
/// malloc took the setting (glibc only; elsewhere nothing changes). The price is a higher
/// resident peak, as freed heap memory is reused rather than returned: 64 MiB is the largest
/// threshold that kept every network's peak below PyTorch's at d2l's settings (at 128 MiB VGG's
/// was above it; docs/benchmarks.md).
pub fn keep_large_allocations_on_the_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // Setting the threshold stops glibc adapting it, and with it the trim threshold, which
        // glibc would keep at twice the mmap threshold; left at its 128 KiB default, the heap's
        // top is handed back and faulted in again every step (LeNet: 12-13k -> 14.5-16k
        // examples/s with it).
        // SAFETY: mallopt only sets malloc parameters; it is safe to call at any time.
        unsafe { mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 128 << 20) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Waits until `device` has finished the work queued so far (a no-op on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
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
