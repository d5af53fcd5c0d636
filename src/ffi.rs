//! The C shim in `csrc/` (compiled by `build.rs`): the libtorch calls tch does not expose, for
//! `accel` (`csrc/accel.cpp`, `csrc/cpu_blocks.cpp`), `nn` (`csrc/fused.cpp`,
//! `csrc/avg_pool.cpp`, `csrc/max_pool.cpp`, `csrc/batch_norm.cpp`, `csrc/norm_relu.cpp`,
//! `csrc/one_channel_conv.cpp`, `csrc/conv_weight_grad.cpp`, `csrc/winograd.cpp`) and `distributed`
//! (`csrc/dist.cpp`, `csrc/grad_buckets.cpp`). Its error convention (`csrc/guard.h`): every
//! function returns NULL on success or a malloc'ed message, which [`check`] turns into an error
//! value; no C++ exception crosses into Rust.

use std::ffi::{CStr, CString, c_char, c_void};

use tch::Tensor;
use torch_sys::C_tensor;

// csrc/accel.cpp
unsafe extern "C" {
    pub fn convnets_autocast_bf16(cuda: i32, enabled: i32) -> *mut c_char;
    pub fn convnets_cpu_has_bf16(out: *mut i32) -> *mut c_char;
    pub fn convnets_cpu_bf16_convolutions_faster(out: *mut i32) -> *mut c_char;
    pub fn convnets_shim_threads(out: *mut i32) -> *mut c_char;
    pub fn convnets_set_channels_last(t: *mut C_tensor) -> *mut c_char;
    pub fn convnets_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn convnets_add_scaled_(t: *mut C_tensor, other: *const C_tensor, alpha: f64) -> *mut c_char;
    pub fn convnets_add_scaled(
        t: *const C_tensor,
        other: *const C_tensor,
        alpha: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

// csrc/fused.cpp
/// An eval-mode batch norm's tensors, for the shim to fold into the layer before it.
#[repr(C)]
pub struct ConvnetsNorm {
    pub weight: *const C_tensor,
    pub bias: *const C_tensor,
    pub mean: *const C_tensor,
    pub var: *const C_tensor,
    pub eps: f64,
}

unsafe extern "C" {
    #[allow(clippy::too_many_arguments)]
    pub fn convnets_conv2d_pointwise(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        stride: i64,
        padding: i64,
        norm: *const ConvnetsNorm,
        other: *const C_tensor,
        activation: *const c_char,
        cache: *mut c_void,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub fn convnets_linear_pointwise(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        norm: *const ConvnetsNorm,
        activation: *const c_char,
        onednn: i32,
        cache: *mut c_void,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub fn convnets_dense_concatenation(x: *const C_tensor, channels: i64, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn convnets_fold_cache_new() -> *mut c_void;
    pub fn convnets_fold_cache_free(cache: *mut c_void);
    pub fn convnets_fuses_bf16() -> i32;
}

// csrc/avg_pool.cpp
unsafe extern "C" {
    pub fn convnets_avg_pool2x2(x: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
}

// csrc/max_pool.cpp
unsafe extern "C" {
    pub fn convnets_max_pool_nhwc(
        x: *const C_tensor,
        kernel: i64,
        stride: i64,
        padding: i64,
        ceil_mode: bool,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

// csrc/batch_norm.cpp
unsafe extern "C" {
    #[allow(clippy::too_many_arguments)]
    pub fn convnets_batch_norm_train(
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        running_mean: *const C_tensor,
        running_var: *const C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    pub fn convnets_batch_norm_train_biased_running_var(
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        running_mean: *const C_tensor,
        running_var: *const C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

// csrc/norm_relu.cpp
unsafe extern "C" {
    #[allow(clippy::too_many_arguments)]
    pub fn convnets_batch_norm_relu_train(
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        running_mean: *const C_tensor,
        running_var: *const C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub fn convnets_batch_norm_relu_eval(
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        mean: *const C_tensor,
        var: *const C_tensor,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

// csrc/one_channel_conv.cpp
unsafe extern "C" {
    pub fn convnets_conv2d_one_channel(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        stride: i64,
        padding: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

// csrc/conv_weight_grad.cpp
unsafe extern "C" {
    pub fn convnets_conv2d_train(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        stride: i64,
        padding: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub fn convnets_set_conv_weight_grad_policy(mode: i32) -> *mut c_char;
}

// csrc/winograd.cpp
unsafe extern "C" {
    pub fn convnets_set_winograd_policy(mode: i32) -> *mut c_char;
    pub fn convnets_winograd_calls() -> u64;
}

// csrc/cpu_blocks.cpp
unsafe extern "C" {
    pub fn convnets_reuse_large_cpu_blocks(min_bytes: i64) -> *mut c_char;
    pub fn convnets_release_large_cpu_blocks() -> *mut c_char;
    pub fn convnets_large_cpu_block_stats(
        kept_bytes: *mut i64,
        peak_in_use_bytes: *mut i64,
        reused: *mut i64,
        fresh: *mut i64,
    ) -> *mut c_char;
}

// csrc/accel.cpp, CUDA part
#[cfg(feature = "cuda")]
unsafe extern "C" {
    pub fn convnets_graph_new(out: *mut *mut c_void) -> *mut c_char;
    pub fn convnets_graph_free(g: *mut c_void);
    pub fn convnets_graph_begin(g: *mut c_void) -> *mut c_char;
    pub fn convnets_graph_end(g: *mut c_void) -> *mut c_char;
    pub fn convnets_graph_replay(g: *mut c_void) -> *mut c_char;
    pub fn convnets_cuda_peak_allocated(device: i32, out: *mut i64) -> *mut c_char;
    pub fn convnets_cuda_reset_peak(device: i32) -> *mut c_char;
    pub fn convnets_empty_pinned_u8(sizes: *const i64, ndim: i32, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn convnets_copy_to_cuda_async(host: *const C_tensor, device: i32, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn convnets_wait_copied(t: *mut C_tensor) -> *mut c_char;
}

// csrc/dist.cpp
unsafe extern "C" {
    pub fn convnets_store_new(
        host: *const c_char,
        port: i32,
        serve: i32,
        listen_fd: i32,
        timeout_ms: i32,
        prefix: *const c_char,
        out: *mut *mut c_void,
        bound_port: *mut i32,
    ) -> *mut c_char;
    pub fn convnets_store_free(store: *mut c_void);
    pub fn convnets_quiet_c10d_logs();
    pub fn convnets_store_set(store: *mut c_void, key: *const c_char, data: *const u8, len: usize) -> *mut c_char;
    pub fn convnets_store_get(
        store: *mut c_void,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
    ) -> *mut c_char;
    pub fn convnets_store_check(store: *mut c_void, key: *const c_char, present: *mut i32) -> *mut c_char;
    pub fn convnets_store_add(store: *mut c_void, key: *const c_char, value: i64, out: *mut i64) -> *mut c_char;
    pub fn convnets_gloo_new(
        store: *mut c_void,
        rank: i32,
        size: i32,
        timeout_ms: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn convnets_group_free(group: *mut c_void);
    pub fn convnets_all_reduce(group: *mut c_void, t: *mut C_tensor) -> *mut c_char;
    pub fn convnets_broadcast(group: *mut c_void, t: *mut C_tensor, root: i32) -> *mut c_char;
    pub fn convnets_sync_batch_norm(
        group: *mut c_void,
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        running_mean: *mut C_tensor,
        running_var: *mut C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    // csrc/grad_buckets.cpp
    pub fn convnets_grad_buckets_new(
        group: *mut c_void,
        params: *const *const C_tensor,
        n: i32,
        first_bucket_bytes: i64,
        bucket_bytes: i64,
        out: *mut *mut c_void,
        count: *mut i64,
    ) -> *mut c_char;
    pub fn convnets_grad_buckets_free(buckets: *mut c_void);
    pub fn convnets_grad_buckets_arm(buckets: *mut c_void, loss: *const C_tensor) -> *mut c_char;
    pub fn convnets_grad_buckets_finish(
        buckets: *mut c_void,
        loss_mean: *mut *mut C_tensor,
        started_in_backward: *mut i64,
    ) -> *mut c_char;
}

unsafe extern "C" {
    #[link_name = "free"]
    fn libc_free(p: *mut c_void);
}

/// Frees memory the shim allocated with malloc and handed over.
///
/// # Safety
/// `p` must come from the shim's malloc and not be used afterwards.
pub unsafe fn free(p: *mut c_void) {
    unsafe { libc_free(p) }
}

/// Turns the shim's error convention (NULL or a malloc'ed message) into a `Result`.
pub fn check(message: *mut c_char) -> anyhow::Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string from malloc, ours to free.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { free(message.cast()) };
    Err(anyhow::anyhow!("libtorch: {}", crate::error::libtorch_message(&text)))
}

/// The tensor a shim function makes: `call` passes its out-parameter on and returns the shim's
/// result.
pub fn new_tensor(call: impl FnOnce(*mut *mut C_tensor) -> *mut c_char) -> anyhow::Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(call(&mut out))?;
    // SAFETY: on success the shim stored a new, owned at::Tensor.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `s` as a C string, refused when it holds a NUL byte.
pub fn c_string(s: &str) -> anyhow::Result<CString> {
    CString::new(s).map_err(|_| anyhow::anyhow!("{s:?} contains a NUL byte"))
}
