//! Data-parallel training on c10d's Gloo, between processes on the loopback interface: several
//! processes with shares of each batch take the step one process takes with the whole batch;
//! failures (a killed rank, a port in use, an unreachable master, ranks started differently)
//! end every rank with a clear error in bounded time; runs resume with another process count.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use convnets::distributed::{Store, World, shard};
use convnets::train;
use tch::{Device, Tensor};

mod common;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_convnets")
}

/// The first `train` training and 100 test images of the embedded sample, as IDX files.
fn dataset(dir: &Path, train: usize) -> String {
    common::idx_dataset(dir, train, 100).to_str().unwrap().to_string()
}

fn convnets(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env_remove("CONVNETS_DATA").env_remove("RUST_BACKTRACE").output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Lines that start with `error:`.
fn errors(err: &str) -> Vec<String> {
    err.lines().filter(|l| l.starts_with("error:")).map(str::to_string).collect()
}

fn weights_of(dir: &Path) -> Vec<(String, Tensor)> {
    convnets::weights::state_dict(&train::load_checkpoint(dir, Device::Cpu).unwrap().net.vs)
}

fn history_of(dir: &Path) -> train::History {
    train::load_checkpoint(dir, Device::Cpu).unwrap().state.history
}

/// The largest difference between two runs' tensors relative to the tensor's largest value,
/// and the tensor's name.
fn max_relative_difference(a: &Path, b: &Path) -> (f64, String) {
    let (a, b) = (weights_of(a), weights_of(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((name, x), (other, y))| {
            assert_eq!(name, other);
            let (x, y) = (x.to_kind(tch::Kind::Double), y.to_kind(tch::Kind::Double));
            let scale = x.abs().max().double_value(&[]).max(1e-12);
            ((x - y).abs().max().double_value(&[]) / scale, name.clone())
        })
        .fold((0.0, String::new()), |worst, d| if d.0 > worst.0 { d } else { worst })
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A free TCP port on the loopback interface (free when asked).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One rank started by hand, as a user (or Slurm) would, with `env://`'s variables.
fn rank(args: &[&str], rank: usize, world: usize, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut command = Command::new(bin());
    command
        .args(args)
        .env_remove("CONVNETS_DATA")
        .env_remove("RUST_BACKTRACE")
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

/// Waits for `child` to end by itself and returns its output; one still running after `limit`
/// (a hang) is killed, and its output then shows no exit code. `limit` is a guard against
/// hanging for ever, never a measurement: it is far above what any of these runs takes.
fn finish(mut child: Child, limit: Duration) -> Output {
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// A hang guard for runs that end by themselves within seconds (see [`finish`]).
const HANG: Duration = Duration::from_secs(300);

#[test]
fn two_processes_with_half_batches_take_the_steps_of_one_process_with_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 256);
    let out = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    // GoogLeNet has neither batch norm nor dropout: the replicas must agree with one process
    // up to the order of floating-point sums. 8 steps of 32 (2 x 16).
    let common = ["--epochs", "1", "--batch-size", "32", "--resize", "16", "--data", &data, "--device", "cpu"];
    let one = convnets(&[&["train", "googlenet", "--out", &out("one")][..], &common].concat());
    assert!(one.status.success(), "{}", stderr(&one));
    let two = convnets(&[&["train", "googlenet", "--nproc", "2", "--out", &out("two")][..], &common].concat());
    let err = stderr(&two);
    assert!(two.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&two.stdout);
    assert!(stdout.contains("training on cpu x 2 processes"), "{stdout}");
    assert_eq!(stdout.matches("examples/sec").count(), 1, "rank 0 alone prints d2l's lines: {stdout}");
    // GoogLeNet's 6 million parameters make two buckets or more (the first of 1 MiB), and they
    // start as their gradients are ready, before backward ends.
    let (buckets, started) = overlap(&stdout);
    assert!(buckets >= 2.0 && (1.0..=buckets).contains(&started), "{buckets} buckets, {started} started: {stdout}");

    // Two micro-batches of 8 per rank and update: the first one's backward all-reduces nothing.
    let dir = out("accumulated");
    let half_batch = common.map(|a| if a == "32" { "16" } else { a });
    let accumulated = convnets(
        &[&["train", "googlenet", "--nproc", "2", "--accum-steps", "2", "--out", &dir][..], &half_batch].concat(),
    );
    assert!(accumulated.status.success(), "{}", stderr(&accumulated));

    for run in ["two", "accumulated"] {
        let difference = max_relative_difference(Path::new(&out("one")), Path::new(&out(run)));
        assert!(difference.0 < 1e-5, "{run}: weights differ by {difference:?} relative");
        let (a, b) = (history_of(Path::new(&out("one"))), history_of(Path::new(&out(run))));
        let (a, b) = (&a.epochs[0], &b.epochs[0]);
        assert_eq!(b.examples, 256, "every example once, counted over both ranks");
        assert!((a.train_loss - b.train_loss).abs() <= 1e-5 * a.train_loss, "{run}: {a:?} vs {b:?}");
        assert_eq!((a.train_acc, a.test_acc), (b.train_acc, b.test_acc), "{run}: accuracy over the whole sets");
    }
}

/// Buckets per step, and how many of them started during backward, from a distributed run's
/// last line ("... MB per step in B buckets, S of them started during backward; ...").
fn overlap(stdout: &str) -> (f64, f64) {
    let line = stdout.lines().find(|l| l.starts_with("gradient all-reduce")).expect("the all-reduce line");
    let number_before = |marker: &str| -> f64 {
        let head = &line[..line.find(marker).unwrap_or_else(|| panic!("{marker:?} in {line}"))];
        head.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (number_before(" buckets,"), number_before(" of them started during backward"))
}

#[test]
fn sync_bn_makes_two_processes_equal_one_and_without_it_each_normalises_its_share() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 256);
    let out = |name: &str| tmp.path().join(name);
    // A tenth of d2l's rate: at 1.0, a change of thread count alone moves LeNet's weights by
    // 1e-5 within these 8 steps.
    let common = ["--epochs", "1", "--batch-size", "32", "--lr", "0.1", "--data", &data, "--device", "cpu"];
    let train = |name: &str, extra: &[&str]| {
        let dir = out(name);
        let result = convnets(&[&["train", "lenet-bn", "--out", dir.to_str().unwrap()][..], &common, extra].concat());
        assert!(result.status.success(), "{}", stderr(&result));
        dir
    };
    let one = train("one", &[]);
    let synced = train("synced", &["--nproc", "2", "--sync-bn"]);
    let difference = max_relative_difference(&one, &synced);
    assert!(difference.0 < 1e-5, "with --sync-bn, weights and running statistics differ by {difference:?}");
    let saved: train::TrainConfig =
        serde_json::from_slice(&std::fs::read(synced.join("config.json")).unwrap()).unwrap();
    assert!(saved.sync_bn);

    // DDP's default: each rank normalises with its own 16 examples' statistics, so the steps
    // differ from one process's (this is what --sync-bn changes).
    let per_rank = train("per-rank", &["--nproc", "2"]);
    let difference = max_relative_difference(&one, &per_rank);
    assert!(difference.0 > 1e-3, "without --sync-bn the run differs from one process, by {difference:?}");
}

#[test]
fn a_killed_rank_stops_the_others_with_one_line_and_the_run_resumes_with_another_process_count() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 512);
    let dir = tmp.path().join("run");
    let dir_str = dir.to_str().unwrap();
    let port = free_port();
    // A timeout far above the hang guard: rank 0 must notice the death itself, not time out.
    let args = [
        "train",
        "lenet-bn",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--data",
        &data,
        "--device",
        "cpu",
        "--out",
        dir_str,
        "--dist-timeout",
        "3600",
    ];
    let rank0 = rank(&args, 0, 2, port, &[]);
    // Rank 1 holds before step 3 of epoch 2 (epoch 1's checkpoint is written by then) and is
    // killed there, while rank 0 waits for it in that step's collective.
    let mut rank1 = rank(&args, 1, 2, port, &[("CONVNETS_HOLD_AT", "2:3")]);
    let mut lines = BufReader::new(rank1.stderr.take().unwrap()).lines();
    let held = lines.by_ref().map(Result::unwrap).find(|l| l.starts_with("held at"));
    assert_eq!(held.as_deref(), Some("held at epoch 2, batch 3"));
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let out = finish(rank0, HANG);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines = errors(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: rank 0: lenet-bn: training failed at epoch 2, batch 3 of 8: ")
            && lines[0].contains("lost contact with the other ranks")
            && lines[0].contains(&format!(
                "The checkpoint of epoch 1 is kept: `convnets train --resume {dir_str}` continues from it."
            )),
        "{}",
        lines[0]
    );
    assert!(!lines[0].to_lowercase().contains("timed out"), "noticed the death, not a timeout: {}", lines[0]);
    for noise in ["panicked", "frame #", "Exception raised from"] {
        assert!(!err.contains(noise), "no {noise:?} in {err}");
    }
    // The last complete checkpoint is intact and --resume continues it, here with one process.
    let state = train::load_checkpoint(&dir, Device::Cpu).unwrap().state;
    assert_eq!(state.epoch, 1);
    assert_eq!(state.history.epochs.len(), 1);
    let resumed = convnets(&["train", "--resume", dir_str, "--epochs", "2", "--data", &data, "--device", "cpu"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(history_of(&dir).epochs.len(), 2);
}

#[test]
fn a_run_resumed_with_another_number_of_processes_ends_where_an_uninterrupted_one_does() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 128);
    let common = ["--batch-size", "32", "--data", &data, "--device", "cpu"];
    let dir = |name: &str| tmp.path().join(name);
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let check = |out: Output| assert!(out.status.success(), "{}", stderr(&out));
    // GoogLeNet at 16x16 with a momentum recipe: the optimizer state crosses the resume too.
    let fresh = ["train", "googlenet", "--resize", "16", "--momentum", "0.9", "--lr", "0.05"];

    check(convnets(&[&fresh[..], &["--epochs", "3", "--out", &s(&dir("straight"))], &common].concat()));
    // Two processes for an epoch, then one, then two again.
    check(convnets(&[&fresh[..], &["--epochs", "1", "--nproc", "2", "--out", &s(&dir("mixed"))], &common].concat()));
    let resume = ["--data", &data, "--device", "cpu"]; // the batch size is the run's
    check(convnets(&[&["train", "--resume", &s(&dir("mixed")), "--epochs", "2"][..], &resume].concat()));
    check(convnets(
        &[&["train", "--resume", &s(&dir("mixed")), "--epochs", "3", "--nproc", "2"][..], &resume].concat(),
    ));

    let difference = max_relative_difference(&dir("straight"), &dir("mixed"));
    assert!(difference.0 < 1e-5, "differ by {difference:?}");
    assert_eq!(history_of(&dir("mixed")).epochs.len(), 3);
}

#[test]
fn workers_join_a_store_that_a_torchrun_agent_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 64);
    let dir = tmp.path().join("run");
    // This test plays torchrun's agent: it serves the store, with a key of its own at the name
    // convnets would use without its prefix.
    let agent = Store::new("127.0.0.1", 0, true, Duration::from_secs(30), "").unwrap();
    agent.set("run/0", b"the agent's own value").unwrap();
    let env = [("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "3")];
    let args = ["train", "lenet-bn", "--epochs", "1", "--batch-size", "32", "--data", &data, "--device", "cpu"];
    let args = [&args[..], &["--out", dir.to_str().unwrap(), "--dist-timeout", "30"]].concat();
    let ranks: Vec<Child> = (0..2).map(|r| rank(&args, r, 2, agent.port(), &env)).collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let out = finish(child, HANG);
        assert!(out.status.success(), "rank {r}: {}", stderr(&out));
    }
    assert_eq!(history_of(&dir).epochs.len(), 1);
    assert_eq!(agent.get("run/0").unwrap(), b"the agent's own value", "the agent's keys are untouched");
    let ours = String::from_utf8(agent.get("convnets/attempt_3/run/1").unwrap()).unwrap();
    assert!(ours.starts_with("WORLD_SIZE=2\nconvnets "), "{ours}");
}

#[test]
fn ranks_started_differently_a_port_in_use_and_an_unreachable_master_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 64);
    let args = |lr: &str| -> Vec<String> {
        ["train", "lenet-bn", "--epochs", "1", "--batch-size", "32", "--data", &data, "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--lr".into(), lr.into(), "--out".into(), tmp.path().join("run").display().to_string()])
            .chain(["--dist-timeout".into(), "10".into()])
            .collect()
    };

    // Rank 1 was given another learning rate: both stop, naming the setting.
    let port = free_port();
    let (a, b) = (args("0.9"), args("0.5"));
    let children = [rank(&refs(&a), 0, 2, port, &[]), rank(&refs(&b), 1, 2, port, &[])];
    for (r, child) in children.into_iter().enumerate() {
        let out = finish(child, HANG);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let lines = errors(&err);
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].starts_with(&format!("error: rank {r}: rank ")), "{}", lines[0]);
        assert!(lines[0].contains("was started differently") && lines[0].contains("\"lr\": 0.9"), "{}", lines[0]);
    }
    assert!(!tmp.path().join("run").exists(), "nothing is written when the ranks disagree");

    // A world size that differs on one rank.
    let port = free_port();
    let children = [rank(&refs(&a), 0, 2, port, &[]), rank(&refs(&a), 1, 2, port, &[("WORLD_SIZE", "3")])];
    for (r, child) in children.into_iter().enumerate() {
        let out = finish(child, HANG);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let (ours, theirs) = if r == 0 { (2, 3) } else { (3, 2) };
        assert_eq!(errors(&err).len(), 1, "{err}");
        assert!(err.contains(&format!("WORLD_SIZE={ours} here, WORLD_SIZE={theirs} there")), "{err}");
    }

    // MASTER_PORT already taken by another program: rank 0 says so at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = finish(rank(&refs(&a), 0, 2, port, &[]), HANG);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(errors(&err).len(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "error: rank 0: cannot serve the rendezvous at 127.0.0.1:{port} (is MASTER_PORT in use?)"
        )),
        "{err}"
    );
    assert!(!err.contains("[c10d]") && !err.contains("frame #"), "one line: {err}");

    // Nobody serves the rendezvous: rank 1 gives up after --dist-timeout (3 s here).
    let mut quick = args("0.9");
    *quick.last_mut().unwrap() = "3".into();
    let out = finish(rank(&refs(&quick), 1, 2, free_port(), &[]), HANG);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(errors(&err).len(), 1, "{err}");
    assert!(err.contains("error: rank 1: cannot reach the rendezvous at 127.0.0.1:"), "{err}");
    assert!(err.contains(" within 3s"), "gave up after --dist-timeout: {err}");
    assert!(!err.contains("[c10d]") && !err.contains("frame #"), "one line: {err}");
}

#[test]
fn nproc_reports_the_rank_that_failed_and_stops_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 256);
    let dir = tmp.path().join("run");
    let out = Command::new(bin())
        .args(["train", "lenet-bn", "--nproc", "2", "--epochs", "3", "--batch-size", "32", "--data", &data])
        .args(["--device", "cpu", "--out", dir.to_str().unwrap(), "--dist-timeout", "30"])
        .env("CONVNETS_FAIL_AT", "2:3:1") // rank 1's third step of epoch 2 fails inside libtorch
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines = errors(&err);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: rank 1: lenet-bn: training failed at epoch 2, batch 3 of 8: libtorch:")),
        "{err}"
    );
    // Rank 0 lost contact, and says whose failure that followed.
    assert!(
        lines.iter().any(|l| l.starts_with("error: rank 0: after rank 1 failed: lenet-bn: training failed at epoch 2")
            && l.contains("lost contact with the other ranks")),
        "{err}"
    );
    // Whichever process ended first, the launcher names the rank whose failure stopped the run.
    let last = lines.last().map(String::as_str);
    assert!(
        last == Some("error: rank 1 of 2 exited with code 1")
            || last == Some("error: rank 1 of 2 failed first; the others stopped"),
        "{err}"
    );
    assert_eq!(train::load_checkpoint(&dir, Device::Cpu).unwrap().state.epoch, 1);

    // A mistake in the arguments is reported once, by rank 0.
    let out =
        convnets(&["train", "lenet-bn", "--nproc", "2", "--batch-size", "33", "--data", &data, "--device", "cpu"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        errors(&err),
        ["error: rank 0: --batch-size 33 does not split evenly over 2 processes: use a multiple of 2"],
        "{err}"
    );
}

#[test]
fn the_environment_names_the_run_as_torch_distributed_reads_it() {
    let vars = |pairs: &[(&str, &str)]| {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_vars(|name| map.get(name).cloned())
    };
    assert_eq!(vars(&[]).unwrap(), None, "no WORLD_SIZE: a single process");
    let world = vars(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "10.0.0.5"), ("MASTER_PORT", "1234")])
        .unwrap()
        .unwrap();
    assert_eq!((world.rank, world.size, world.local_rank), (1, 2, 1));
    assert_eq!((world.master_addr.as_str(), world.master_port, world.agent_store), ("10.0.0.5", 1234, false));
    let slurm = vars(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "4"), ("SLURM_LOCALID", "1"), ("MASTER_ADDR", "n1")])
        .unwrap()
        .unwrap();
    assert_eq!((slurm.rank, slurm.size, slurm.local_rank, slurm.master_port), (3, 4, 1, 29500));
    assert_eq!(vars(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0")]).unwrap(), None, "one task is a plain run");
    for (pairs, message) in [
        (&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")][..], "WORLD_SIZE is set but RANK is not"),
        (&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h")][..], "RANK=2 is not below WORLD_SIZE=2"),
        (&[("WORLD_SIZE", "2"), ("RANK", "0")][..], "MASTER_ADDR is not set"),
        (&[("WORLD_SIZE", "two"), ("RANK", "0")][..], "WORLD_SIZE=two: expected a whole number"),
        (&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "0")][..], "MASTER_PORT=0"),
    ] {
        let error = vars(pairs).unwrap_err().to_string();
        assert!(error.contains(message), "{error}");
    }
}

#[test]
fn each_rank_takes_every_world_th_example_of_the_padded_order_as_distributed_sampler_does() {
    let order = [7, 3, 9, 1, 4];
    assert_eq!(shard(&order, 0, 2), [7, 9, 4]);
    assert_eq!(shard(&order, 1, 2), [3, 1, 7], "padded with the order's first index");
    assert_eq!(shard(&order, 2, 3), [9, 7]);
    assert_eq!(shard(&order, 0, 1), order);
    assert!(shard(&[], 0, 2).is_empty());
    // Batch k of the ranks together is batch k of one process, for an even split.
    let order: Vec<usize> = (0..64).rev().collect();
    let (a, b) = (shard(&order, 0, 2), shard(&order, 1, 2));
    for k in 0..4 {
        let mut together: Vec<usize> = a[k * 8..(k + 1) * 8].iter().chain(&b[k * 8..(k + 1) * 8]).copied().collect();
        let mut whole = order[k * 16..(k + 1) * 16].to_vec();
        together.sort();
        whole.sort();
        assert_eq!(together, whole);
    }
}

/// The processes of `pid`'s tree: it and its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tree[i])).unwrap_or_default();
        tree.extend(children.split_whitespace().map(|c| c.parse::<u32>().unwrap()));
        i += 1;
    }
    tree
}

/// The local addresses (`IP:port`, as /proc/net shows them) that the processes `pids` listen on.
fn listening(pids: &[u32]) -> Vec<String> {
    let inodes: std::collections::HashSet<String> = pids
        .iter()
        .flat_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten())
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|table| {
            std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).map(str::to_string).collect::<Vec<_>>()
        })
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A: LISTEN.
            (fields[3] == "0A" && inodes.contains(fields[9])).then(|| fields[1].to_string())
        })
        .collect()
}

#[test]
fn a_run_on_one_machine_listens_on_the_loopback_interface_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 128);
    let dir = tmp.path().join("run");
    // Both ranks hold before their second step: the store and Gloo's pairs are all up. They go
    // on when the release file exists, so the run ends by itself (no process to kill).
    let release = tmp.path().join("release");
    let mut launcher = Command::new(bin())
        .args(["train", "lenet-bn", "--nproc", "2", "--epochs", "1", "--batch-size", "32", "--data", &data])
        .args(["--device", "cpu", "--out", dir.to_str().unwrap()])
        .env("CONVNETS_HOLD_AT", "1:2")
        .env("CONVNETS_HOLD_RELEASE", &release)
        .env_remove("GLOO_SOCKET_IFNAME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stderr.take().unwrap()).lines().map(Result::unwrap);
    let mut held = 0;
    for line in lines.by_ref() {
        held += usize::from(line.starts_with("held at epoch 1, batch 2"));
        if held == 2 {
            break;
        }
    }
    assert_eq!(held, 2, "both ranks reach the held step");
    let tree = process_tree(launcher.id());
    let addresses = listening(&tree);
    std::fs::write(&release, "").unwrap();
    let rest: Vec<String> = lines.collect();
    assert!(launcher.wait().unwrap().success(), "{rest:?}");
    assert_eq!(tree.len(), 3, "the launcher and its two workers: {tree:?}");
    // The launcher's store and each worker's Gloo pair, on 127.0.0.1 (0100007F) alone.
    assert!(addresses.len() >= 3, "{addresses:?}");
    assert!(addresses.iter().all(|a| a.starts_with("0100007F:")), "{addresses:?}");
}
