//! Data-parallel training on libtorch's c10d, the engine under PyTorch's
//! DistributedDataParallel: every rank holds the whole network, trains on its shard of each
//! batch, and the gradients are averaged by all-reduce before every step, so all ranks take the
//! same step that one process would take on the whole batch.
//!
//! A rank learns its place from the environment, as `torch.distributed`'s `env://` does:
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (set by torchrun, by
//! `convnets train --nproc N`, or by hand; Slurm's `SLURM_PROCID`, `SLURM_NTASKS` and
//! `SLURM_LOCALID` stand in for the first three). Rank 0 serves the rendezvous store, unless a
//! torchrun agent already does (`TORCHELASTIC_USE_AGENT_STORE=True`).
//!
//! The run holds the replicas ([`DataParallel`]); the network knows nothing of them: batch norm
//! asks `crate::nn::SyncBatchNorm`, which the process group implements.

mod c10d;
mod data_parallel;
pub mod launch;
mod rendezvous;

pub use c10d::{FIRST_FAILURE, LOST_CONTACT, ProcessGroup, Store};
pub use data_parallel::{AllReduceTraffic, DataParallel, shard};
pub use rendezvous::{DEFAULT_PORT, World, is_lost_contact, key_prefix};
