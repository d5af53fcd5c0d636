//! TensorBoard event files: every point d2l plots, read back through the record checksums,
//! and a resumed run continuing its curves without repeating points.

use std::path::Path;

mod common;
use common::{RNG, small_data};
use convnets::models::Network;
use convnets::report::tensorboard::{self, EXAMPLES_PER_SEC, LEARNING_RATE, TEST_ACCURACY, TRAIN_ACCURACY, TRAIN_LOSS};
use convnets::train::{self, History, Run, TrainConfig};
use tch::Device;

fn train_lenet(dir: &Path, epochs: usize, start: Option<train::CheckpointState>) -> History {
    let config = TrainConfig { epochs, batch_size: 64, ..TrainConfig::d2l("lenet-bn").unwrap() };
    let data = small_data(600, 100);
    let net = match &start {
        Some(_) => train::load_checkpoint(dir, Device::Cpu).unwrap().net,
        None => {
            tch::manual_seed(0);
            Network::new("lenet-bn", config.net_config(), Device::Cpu).unwrap()
        }
    };
    let mut run =
        Run { config, data: &data, dir: dir.to_path_buf(), observers: convnets::report::run_files(), replicas: None };
    train::train(&mut run, &net, start).unwrap()
}

/// What the history says TensorBoard should show: (step, tag, value) in the order written.
fn expected(history: &History) -> Vec<(i64, String, f32)> {
    let step = |x: f64| (x * 10.0).round() as i64; // 600 examples / 64 = 10 batches per epoch
    let mut out = Vec::new();
    for p in &history.points {
        for (tag, v) in [(TRAIN_LOSS, p.train_loss), (TRAIN_ACCURACY, p.train_acc), (TEST_ACCURACY, p.test_acc)] {
            if let Some(v) = v {
                out.push((step(p.x), tag.to_string(), v as f32));
            }
        }
    }
    out
}

fn only(scalars: &[(i64, String, f32)], tags: &[&str]) -> Vec<(i64, String, f32)> {
    scalars.iter().filter(|(_, t, _)| tags.contains(&t.as_str())).cloned().collect()
}

#[test]
fn every_chart_point_and_epoch_rate_is_in_the_event_file() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let history = train_lenet(dir.path(), 2, None);
    let file = tensorboard::event_file(dir.path()).unwrap();
    assert!(file.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
    let scalars = tensorboard::read_scalars(&file).unwrap();
    assert_eq!(only(&scalars, &[TRAIN_LOSS, TRAIN_ACCURACY, TEST_ACCURACY]), expected(&history));
    let rates = only(&scalars, &[LEARNING_RATE, EXAMPLES_PER_SEC]);
    assert_eq!(rates.len(), 4, "{rates:?}");
    assert_eq!((rates[0].0, rates[0].1.as_str(), rates[0].2), (10, LEARNING_RATE, 1.0));
    let epoch = &history.epochs[0];
    assert_eq!(rates[1].2, (epoch.examples as f64 / epoch.step_seconds) as f32);
    assert_eq!(rates[2].0, 20);

    // A flipped byte is caught by the record checksums.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let err = tensorboard::read_scalars(&file).unwrap_err();
    assert!(err.contains("wrong checksum"), "{err}");
}

#[test]
fn a_resumed_run_rewrites_its_file_from_the_checkpoint_and_continues_the_curves() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    train_lenet(dir.path(), 1, None);
    // A run killed mid-epoch 2 had logged points past its checkpoint, in a file of its own.
    let stale = dir.path().join("events.out.tfevents.1.host.convnets");
    std::fs::copy(tensorboard::event_file(dir.path()).unwrap(), &stale).unwrap();
    let state = train::load_checkpoint(dir.path(), Device::Cpu).unwrap().state;
    let history = train_lenet(dir.path(), 3, Some(state));

    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(files.len(), 1, "the resumed run's file replaces the older ones: {files:?}");
    let scalars = tensorboard::read_scalars(&tensorboard::event_file(dir.path()).unwrap()).unwrap();
    assert_eq!(only(&scalars, &[TRAIN_LOSS, TRAIN_ACCURACY, TEST_ACCURACY]), expected(&history));
    let tests: Vec<i64> = only(&scalars, &[TEST_ACCURACY]).iter().map(|s| s.0).collect();
    assert_eq!(tests, [10, 20, 30], "one test accuracy per epoch, none repeated");
}
