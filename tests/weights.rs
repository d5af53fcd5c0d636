//! PyTorch weights in and out, and numerical parity with PyTorch 2.11.

use std::collections::HashMap;
use std::path::Path;

use convnets::models::{MODELS, NetConfig, Network};
use convnets::parity::{self, Status};
use convnets::weights::{self, WeightsError};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

mod common;
use common::{convnets, golden};

#[test]
fn parity_with_pytorch_on_the_golden_files() {
    for (file, net, compared) in [
        ("parity_lenet_bn.safetensors", "lenet-bn", 3 + 14 + 8),
        ("parity_lenet_bn.safetensors", "lenet-bn-scratch", 3 + 14 + 4),
        ("parity_densenet.safetensors", "densenet", 3 + 64 + 42),
    ] {
        let report = parity::run(&golden(file), net).unwrap();
        assert!(report.passed(), "{report}");
        assert_eq!(report.count(|s| *s == Status::Pass), compared, "{net}: {report}");
        assert!(report.items.iter().any(|i| i.name == "logits_eval" && i.status == Status::Pass && i.max_rel < 1e-5));
        // The only skipped gradients are those that are zero in exact arithmetic.
        for item in report.items.iter().filter(|i| i.name.starts_with("grad.")) {
            if let Status::Skipped(why) = &item.status {
                assert!(item.name.ends_with(".bias") && why.starts_with("zero in exact arithmetic"), "{item:?}");
            }
        }
    }
}

fn write(path: &Path, named: &[(String, Tensor)]) {
    std::fs::write(path, weights::safetensors_bytes(named, None).unwrap()).unwrap();
}

#[test]
fn parity_fails_on_different_weights_and_skips_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut named = weights::read_tensors(&golden("parity_lenet_bn.safetensors")).unwrap();
    for (k, t) in &mut named {
        if k == "param.0.weight" {
            *t = &*t * 1.01;
        }
    }
    let tampered = tmp.path().join("tampered.safetensors");
    write(&tampered, &named);
    let report = parity::run(&tampered, "lenet-bn").unwrap();
    assert!(!report.passed());
    let logits = report.items.iter().find(|i| i.name == "logits_eval").unwrap();
    assert_eq!(logits.status, Status::Fail);
    let (code, out, err) = convnets(&["parity", tampered.to_str().unwrap(), "--net", "lenet-bn"]);
    assert_eq!(code, 1);
    assert!(out.contains("logits_eval") && out.contains("FAIL"), "{out}");
    assert!(err.contains("lenet-bn differs from PyTorch beyond tolerance"), "{err}");
    let (code, out, _) =
        convnets(&["parity", golden("parity_densenet.safetensors").to_str().unwrap(), "--net", "densenet"]);
    assert_eq!(code, 0);
    assert!(out.trim_end().ends_with("densenet: 109 passed, 0 failed, 20 skipped"), "{out}");

    // A network with dropout: train-mode items are skipped with the reason.
    tch::manual_seed(4);
    let net = Network::new("nin", NetConfig::default(), Device::Cpu).unwrap();
    let input = Tensor::rand([2, 1, 70, 70], (Kind::Float, Device::Cpu));
    let logits = tch::no_grad(|| net.forward_t(&input, false).unwrap());
    let mut file: Vec<(String, Tensor)> =
        weights::state_dict(&net.vs).into_iter().map(|(k, t)| (format!("param.{k}"), t)).collect();
    file.extend([
        ("input".to_string(), input),
        ("target".to_string(), Tensor::from_slice(&[1i64, 2])),
        ("logits_eval".to_string(), logits.shallow_clone()),
        ("logits_train".to_string(), logits),
        ("loss_train".to_string(), Tensor::from(2.3f32)),
        ("grad.0.0.weight".to_string(), Tensor::zeros([96, 1, 11, 11], (Kind::Float, Device::Cpu))),
    ]);
    let own = tmp.path().join("nin.safetensors");
    write(&own, &file);
    let report = parity::run(&own, "nin").unwrap();
    assert!(report.passed(), "{report}");
    let skipped: Vec<&str> = report
        .items
        .iter()
        .filter(|i| matches!(&i.status, Status::Skipped(w) if w.contains("dropout")))
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(skipped, ["logits_train", "loss_train", "grad.0.0.weight"]);
}

#[test]
fn import_export_import_is_exact_for_every_network() {
    let tmp = tempfile::tempdir().unwrap();
    // Two networks at a time (writing and reading VGG's 500 MB is single-threaded); the values
    // drawn do not matter, only that they survive the round trip.
    MODELS.par_iter().for_each(|info| {
        let source = Network::from_info(info, NetConfig::default(), Device::Cpu);
        // Give the batch norm state non-default values so that it is checked too.
        let x = Tensor::rand([2, 1, info.input_size, info.input_size], (Kind::Float, Device::Cpu));
        let _ = tch::no_grad(|| source.forward_t(&x, true).unwrap());
        let path = tmp.path().join(format!("{}.safetensors", info.name));
        write(&path, &weights::state_dict(&source.vs));
        let copy = Network::from_info(info, NetConfig::default(), Device::Cpu);
        let report =
            weights::load_state_dict(&copy.vs, info.name, &weights::read_tensors(&path).unwrap(), false).unwrap();
        assert!(report.skipped.is_empty());
        let (a, b) = (source.vs.variables(), copy.vs.variables());
        assert_eq!(report.loaded.len(), a.len());
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{}: {name} differs", info.name);
            assert_eq!(t.kind(), b[name].kind());
        }
    });
}

#[test]
fn batch_norm_weights_move_between_the_built_in_and_the_scratch_layer() {
    tch::manual_seed(2);
    let builtin = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    let x = Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| builtin.forward_t(&x, true).unwrap()); // non-trivial running statistics
    let scratch = Network::new("lenet-bn-scratch", NetConfig::default(), Device::Cpu).unwrap();
    weights::load_state_dict(&scratch.vs, "lenet-bn-scratch", &weights::state_dict(&builtin.vs), false).unwrap();
    let back = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    weights::load_state_dict(&back.vs, "lenet-bn", &weights::state_dict(&scratch.vs), false).unwrap();
    assert_eq!(back.vs.variables()["1.num_batches_tracked"].int64_value(&[]), 0);
    let y = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    for train in [false, true] {
        let (a, b, c) = tch::no_grad(|| {
            (
                builtin.forward_t(&y, train).unwrap(),
                scratch.forward_t(&y, train).unwrap(),
                back.forward_t(&y, train).unwrap(),
            )
        });
        assert!(a.allclose(&b, 1e-5, 1e-5, false), "train={train}");
        assert!(a.allclose(&c, 1e-5, 1e-5, false), "train={train}");
    }
}

#[test]
fn pytorch_saved_state_dicts_load_and_give_pytorchs_outputs() {
    // torch.save(dict(net.state_dict())) of d2l's LeNet-BN after one train-mode pass (PyTorch
    // 2.11), and its eval-mode logits on a fixed input.
    let tensors = weights::read_tensors(&golden("lenet_bn_state_dict.pt")).unwrap();
    assert_eq!(tensors.len(), 30);
    let net = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    weights::load_state_dict(&net.vs, "lenet-bn", &tensors, false).unwrap();
    let x = Tensor::linspace(0.0, 1.0, 2 * 784, (Kind::Float, Device::Cpu)).reshape([2, 1, 28, 28]);
    let logits = tch::no_grad(|| net.forward_t(&x, false).unwrap());
    let expected = Tensor::from_slice(&[
        0.20933416f64,
        -0.2566196,
        -0.08965589,
        0.4480043,
        0.16536085,
        0.04967404,
        -0.41659534,
        0.28982478,
        -0.0838757,
        -0.63346463,
        0.20930992,
        -0.25649929,
        -0.08961957,
        0.44804823,
        0.1653429,
        0.04965451,
        -0.41679808,
        0.28968585,
        -0.08396225,
        -0.63336629,
    ])
    .reshape([2, 10])
    .to_kind(Kind::Float);
    assert!(logits.allclose(&expected, 1e-5, 1e-6, false), "{logits}");

    // What state_dict() itself returns, an OrderedDict (which libtorch's own reader refuses),
    // loads the same tensors.
    let ordered = weights::read_tensors(&golden("lenet_bn_ordered_state_dict.pt")).unwrap();
    assert_eq!(ordered.len(), 30);
    for ((a, x), (b, y)) in ordered.iter().zip(&tensors) {
        assert_eq!(a, b);
        assert!(x.equal(y), "{a}");
    }
}

/// The values of a tensor, as f64, in row-major order.
fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn torch_save_files_read_in_both_formats_with_their_types_and_views() {
    // Made by torch 2.11.0's torch.save: tests/golden/README.md says how.
    let file = |name: &str| golden(&format!("pytorch/{name}"));
    let expected: [(&str, &[f64]); 4] = [
        ("0.bias", &[0.40334683656692505, 0.8380263447761536]),
        (
            "0.weight",
            &[
                1.5409960746765137,
                -0.293428897857666,
                -2.1787893772125244,
                0.5684312582015991,
                -1.0845223665237427,
                -1.3985954523086548,
            ],
        ),
        ("1.num_batches_tracked", &[7.0]),
        ("1.running_mean", &[-0.7192575931549072, -0.40334352850914]),
    ];
    for name in ["ordered.pt", "legacy.pt"] {
        let tensors = weights::read_tensors(&file(name)).unwrap();
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, expected.map(|(n, _)| n), "{name}");
        for ((_, t), (n, v)) in tensors.iter().zip(expected) {
            assert_eq!(values(t), v, "{name}: {n}");
        }
        assert_eq!(tensors[1].1.size(), [2, 3]);
        assert_eq!((tensors[1].1.kind(), tensors[2].1.kind(), tensors[2].1.size()), (Kind::Float, Kind::Int64, vec![]));
    }

    // Views of one storage (offsets, strides), and every element type, in both formats.
    for name in ["views.pt", "views_legacy.pt"] {
        let tensors: HashMap<String, Tensor> = weights::read_tensors(&file(name)).unwrap().into_iter().collect();
        let base: Vec<f64> = (0..24).map(f64::from).collect();
        assert_eq!(values(&tensors["base"]), base, "{name}");
        assert_eq!(values(&tensors["block"]), [8.0, 9.0, 10.0, 14.0, 15.0, 16.0], "{name}");
        assert_eq!(tensors["transposed"].size(), [6, 4]);
        assert_eq!(values(&tensors["transposed"])[..6], [0.0, 6.0, 12.0, 18.0, 1.0, 7.0], "{name}");
        for (key, kind) in [("half", Kind::Half), ("bfloat", Kind::BFloat16)] {
            assert_eq!(tensors[key].kind(), kind, "{name}");
            assert_eq!(values(&tensors[key]), [-2.0, -1.0, 0.0, 1.0, 2.0], "{name}: {key}");
        }
        assert_eq!((tensors["long"].kind(), values(&tensors["long"])), (Kind::Int64, vec![0.0, 1.0, 2.0, 3.0]));
        assert_eq!((tensors["flags"].kind(), values(&tensors["flags"])), (Kind::Bool, vec![1.0, 0.0, 1.0]));
    }

    // A checkpoint holds its state_dict under a key: named, and picked with --key.
    let e = weights::read_tensors(&file("checkpoint.pt")).unwrap_err().to_string();
    assert!(e.ends_with("the file's tensors are under model: choose with --key model (a checkpoint holds the state_dict under a key)"), "{e}");
    let tensors = weights::read_tensors_under(&file("checkpoint.pt"), Some("model")).unwrap();
    assert_eq!(tensors.len(), 4);
    assert_eq!(values(&tensors[0].1), expected[0].1);
    let e = weights::read_tensors_under(&file("checkpoint.pt"), Some("weights")).unwrap_err().to_string();
    assert!(e.ends_with("--key weights: no such key; the file's are model, epoch, optimizer"), "{e}");
}

#[test]
fn hostile_pytorch_files_are_refused_in_one_line_and_nothing_they_hold_runs() {
    let file = |name: &str| golden(&format!("pytorch/{name}"));
    // A pickle whose unpickling would run `touch /tmp/convnets-pickle-ran` (os.system).
    let marker = Path::new("/tmp/convnets-pickle-ran");
    let _ = std::fs::remove_file(marker);
    let e = weights::read_tensors(&file("malicious.pt")).unwrap_err().to_string();
    assert!(e.contains("refusing the global posix.system") && e.contains("nothing was run"), "{e}");
    assert!(!marker.exists(), "the command ran");
    // A storage cut short: the tensor it cannot hold is named.
    let e = weights::read_tensors(&file("short_storage.pt")).unwrap_err().to_string();
    assert!(
        e.contains(
            "0.weight: its size [2, 3] (stride [3, 1], offset 0) reaches past storage 0, which holds 1 value(s)"
        ),
        "{e}"
    );
    // Half a file.
    let e = weights::read_tensors(&file("truncated.pt")).unwrap_err().to_string();
    assert!(e.contains("truncated.pt: not a PyTorch file convnets can read: a broken zip"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // The command line says the same, in one line.
    let (code, _, err) =
        convnets(&["import", file("malicious.pt").to_str().unwrap(), "--net", "lenet-bn", "--out", "/nonexistent/x"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("refusing the global posix.system"), "{err}");
}

#[test]
fn bad_weight_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let net = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    let good = weights::safetensors_bytes(&weights::state_dict(&net.vs), None).unwrap();

    let truncated = tmp.path().join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    let e = weights::read_tensors(&truncated).unwrap_err().to_string();
    assert!(e.contains("truncated.safetensors: not a valid safetensors file"), "{e}");
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\xffnot json").unwrap();
    let e = weights::read_tensors(&garbage).unwrap_err().to_string();
    assert!(e.contains("garbage.safetensors: not a valid safetensors file"), "{e}");
    let pt = tmp.path().join("broken.pt");
    std::fs::write(&pt, b"PK\x03\x04 definitely not a zip").unwrap();
    let e = weights::read_tensors(&pt).unwrap_err().to_string();
    assert!(e.contains("broken.pt: not a PyTorch file convnets can read: a broken zip"), "{e}");
    let e = weights::read_tensors(&tmp.path().join("missing.pth")).unwrap_err().to_string();
    assert!(e.contains("missing.pth: no such file"), "{e}");

    let mut named = weights::state_dict(&net.vs);
    named.retain(|(k, _)| k != "0.bias");
    named.push(("99.weight".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))));
    for (k, t) in &mut named {
        if k == "15.weight" {
            *t = Tensor::zeros([10, 83], (Kind::Float, Device::Cpu));
        }
    }
    let fresh = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    let before = fresh.vs.variables()["0.weight"].copy();
    let err = weights::load_state_dict(&fresh.vs, "lenet-bn", &named, false).unwrap_err();
    let WeightsError::Mismatch { problems, .. } = &err else { panic!("{err}") };
    assert_eq!(
        problems,
        &["missing key 0.bias", "15.weight has shape [10, 83], the network needs [10, 84]", "unexpected key 99.weight"]
    );
    assert!(err.to_string().ends_with("(--allow-partial loads the keys that fit)"), "{err}");
    assert!(fresh.vs.variables()["0.weight"].equal(&before), "nothing loaded on error");
    let report = weights::load_state_dict(&fresh.vs, "lenet-bn", &named, true).unwrap();
    assert_eq!(report.skipped.len(), 3);
    assert!(fresh.vs.variables()["0.weight"].equal(&net.vs.variables()["0.weight"]));
}

#[test]
fn cli_import_eval_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    let net = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    let file = tmp.path().join("d2l.safetensors");
    write(&file, &weights::state_dict(&net.vs));
    let run = tmp.path().join("run");
    let (code, out, err) =
        convnets(&["import", file.to_str().unwrap(), "--net", "lenet-bn", "--out", run.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loaded 30 tensors into lenet-bn"), "{out}");
    let (code, out, err) = convnets(&["eval", run.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lenet-bn after 0 epochs, 500 test images") && out.contains("confusion matrix"), "{out}");

    // predict: d2l's picture of test images with their labels, and the user's own images.
    let grid = tmp.path().join("grid.png");
    let (code, out, err) =
        convnets(&["predict", run.to_str().unwrap(), "--count", "5", "--out", grid.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5);
    assert!(out.starts_with("   0: true ankle boot  predicted "), "{out}");
    let first_guess = out
        .lines()
        .next()
        .unwrap()
        .split("predicted ")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches("(wrong)")
        .trim()
        .to_string();
    let grey = convnets::data::decode::decode_as(&grid, 1).unwrap();
    let (pixels, h, w) = (grey.pixels, grey.height, grey.width);
    assert_eq!((h, w), (3 * 28 + 34 + 8, 5 * (3 * 28 + 8)));
    assert!(pixels.iter().any(|&p| p < 100) && pixels.iter().any(|&p| p > 200));
    let sample = convnets::data::Dataset::from_source(convnets::data::Source::Embedded).unwrap();
    let rgb: Vec<u8> = sample.test.image(0).iter().flat_map(|&v| [v, v, v]).collect();
    let own = tmp.path().join("boot.png");
    std::fs::write(&own, convnets::report::plot::encode_png(&rgb, 28, 28).unwrap()).unwrap();
    let (code, out, err) = convnets(&["predict", run.to_str().unwrap(), "--image", own.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // The same pixels as a PNG of the user's: the same class as for test image 0, first of the
    // five most likely.
    assert!(out.starts_with(&format!("{}: {first_guess} (", own.display())), "{out}");
    assert_eq!(out.lines().count(), 1);
    assert_eq!(out.matches("%)").count(), 5, "{out}");
    let not_png = tmp.path().join("not.png");
    std::fs::write(&not_png, b"GIF89a").unwrap();
    let (code, _, err) = convnets(&["predict", run.to_str().unwrap(), "--image", not_png.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not.png: not a readable image"), "{err}");

    let exported = tmp.path().join("out.safetensors");
    let (code, _, err) = convnets(&["export", run.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let a: HashMap<String, Tensor> = weights::read_tensors(&exported).unwrap().into_iter().collect();
    let b = net.vs.variables();
    assert_eq!(a.len(), b.len());
    assert!(b.iter().all(|(k, t)| a[k].equal(t)), "exported weights equal the imported ones under the same names");

    let (code, _, err) = convnets(&[
        "import",
        file.to_str().unwrap(),
        "--net",
        "resnet18",
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("weights do not fit resnet18: missing key 0.0.bias"), "{err}");
    let (code, _, err) =
        convnets(&["import", file.to_str().unwrap(), "--net", "lenet-bn", "--out", run.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("already holds a run"), "{err}");
}
