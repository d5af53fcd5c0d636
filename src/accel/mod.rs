//! Speed: bf16 mixed precision through libtorch's own autocast, the channels-last (NHWC) layout
//! (same values, faster kernels), CUDA graphs that replay a whole training step with one launch,
//! host memory and copies that keep a GPU fed, and large CPU blocks reused from step to step.
//! tch 0.24 exposes none of these in the form needed, so they go through the C++ shim
//! (`csrc/accel.cpp`, `csrc/cpu_blocks.cpp`, see `crate::ffi`).

mod device;
mod graphs;
mod layout;
mod memory;
mod precision;

pub use device::{device_name, parse_device, shim_threads, synchronize};
pub use graphs::{CudaGraph, GRAPHS_AVAILABLE, Replayer};
pub use layout::{MemoryFormat, channels_last, set_channels_last};
pub use memory::{
    LargeCpuBlocks, copy_async, empty_host_u8, keep_large_allocations_on_the_heap, large_cpu_blocks, peak_memory_mib,
    release_large_cpu_blocks, reset_peak_memory, reuse_large_cpu_blocks, wait_copied,
};
pub use precision::{
    AutoPrecision, Autocast, CpuBf16, Precision, PrecisionChoice, auto_precision, cpu_bf16, cpu_has_bf16,
    emulated_bf16_warning,
};
