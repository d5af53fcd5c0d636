//! train_ch6 end to end on small slices of the embedded sample: run directory contents,
//! checkpoints, exact resumption, divergence, and a short epoch for every network.

use std::path::Path;
use std::sync::Arc;

mod common;
use common::{RNG, small_data};
use convnets::data::{Dataset, Split};
use convnets::models::Network;
use convnets::train::{self, Diverged, History, Run, TrainConfig};
use tch::{Device, Kind, Tensor};

fn config(net: &str, epochs: usize, batch_size: usize) -> TrainConfig {
    TrainConfig { epochs, batch_size, ..TrainConfig::d2l(net).unwrap() }
}

fn fresh(config: &TrainConfig) -> Network {
    tch::manual_seed(config.seed as i64);
    let mut net = Network::new(&config.net, config.net_config(), Device::Cpu).unwrap();
    net.set_channels_last(net.info.uses_channels_last(config.memory_format, Device::Cpu)).unwrap();
    net
}

fn run<'a>(config: &TrainConfig, data: &'a Dataset, dir: &Path) -> Run<'a> {
    Run {
        config: config.clone(),
        data,
        dir: dir.to_path_buf(),
        observers: convnets::report::run_files(),
        replicas: None,
    }
}

/// The history without wall-clock measurements.
fn timeless(h: &History) -> History {
    let mut h = h.clone();
    for e in &mut h.epochs {
        e.step_seconds = 0.0;
        e.wall_seconds = 0.0;
    }
    h
}

fn weights_equal(a: &Network, b: &Network) -> bool {
    let (va, vb) = (a.vs.variables(), b.vs.variables());
    va.len() == vb.len() && va.iter().all(|(k, t)| vb.get(k).is_some_and(|u| t.equal(u)))
}

#[test]
fn a_run_writes_config_metrics_chart_and_checkpoint() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = small_data(600, 100);
    let cfg = config("lenet-bn", 2, 64);
    let dir = tempfile::tempdir().unwrap();
    let net = fresh(&cfg);
    let history = train::train(&mut run(&cfg, &data, dir.path()), &net, None).unwrap();

    // d2l's Animator: 10 batches per epoch, a point every 10 / 5 = 2 batches, then test acc.
    let xs: Vec<String> = history.points.iter().map(|p| format!("{:.1}", p.x)).collect();
    assert_eq!(xs, ["0.2", "0.4", "0.6", "0.8", "1.0", "1.0", "1.2", "1.4", "1.6", "1.8", "2.0", "2.0"]);
    assert!(history.points[5].test_acc.is_some() && history.points[5].train_loss.is_none());
    assert_eq!(history.epochs.len(), 2);
    assert_eq!(history.epochs[1].examples, 600);
    let last = &history.epochs[1];
    assert_eq!(history.points[10].train_loss, Some(last.train_loss));
    assert_eq!(history.points[11].test_acc, Some(last.test_acc));
    assert!(last.train_acc > 0.3, "learns something: {last:?}");

    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 13);
    assert_eq!(lines[0], "x,train_loss,train_acc,test_acc,lr");
    // A point of epoch 1: train loss and accuracy, no test accuracy, d2l's rate of 1.
    assert!(lines[1].starts_with("0.200000,") && lines[1].ends_with(",,1.000000"), "{}", lines[1]);
    assert_eq!(lines[6], format!("1.000000,,,{:.6},1.000000", history.epochs[0].test_acc));
    let json: History = serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json, history);
    let saved: TrainConfig = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(saved, cfg);
    let svg = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
    for label in ["train loss", "train acc", "test acc", "epoch"] {
        assert!(svg.contains(label), "chart.svg lacks {label}");
    }
    let png = std::fs::read(dir.path().join("chart.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let examples_per_sec = history.examples_per_sec();
    let seconds: f64 = history.epochs.iter().map(|e| e.step_seconds).sum();
    assert!((examples_per_sec - 1200.0 / seconds).abs() < 1e-6);

    // The checkpoint brings back the same network: equal weights and outputs.
    let checkpoint = train::load_checkpoint(dir.path(), Device::Cpu).unwrap();
    assert_eq!(checkpoint.state.epoch, 2);
    assert_eq!(checkpoint.state.config, cfg);
    assert_eq!(checkpoint.state.history, history);
    assert!(weights_equal(&checkpoint.net, &net));
    let x = Tensor::rand([5, 1, 28, 28], (Kind::Float, Device::Cpu));
    let (a, b) = tch::no_grad(|| (net.forward_t(&x, false).unwrap(), checkpoint.net.forward_t(&x, false).unwrap()));
    assert!(a.equal(&b));
    // No temporary files are left behind.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn resuming_gives_exactly_the_uninterrupted_run() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = small_data(300, 60);
    for (net, resize) in [("lenet-bn-scratch", None), ("nin", Some(67))] {
        let mut cfg = config(net, 3, 64);
        cfg.resize = resize;
        cfg.seed = 5;
        let straight_dir = tempfile::tempdir().unwrap();
        let straight = fresh(&cfg);
        let full = train::train(&mut run(&cfg, &data, straight_dir.path()), &straight, None).unwrap();

        // Interrupted after one epoch, then resumed from the checkpoint.
        let resumed_dir = tempfile::tempdir().unwrap();
        let first = TrainConfig { epochs: 1, ..cfg.clone() };
        train::train(&mut run(&first, &data, resumed_dir.path()), &fresh(&cfg), None).unwrap();
        let checkpoint = train::load_checkpoint(resumed_dir.path(), Device::Cpu).unwrap();
        assert_eq!(checkpoint.state.epoch, 1);
        let rest =
            train::train(&mut run(&cfg, &data, resumed_dir.path()), &checkpoint.net, Some(checkpoint.state)).unwrap();

        assert_eq!(timeless(&rest), timeless(&full), "{net}");
        assert!(weights_equal(&checkpoint.net, &straight), "{net}: weights differ after resuming");
    }
}

#[test]
fn a_diverging_loss_stops_with_a_hint_and_keeps_the_last_checkpoint() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = small_data(300, 60);
    let cfg = config("lenet-bn", 1, 100);
    let dir = tempfile::tempdir().unwrap();
    train::train(&mut run(&cfg, &data, dir.path()), &fresh(&cfg), None).unwrap();
    let checkpoint_path = dir.path().join(train::CHECKPOINT_FILE);
    let before = std::fs::read(&checkpoint_path).unwrap();

    let checkpoint = train::load_checkpoint(dir.path(), Device::Cpu).unwrap();
    let wild = TrainConfig { epochs: 3, lr: 1e38, ..cfg.clone() };
    let err = train::train(&mut run(&wild, &data, dir.path()), &checkpoint.net, Some(checkpoint.state)).unwrap_err();
    let diverged = err.downcast_ref::<Diverged>().expect("a divergence error");
    assert_eq!(diverged.epoch, 2);
    assert!(diverged.last_finite.is_some());
    let message = err.to_string();
    assert!(message.starts_with("training diverged at epoch 2, batch "), "{message}");
    assert!(message.contains("The checkpoint of epoch 1 is kept."), "{message}");
    assert!(message.contains("Try a lower --lr (this run used 100000000000000000000000000000000000000)"), "{message}");
    assert_eq!(std::fs::read(&checkpoint_path).unwrap(), before, "the last good checkpoint is untouched");
}

#[test]
fn bad_hyper_parameters_are_refused_before_training() {
    let data = small_data(10, 10);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (TrainConfig { lr: 0.0, ..config("lenet-bn", 1, 8) }, "--lr must be a positive number"),
        (TrainConfig { lr: f64::NAN, ..config("lenet-bn", 1, 8) }, "--lr must be a positive number"),
        (TrainConfig { epochs: 0, ..config("lenet-bn", 1, 8) }, "--epochs must be at least 1"),
        (TrainConfig { batch_size: 0, ..config("lenet-bn", 1, 8) }, "--batch-size must be at least 1"),
        (
            TrainConfig { resize: Some(64), ..config("alexnet", 1, 8) },
            "--resize 64: alexnet cannot take a 1x64x64 input",
        ),
    ];
    for (cfg, expected) in cases {
        let err = train::train(&mut run(&cfg, &data, dir.path()), &fresh(&cfg), None).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn a_batch_too_large_for_memory_is_refused_with_a_size_that_fits() {
    let data = small_data(2000, 10);
    let cfg = TrainConfig { batch_size: 100_000, ..config("alexnet", 1, 8) };
    // 2,000 examples (the whole split) of 224x224 floats are 401 MB; with 1 GiB available the
    // input may take 256 MiB, that is 1,337 examples.
    let err = cfg.check_batch_memory(&data.train, 1 << 30).unwrap_err();
    assert_eq!(
        err,
        "--batch-size 100000: one batch of 224x224 images needs 0.4 GiB, more than this machine can spare; try --batch-size 1337"
    );
    assert!(cfg.check_batch_memory(&data.train, 4 << 30).is_ok());
    assert!(config("lenet-bn", 1, 256).check_batch_memory(&data.train, 1 << 30).is_ok());
}

#[test]
fn every_network_trains_a_short_epoch_and_reloads() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // 32 images seen 8 times in one epoch of 8 steps: a consistent signal, so the loss on them
    // falls for every network at d2l's learning rate within the epoch.
    let sample = small_data(32, 32);
    let repeated = Split {
        images: sample.train.images.repeat(8),
        labels: sample.train.labels.repeat(8),
        ..(*sample.train).clone()
    };
    let data = Dataset { train: Arc::new(repeated), ..sample.clone() };
    for net in ["alexnet", "vgg11-small", "nin", "googlenet", "resnet18", "densenet"] {
        let cfg = TrainConfig { seed: 1, ..config(net, 1, 32) };
        let network = fresh(&cfg);
        let probe = convnets::data::make_batch(&sample.train, &(0..32).collect::<Vec<_>>(), &cfg.eval_prep()).unwrap();
        let probe_images = probe.images(Device::Cpu, None).unwrap();
        let probe_loss = |n: &Network| {
            tch::manual_seed(9);
            let loss =
                tch::no_grad(|| n.forward_t(&probe_images, true).unwrap().cross_entropy_for_logits(&probe.labels));
            loss.double_value(&[])
        };
        let before = probe_loss(&network);
        let dir = tempfile::tempdir().unwrap();
        train::train(&mut run(&cfg, &data, dir.path()), &network, None).unwrap();

        let checkpoint = train::load_checkpoint(dir.path(), Device::Cpu).unwrap();
        let (a, b) = tch::no_grad(|| {
            (network.forward_t(&probe_images, false).unwrap(), checkpoint.net.forward_t(&probe_images, false).unwrap())
        });
        assert!(a.equal(&b), "{net}: reloaded outputs differ");
        let after = probe_loss(&network);
        assert!(after < before - 0.01, "{net}: loss {before:.4} -> {after:.4}");
    }
}
