//! ONNX export: every network loads in an independent runtime (tract, pure Rust) and computes
//! what libtorch computes; the from-scratch batch norm exports the built-in one's graph; the
//! command line writes a file with the run's metadata.

use convnets::export::{self, ModelCard};
use convnets::models::{MODELS, NetConfig, Network};
use convnets::onnx::proto::ModelProto;
use prost::Message;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};
use tract_onnx::prelude::*;

mod common;

fn card(input: [i64; 3]) -> ModelCard {
    ModelCard { input, preprocessing: "test".into(), metadata: vec![("k".into(), "v".into())] }
}

/// A network with d2l's fresh weights whose batch norms have seen a few batches, so that their
/// running statistics are not the defaults.
fn network(name: &str) -> Network {
    tch::manual_seed(3);
    let net = Network::new(name, NetConfig::default(), Device::Cpu).unwrap();
    let [c, h, w] = net.default_input();
    tch::no_grad(|| {
        for _ in 0..2 {
            let x = Tensor::rand([4, c, h, w], (Kind::Float, Device::Cpu)) * 2.0;
            // Training-mode passes update the running statistics.
            let _ = net.forward_t(&x, true).unwrap();
        }
    });
    net
}

/// tract's logits for `x` from the ONNX bytes.
fn tract_logits(bytes: &[u8], x: &Tensor) -> Vec<f32> {
    let model = tract_onnx::onnx().model_for_read(&mut std::io::Cursor::new(bytes)).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let shape: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(shape, data).unwrap();
    let out = plan.run(tvec!(tract_onnx::prelude::Tensor::from(input).into())).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

#[test]
fn every_network_runs_in_tract_with_libtorchs_logits_for_any_batch() {
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    // Two networks at a time: most of this is single-threaded (protobuf, tract's optimiser), and
    // which weights each network draws does not matter here.
    MODELS.par_iter().for_each(|info| {
        let net = network(info.name);
        let input = net.default_input();
        let bytes = export::export(&net, &card(input)).unwrap();
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(model.opset_import[0].version, 17);
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(graph.input[0].name, "input");
        assert_eq!(graph.output[0].name, "logits");
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"Dropout"), "{}: eval mode has no dropout", info.name);
        let weights: i64 = graph.initializer.iter().map(|t| t.dims.iter().product::<i64>()).sum();
        let state: i64 = net
            .vs
            .variables()
            .iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            // torchvision GoogLeNet's auxiliary classifiers are kept for loading, never run.
            .filter(|(k, _)| !(info.name == "tv-googlenet" && (k.starts_with("aux1.") || k.starts_with("aux2."))))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(weights, state, "{}: every weight and running statistic, once", info.name);
        // The same file for two batch sizes: the batch dimension is dynamic.
        for batch in [2, 3] {
            let x = Tensor::rand([batch, input[0], input[1], input[2]], (Kind::Float, Device::Cpu));
            let ours = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
            let ours = Vec::<f32>::try_from(ours.flatten(0, -1)).unwrap();
            let theirs = tract_logits(&bytes, &x);
            assert_eq!(theirs.len(), ours.len(), "{}", info.name);
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-4, "{} batch {batch}: tract differs from libtorch by {worst}", info.name);
        }
    });
}

#[test]
fn the_from_scratch_batch_norm_exports_the_built_in_ones_graph() {
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    let built_in = network("lenet-bn");
    let scratch = Network::new("lenet-bn-scratch", NetConfig::default(), Device::Cpu).unwrap();
    let weights = convnets::weights::state_dict(&built_in.vs);
    convnets::weights::load_state_dict(&scratch.vs, "lenet-bn-scratch", &weights, false).unwrap();
    let graph = |net: &Network| {
        let bytes = export::export(net, &card([1, 28, 28])).unwrap();
        ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap()
    };
    let (a, b) = (graph(&built_in), graph(&scratch));
    assert_eq!(a.node, b.node, "the same nodes");
    assert_eq!(a.initializer, b.initializer, "the same weights under the same names");
    assert_eq!((a.input, a.output), (b.input, b.output));
    let names: Vec<&str> = a.initializer.iter().map(|t| t.name.as_str()).take(6).collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]);
}

#[test]
fn export_refuses_a_network_it_cannot_trace_as_is() {
    let mut net = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    net.set_precision(convnets::accel::Precision::Bf16).unwrap();
    let err = export::export(&net, &card([1, 28, 28])).unwrap_err().to_string();
    assert!(err.contains("float32, contiguous network on the CPU"), "{err}");
    let net = Network::new("alexnet", NetConfig::default(), Device::Cpu).unwrap();
    let err = export::export(&net, &card([1, 96, 96])).unwrap_err().to_string();
    assert!(err.contains("alexnet cannot take a 1x96x96 input"), "{err}");
}

#[test]
fn the_command_line_exports_a_run_with_its_classes_and_preprocessing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (code, _, err) = common::convnets(&[
        "train",
        "lenet-bn",
        "--epochs",
        "1",
        "--precision",
        "bf16",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let out = tmp.path().join("lenet.onnx");
    let (code, stdout, err) = common::convnets(&["export", run.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("ONNX opset 17, input \"input\" batch x 1 x 28 x 28, output \"logits\""), "{stdout}");
    let model = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let meta: std::collections::HashMap<_, _> =
        model.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert_eq!(meta["convnets.network"], "lenet-bn");
    assert!(meta["convnets.classes"].starts_with("[\"t-shirt\",\"trouser\""), "{meta:?}");
    assert!(meta["convnets.preprocessing"].contains("pixel / 255"), "{meta:?}");
    assert_eq!(meta["convnets.epochs_trained"], "1");
    assert!(meta["convnets.config"].contains("\"precision\":\"bf16\""), "{meta:?}");
    let graph = model.graph.unwrap();
    assert!(graph.input[0].doc_string.contains("resized to 28x28"), "{:?}", graph.input[0]);

    // --format overrides the extension; safetensors stays as it was.
    let weights = tmp.path().join("weights.onnx.bin");
    let (code, stdout, err) =
        common::convnets(&["export", run.to_str().unwrap(), "--out", weights.to_str().unwrap(), "--format", "onnx"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("ONNX opset 17"), "{stdout}");
    let st = tmp.path().join("weights.safetensors");
    let (code, stdout, err) = common::convnets(&["export", run.to_str().unwrap(), "--out", st.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("tensors of lenet-bn written to"), "{stdout}");
}

#[test]
fn colour_networks_with_other_class_counts_export_too() {
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    let config = NetConfig { in_channels: 3, num_classes: 5 };
    for name in ["googlenet", "densenet"] {
        let net = Network::new(name, config, Device::Cpu).unwrap();
        let bytes = export::export(&net, &card([3, 64, 64])).unwrap();
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let ours = Vec::<f32>::try_from(tch::no_grad(|| net.forward_t(&x, false)).unwrap().flatten(0, -1)).unwrap();
        let theirs = tract_logits(&bytes, &x);
        assert_eq!(theirs.len(), 2 * 5, "{name}: five classes");
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: tract differs from libtorch by {worst}");
    }
}

#[test]
fn torchvision_networks_export_at_imagenet_input() {
    let _rng = common::RNG.lock().unwrap_or_else(|e| e.into_inner());
    // GoogLeNet's transform_input and ceil-mode pooling, AlexNet's 6x6 adaptive pooling.
    for name in ["tv-googlenet", "tv-alexnet"] {
        let net = Network::new(name, NetConfig::IMAGENET, Device::Cpu).unwrap();
        let bytes = export::export(&net, &card([3, 224, 224])).unwrap();
        let x = Tensor::rand([1, 3, 224, 224], (Kind::Float, Device::Cpu));
        let ours = Vec::<f32>::try_from(tch::no_grad(|| net.forward_t(&x, false)).unwrap().flatten(0, -1)).unwrap();
        let theirs = tract_logits(&bytes, &x);
        assert_eq!(theirs.len(), 1000, "{name}");
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: tract differs from libtorch by {worst}");
    }
    // At 100x100 AlexNet's features are 2x2: no fixed window makes them 6x6.
    let net = Network::new("tv-alexnet", NetConfig::IMAGENET, Device::Cpu).unwrap();
    let err = export::export(&net, &card([3, 100, 100])).unwrap_err().to_string();
    assert!(err.contains("adaptive average pooling of 2x2 to 6x6 has uneven windows"), "{err}");
}
