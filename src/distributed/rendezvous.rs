//! Where this process stands in a distributed run (from its environment, as `env://` reads it)
//! and how the ranks meet: the store, a check that every rank was started alike, the group.

use std::time::Duration;

use super::{LOST_CONTACT, ProcessGroup, Store};
use crate::error::{error_line, usage};

/// Where this process stands in a distributed run, from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The store is served by a torchrun agent: connect to it, even as rank 0.
    pub agent_store: bool,
    /// torchrun's restart count: each attempt meets under keys of its own.
    pub attempt: u64,
}

/// PyTorch's default `MASTER_PORT`.
pub const DEFAULT_PORT: u16 = 29500;

impl World {
    /// The distributed run this process belongs to, if its environment names one (`WORLD_SIZE`
    /// or Slurm's `SLURM_NTASKS` with more than one task).
    pub fn from_env() -> anyhow::Result<Option<World>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`World::from_env`] reading variables through `var` (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<World>> {
        let number = |names: &[&str]| -> anyhow::Result<Option<(String, usize)>> {
            for name in names {
                if let Some(value) = var(name) {
                    let parsed = value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| usage(format!("{name}={value}: expected a whole number")))?;
                    return Ok(Some((name.to_string(), parsed)));
                }
            }
            Ok(None)
        };
        let size = match number(&["WORLD_SIZE"])? {
            Some(size) => size,
            // One Slurm task is an ordinary run (srun without a distributed job in mind).
            None => match number(&["SLURM_NTASKS"])? {
                Some((name, n)) if n > 1 => (name, n),
                _ => return Ok(None),
            },
        };
        let (size_name, size) = size;
        if size == 0 {
            return Err(usage(format!("{size_name}=0: a run needs at least one process")));
        }
        let (rank_name, rank) = number(&["RANK", "SLURM_PROCID"])?
            .ok_or_else(|| usage(format!("{size_name} is set but RANK is not: set both (or neither)")))?;
        if rank >= size {
            return Err(usage(format!("{rank_name}={rank} is not below {size_name}={size}")));
        }
        let local_rank = number(&["LOCAL_RANK", "SLURM_LOCALID"])?.map_or(rank, |(_, r)| r);
        let master_addr = var("MASTER_ADDR")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| usage("MASTER_ADDR is not set: name the host of rank 0 (127.0.0.1 on one machine)"))?;
        let master_port = match var("MASTER_PORT") {
            None => DEFAULT_PORT,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| usage(format!("MASTER_PORT={p}: expected a port number (1 to 65535)")))?,
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let attempt = number(&["TORCHELASTIC_RESTART_COUNT"])?.map_or(0, |(_, n)| n as u64);
        Ok(Some(World { rank, size, local_rank, master_addr, master_port, agent_store, attempt }))
    }

    /// Meets the other ranks and forms the process group. Every rank first publishes `run`, a
    /// description of what it is about to train (network, configuration, epoch), and checks
    /// that all ranks agree, so a rank started with other settings stops every rank with a
    /// clear error instead of silently training something else. Nothing waits longer than
    /// `timeout`.
    pub fn join(&self, run: &str, timeout: Duration) -> anyhow::Result<ProcessGroup> {
        let at = format!("{}:{}", self.master_addr, self.master_port);
        let serve = self.rank == 0 && !self.agent_store;
        // torchrun's agent keeps keys of its own in the store: ours live under a prefix, one
        // per restart so that a restarted group never reads the previous attempt's.
        let prefix = key_prefix(self.attempt);
        let store = Store::new(&self.master_addr, self.master_port, serve, timeout, &prefix).map_err(|e| {
            let why = error_line(&e);
            if serve {
                anyhow::anyhow!("cannot serve the rendezvous at {at} (is MASTER_PORT in use?): {why}")
            } else {
                anyhow::anyhow!("cannot reach the rendezvous at {at} within {timeout:?}: {why}")
            }
        })?;
        let description = format!("WORLD_SIZE={}\n{run}", self.size);
        store.set(&format!("run/{}", self.rank), description.as_bytes())?;
        let at = at.as_str();
        let waiting_for = |who: String| {
            move |e: anyhow::Error| {
                let why = error_line(&e);
                if why.contains("timeout") {
                    anyhow::anyhow!("{who} did not join the run at {at} within {timeout:?} (--dist-timeout)")
                } else {
                    anyhow::anyhow!("the rendezvous at {at} failed while waiting for {who}: {why}")
                }
            }
        };
        let mut verdict = Ok(());
        for other in 0..self.size {
            let theirs = store.get(&format!("run/{other}")).map_err(waiting_for(format!("rank {other}")))?;
            let theirs = String::from_utf8_lossy(&theirs);
            if theirs != description {
                verdict = Err(usage(format!(
                    "rank {other} was started differently from rank {}: {}",
                    self.rank,
                    first_difference(&description, &theirs)
                )));
                break;
            }
        }
        store.add("checked", 1)?;
        if serve {
            // The store lives in this process: it stays until every rank has read what it
            // needs (or a few seconds have passed), so that a difference found here reaches
            // the others as their own clear error, not as a vanished rendezvous.
            let started = std::time::Instant::now();
            let patience = timeout.min(std::time::Duration::from_secs(10));
            while store.add("checked", 0)? < self.size as i64 && started.elapsed() < patience {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        verdict?;
        ProcessGroup::gloo(store, self.rank, self.size, timeout)
            .map_err(|e| anyhow::anyhow!("could not form the process group: {}", error_line(&e)))
    }
}

/// The key prefix of attempt `attempt` of a run in its store.
pub fn key_prefix(attempt: u64) -> String {
    format!("convnets/attempt_{attempt}")
}

/// Whether `error` is a rank losing contact with the others, the consequence of a failure
/// elsewhere rather than a failure of its own.
pub fn is_lost_contact(error: &anyhow::Error) -> bool {
    error_line(error).contains(LOST_CONTACT)
}

/// The first line where two descriptions differ, as `ours` versus `theirs`.
fn first_difference(ours: &str, theirs: &str) -> String {
    let mut a = ours.lines();
    let mut b = theirs.lines();
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (x, y) => return format!("{} here, {} there", x.unwrap_or("nothing"), y.unwrap_or("nothing")),
        }
    }
}
