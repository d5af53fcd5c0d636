//! libtorch's c10d through `csrc/dist.cpp`: the TCPStore that ranks meet at and the Gloo process
//! group that runs the collectives. Every call is fallible: a dead peer, a timeout or a port in
//! use comes back as an error, never as a C++ exception or a panic.

use std::ffi::c_void;
use std::time::Duration;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::ffi::{
    c_string, check, convnets_all_reduce, convnets_broadcast, convnets_gloo_new, convnets_grad_buckets_arm,
    convnets_grad_buckets_finish, convnets_grad_buckets_free, convnets_grad_buckets_new, convnets_group_free,
    convnets_quiet_c10d_logs, convnets_store_add, convnets_store_check, convnets_store_free, convnets_store_get,
    convnets_store_new, convnets_store_set, convnets_sync_batch_norm,
};
use crate::nn::SyncBatchNorm;

/// How the failure of a collective begins: another rank died, stopped answering within the
/// timeout, or the network between them failed (Gloo's message names the peer's address, not
/// its rank). Such a failure follows another rank's, which is the one to report.
pub const LOST_CONTACT: &str = "lost contact with the other ranks";

fn collective_failed(error: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{LOST_CONTACT} (one stopped, hung or became unreachable): {}", crate::error::error_line(&error))
}

/// The store key that names the first rank to fail on its own (see [`ProcessGroup::report_failure`]).
pub const FIRST_FAILURE: &str = "first_failure";

fn millis(d: Duration) -> i32 {
    d.as_millis().clamp(1, i32::MAX as u128) as i32
}

/// A socket listening on `host:port`, the first address `host` resolves to (an address of this
/// machine: an IP address, `localhost`, or a name of one of its interfaces).
fn listen_on(host: &str, port: u16) -> anyhow::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| anyhow::anyhow!("{host} names no address"))?;
    Ok(std::net::TcpListener::bind(addr)?)
}

/// A c10d TCPStore: a small key-value server that the ranks (and a torchrun agent) share.
pub struct Store {
    raw: *mut c_void,
    port: u16,
}

// SAFETY: c10d's stores are used from several threads by c10d itself; each call here is one
// request on the store's own connection, which TCPStore serialises.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Serves a store at `host:port` (`serve`, port 0 for a free one) or connects to one,
    /// retrying until `timeout`; every key is prefixed with `prefix`. A served store listens on
    /// the address `host` names alone (127.0.0.1: this machine only), not on every interface as
    /// c10d's own server would: it answers anyone who reaches it, without authentication.
    pub fn new(host: &str, port: u16, serve: bool, timeout: Duration, prefix: &str) -> anyhow::Result<Self> {
        // c10d's own log lines (a timed-out wait, a failed connection, a dropped peer) stay off
        // stderr, where convnets reports the failure in one line; TORCH_CPP_LOG_LEVEL keeps them.
        unsafe { convnets_quiet_c10d_logs() };
        let listener = match serve {
            true => Some(listen_on(host, port)?),
            false => None,
        };
        let port = listener.as_ref().map_or(Ok(port), |l| l.local_addr().map(|a| a.port()))?;
        let (host, prefix) = (c_string(host)?, c_string(prefix)?);
        let (mut raw, mut bound) = (std::ptr::null_mut(), 0i32);
        // The store's server takes the socket over (and closes it).
        let listen_fd = listener.map_or(-1, std::os::fd::IntoRawFd::into_raw_fd);
        check(unsafe {
            convnets_store_new(
                host.as_ptr(),
                port as i32,
                serve as i32,
                listen_fd,
                millis(timeout),
                prefix.as_ptr(),
                &mut raw,
                &mut bound,
            )
        })?;
        Ok(Store { raw, port: bound as u16 })
    }

    /// The port the store listens on (or was reached at).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let key = c_string(key)?;
        check(unsafe { convnets_store_set(self.raw, key.as_ptr(), value.as_ptr(), value.len()) })
    }

    /// The value of `key`, waiting up to the store's timeout for some rank to set it.
    pub fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let c_key = c_string(key)?;
        let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
        check(unsafe { convnets_store_get(self.raw, c_key.as_ptr(), &mut data, &mut len) })?;
        // SAFETY: `len` bytes malloc'ed by the shim, ours to free.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { crate::ffi::free(data.cast()) };
        Ok(value)
    }

    /// Whether some rank has set `key` (without waiting).
    pub fn contains(&self, key: &str) -> anyhow::Result<bool> {
        let key = c_string(key)?;
        let mut present = 0i32;
        check(unsafe { convnets_store_check(self.raw, key.as_ptr(), &mut present) })?;
        Ok(present != 0)
    }

    /// The rank number some rank set at `key`, if any has (without waiting).
    pub fn rank_at(&self, key: &str) -> Option<usize> {
        match self.contains(key) {
            Ok(true) => String::from_utf8(self.get(key).ok()?).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// Adds `value` to the counter `key` (created at 0) and returns the new count.
    pub fn add(&self, key: &str, value: i64) -> anyhow::Result<i64> {
        let key = c_string(key)?;
        let mut out = 0i64;
        check(unsafe { convnets_store_add(self.raw, key.as_ptr(), value, &mut out) })?;
        Ok(out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        unsafe { convnets_store_free(self.raw) };
    }
}

/// A Gloo process group: the ranks of one run and the collectives between them.
pub struct ProcessGroup {
    raw: *mut c_void,
    /// The store the ranks met at (the group keeps its own reference to it too).
    store: Store,
    pub rank: usize,
    pub size: usize,
}

// SAFETY: c10d's process groups are made to be called from any thread; convnets calls the
// collectives of one group in the same order on every rank (the training loop's order).
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Joins the Gloo group of `size` ranks as `rank` through `store`; collectives that do not
    /// complete within `timeout` fail.
    pub fn gloo(store: Store, rank: usize, size: usize, timeout: Duration) -> anyhow::Result<Self> {
        let mut raw = std::ptr::null_mut();
        check(unsafe { convnets_gloo_new(store.raw, rank as i32, size as i32, millis(timeout), &mut raw) })?;
        Ok(ProcessGroup { raw, store, rank, size })
    }

    /// Records in the store that this rank failed, if no rank did before: the launcher then
    /// names the rank whose failure stopped the others, whichever process ended first.
    pub fn report_failure(&self) -> anyhow::Result<()> {
        if self.store.add("failures", 1)? == 1 {
            self.store.set(FIRST_FAILURE, self.rank.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// The rank that reported a failure of its own first, if any did (a killed rank cannot).
    pub fn first_failure(&self) -> Option<usize> {
        self.store.rank_at(FIRST_FAILURE)
    }

    /// Sums `t` over all ranks, in place (a contiguous CPU tensor for Gloo).
    pub fn all_reduce_sum(&self, t: &Tensor) -> anyhow::Result<()> {
        check(unsafe { convnets_all_reduce(self.raw, t.as_ptr() as *mut C_tensor) }).map_err(collective_failed)
    }

    /// Overwrites `t` with rank `root`'s, in place.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> anyhow::Result<()> {
        check(unsafe { convnets_broadcast(self.raw, t.as_ptr() as *mut C_tensor, root as i32) })
            .map_err(collective_failed)
    }
}

/// `nn.SyncBatchNorm` in training mode: the statistics of every rank's batch, through the shim's
/// autograd function (forward and backward each all-reduce per-channel sums).
impl SyncBatchNorm for ProcessGroup {
    fn batch_norm(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> anyhow::Result<Tensor> {
        let mut out: *mut C_tensor = std::ptr::null_mut();
        check(unsafe {
            convnets_sync_batch_norm(
                self.raw,
                x.as_ptr(),
                weight.as_ptr(),
                bias.as_ptr(),
                running_mean.as_ptr() as *mut C_tensor,
                running_var.as_ptr() as *mut C_tensor,
                momentum,
                eps,
                &mut out,
            )
        })?;
        // SAFETY: a tensor the shim allocated with `new`, now owned by the returned Tensor.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe { convnets_group_free(self.raw) };
    }
}

/// A replica's parameters in buckets whose gradients are all-reduced while the backward pass
/// still runs (DDP's overlap, see `csrc/grad_buckets.cpp`): each bucket starts once the
/// gradients in it and in the buckets before it are accumulated, the last layers' first.
/// It refers to its process group and must be dropped before it.
pub struct GradBuckets {
    raw: *mut c_void,
    /// How many buckets the parameters make.
    pub count: usize,
    /// Bytes each rank all-reduces per update: the gradients and the loss, in float32.
    pub bytes: u64,
}

// SAFETY: the shim's buckets guard their state with a mutex (their hooks run on autograd's
// thread); the collectives they start are issued in the same order on every rank.
unsafe impl Send for GradBuckets {}
unsafe impl Sync for GradBuckets {}

impl GradBuckets {
    /// Buckets for `params` (CPU float tensors that take gradients) in `group`: the first (the
    /// last parameters) of about `first_bucket_bytes`, the rest of `bucket_bytes` (a larger
    /// tensor alone).
    pub fn new(
        group: &ProcessGroup,
        params: &[Tensor],
        first_bucket_bytes: usize,
        bucket_bytes: usize,
    ) -> anyhow::Result<Self> {
        let pointers: Vec<*const C_tensor> = params.iter().map(|p| p.as_ptr()).collect();
        let (mut raw, mut count) = (std::ptr::null_mut(), 0i64);
        check(unsafe {
            convnets_grad_buckets_new(
                group.raw,
                pointers.as_ptr(),
                pointers.len().try_into()?,
                first_bucket_bytes as i64,
                bucket_bytes as i64,
                &mut raw,
                &mut count,
            )
        })?;
        let bytes = 4 * (params.iter().map(|p| p.numel() as u64).sum::<u64>() + 1);
        Ok(GradBuckets { raw, count: count as usize, bytes })
    }

    /// The next backward pass ends an update whose loss is `loss`: its buckets start as their
    /// gradients are ready.
    pub fn arm(&self, loss: &Tensor) -> anyhow::Result<()> {
        check(unsafe { convnets_grad_buckets_arm(self.raw, loss.as_ptr()) })
    }

    /// After that backward pass: starts the buckets still waiting, waits for all, and leaves the
    /// ranks' mean in every gradient. Returns the ranks' mean loss and how many buckets had
    /// started before backward ended.
    pub fn finish(&self) -> anyhow::Result<(Tensor, usize)> {
        let (mut loss, mut started) = (std::ptr::null_mut(), 0i64);
        check(unsafe { convnets_grad_buckets_finish(self.raw, &mut loss, &mut started) }).map_err(collective_failed)?;
        // SAFETY: a tensor the shim allocated with `new`, now owned by the returned Tensor.
        Ok((unsafe { Tensor::from_ptr(loss) }, started as usize))
    }
}

impl Drop for GradBuckets {
    fn drop(&mut self) {
        unsafe { convnets_grad_buckets_free(self.raw) };
    }
}
