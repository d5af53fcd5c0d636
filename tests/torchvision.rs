//! torchvision's networks: its `state_dict` names and shapes, its parameter counts, and its
//! numbers on the same weights and input (files made by `bench/torchvision_reference.py` with
//! torchvision 0.26).

use std::collections::BTreeMap;

use convnets::models::{MODELS, NetConfig, Network, Origin};
use convnets::parity;
use tch::Device;

mod common;

fn torchvision_networks() -> impl Iterator<Item = &'static convnets::models::ModelInfo> {
    MODELS.iter().filter(|m| m.origin == Origin::Torchvision)
}

#[test]
fn every_torchvision_network_has_torchvisions_state_dict_names_and_shapes() {
    // Building networks draws from libtorch's global generator, which other tests seed.
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(common::golden("torchvision/state_dicts.json")).unwrap();
    let golden: BTreeMap<String, Vec<(String, Vec<i64>)>> = serde_json::from_str(&text).unwrap();
    let ours: Vec<&str> = torchvision_networks().map(|m| m.name).collect();
    let mut sorted = ours.clone();
    sorted.sort();
    assert_eq!(sorted, golden.keys().map(String::as_str).collect::<Vec<_>>());
    for info in torchvision_networks() {
        let net = Network::from_info(info, NetConfig::IMAGENET, Device::Cpu);
        let ours: BTreeMap<String, Vec<i64>> = net.vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
        let theirs: BTreeMap<String, Vec<i64>> = golden[info.name].iter().cloned().collect();
        let missing: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{}: missing {missing:?}, not torchvision's {extra:?}",
            info.name
        );
        for (key, shape) in &theirs {
            assert_eq!(&ours[key], shape, "{}: {key}", info.name);
        }
    }
}

#[test]
fn parameter_counts_are_torchvisions() {
    // Building networks draws from libtorch's global generator, which other tests seed.
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    // torchvision's model pages ("num_params"); GoogLeNet's without its auxiliary heads, which
    // never run.
    let expected = [
        ("tv-alexnet", 61_100_840),
        ("tv-vgg11", 132_863_336),
        ("tv-vgg11-bn", 132_868_840),
        ("tv-googlenet", 6_624_904),
        ("tv-resnet18", 11_689_512),
        ("tv-resnet34", 21_797_672),
        ("tv-resnet50", 25_557_032),
        ("tv-densenet121", 7_978_856),
    ];
    assert_eq!(torchvision_networks().map(|m| m.name).collect::<Vec<_>>(), expected.map(|e| e.0));
    for (name, count) in expected {
        let net = Network::new(name, NetConfig::IMAGENET, Device::Cpu).unwrap();
        assert_eq!(net.num_parameters(), count, "{name}");
    }
}

#[test]
fn tv_resnet18_computes_what_torchvision_computes_from_the_same_weights() {
    // Building networks draws from libtorch's global generator, which other tests seed.
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    let report = parity::run(&common::golden("torchvision/parity_resnet18.safetensors"), "tv-resnet18").unwrap();
    assert!(report.passed(), "{report}");
    let names: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
    for item in [
        "logits_eval",
        "logits_train",
        "loss_train",
        "grad.conv1.weight",
        "grad.fc.weight",
        "after_train.bn1.running_var",
    ] {
        assert!(names.contains(&item), "{item} compared: {names:?}");
    }
    assert_eq!(report.count(|s| *s == parity::Status::Pass), 87, "{report}");
}

/// A weight file of `name` as torchvision would publish it (ImageNet's 1000 classes), with
/// batch-norm statistics that are not the defaults.
fn pretrained_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let net = Network::new(name, NetConfig::IMAGENET, Device::Cpu).unwrap();
    let x = tch::Tensor::rand([4, 3, 64, 64], (tch::Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| net.forward_t(&x, true).unwrap());
    let path = dir.join(format!("{name}.safetensors"));
    let bytes = convnets::weights::safetensors_bytes(&convnets::weights::state_dict(&net.vs), None).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn state(run: &std::path::Path) -> BTreeMap<String, tch::Tensor> {
    let checkpoint = convnets::train::load_checkpoint(run, Device::Cpu).unwrap();
    convnets::weights::state_dict(&checkpoint.net.vs).into_iter().collect()
}

fn read_file_state(path: &std::path::Path) -> BTreeMap<String, tch::Tensor> {
    convnets::weights::read_tensors(path).unwrap().into_iter().collect()
}

#[test]
fn a_frozen_backbone_keeps_its_weights_and_statistics_and_only_the_new_head_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::colour_folder(&tmp.path().join("photos"), 4);
    let source = pretrained_file(tmp.path(), "tv-resnet18");
    let run = tmp.path().join("run");
    let (code, _, err) = common::convnets(&[
        "train",
        "tv-resnet18",
        "--pretrained",
        source.to_str().unwrap(),
        "--freeze-backbone",
        "--data",
        &data,
        "--resize",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "6",
        "--lr",
        "0.1",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("new fc trained alone, the backbone frozen"), "{err}");
    let (before, after) = (read_file_state(&source), state(&run));
    for (name, t) in &after {
        if name.starts_with("fc.") {
            continue;
        }
        assert!(t.equal(&before[name]), "{name} changed although frozen");
    }
    assert!(after["bn1.num_batches_tracked"].equal(&before["bn1.num_batches_tracked"]));
    assert_eq!(after["fc.weight"].size(), [3, 512], "a new head for the folder's three classes");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["finetune"]["head"], serde_json::json!(["fc"]));
    assert_eq!(config["finetune"]["freeze_backbone"], true);
    assert_eq!(config["normalize"]["mean"], serde_json::json!([0.485, 0.456, 0.406]), "ImageNet's, for its weights");
}

#[test]
fn the_head_learns_at_its_own_rate_in_a_group_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::colour_folder(&tmp.path().join("photos"), 2);
    let source = pretrained_file(tmp.path(), "tv-resnet18");
    // One step (the whole folder in one batch) at --lr 0.01, with and without a 10x head.
    let train = |out: &str, scale: &str| {
        let run = tmp.path().join(out);
        let (code, _, err) = common::convnets(&[
            "train",
            "tv-resnet18",
            "--pretrained",
            source.to_str().unwrap(),
            "--head-lr-scale",
            scale,
            "--data",
            &data,
            "--resize",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "6",
            "--lr",
            "0.01",
            "--augment",
            "none",
            "--out",
            run.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        state(&run)
    };
    let (same, faster) = (train("same", "1"), train("faster", "10"));
    let fresh = {
        // The head as drawn before that step: the same seed, no step.
        let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let net = Network::new("tv-resnet18", NetConfig { in_channels: 3, num_classes: 3 }, Device::Cpu).unwrap();
        let tensors: Vec<(String, tch::Tensor)> = read_file_state(&source).into_iter().collect();
        convnets::train::load_pretrained(&net, &tensors).unwrap();
        net.vs.variables()["fc.weight"].copy()
    };
    for (name, t) in &same {
        if !name.starts_with("fc.") {
            assert!(t.equal(&faster[name]), "{name}: the backbone's rate is --lr in both");
        }
    }
    let step = |w: &tch::Tensor| w - &fresh;
    let (slow_step, fast_step) = (step(&same["fc.weight"]), step(&faster["fc.weight"]));
    assert!(f64::try_from(slow_step.abs().max()).unwrap() > 1e-6, "the head moved");
    let off = f64::try_from((&fast_step - &slow_step * 10.0).abs().max()).unwrap();
    let slow = f64::try_from(slow_step.abs().max()).unwrap();
    assert!(off < 1e-6, "the head's step is 10 times the rate's: off by {off}, the step is {slow}");
}

#[test]
fn a_fine_tuned_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::colour_folder(&tmp.path().join("photos"), 4);
    let source = pretrained_file(tmp.path(), "tv-resnet18");
    let args = [
        "tv-resnet18",
        "--pretrained",
        source.to_str().unwrap(),
        "--head-lr-scale",
        "10",
        "--momentum",
        "0.9",
        "--data",
        &data,
        "--resize",
        "64",
        "--epochs",
        "3",
        "--batch-size",
        "6",
        "--lr",
        "0.01",
    ];
    let (straight, resumed) = common::straight_and_resumed(tmp.path(), &args, "2:1");
    common::assert_same_weights(&straight, &resumed);
    let checkpoint = convnets::train::load_checkpoint(&resumed, Device::Cpu).unwrap();
    assert!(checkpoint.state.optimizer.contains("new fc at 10x the backbone's rate"), "{}", checkpoint.state.optimizer);
    assert!(checkpoint.optimizer.iter().any(|(k, _)| k == "optimizer.fc.weight.0"), "the head's momentum is kept");
}

#[test]
fn weights_that_do_not_fit_are_one_clear_line_each() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::colour_folder(&tmp.path().join("photos"), 2);
    let resnet18 = pretrained_file(tmp.path(), "tv-resnet18");
    let truncated = tmp.path().join("truncated.pth");
    let whole = std::fs::read(common::golden("pytorch/ordered.pt")).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("train")).unwrap();
    std::fs::create_dir_all(empty.join("val")).unwrap();
    let cases: [(&[&str], &str); 5] = [
        // Another network's file.
        (&["tv-resnet34", "--pretrained", resnet18.to_str().unwrap(), "--data", &data], "missing key layer1.2."),
        // The book's ResNet-18 takes none of torchvision's names.
        (&["resnet18", "--pretrained", resnet18.to_str().unwrap(), "--data", &data], "weights do not fit resnet18"),
        (&["tv-resnet18", "--pretrained", truncated.to_str().unwrap(), "--data", &data], "truncated.pth"),
        // A folder without classes leaves no head to make.
        (&["tv-resnet18", "--pretrained", resnet18.to_str().unwrap(), "--data", empty.to_str().unwrap()], "class"),
        (&["tv-resnet18", "--freeze-backbone", "--data", &data], "--pretrained"),
    ];
    for (args, expected) in cases {
        let out = tmp.path().join("out");
        let args =
            [&["train"][..], args, &["--resize", "64", "--epochs", "1", "--out", out.to_str().unwrap()]].concat();
        let (code, _, err) = common::convnets(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Exception"), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(!out.join("checkpoint.safetensors").exists(), "{args:?}: nothing written");
    }
}

#[test]
fn torchvision_files_import_and_export_under_torchvisions_names() {
    let tmp = tempfile::tempdir().unwrap();
    let source = pretrained_file(tmp.path(), "tv-resnet18");
    let run = tmp.path().join("imported");
    let (code, stdout, err) =
        common::convnets(&["import", source.to_str().unwrap(), "--net", "tv-resnet18", "--out", run.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("loaded 122 tensors into tv-resnet18"), "{stdout}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["classes"].as_array().unwrap().len(), 1000);
    assert_eq!(config["classes"][0], "tench", "ImageNet's class names");
    let exported = tmp.path().join("exported.safetensors");
    let (code, _, err) = common::convnets(&["export", run.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (before, after) = (read_file_state(&source), read_file_state(&exported));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (name, t) in &before {
        assert!(t.equal(&after[name]), "{name}");
    }
}

#[test]
fn every_torchvision_network_trains_an_epoch_on_a_small_colour_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::colour_folder(&tmp.path().join("photos"), 2);
    for info in torchvision_networks() {
        let run = tmp.path().join(info.name);
        let (code, stdout, err) = common::convnets(&[
            "train",
            info.name,
            "--data",
            &data,
            "--resize",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--out",
            run.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{}: {err}", info.name);
        assert!(stdout.contains("examples/sec on cpu"), "{}: {stdout}", info.name);
        // Loading builds the network first, which draws from libtorch's global generator: under
        // the lock, so that it cannot land between another test's seeding and its draws.
        let checkpoint = {
            let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
            convnets::train::load_checkpoint(&run, Device::Cpu).unwrap()
        };
        assert_eq!(checkpoint.state.config.num_classes, 3, "{}", info.name);
        assert_eq!(checkpoint.net.head().len(), 1 + info.extra_heads.len(), "{}", info.name);
    }
}
