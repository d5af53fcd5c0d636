//! Speed: bf16 mixed precision through libtorch's own autocast, the channels-last (NHWC) layout
//! (same values, faster kernels), CUDA graphs that replay a whole training step with one launch,
//! and host memory and copies that keep a GPU fed. tch 0.24 exposes none of these in the form
//! needed, so they go through the C++ shim (`csrc/accel.cpp`, see `crate::ffi`).

mod device;
mod graphs;
mod layout;
mod memory;
mod precision;

pub use device::{device_name, parse_device, synchronize};
pub use graphs::{CudaGraph, GRAPHS_AVAILABLE, Replayer};
pub use layout::{MemoryFormat, channels_last, set_channels_last};
pub use memory::{
    copy_async, empty_host_u8, keep_large_allocations_on_the_heap, peak_memory_mib, reset_peak_memory, wait_copied,
};
pub use precision::{Autocast, Precision};
