//! Hostile inputs, interrupted runs, bad arguments and full disks: convnets fails clearly and
//! never loses or corrupts what it wrote.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use convnets::data::{self, Dataset, Resize, Source};
use convnets::train;
use proptest::prelude::*;
use tch::Device;

mod common;
use common::{gz, idx_images, idx_labels};

/// Exit code and stderr of a `convnets` run.
fn run(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::convnets(args);
    (code, err)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_convnets")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn resize_keeps_size_range_and_constants(
        in_h in 1usize..40, in_w in 1usize..40, out_h in 1usize..80, out_w in 1usize..80,
        value in any::<u8>(), seed in any::<u64>(),
    ) {
        let image: Vec<u8> = (0..in_h * in_w).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 7) as u8).collect();
        let resize = Resize::new(in_h, in_w, out_h, out_w);
        let out = resize.apply(&image);
        prop_assert_eq!(out.len(), out_h * out_w);
        // Bilinear weights are non-negative: outputs stay within the input's range.
        let (lo, hi) = (*image.iter().min().unwrap(), *image.iter().max().unwrap());
        prop_assert!(out.iter().all(|&v| v >= lo && v <= hi));
        prop_assert!(resize.apply(&vec![value; in_h * in_w]).iter().all(|&v| v == value));
    }

    #[test]
    fn idx_files_round_trip(count in 0usize..20, rows in 1usize..12, cols in 1usize..12, zip in any::<bool>(), seed in any::<u8>()) {
        let pixels: Vec<u8> = (0..count * rows * cols).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let labels: Vec<u8> = (0..count).map(|i| ((i + seed as usize) % 10) as u8).collect();
        let mut images = idx_images(count as u32, rows as u32, cols as u32, &pixels);
        let mut label_file = idx_labels(&labels);
        if zip {
            images = gz(&images);
            label_file = gz(&label_file);
        }
        let split = data::parse_split(&images, "i", &label_file, "l").unwrap();
        prop_assert_eq!((split.rows, split.cols), (rows, cols));
        prop_assert_eq!(split.images, pixels);
        prop_assert_eq!(split.labels, labels);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_readers(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = data::parse_images(&bytes, "f");
        let _ = data::parse_labels(&bytes, "f");
        let _ = convnets::weights::parse_safetensors(&bytes, "f");
        let _ = convnets::weights::read_pytorch_bytes(&bytes, "f", None);
        let _ = convnets::data::decode::decode_bytes(&bytes);
    }

    #[test]
    fn mangled_pytorch_files_are_errors_never_panics(at in 0usize..2800, byte in any::<u8>(), cut in 1usize..2800) {
        // A real torch.save file with one byte changed, then cut short.
        let mut bytes = std::fs::read(common::golden("pytorch/views.pt")).unwrap();
        let at = at % bytes.len();
        bytes[at] = byte;
        bytes.truncate(cut.max(1).min(bytes.len()));
        let _ = convnets::weights::read_pytorch_bytes(&bytes, "f", None);
        let mut legacy = std::fs::read(common::golden("pytorch/views_legacy.pt")).unwrap();
        let at = at % legacy.len();
        legacy[at] = byte;
        let _ = convnets::weights::read_pytorch_bytes(&legacy, "f", None);
    }

    #[test]
    fn every_example_once_per_epoch_in_an_order_set_by_the_seed(len in 0usize..500, seed in any::<u64>(), epoch in 0usize..50) {
        let order = data::epoch_order(len, seed, epoch);
        let mut sorted = order.clone();
        sorted.sort();
        prop_assert_eq!(sorted, (0..len).collect::<Vec<_>>());
        prop_assert_eq!(order, data::epoch_order(len, seed, epoch));
    }
}

/// The first `train` training and 50 test images of the embedded sample, as IDX files.
fn dataset(dir: &Path, train: usize) -> PathBuf {
    common::idx_dataset(dir, train, 50)
}

#[test]
fn bad_arguments_get_one_line_with_the_fix_and_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["train", "lenet-bn", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (&["train", "lenet-bn", "--batch-size", "-5"], "--batch-size must be at least 1, got -5"),
        (&["train", "lenet-bn", "--epochs", "0"], "--epochs must be at least 1, got 0"),
        (&["train", "lenet-bn", "--epochs", "-3"], "--epochs must be at least 1, got -3"),
        (&["train", "lenet-bn", "--lr", "0"], "--lr must be a positive number"),
        (&["train", "lenet-bn", "--lr", "-0.1"], "--lr must be a positive number"),
        (&["train", "lenet-bn", "--lr", "nan"], "--lr must be a positive number"),
        (&["train", "alexnet", "--resize", "64"], "--resize 64: alexnet cannot take a 1x64x64 input"),
        (&["train", "lenet-bn", "--resize", "-1"], "--resize must be at least 1, got -1"),
        (&["train", "lenet-bn", "--device", "tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
        (&["train", "lenet-bn", "--device", "cuda"], "device cuda: this convnets was built without the `cuda` feature"),
        (&["train", "lenet-bn", "--out", "/proc/convnets-run"], "cannot create /proc/convnets-run"),
        (&["train", "lenet-bn", "--batch-size", "x"], "invalid value 'x' for '--batch-size <BATCH_SIZE>'"),
        (&["train", "resnet"], "unknown network 'resnet'; valid names:"),
        (&["train"], "name a network to train"),
        (&["train", "lenet-bn", "--data", "/nonexistent/dir", "--out", out], "/nonexistent/dir: no such directory"),
        (&["eval", "/nonexistent/run"], "/nonexistent/run: No such file or directory"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (&["train", "lenet-bn", "--precision", "fp16"], "unknown precision \"fp16\": expected fp32, bf16 or auto"),
        (&["bench", "lenet-bn", "--memory-format", "nhwc"], "unknown memory format \"nhwc\": expected auto"),
        (&["bench", "lenet-bn", "--cpu-kernels", "mkl"], "invalid value 'mkl' for '--cpu-kernels <CPU_KERNELS>'"),
        (&["profile", "lenet-bn", "--passes", "0"], "--passes and --batch-size must be at least 1"),
        (&["train", "--resume", out, "--precision", "bf16"], "'--resume <DIR>' cannot be used with '--precision"),
        (
            &["train", "--resume", out, "--memory-format", "contiguous"],
            "'--resume <DIR>' cannot be used with '--memory-format",
        ),
        (&["profile", "lenet"], "unknown network 'lenet'; valid names:"),
        (&["train", "lenet-bn", "--cuda-graphs", "--no-graphs"], "'--cuda-graphs' cannot be used with '--no-graphs'"),
    ];
    for (args, expected) in cases {
        let (code, err) = run(args);
        let expected_code = if args.contains(&"--data") || args[0] == "eval" { 1 } else { 2 };
        assert_eq!(code, expected_code, "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("data: ")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!Path::new(out).exists(), "nothing written for refused runs");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // The reading end is closed before the command starts, so its first line already meets a
    // pipe without a reader, as `convnets models | head -1` does after head's line.
    for args in [&["models"][..], &["summary", "lenet-bn"], &["models", "--json"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(bin()).args(args).stdout(writer).stderr(Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
}

fn weights_of(dir: &Path) -> Vec<(String, tch::Tensor)> {
    convnets::weights::state_dict(&train::load_checkpoint(dir, Device::Cpu).unwrap().net.vs)
}

/// Where a run is killed: held before a training step (`EPOCH:BATCH`), or once it printed a line
/// that starts so.
#[derive(Clone, Copy)]
enum KillAt {
    Held(&'static str),
    Line(&'static str),
}
use KillAt::{Held, Line};

#[test]
fn killed_runs_resume_to_the_same_result_and_never_leave_a_partial_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 1000);
    let data = data.to_str().unwrap();
    let common = ["--epochs", "6", "--batch-size", "50", "--data", data, "--device", "cpu"];

    let straight = tmp.path().join("straight");
    let (code, err) = run(&[&["train", "lenet-bn", "--out", straight.to_str().unwrap()][..], &common].concat());
    assert_eq!(code, 0, "{err}");

    let killed = tmp.path().join("killed");
    let killed_str = killed.to_str().unwrap();
    // Killed (SIGKILL) at moments spread over the run, each a state the test sees: held before
    // the first step (start-up), mid-epoch without a checkpoint, just after epoch 1's checkpoint
    // (its line is printed as the results files are written), mid-epoch with a checkpoint,
    // between epochs, before the very last step; resumed each time.
    for kill_at in
        [Held("1:1"), Held("1:12"), Line("epoch 1/6:"), Held("3:7"), Line("epoch 4/6:"), Held("5:1"), Held("6:20")]
    {
        let args: Vec<&str> = if killed.join(train::CHECKPOINT_FILE).exists() {
            [&["train", "--resume", killed_str][..], &common[..2], &common[4..]].concat()
        } else {
            [&["train", "lenet-bn", "--out", killed_str][..], &common].concat()
        };
        let mut command = Command::new(bin());
        command.args(&args).stdout(Stdio::null()).stderr(Stdio::piped());
        let wanted = match kill_at {
            Held(step) => {
                command.env("CONVNETS_HOLD_AT", step);
                format!("held at epoch {}, batch {}", &step[..1], &step[2..])
            }
            Line(line) => line.to_string(),
        };
        let mut child = command.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let seen = stderr.lines().map(Result::unwrap).find(|l| l.starts_with(&wanted));
        assert!(seen.is_some(), "the run ended before {wanted:?}");
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        if killed.join(train::CHECKPOINT_FILE).exists() {
            // Whatever the moment, the checkpoint is a complete one.
            let state = train::load_checkpoint(&killed, Device::Cpu).expect("a complete checkpoint").state;
            assert_eq!(state.history.epochs.len(), state.epoch);
        }
    }
    assert_eq!(train::load_checkpoint(&killed, Device::Cpu).unwrap().state.epoch, 5);
    // Finish the run; then it is complete.
    let resume = [&["train", "--resume", killed_str][..], &common[..2], &common[4..]].concat();
    let (code, err) = run(&resume);
    assert_eq!(code, 0, "{err}");
    let (code, err) = run(&resume);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already completed all 6 epochs"), "{err}");
    let (a, b) = (weights_of(&straight), weights_of(&killed));
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "{ka} differs after interrupted training");
    }
    let metrics = |d: &Path| {
        let h: train::History = serde_json::from_slice(&std::fs::read(d.join("metrics.json")).unwrap()).unwrap();
        h.epochs.iter().map(|e| (e.train_loss, e.train_acc, e.test_acc)).collect::<Vec<_>>()
    };
    assert_eq!(metrics(&straight), metrics(&killed));
    let leftovers: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files are cleaned up on resume: {leftovers:?}");
}

#[test]
fn a_full_disk_is_reported_and_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 200);
    let dir = tmp.path().join("run");
    let (code, err) =
        run(&["train", "lenet-bn", "--epochs", "1", "--data", data.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let checkpoint = dir.join(train::CHECKPOINT_FILE);
    let before = std::fs::read(&checkpoint).unwrap();
    let metrics_before = std::fs::read(dir.join("metrics.json")).unwrap();

    // A file size limit stands in for a full disk: writes past it fail (EFBIG), as on ENOSPC.
    let script = format!(
        "trap '' XFSZ; ulimit -f 64; exec {} train --resume {} --epochs 2 --data {}",
        bin(),
        dir.display(),
        data.display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("error: cannot write {}", checkpoint.display())), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "the previous checkpoint is intact");
    assert_eq!(std::fs::read(dir.join("metrics.json")).unwrap(), metrics_before);
    assert_eq!(train::load_checkpoint(&dir, Device::Cpu).unwrap().state.epoch, 1);
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp-"))
        .count();
    assert_eq!(leftovers, 0, "the failed temporary file is removed");
}

#[test]
fn a_libtorch_failure_mid_run_is_one_line_and_the_run_resumes_from_the_last_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"), 200);
    let data = data.to_str().unwrap();
    let common = ["--epochs", "3", "--batch-size", "50", "--data", data, "--device", "cpu"];
    let dir = tmp.path().join("run");
    let dir_str = dir.to_str().unwrap();

    // Epoch 2's third step fails inside libtorch (CONVNETS_FAIL_AT injects a real libtorch error).
    let out = Command::new(bin())
        .args([&["train", "lenet-bn", "--out", dir_str][..], &common].concat())
        .env("CONVNETS_FAIL_AT", "2:3")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [format!(
            "error: lenet-bn: training failed at epoch 2, batch 3 of 4: libtorch: zeros: Dimension size must be non-negative. The checkpoint of epoch 1 is kept: `convnets train --resume {dir_str}` continues from it."
        )],
        "{err}"
    );
    assert_eq!(err.lines().last(), errors.first().copied(), "the error is the last line: {err}");
    for noise in ["panicked", "frame #", "Exception raised from", "backtrace"] {
        assert!(!err.contains(noise), "no {noise:?} in {err}");
    }
    assert_eq!(train::load_checkpoint(&dir, Device::Cpu).unwrap().state.epoch, 1, "epoch 1's checkpoint is kept");

    // Resumed, the run ends exactly where an uninterrupted one does.
    let (code, err) = run(&[&["train", "--resume", dir_str][..], &common[..2], &common[4..]].concat());
    assert_eq!(code, 0, "{err}");
    let straight = tmp.path().join("straight");
    let (code, err) = run(&[&["train", "lenet-bn", "--out", straight.to_str().unwrap()][..], &common].concat());
    assert_eq!(code, 0, "{err}");
    for ((name, resumed), (_, uninterrupted)) in weights_of(&dir).iter().zip(&weights_of(&straight)) {
        assert!(resumed.equal(uninterrupted), "{name} differs after the failure and --resume");
    }

    // With RUST_BACKTRACE set, libtorch's whole message (its C++ stack) is kept for a bug report.
    let out = Command::new(bin())
        .args([&["train", "lenet-bn", "--out", tmp.path().join("traced").to_str().unwrap()][..], &common].concat())
        .env("CONVNETS_FAIL_AT", "1:1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Dimension size must be non-negative") && err.contains("No epoch had completed"), "{err}");
    assert!(err.contains("Exception raised from"), "the C++ stack is shown when asked for: {err}");

    let out = Command::new(bin())
        .args(["train", "lenet-bn", "--epochs", "1", "--out", tmp.path().join("x").to_str().unwrap()])
        .env("CONVNETS_FAIL_AT", "soon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("CONVNETS_FAIL_AT=soon: expected EPOCH:BATCH"), "{err}");
    assert!(!tmp.path().join("x").exists(), "nothing is written before the checks pass");
}

#[test]
fn labels_the_network_cannot_classify_are_an_error_naming_the_batch_not_a_panic() {
    let sample = Dataset::from_source(Source::Embedded).unwrap();
    let mut test = common::slice(&sample.test, 100);
    test.labels[70] = 12; // batch 3 of 4 at batch size 32
    let net = convnets::models::Network::new("lenet-bn", Default::default(), Device::Cpu).unwrap();
    let prep = data::Prep::d2l(None);
    let err = train::evaluate(&net, &std::sync::Arc::new(test.clone()), 32, &prep).err().unwrap().to_string();
    assert_eq!(err, "lenet-bn: evaluation failed at batch 3 of 4: label 12 is not one of the network's 10 classes");

    // In training the loss meets it first: libtorch's own refusal, as a value, with where it was.
    let dir = tempfile::tempdir().unwrap();
    let config = train::TrainConfig { epochs: 1, batch_size: 32, ..train::TrainConfig::d2l("lenet-bn").unwrap() };
    let data = Dataset { train: std::sync::Arc::new(test.clone()), test: std::sync::Arc::new(test), ..sample };
    let mut run = train::Run {
        config,
        data: &data,
        dir: dir.path().to_path_buf(),
        observers: convnets::report::run_files(),
        replicas: None,
    };
    let err = train::train(&mut run, &net, None).err().unwrap();
    let line = convnets::error_line(&err);
    let batch = data::epoch_order(100, 0, 0).iter().position(|&i| i == 70).unwrap() / 32 + 1;
    assert!(
        line.starts_with(&format!("lenet-bn: training failed at epoch 1, batch {batch} of 4: libtorch: ")),
        "{line}"
    );
    assert!(line.lines().next().unwrap().contains("libtorch: Target 12 is out of bounds"), "{line}");
    assert!(line.ends_with("No epoch had completed, so there is no checkpoint."), "{line}");
    assert_eq!(line.contains('\n'), convnets::backtraces_wanted(), "libtorch's C++ stack only when asked for");
}

#[test]
fn after_running_out_of_memory_the_hint_is_a_batch_size_whose_step_ran() {
    // Steps of more than 37 examples fail: halving from 256 finds 32.
    let mut tried = Vec::new();
    let fits = train::fitting_batch_size(256, |b| {
        tried.push(b);
        if b > 37 { anyhow::bail!("out of memory") } else { Ok(()) }
    });
    assert_eq!(fits, Some(32));
    assert_eq!(tried, [128, 64, 32]);
    assert_eq!(train::fitting_batch_size(8, |_| anyhow::bail!("out of memory")), None);
    assert_eq!(train::fitting_batch_size(1, |_| Ok(())), None, "nothing below one example");
    assert!(train::is_out_of_memory("CUDA out of memory. Tried to allocate 2.00 GiB"));
}
