//! `convnets train ... --nproc N`: N local worker processes, started as torchrun starts them.
//! This process serves the rendezvous store (as torchrun's agent does, so the workers connect to
//! it with `TORCHELASTIC_USE_AGENT_STORE`), starts the workers with the same arguments and the
//! variables of `env://`, and watches them: when one fails, the others are stopped, and the
//! launcher names the rank that failed first.

use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::{FIRST_FAILURE, Store};

/// Set in the workers' environment: they were started by `--nproc`, with the same arguments.
pub const WORKER_VAR: &str = "CONVNETS_NPROC_WORKER";

/// What the launcher needs to know.
pub struct Launch {
    pub nproc: usize,
    /// The worker command line: `train` and its arguments, without `--nproc`.
    pub args: Vec<OsString>,
    /// How long the workers may take to notice a failed peer before they are stopped.
    pub timeout: Duration,
}

/// Threads each worker's libtorch uses when the user set none: the machine's cores shared out,
/// so that N processes do not each start one thread per core (torchrun sets OMP_NUM_THREADS=1).
fn threads_per_worker(nproc: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nproc).max(1)
}

/// The command-line arguments of this process with `--nproc N` (or `--nproc=N`) left out.
pub fn without_nproc(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        match arg.to_str() {
            Some("--nproc") => skip_value = true,
            Some(a) if a.starts_with("--nproc=") => {}
            _ => out.push(arg),
        }
    }
    out
}

/// Runs the workers to completion. Returns an error naming the first rank that failed.
pub fn run(launch: &Launch) -> anyhow::Result<()> {
    let store = Store::new("127.0.0.1", 0, true, launch.timeout, "").map_err(|e| {
        anyhow::anyhow!("cannot serve the rendezvous store on 127.0.0.1: {}", crate::error::error_line(&e))
    })?;
    let exe = std::env::current_exe()?;
    let threads = threads_per_worker(launch.nproc);
    let mut workers: Vec<(usize, Child)> = Vec::new();
    for rank in 0..launch.nproc {
        let mut command = Command::new(&exe);
        command
            .args(&launch.args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", launch.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", launch.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", store.port().to_string())
            .env("TORCHELASTIC_USE_AGENT_STORE", "True")
            .env("TORCHELASTIC_RESTART_COUNT", "0")
            .env(WORKER_VAR, "1");
        if std::env::var_os("GLOO_SOCKET_IFNAME").is_none() {
            // The workers talk to each other on this machine alone: Gloo's pairs listen on the
            // loopback interface, not on whatever address the host name resolves to.
            command.env("GLOO_SOCKET_IFNAME", "lo");
        }
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            command.env("OMP_NUM_THREADS", threads.to_string());
        }
        match command.spawn() {
            Ok(child) => workers.push((rank, child)),
            Err(e) => {
                stop(&mut workers);
                anyhow::bail!("cannot start rank {rank} ({}): {e}", exe.display());
            }
        }
    }
    let mut failed: Option<(usize, ExitStatus, Instant)> = None;
    loop {
        let mut i = 0;
        while i < workers.len() {
            match workers[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = workers.remove(i);
                    if !status.success() && failed.is_none() {
                        failed = Some((rank, status, Instant::now()));
                    }
                }
                None => i += 1,
            }
        }
        if workers.is_empty() {
            break;
        }
        // The others notice a dead peer at their next collective and stop by themselves; one
        // stuck in a long computation is stopped after a grace period.
        if let Some((_, _, at)) = failed
            && at.elapsed() > Duration::from_secs(10).min(launch.timeout)
        {
            stop(&mut workers);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some((rank, status, _)) = failed else { return Ok(()) };
    if status.code() == Some(2) {
        // A mistake in the arguments, which rank 0 has reported in its one line.
        std::process::exit(2);
    }
    // The first rank whose own failure stopped the others, if it could say so (a killed
    // process cannot): others may have ended before it, having lost contact with it.
    match store.rank_at(&format!("{}/{FIRST_FAILURE}", super::key_prefix(0))) {
        Some(first) if first != rank => {
            Err(anyhow::anyhow!("rank {first} of {} failed first; the others stopped", launch.nproc))
        }
        _ => Err(anyhow::anyhow!("rank {rank} of {} {}", launch.nproc, describe(status))),
    }
}

fn stop(workers: &mut Vec<(usize, Child)>) {
    for (_, child) in workers.iter_mut() {
        let _ = child.kill();
    }
    for (_, child) in workers.iter_mut() {
        let _ = child.wait();
    }
    workers.clear();
}

/// How a worker ended: `exited with code 1`, `was killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {signal}{name}")
        }
        (None, None) => "ended abnormally".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_and_its_value_are_left_out_of_the_worker_arguments() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_nproc(args(&["train", "lenet", "--nproc", "2", "--epochs", "1"])),
            args(&["train", "lenet", "--epochs", "1"])
        );
        assert_eq!(without_nproc(args(&["train", "--nproc=4", "lenet"])), args(&["train", "lenet"]));
    }
}
