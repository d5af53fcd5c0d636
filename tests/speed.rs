//! The speed options compute what d2l computes: bf16 mixed precision stays close to fp32 and is
//! recorded with the run, channels-last changes no value, and on a CPU everything runs eagerly.

use std::path::Path;

use convnets::accel::{self, CudaGraph, MemoryFormat, Precision, Replayer};
mod common;
use common::{RNG, small_data};
use convnets::data::{self, Dataset};
use convnets::models::{self, NetConfig, Network};
use convnets::nn::Tracer;
use convnets::train::{self, Run, TrainConfig};
use tch::{Device, Kind, Tensor};

fn train_lenet(precision: Precision, dir: &Path, data: &Dataset) -> train::History {
    let config = TrainConfig { epochs: 2, batch_size: 64, precision, ..TrainConfig::d2l("lenet-bn").unwrap() };
    tch::manual_seed(0);
    let mut net = Network::new("lenet-bn", config.net_config(), Device::Cpu).unwrap();
    net.set_precision(precision).unwrap();
    let mut run =
        Run { config, data, dir: dir.to_path_buf(), observers: convnets::report::run_files(), replicas: None };
    train::train(&mut run, &net, None).unwrap()
}

#[test]
fn bf16_trains_close_to_fp32_and_is_kept_with_the_run() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = small_data(512, 500);
    let (fp32_dir, bf16_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fp32 = train_lenet(Precision::Fp32, fp32_dir.path(), &data);
    let bf16 = train_lenet(Precision::Bf16, bf16_dir.path(), &data);
    for (a, b) in fp32.epochs.iter().zip(&bf16.epochs) {
        // bfloat16 keeps 8 bits of mantissa: the losses differ, but only a little.
        assert_ne!(a.train_loss, b.train_loss, "bf16 must actually compute in bf16");
        assert!((a.train_loss - b.train_loss).abs() < 0.05, "fp32 {} vs bf16 {}", a.train_loss, b.train_loss);
    }
    assert!(bf16.epochs[1].train_loss < bf16.epochs[0].train_loss);

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bf16_dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["precision"], "bf16");
    let checkpoint = train::load_checkpoint(bf16_dir.path(), Device::Cpu).unwrap();
    assert_eq!(checkpoint.net.precision(), Precision::Bf16);
    // Weights stay float32 whatever the forward pass computes in.
    assert!(checkpoint.net.vs.variables().values().all(|t| t.kind() != Kind::BFloat16));
}

#[test]
fn runs_saved_before_precision_and_layout_existed_are_fp32_and_auto() {
    let mut config = serde_json::to_value(TrainConfig::d2l("resnet18").unwrap()).unwrap();
    assert_eq!(config["memory_format"], "auto");
    config.as_object_mut().unwrap().remove("precision");
    config.as_object_mut().unwrap().remove("memory_format");
    let config: TrainConfig = serde_json::from_value(config).unwrap();
    assert_eq!(config.precision, Precision::Fp32);
    assert_eq!(config.memory_format, MemoryFormat::Auto);
}

/// Trains a fresh network (fp32, NCHW) under `config`, which must refuse it; returns the error,
/// after checking that nothing was written.
fn refused_run(config: TrainConfig) -> String {
    let data = small_data(64, 64);
    let net = Network::new(&config.net, config.net_config(), Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run {
        config,
        data: &data,
        dir: dir.path().join("run"),
        observers: convnets::report::run_files(),
        replicas: None,
    };
    let err = train::train(&mut run, &net, None).unwrap_err().to_string();
    assert!(!dir.path().join("run").exists());
    err
}

#[test]
fn a_network_and_its_run_must_agree_on_layout() {
    // Auto lays NiN out channels-last on a CPU; this network was left NCHW.
    let err = refused_run(TrainConfig { epochs: 1, resize: Some(67), ..TrainConfig::d2l("nin").unwrap() });
    assert!(err.contains("laid out contiguous but the run is configured for channels-last"), "{err}");
}

#[test]
fn a_network_and_its_run_must_agree_on_precision() {
    let err =
        refused_run(TrainConfig { epochs: 1, precision: Precision::Bf16, ..TrainConfig::d2l("lenet-bn").unwrap() });
    assert!(err.contains("computes in fp32 but the run is configured for bf16"), "{err}");
}

#[test]
fn bf16_logits_are_float32_and_near_fp32() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    let mut net = Network::new("resnet18", NetConfig::default(), Device::Cpu).unwrap();
    let x = Tensor::rand([2, 1, 64, 64], (Kind::Float, Device::Cpu));
    let fp32 = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
    net.set_precision(Precision::Bf16).unwrap();
    let bf16 = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
    assert_eq!(bf16.kind(), Kind::Float);
    let scale = fp32.abs().max().double_value(&[]);
    let diff = (&fp32 - &bf16).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.05 * scale, "max difference {diff} for logits up to {scale}");
}

#[test]
fn evaluation_fuses_layers_with_their_batch_norm_and_activation_and_computes_the_same_logits() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(9);
    // The fused calls of one channels-last evaluation: a convolution or linear layer followed by
    // a ReLU in a Sequential (AlexNet's 5 and 2, VGG's 8 and 2, NiN's 12) or in a block
    // (GoogLeNet's stem's 3 and 6 in each of its 9 Inception blocks); ResNet's stem and two per
    // residual block (batch norm folded in, the second with the shortcut's sum); the LeNets'
    // convolution or linear layer + batch norm + sigmoid, 2 + 2 each (built-in and from-scratch
    // batch norm). The last number counts the shim's batch norm + ReLU passes, which take bf16
    // without oneDNN: DenseNet's one per conv block (16), transition block (3) and before its
    // head (1), besides its stem's convolution; torchvision's DenseNet-121's one per dense layer
    // (58) and transition (3), besides its stem's and each dense layer's 1x1 convolution with
    // the batch norm and ReLU after it.
    let nets = [
        ("alexnet", 224, 5 + 2, 0),
        ("vgg11-small", 224, 8 + 2, 0),
        ("nin", 224, 12, 0),
        ("googlenet", 96, 3 + 9 * 6, 0),
        ("resnet18", 64, 1 + 8 * 2, 0),
        // Its last stage on 1x1 maps, where oneDNN cannot fuse the shortcut's sum.
        ("resnet18", 32, 1 + 8 * 2, 0),
        ("lenet-bn", 28, 2 + 2, 0),
        ("lenet-bn-scratch", 28, 2 + 2, 0),
        ("densenet", 96, 1, 16 + 3 + 1),
        ("tv-densenet121", 32, 1 + 58, 58 + 3),
    ];
    for (name, side, onednn_calls, norm_relu_passes) in nets {
        let mut net = Network::new(name, NetConfig::default(), Device::Cpu).unwrap();
        let x = Tensor::rand([4, 1, side, side], (Kind::Float, Device::Cpu));
        // Running statistics far from the initial ones (two thirds of the way to the batch's),
        // so that a batch norm left out of a fused call shows in the logits.
        for _ in 0..10 {
            let _ = tch::no_grad(|| net.forward_t(&x, true).unwrap());
        }
        // Every network channels-last (oneDNN's fused operators), and the LeNets in their own
        // NCHW layout too (libtorch's convolution and matrix product, the batch norm folded in).
        let layouts: &[bool] = if name.starts_with("lenet") { &[true, false] } else { &[true] };
        for &channels_last in layouts {
            net.set_channels_last(channels_last).unwrap();
            for precision in [Precision::Fp32, Precision::Bf16] {
                let what = format!("{name} {precision} channels-last {channels_last}");
                net.set_precision(precision).unwrap();
                let before = convnets::nn::fused_calls();
                let dense_before = convnets::nn::dense_blocks_in_one_map();
                let fused = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
                // Without AVX-512, oneDNN has no bfloat16 kernels: bf16 runs layer by layer,
                // but for the shim's batch norm + ReLU passes.
                let onednn = if precision == Precision::Bf16 && !convnets::nn::fuses_bf16() { 0 } else { onednn_calls };
                assert_eq!(convnets::nn::fused_calls() - before, onednn + norm_relu_passes, "{what}");
                // A dense block's layers write into one map (channels-last, both precisions).
                let dense_blocks = if name.contains("densenet") && channels_last { 4 } else { 0 };
                assert_eq!(convnets::nn::dense_blocks_in_one_map() - dense_before, dense_blocks, "{what}");
                // A traced pass records every layer, so it runs them one by one.
                let layer_by_layer = tch::no_grad(|| net.forward_traced(&x, false, &mut Tracer::new())).unwrap();
                let scale = layer_by_layer.abs().max().double_value(&[]);
                let diff = (&fused - &layer_by_layer).abs().max().double_value(&[]);
                let tolerance = if precision == Precision::Fp32 { 1e-5 } else { 2e-2 };
                // NiN's untrained last block leaves every logit at 0 (its ReLUs' inputs are all
                // negative); the count above still checks that it fused.
                assert!(scale > 0.0 || name == "nin", "{what}: all logits 0");
                assert!(diff <= tolerance * scale, "{what}: logits differ by {diff} (up to {scale})");
            }
        }
        // With a gradient to track, nothing is fused (the fused operator has no derivative),
        // and a dense block concatenates after each layer (autograd saves each layer's input).
        net.set_precision(Precision::Fp32).unwrap();
        let (before, dense_before) = (convnets::nn::fused_calls(), convnets::nn::dense_blocks_in_one_map());
        net.forward_t(&x, false).unwrap().sum(Kind::Float).backward();
        assert_eq!(convnets::nn::fused_calls(), before, "{name} with gradients");
        assert_eq!(convnets::nn::dense_blocks_in_one_map(), dense_before, "{name} with gradients");
        assert!(net.vs.trainable_variables()[0].grad().defined());
    }
}

#[test]
fn evaluation_folds_again_after_the_weights_or_running_statistics_change() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(10);
    // Fused layers keep their folded weights from one evaluation to the next while the tensors
    // they came from are unchanged. LeNet-BN in NCHW float32 (its 4-d batch norms train in the
    // shim's kernel, which writes the running statistics through their data, its 2-d ones in
    // libtorch's, which leaves their versions as they were) and ResNet-18 channels-last in bf16
    // (oneDNN's fused calls, weights cast; in float32 on a CPU without oneDNN's bfloat16
    // kernels): after a change of running statistics alone, of one weight in place, or of a
    // weight's storage, the fused logits are the layer-by-layer ones, and moved.
    let resnet_precision = if convnets::nn::fuses_bf16() { Precision::Bf16 } else { Precision::Fp32 };
    for (name, side, channels_last, precision) in
        [("lenet-bn", 28, false, Precision::Fp32), ("resnet18", 32, true, resnet_precision)]
    {
        let mut net = Network::new(name, NetConfig::default(), Device::Cpu).unwrap();
        net.set_channels_last(channels_last).unwrap();
        net.set_precision(precision).unwrap();
        let x = Tensor::rand([8, 1, side, side], (Kind::Float, Device::Cpu));
        let tolerance = if precision == Precision::Fp32 { 1e-5 } else { 2e-2 };
        let mut previous = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
        let conv_weight = net.vs.trainable_variables()[0].shallow_clone();
        for change in ["running statistics", "a weight in place", "a weight's storage"] {
            let what = format!("{name}: after a change of {change}");
            match change {
                "running statistics" => {
                    let kernel_before = convnets::nn::batch_norm_kernel_calls();
                    let _ = tch::no_grad(|| net.forward_t(&(&x * 3.0 + 1.0), true)).unwrap();
                    if name == "lenet-bn" {
                        assert!(convnets::nn::batch_norm_kernel_calls() > kernel_before, "{what}: the shim's kernel");
                    }
                }
                "a weight in place" => tch::no_grad(|| drop(conv_weight.shallow_clone().g_mul_scalar_(-2.0))),
                _ => conv_weight.shallow_clone().set_data(&(&conv_weight * 0.5).contiguous()),
            }
            let before = convnets::nn::fused_calls();
            let fused = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
            assert!(convnets::nn::fused_calls() > before, "{what}: nothing fused");
            let layer_by_layer = tch::no_grad(|| net.forward_traced(&x, false, &mut Tracer::new())).unwrap();
            assert_close(&fused, &layer_by_layer, tolerance, &format!("{what}: logits"));
            let scale = layer_by_layer.abs().max().double_value(&[]);
            let moved = (&fused - &previous).abs().max().double_value(&[]);
            assert!(moved > 10.0 * tolerance * scale, "{what}: the logits moved by {moved} only");
            previous = fused;
        }
    }
}

#[test]
fn training_pools_before_its_relu_and_computes_the_same_bits() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // A ReLU followed by a max pool in one Sequential: VGG's 5 blocks, AlexNet's 3 pools,
    // GoogLeNet's first two blocks, ResNet's stem; NiN's ReLUs end its blocks and its pools sit
    // outside them, so it has none.
    let nets =
        [("vgg11-small", 224, 5), ("alexnet", 224, 3), ("googlenet", 96, 2), ("resnet18", 64, 1), ("nin", 224, 0)];
    for (name, side, pairs) in nets {
        tch::manual_seed(11);
        let net = Network::new(name, NetConfig::default(), Device::Cpu).unwrap();
        let x = Tensor::rand([2, 1, side, side], (Kind::Float, Device::Cpu));
        let params = net.vs.trainable_variables();
        let step = |traced: bool| {
            // The same dropout masks in both passes.
            tch::manual_seed(12);
            let logits = if traced {
                net.forward_traced(&x, true, &mut Tracer::new()).unwrap()
            } else {
                net.forward_t(&x, true).unwrap()
            };
            let grads = Tensor::run_backward(&[(&logits * &logits).sum(Kind::Float)], &params, false, false);
            (logits, grads)
        };
        let before = convnets::nn::pools_before_relu();
        let (logits, grads) = step(false);
        assert_eq!(convnets::nn::pools_before_relu() - before, pairs, "{name}: pairs pooled first");
        // A traced pass records every layer in order, so it runs the ReLU first.
        let before = convnets::nn::pools_before_relu();
        let (traced_logits, traced_grads) = step(true);
        assert_eq!(convnets::nn::pools_before_relu(), before, "{name}: traced");
        assert!(logits.abs().sum(Kind::Double).double_value(&[]) > 0.0 || name == "nin", "{name}: all logits 0");
        assert!(logits.equal(&traced_logits), "{name}: logits differ");
        for ((ours, theirs), p) in grads.iter().zip(&traced_grads).zip(&params) {
            assert!(ours.equal(theirs), "{name}: gradients of a {:?} parameter differ", p.size());
        }
    }
}

#[test]
fn average_pooling_of_nchw_maps_computes_libtorchs_values_and_gradients_bit_for_bit() {
    use convnets::nn::{AvgPool2d, Ctx, Layer};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(4);
    // LeNet's maps (NCHW, 2x2 windows with stride 2, the shim's own kernel; rows of 12 and of 4
    // outputs, computed 16 at a time past their ends), rows of 20 (a second, partial group of
    // 16), odd sides (the last row and column are in no window and get no gradient), one map too
    // small to split among threads, and channels-last maps (libtorch's kernel).
    let shapes = [[256, 6, 24, 24], [256, 16, 8, 8], [3, 2, 6, 40], [3, 5, 7, 9], [1, 1, 2, 2]];
    for kind in [Kind::Float, Kind::Double, Kind::BFloat16] {
        for (shape, channels_last) in shapes.iter().map(|s| (s, false)).chain([(&[4, 8, 10, 6], true)]) {
            let mut x = Tensor::randn(shape.as_slice(), (kind, Device::Cpu));
            if channels_last {
                x = accel::channels_last(&x).unwrap();
            }
            let x = x.set_requires_grad(true);
            let before = convnets::nn::avg_pool_kernel_calls();
            let pooled = AvgPool2d::new(2, 2).forward(&x, &mut Ctx::new(true)).unwrap();
            let by_kernel = convnets::nn::avg_pool_kernel_calls() - before;
            assert_eq!(by_kernel, u64::from(!channels_last), "{kind:?} {shape:?}: calls of the shim's kernel");
            let expected = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
            assert_eq!(pooled.size(), expected.size(), "{kind:?} {shape:?}");
            assert!(pooled.equal(&expected), "{kind:?} {shape:?}: outputs differ");
            let grad_out = Tensor::randn(expected.size(), (kind, Device::Cpu));
            let ours = Tensor::run_backward(&[(&pooled * &grad_out).sum(kind)], &[&x], false, false);
            let theirs = Tensor::run_backward(&[(&expected * &grad_out).sum(kind)], &[&x], false, false);
            assert!(ours[0].equal(&theirs[0]), "{kind:?} {shape:?}: gradients differ");
            assert!(ours[0].abs().sum(Kind::Double).double_value(&[]) > 0.0, "{kind:?} {shape:?}: no gradient");
        }
    }
}

#[test]
fn max_pooling_of_channels_last_maps_without_gradients_computes_libtorchs_values_bit_for_bit() {
    use convnets::nn::{Ctx, Layer, MaxPool2d};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(6);
    // GoogLeNet's windows (3x3, stride 1 and 2, padding 1), VGG's 2x2 on odd sides, ceil mode
    // (torchvision's, and a last window that would start in the right padding), a batch of 64 to
    // split among threads, 35 channels (not a whole number of vectors), and an NCHW map
    // (libtorch's kernel).
    let cases = [
        (MaxPool2d::padded(3, 1, 1), [4, 20, 7, 9], true),
        (MaxPool2d::padded(3, 2, 1), [3, 16, 11, 10], true),
        (MaxPool2d::new(2, 2), [2, 8, 9, 7], true),
        (MaxPool2d::ceil(3, 2, 0), [2, 24, 10, 10], true),
        (MaxPool2d::ceil(2, 2, 1), [2, 8, 3, 5], true),
        (MaxPool2d::padded(3, 1, 1), [64, 35, 6, 6], true),
        (MaxPool2d::padded(3, 1, 1), [4, 20, 7, 9], false),
    ];
    let same = |a: &Tensor, b: &Tensor| {
        a.isnan().equal(&b.isnan()) && a.nan_to_num(0.0, None, None).equal(&b.nan_to_num(0.0, None, None))
    };
    for kind in [Kind::Float, Kind::BFloat16] {
        for (pool, shape, channels_last) in &cases {
            let what = format!("{kind:?} {shape:?} {pool:?}");
            // Few distinct values, so that windows hold ties, and NaN and -inf among them (a NaN
            // is its window's maximum; a window of -inf alone gives -inf).
            let mut x = (Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 2.0).round();
            let cells = Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu));
            x = x.where_self(&cells.ge(0.02), &Tensor::from(f64::NAN));
            x = x.where_self(&cells.ge(0.04).logical_or(&cells.lt(0.02)), &Tensor::from(f64::NEG_INFINITY));
            let mut x = x.to_kind(kind);
            if *channels_last {
                x = accel::channels_last(&x).unwrap();
            }
            let (k, s, p) = (pool.kernel, pool.stride, pool.padding);
            let expected = x.max_pool2d([k, k], [s, s], [p, p], [1, 1], pool.ceil_mode);
            assert!(expected.isnan().any().int64_value(&[]) == 1, "{what}: no NaN maximum");
            // Evaluation (no gradient recorded), a tensor that needs none, and training, where
            // libtorch's kernel keeps the maxima's positions for the backward pass.
            for (case, needs_grad, no_grad) in
                [("evaluation", false, true), ("plain", false, false), ("training", true, false)]
            {
                let x = x.copy().set_requires_grad(needs_grad);
                let before = convnets::nn::max_pool_kernel_calls();
                let run = || pool.forward(&x, &mut Ctx::new(!no_grad)).unwrap();
                let pooled = if no_grad { tch::no_grad(run) } else { run() };
                let by_kernel = convnets::nn::max_pool_kernel_calls() - before;
                let what = format!("{what} {case}");
                assert_eq!(by_kernel, u64::from(*channels_last && !needs_grad), "{what}: calls of the shim's kernel");
                assert_eq!(pooled.size(), expected.size(), "{what}");
                assert_eq!(pooled.is_contiguous(), !*channels_last, "{what}: layout");
                assert!(same(&pooled, &expected), "{what}: outputs differ");
                assert_eq!(pooled.requires_grad(), needs_grad, "{what}");
            }
        }
    }
}

/// Asserts that `ours` has `theirs`' shape and type and differs from it by at most `tolerance`
/// times the largest value in `theirs` (which must not be all zeros).
fn assert_close(ours: &Tensor, theirs: &Tensor, tolerance: f64, what: &str) {
    assert_eq!(ours.size(), theirs.size(), "{what}");
    assert_eq!(ours.kind(), theirs.kind(), "{what}");
    let scale = theirs.abs().max().double_value(&[]);
    let diff = (ours - theirs).abs().max().double_value(&[]);
    assert!(scale > 0.0 && diff <= tolerance * scale, "{what}: differ by {diff} (up to {scale})");
}

/// libtorch's own training-mode batch norm of `x` (updating the running statistics given), the
/// reference the shim's batch norm kernels are checked against.
fn libtorch_training_batch_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, mean: &Tensor, var: &Tensor) -> Tensor {
    use convnets::nn::BatchNorm;
    Tensor::batch_norm(
        x,
        Some(weight),
        Some(bias),
        Some(mean),
        Some(var),
        true,
        BatchNorm::MOMENTUM,
        BatchNorm::EPS,
        false,
    )
}

/// Asserts that the gradients of x, weight and bias (`inputs`) through `ours` and `theirs` for
/// the output gradient `grad_out` are within 1e-5 of each other.
fn assert_gradients_close(
    ours: &Tensor,
    theirs: &Tensor,
    grad_out: &Tensor,
    inputs: &[&Tensor; 3],
    tolerance: f64,
    what: &str,
) {
    let by_ours = Tensor::run_backward(&[(ours * grad_out).sum(Kind::Float)], inputs, false, false);
    let by_theirs = Tensor::run_backward(&[(theirs * grad_out).sum(Kind::Float)], inputs, false, false);
    for (name, (a, b)) in ["dx", "dweight", "dbias"].iter().zip(by_ours.iter().zip(&by_theirs)) {
        assert_close(a, b, tolerance, &format!("{what} {name}"));
    }
}

#[test]
fn one_channel_convolutions_match_libtorchs_in_float32_and_under_bf16_autocast_whatever_the_thread_count() {
    use convnets::accel::Autocast;
    use convnets::nn::{Conv2d, Ctx, Layer};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(7);
    // The shim sums in vector lanes, oneDNN in its own order, so the last bits differ (bfloat16's
    // last bit is 2^-8 of the value).
    // LeNet's first layer (the shim's kernel), one with padding whose output row is no whole
    // number of vectors, one without a bias, one narrower than a vector and taller than a block
    // of rows, and those it leaves to libtorch: three channels, a stride of 2, an input that
    // needs a gradient, and VGG's first layer laid out channels-last (whose output must stay
    // channels-last).
    let cases = [
        ("lenet", [1, 6, 5, 1, 0], [256, 1, 28, 28], true, false, true),
        ("padded", [1, 4, 3, 1, 2], [5, 1, 13, 19], true, false, true),
        ("no bias", [1, 3, 5, 1, 1], [3, 1, 9, 40], false, false, true),
        ("narrow", [1, 5, 3, 1, 1], [2, 1, 14, 6], true, false, true),
        ("3 channels", [3, 6, 5, 1, 0], [4, 3, 12, 12], true, false, false),
        ("stride 2", [1, 6, 5, 2, 0], [4, 1, 12, 12], true, false, false),
        ("input gradient", [1, 6, 5, 1, 0], [4, 1, 12, 12], true, true, false),
        ("channels-last", [1, 16, 3, 1, 1], [4, 1, 12, 12], true, false, false),
    ];
    for (name, conv, shape, bias, input_grad, by_shim) in cases {
        let channels_last = name == "channels-last";
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let make = |p: &tch::nn::Path| {
            let bias = bias.then_some(convnets::nn::BiasInit::PytorchDefault);
            Conv2d::init(p, conv, convnets::nn::WeightInit::XavierUniform, bias)
        };
        let layer = make(&vs.root());
        let mut x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 2.0 + 0.5;
        if channels_last {
            accel::set_channels_last(&mut [layer.weight.shallow_clone()]).unwrap();
            x = accel::channels_last(&x).unwrap();
        }
        let x = x.set_requires_grad(input_grad);
        for (precision, tolerance) in [(Precision::Fp32, 1e-5), (Precision::Bf16, 1e-2)] {
            let what = format!("{name} {precision:?}");
            let autocast = Autocast::enter(Device::Cpu, precision).unwrap();
            let before = convnets::nn::one_channel_conv_calls();
            let y = layer.forward(&x, &mut Ctx::new(true)).unwrap();
            let by_kernel = convnets::nn::one_channel_conv_calls() - before;
            assert_eq!(by_kernel, u64::from(by_shim), "{what}: calls of the shim's kernel");
            let (s, p) = (conv[3], conv[4]);
            let expected = x.conv2d(&layer.weight, layer.bias.as_ref(), [s, s], [p, p], [1, 1], 1);
            // Channels-last where a channel's stride is 1 (the outputs have several channels).
            assert_eq!(y.stride()[1] == 1, channels_last, "{what}: layout");
            assert_eq!(y.stride(), expected.stride(), "{what}: layout");
            let grad_out = Tensor::randn(y.size(), (Kind::Float, Device::Cpu)).to_kind(y.kind());
            let params = layer.parameters();
            let ours = Tensor::run_backward(&[(&y * &grad_out).sum(Kind::Float)], &params, false, false);
            let (expected, theirs) = if precision == Precision::Fp32 {
                let theirs = Tensor::run_backward(&[(&expected * &grad_out).sum(Kind::Float)], &params, false, false);
                (expected, theirs)
            } else {
                // libtorch's bfloat16 convolution sums in bfloat16 where oneDNN has no kernels
                // for it (a CPU without AVX-512): its weight gradient over LeNet's batch is 2-3%
                // off. So bf16 is checked against exact sums (float64, which autocast leaves
                // alone) of the operands as autocast rounds them.
                let exact = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Double);
                let params: Vec<Tensor> = params.iter().map(|t| exact(t).set_requires_grad(true)).collect();
                let sums = exact(&x).conv2d(&params[0], params.get(1), [s, s], [p, p], [1, 1], 1);
                let grads =
                    Tensor::run_backward(&[(&sums * exact(&grad_out)).sum(Kind::Double)], &params, false, false);
                (sums.to_kind(Kind::BFloat16), grads.iter().map(|g| g.to_kind(Kind::Float)).collect())
            };
            assert_close(&y, &expected, tolerance, &format!("{what} outputs"));
            for (param, (a, b)) in ["dweight", "dbias"].iter().zip(ours.iter().zip(&theirs)) {
                assert_close(a, b, tolerance, &format!("{what} {param}"));
            }
            if !by_shim {
                continue;
            }
            // Blocks of images are summed in a fixed order: one thread computes the same bits.
            let threads = tch::get_num_threads();
            tch::set_num_threads(1);
            let y1 = layer.forward(&x, &mut Ctx::new(true)).unwrap();
            let one = Tensor::run_backward(&[(&y1 * &grad_out).sum(Kind::Float)], &params, false, false);
            tch::set_num_threads(threads);
            assert!(y1.equal(&y), "{what}: outputs on one thread and {threads} differ");
            for (a, b) in one.iter().zip(&ours) {
                assert!(a.equal(b), "{what}: gradients on one thread and {threads} differ");
            }
            if precision == Precision::Bf16 {
                // The same sums in float32 of the same bfloat16 values, rounded as libtorch rounds.
                drop(autocast);
                let rounded = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
                let plain = make(&vs.root().sub("rounded"));
                tch::no_grad(|| {
                    for (to, from) in plain.parameters().into_iter().zip(layer.parameters()) {
                        to.shallow_clone().copy_(&rounded(from));
                    }
                });
                let before = convnets::nn::one_channel_conv_calls();
                let in_float = plain.forward(&rounded(&x), &mut Ctx::new(true)).unwrap();
                assert_eq!(convnets::nn::one_channel_conv_calls() - before, 1, "{what}: float32 by the shim");
                assert!(y.equal(&in_float.to_kind(Kind::BFloat16)), "{what}: outputs not rounded to nearest even");
            }
        }
    }
}

#[test]
fn training_batch_norm_of_nchw_maps_matches_libtorchs_whatever_the_thread_count() {
    use convnets::nn::{BatchNorm, Ctx, Layer};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    // The shim sums in vector lanes, libtorch one value at a time, so the last bits differ:
    // float32's, or a bfloat16 map's (2^-8 of the value).
    // LeNet's two maps (the shim's kernel), a batch of 2 with odd sides and an offset and spread
    // far from 0 and 1, in float32 and in bfloat16 (`--precision bf16`'s maps), and a 2-d input
    // and a channels-last map (libtorch's kernel).
    let f32 = Kind::Float;
    let cases = [(vec![256, 6, 24, 24], false, f32), (vec![256, 16, 8, 8], false, f32), (vec![2, 3, 5, 7], false, f32)];
    let cases = cases.into_iter().chain([
        (vec![256, 6, 24, 24], false, Kind::BFloat16),
        (vec![2, 3, 5, 7], false, Kind::BFloat16),
        (vec![64, 120], false, f32),
        (vec![8, 4, 6, 6], true, f32),
    ]);
    for (shape, channels_last, kind) in cases {
        let tolerance = if kind == Kind::Float { 1e-5 } else { 1e-2 };
        let close = |ours: &Tensor, theirs: &Tensor, what: &str| assert_close(ours, theirs, tolerance, what);
        let what = format!("{shape:?} {kind:?}{}", if channels_last { " channels-last" } else { "" });
        let channels = shape[1];
        let mut x = (Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 3.0 + 2.0).to_kind(kind);
        if channels_last {
            x = accel::channels_last(&x).unwrap();
        }
        let x = x.set_requires_grad(true);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let bn = BatchNorm::new(&vs.root(), channels, shape.len());
        tch::no_grad(|| {
            bn.weight.shallow_clone().copy_(&Tensor::rand([channels], (Kind::Float, Device::Cpu)));
            bn.bias.shallow_clone().copy_(&Tensor::randn([channels], (Kind::Float, Device::Cpu)));
        });
        let (mean, var) = (bn.running_mean.copy(), bn.running_var.copy());
        let before = convnets::nn::batch_norm_kernel_calls();
        let y = bn.forward(&x, &mut Ctx::new(true)).unwrap();
        let by_kernel = convnets::nn::batch_norm_kernel_calls() - before;
        assert_eq!(by_kernel, u64::from(shape.len() == 4 && !channels_last), "{what}: calls of the shim's kernel");
        let expected = libtorch_training_batch_norm(&x, &bn.weight, &bn.bias, &mean, &var);
        close(&y, &expected, &format!("{what} outputs"));
        close(&bn.running_mean, &mean, &format!("{what} running mean"));
        close(&bn.running_var, &var, &format!("{what} running variance"));
        let grad_out = Tensor::randn(y.size(), (Kind::Float, Device::Cpu)).to_kind(kind);
        assert_gradients_close(&y, &expected, &grad_out, &[&x, &bn.weight, &bn.bias], tolerance, &what);
        if by_kernel == 0 {
            continue;
        }
        // Blocks of images are summed in a fixed order: one thread computes the same bits
        // (libtorch's kernel for 2-d inputs does not).
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let one_thread = bn.forward(&x.detach(), &mut Ctx::new(true)).unwrap();
        tch::set_num_threads(threads);
        let again = bn.forward(&x.detach(), &mut Ctx::new(true)).unwrap();
        assert!(one_thread.equal(&again), "{what}: one thread and {threads} differ");
    }
}

#[test]
fn from_scratch_batch_norm_trains_as_its_tensor_operations_do() {
    use convnets::nn::{Ctx, Layer, ScratchBatchNorm, batch_norm_kernel_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(7);
    // The shim's kernel sums in double lanes, the tensor operations in float: the last bits
    // differ. The chapter's layer keeps its tensors as (1, C, 1, 1) and its moving variance
    // follows the biased batch variance (by 1/69 of it off the unbiased one for the batch of 2
    // below, which the tolerance would catch).
    let close = |ours: &Tensor, theirs: &Tensor, what: &str| assert_close(ours, theirs, 1e-5, what);
    let cpu = (Kind::Float, Device::Cpu);
    // A bfloat16 map (`--precision bf16`'s) is computed in float, and its output is float32, as
    // the formula's product with the float32 gamma is: the same values as the formula's on the
    // map converted to float32, but for the input's gradient, which is bfloat16.
    let cases = [[256, 6, 24, 24], [256, 16, 8, 8], [2, 3, 5, 7]].map(|shape| (shape, Kind::Float));
    for (shape, kind) in cases.into_iter().chain([([256, 6, 24, 24], Kind::BFloat16), ([2, 3, 5, 7], Kind::BFloat16)]) {
        let channels = shape[1];
        let per_channel = [1, channels, 1, 1];
        let (gamma, beta) = (Tensor::rand(per_channel, cpu) * 2.0 - 1.0, Tensor::randn(per_channel, cpu));
        let (mean, var) = (Tensor::randn(per_channel, cpu), Tensor::rand(per_channel, cpu) + 0.5);
        let x = (Tensor::randn(shape, cpu) * 3.0 + 2.0).to_kind(kind);
        let grad_out = Tensor::randn(shape, cpu);
        // One training step of a fresh layer on x: outputs, gradients of x, gamma and beta, the
        // moving statistics after it, and the calls of the shim's kernel.
        let step = |x: &Tensor| {
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let bn = ScratchBatchNorm::new(&vs.root(), channels, 4);
            tch::no_grad(|| {
                for (to, from) in
                    [(&bn.gamma, &gamma), (&bn.beta, &beta), (&bn.moving_mean, &mean), (&bn.moving_var, &var)]
                {
                    to.shallow_clone().copy_(from);
                }
            });
            let x = x.detach().set_requires_grad(true);
            let before = batch_norm_kernel_calls();
            let y = bn.forward(&x, &mut Ctx::new(true)).unwrap();
            let calls = batch_norm_kernel_calls() - before;
            let grads =
                Tensor::run_backward(&[(&y * &grad_out).sum(Kind::Float)], &[&x, &bn.gamma, &bn.beta], false, false);
            (y, grads, [bn.moving_mean.copy(), bn.moving_var.copy()], calls)
        };
        let (y, grads, moving, calls) = step(&x);
        assert_eq!(calls, 1, "{shape:?} {kind:?}: the shim's kernel");
        // The same values laid out channels-last, which the kernel declines, in float32.
        let channels_last = accel::channels_last(&x).unwrap();
        let (expected, expected_grads, expected_moving, calls) = step(&channels_last.to_kind(Kind::Float));
        assert_eq!(calls, 0, "{shape:?} channels-last: the tensor operations");
        assert_eq!(y.kind(), step(&channels_last).0.kind(), "{shape:?} {kind:?}: the formula's output type");
        close(&y, &expected, &format!("{shape:?} {kind:?} outputs"));
        for (name, (ours, theirs)) in ["x", "gamma", "beta"].iter().zip(grads.iter().zip(&expected_grads)) {
            assert_eq!(ours.size(), theirs.size(), "{shape:?}: {name}'s gradient");
            let (ours, tolerance) = match (*name, kind) {
                ("x", Kind::BFloat16) => (ours.to_kind(Kind::Float), 1e-2),
                _ => (ours.shallow_clone(), 1e-5),
            };
            assert_close(&ours, theirs, tolerance, &format!("{shape:?} {kind:?}: {name}'s gradient"));
        }
        close(&moving[0], &expected_moving[0], &format!("{shape:?} {kind:?}: moving mean"));
        close(&moving[1], &expected_moving[1], &format!("{shape:?} {kind:?}: moving variance"));
    }
    // 2-d inputs (after a linear layer): the tensor operations.
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let bn = ScratchBatchNorm::new(&vs.root(), 120, 2);
    let before = batch_norm_kernel_calls();
    let y = bn.forward(&Tensor::randn([64, 120], cpu), &mut Ctx::new(true)).unwrap();
    assert_eq!(batch_norm_kernel_calls(), before, "a 2-d input");
    assert_eq!(y.size(), [64, 120]);
}

#[test]
fn training_batch_norm_and_relu_of_channels_last_maps_match_the_two_layers_whatever_the_thread_count() {
    use convnets::nn::{BatchNorm, Ctx, Layer, ReLU, Sequential};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(6);
    // The shim sums in double lanes in one pass, libtorch in float in two, so the last bits
    // differ: float32's, or a bfloat16 map's (2^-8 of the value), where a value close to halfway
    // between two rounds the other way.
    // DenseNet's widest map at a smaller batch, a batch of 2 with odd sides, and 1x1 maps (where
    // NCHW and channels-last strides describe the same memory), all channels-last (the shim's
    // kernel), in float32 and in bfloat16 (`--precision bf16`'s maps); an NCHW map (libtorch's
    // layers one by one).
    let cases = [
        (vec![64, 192, 6, 6], true, Kind::Float),
        (vec![2, 3, 5, 7], true, Kind::Float),
        (vec![16, 8, 1, 1], true, Kind::Float),
        (vec![8, 4, 6, 6], false, Kind::Float),
        (vec![64, 192, 6, 6], true, Kind::BFloat16),
        (vec![2, 3, 5, 7], true, Kind::BFloat16),
    ];
    for (shape, channels_last, kind) in cases {
        let tolerance = if kind == Kind::Float { 1e-5 } else { 1e-2 };
        let close = |ours: &Tensor, theirs: &Tensor, what: &str| assert_close(ours, theirs, tolerance, what);
        let what = format!("{shape:?} {kind:?}{}", if channels_last { " channels-last" } else { "" });
        let channels = shape[1];
        // An offset and spread far from 0 and 1.
        let mut x = (Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 3.0 + 2.0).to_kind(kind);
        if channels_last {
            x = accel::channels_last(&x).unwrap();
        }
        let x = x.set_requires_grad(true);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let block = Sequential::new().add_at(&vs.root(), |p| BatchNorm::new(p, channels, 4)).add(ReLU);
        let vars = vs.variables();
        let (weight, bias) = (&vars["0.weight"], &vars["0.bias"]);
        // Weights of both signs: some channels' ReLUs pass the values below their mean.
        tch::no_grad(|| {
            weight.shallow_clone().copy_(&(Tensor::rand([channels], (Kind::Float, Device::Cpu)) * 2.0 - 1.0));
            bias.shallow_clone().copy_(&Tensor::randn([channels], (Kind::Float, Device::Cpu)));
        });
        let (mean, var) = (vars["0.running_mean"].copy(), vars["0.running_var"].copy());
        let before = convnets::nn::batch_norm_relu_kernel_calls();
        let y = block.forward(&x, &mut Ctx::new(true)).unwrap();
        let by_kernel = convnets::nn::batch_norm_relu_kernel_calls() - before;
        assert_eq!(by_kernel, u64::from(channels_last), "{what}: calls of the shim's kernel");
        assert_eq!(y.kind(), kind, "{what}: output type");
        assert_eq!(vars["0.num_batches_tracked"].int64_value(&[]), 1, "{what}: batches counted");
        let expected = libtorch_training_batch_norm(&x, weight, bias, &mean, &var).relu();
        let zeros = expected.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!((0.1..0.9).contains(&zeros), "{what}: {zeros} of the outputs are 0");
        close(&y, &expected, &format!("{what} outputs"));
        close(&vars["0.running_mean"], &mean, &format!("{what} running mean"));
        close(&vars["0.running_var"], &var, &format!("{what} running variance"));
        let grad_out = Tensor::randn(y.size(), (Kind::Float, Device::Cpu)).to_kind(kind);
        assert_gradients_close(&y, &expected, &grad_out, &[&x, weight, bias], tolerance, &what);
        if by_kernel == 0 {
            continue;
        }
        // Blocks of rows are summed in a fixed order: one thread computes the same bits, forward
        // and backward.
        let pass = || {
            let x = x.detach().set_requires_grad(true);
            let y = block.forward(&x, &mut Ctx::new(true)).unwrap();
            let dx = Tensor::run_backward(&[(&y * &grad_out).sum(Kind::Float)], &[&x], false, false);
            (y, dx[0].shallow_clone())
        };
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let one_thread = pass();
        tch::set_num_threads(threads);
        let again = pass();
        assert!(one_thread.0.equal(&again.0), "{what}: outputs on one thread and {threads} differ");
        assert!(one_thread.1.equal(&again.1), "{what}: dx on one thread and {threads} differ");
    }
}

#[test]
fn channels_last_training_computes_batch_norm_and_relu_in_one_kernel_at_least_as_accurately() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // Batch norms followed by a ReLU: in DenseNet, ResNet's stem, each of its 16 conv blocks
    // and 3 transition blocks, and its head; in ResNet-18, its stem and the first convolution of
    // each of its 8 residual blocks (the second's ReLU follows the shortcut's sum).
    for (name, pairs) in [("densenet", 21), ("resnet18", 9)] {
        let (net, exact_net, x) = channels_last_network_and_float64_copy(name, 13);
        let step = |net: &Network, x: &Tensor, traced: bool| {
            let logits = if traced {
                net.forward_traced(x, true, &mut Tracer::new()).unwrap()
            } else {
                net.forward_t(x, true).unwrap()
            };
            let loss = (&logits * &logits).sum(logits.kind());
            let grads = Tensor::run_backward(&[loss], &net.vs.trainable_variables(), false, false);
            (logits.to_kind(Kind::Double), grads.iter().map(|g| g.to_kind(Kind::Double)).collect::<Vec<_>>())
        };
        let before = convnets::nn::batch_norm_relu_kernel_calls();
        let (logits, grads) = step(&net, &x, false);
        assert_eq!(convnets::nn::batch_norm_relu_kernel_calls() - before, pairs, "{name}: pairs in one kernel");
        // A traced pass records every layer, so it runs them one by one, in libtorch.
        let before = convnets::nn::batch_norm_relu_kernel_calls();
        let (traced_logits, traced_grads) = step(&net, &x, true);
        assert_eq!(convnets::nn::batch_norm_relu_kernel_calls(), before, "{name}: traced");
        // The same network in float64, layer by layer: the values both are measured against.
        // Where a gradient is a sum that cancels (the stem's batch norm weight, behind a max
        // pool), libtorch's float32 layers are off by up to 10% of its largest value, and the
        // kernel's double sums by less.
        let (exact_logits, exact_grads) = step(&exact_net, &x.to_kind(Kind::Double), true);
        let scale = exact_logits.abs().max().double_value(&[]);
        assert!(max_error(&logits, &exact_logits) <= 1e-5 * scale, "{name}: logits");
        assert!(max_error(&traced_logits, &exact_logits) <= 1e-5 * scale, "{name}: traced logits");
        assert_at_least_as_accurate(name, &grads, &traced_grads, &exact_grads, "libtorch's layers");
    }
}

/// `name` built on the CPU from `seed` and laid out channels-last, a float64 copy of it (the
/// exact sums a comparison measures both sides against), and a batch of 4 random 64x64 images.
fn channels_last_network_and_float64_copy(name: &str, seed: i64) -> (Network, Network, Tensor) {
    tch::manual_seed(seed);
    let mut net = Network::new(name, NetConfig::default(), Device::Cpu).unwrap();
    net.set_channels_last(true).unwrap();
    let x = Tensor::rand([4, 1, 64, 64], (Kind::Float, Device::Cpu));
    let mut exact = Network::new(name, NetConfig::default(), Device::Cpu).unwrap();
    exact.vs.copy(&net.vs).unwrap();
    exact.vs.double();
    (net, exact, x)
}

/// Asserts that each of `ours` is off its `exact` gradient by at most twice what `theirs` (the
/// `reference`'s) is, or by 1e-5 of the largest exact gradient: the biases of convolutions
/// before batch norms have exact gradients of 0.
fn assert_at_least_as_accurate(name: &str, ours: &[Tensor], theirs: &[Tensor], exact: &[Tensor], reference: &str) {
    let scale = exact.iter().map(|t| t.abs().max().double_value(&[])).fold(0.0, f64::max);
    for (i, exact) in exact.iter().enumerate() {
        let (mine, its) = (max_error(&ours[i], exact), max_error(&theirs[i], exact));
        assert!(
            mine <= (2.0 * its).max(1e-5 * scale),
            "{name}: gradient {i} {:?} off by {mine}, {reference} by {its}",
            exact.size()
        );
    }
}

#[test]
fn channels_last_changes_no_value_and_no_name() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let mut net = Network::new("googlenet", NetConfig::default(), Device::Cpu).unwrap();
    let x = Tensor::rand([2, 1, 96, 96], (Kind::Float, Device::Cpu));
    let before = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
    let names = |n: &Network| {
        let mut v: Vec<String> = n.vs.variables().into_keys().collect();
        v.sort();
        v
    };
    let names_before = names(&net);
    net.set_channels_last(true).unwrap();
    // A 192x64x3x3 convolution weight, now laid out with the 64 input channels innermost.
    assert_eq!(net.vs.variables()["1.2.weight"].stride(), [9 * 64, 1, 3 * 64, 64]);
    // With one channel, NCHW strides would pass for channels-last; the first convolution then
    // ran NCHW kernels (and made NCHW outputs). Its weight and the images get NHWC strides.
    assert_eq!(net.vs.variables()["0.0.weight"].stride(), [49, 1, 7, 1]);
    assert_eq!(convnets::accel::channels_last(&x).unwrap().stride(), [96 * 96, 1, 96, 1]);
    let after = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
    assert!(before.allclose(&after, 1e-5, 1e-5, false), "channels-last changed the outputs");
    assert_eq!(names(&net), names_before);
    // Saved weights are plain row-major tensors with the same values.
    let saved = convnets::weights::state_dict(&net.vs);
    let (name, tensor) = saved.iter().find(|(n, _)| n == "0.0.weight").unwrap();
    assert_eq!(name, "0.0.weight");
    assert!(tensor.is_contiguous());
    net.set_channels_last(false).unwrap();
    assert!(net.vs.variables()["0.0.weight"].is_contiguous());
}

#[test]
fn the_memory_format_auto_is_channels_last_for_the_nets_it_helps_on_the_device() {
    let resnet = models::find("resnet18").unwrap();
    let densenet = models::find("densenet").unwrap();
    let lenet = models::find("lenet-bn").unwrap();
    assert!(resnet.uses_channels_last(MemoryFormat::Auto, Device::Cpu));
    assert!(resnet.uses_channels_last(MemoryFormat::Auto, Device::Cuda(0)));
    assert!(densenet.uses_channels_last(MemoryFormat::Auto, Device::Cpu));
    assert!(!densenet.uses_channels_last(MemoryFormat::Auto, Device::Cuda(0)));
    assert!(!lenet.uses_channels_last(MemoryFormat::Auto, Device::Cpu));
    assert!(!lenet.uses_channels_last(MemoryFormat::Auto, Device::Cuda(0)));
    assert!(lenet.uses_channels_last(MemoryFormat::ChannelsLast, Device::Cpu));
    assert!(!resnet.uses_channels_last(MemoryFormat::Contiguous, Device::Cuda(0)));
    assert_eq!("channels-last".parse::<MemoryFormat>(), Ok(MemoryFormat::ChannelsLast));
    assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
    assert!("fp16".parse::<Precision>().unwrap_err().contains("expected fp32 or bf16"));
}

#[test]
fn a_checkpoint_is_laid_out_as_its_run_was() {
    let data = small_data(64, 64);
    let config = TrainConfig {
        epochs: 1,
        batch_size: 32,
        resize: Some(67),
        memory_format: MemoryFormat::Contiguous,
        ..TrainConfig::d2l("nin").unwrap()
    };
    let net = Network::new("nin", config.net_config(), Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run {
        config,
        data: &data,
        dir: dir.path().to_path_buf(),
        observers: convnets::report::run_files(),
        replicas: None,
    };
    train::train(&mut run, &net, None).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["memory_format"], "contiguous");
    // Auto would lay NiN out channels-last on a CPU; the run asked for NCHW and gets it back.
    let checkpoint = train::load_checkpoint(dir.path(), Device::Cpu).unwrap();
    assert!(!checkpoint.net.channels_last());
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_accepts_keeping_large_allocations_on_the_heap() {
    assert!(accel::keep_large_allocations_on_the_heap());
}

#[test]
fn on_a_cpu_steps_run_eagerly_every_time() {
    let mut replayer = Replayer::new(Device::Cpu, true);
    let x = Tensor::from_slice(&[1f32, 2.0, 3.0]);
    let mut calls = 0;
    for _ in 0..6 {
        let out = replayer
            .run(&[&x], |x| {
                calls += 1;
                Ok(vec![x[0] * 2.0])
            })
            .unwrap();
        assert_eq!(Vec::<f32>::try_from(&out[0]).unwrap(), [2.0, 4.0, 6.0]);
    }
    assert_eq!(calls, 6);
    assert!(!replayer.graphed());
    if !accel::GRAPHS_AVAILABLE {
        let err = CudaGraph::capture(|| Ok(())).err().unwrap().to_string();
        assert!(err.contains("need a build with the `cuda` feature"), "{err}");
    }
    assert_eq!(accel::peak_memory_mib(Device::Cpu), None);
}

#[test]
fn an_empty_batch_has_the_right_shape() {
    let data = small_data(8, 8);
    let batch = data::make_batch(&data.train, &[], &data::Prep::d2l(Some(32))).unwrap();
    assert_eq!(batch.pixels.size(), [0, 1, 32, 32]);
    assert_eq!(batch.images(Device::Cpu, None).unwrap().size(), [0, 1, 32, 32]);
}

/// Whether the kernel lists any of `flags` for this CPU: what libtorch's cpuinfo must find too.
/// `None` where there is no /proc/cpuinfo.
fn cpuinfo_has_any(flags: &[&str]) -> Option<bool> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let listed = info.lines().find(|l| l.starts_with("flags"))?;
    Some(listed.split_whitespace().any(|f| flags.contains(&f)))
}

/// Whether the kernel lists a bfloat16 arithmetic flag for this CPU: the answer `auto` must find
/// through libtorch's cpuinfo.
fn cpuinfo_has_bf16() -> Option<bool> {
    cpuinfo_has_any(&["avx512_bf16", "amx_bf16"])
}

#[test]
fn precision_auto_is_bf16_only_on_a_cpu_with_bfloat16_arithmetic_for_the_nets_it_speeds_up() {
    use accel::{PrecisionChoice, auto_precision};
    assert_eq!("auto".parse::<PrecisionChoice>(), Ok(PrecisionChoice::Auto));
    assert_eq!("bf16".parse::<PrecisionChoice>(), Ok(PrecisionChoice::Fixed(Precision::Bf16)));
    assert_eq!(PrecisionChoice::default(), PrecisionChoice::Fixed(Precision::Fp32));
    assert!("fp16".parse::<PrecisionChoice>().unwrap_err().contains("expected fp32, bf16 or auto"));
    use accel::CpuBf16;
    for device in [Device::Cpu, Device::Cuda(0)] {
        for cpu in [CpuBf16::Emulated, CpuBf16::Slower, CpuBf16::Faster] {
            for faster in [false, true] {
                // The CPU's convolutions are timed only where the answer matters.
                let asked = std::cell::Cell::new(false);
                let auto = auto_precision(
                    device,
                    || {
                        asked.set(true);
                        cpu
                    },
                    faster,
                );
                let bf16 = device == Device::Cpu && cpu == CpuBf16::Faster && faster;
                assert_eq!(auto.precision, if bf16 { Precision::Bf16 } else { Precision::Fp32 }, "{auto:?}");
                assert_eq!(asked.get(), device == Device::Cpu && faster, "{device:?} {cpu:?} {faster}: the CPU asked");
            }
        }
    }
    assert!(auto_precision(Device::Cpu, || CpuBf16::Emulated, true).reason.contains("no bfloat16 arithmetic"));
    let slower = auto_precision(Device::Cpu, || CpuBf16::Slower, true).reason;
    assert!(slower.contains("bfloat16 convolutions measured no faster"), "{slower}");
    // This CPU's answer agrees with its flags where it has none.
    if cpuinfo_has_bf16() == Some(false) {
        assert_eq!(accel::cpu_bf16(), CpuBf16::Emulated);
    }
    // A bf16 the user chose is emulated on a CPU without the instructions: it warns there only.
    let warning = accel::emulated_bf16_warning(Device::Cpu, Precision::Bf16, false).unwrap();
    assert!(warning.contains("bf16 is emulated, many times slower than fp32"), "{warning}");
    assert_eq!(accel::emulated_bf16_warning(Device::Cpu, Precision::Bf16, true), None);
    assert_eq!(accel::emulated_bf16_warning(Device::Cpu, Precision::Fp32, false), None);
    assert_eq!(accel::emulated_bf16_warning(Device::Cuda(0), Precision::Bf16, false), None);
    assert!(models::find("googlenet").unwrap().bf16_on_cpu);
    assert!(models::find("lenet-bn").unwrap().bf16_on_cpu);
    let lenet = models::find("lenet-bn-scratch").unwrap();
    assert_eq!(lenet.precision_for(PrecisionChoice::Fixed(Precision::Bf16), Device::Cpu), (Precision::Bf16, None));
    assert_eq!(lenet.precision_for(PrecisionChoice::Auto, Device::Cpu).0, Precision::Fp32);
    let Some(has_bf16) = cpuinfo_has_bf16() else { return };
    assert_eq!(accel::cpu_has_bf16(), has_bf16, "libtorch's cpuinfo and /proc/cpuinfo disagree");

    // What the commands do with it: bench resolves it per network, train says what it chose.
    let precisions: Vec<String> =
        bench_json(&["lenet-bn-scratch", "lenet-bn", "--batch-size", "4", "--precision", "auto"])
            .iter()
            .map(|r| r["precision"].as_str().unwrap().to_owned())
            .collect();
    // With the instructions, auto times this CPU's convolutions in each process (both answers are
    // checked against the reason train gives below).
    assert_eq!(precisions[0], "fp32");
    assert!(precisions[1] == "fp32" || (has_bf16 && precisions[1] == "bf16"), "{precisions:?}");
    let (code, _, stderr) = common::convnets(&[
        "bench",
        "lenet-bn",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "4",
        "--precision",
        "bf16",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.contains("bf16 is emulated"), !has_bf16, "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (common::idx_dataset(&dir.path().join("data"), 64, 32), dir.path().join("run"));
    let (code, _, stderr) = common::convnets(&[
        "train",
        "googlenet",
        "--resize",
        "32",
        "--epochs",
        "1",
        "--precision",
        "auto",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let choices: &[(&str, &str)] = if has_bf16 {
        &[
            ("bf16", "this CPU has bfloat16 arithmetic and the network trains faster in bf16"),
            ("fp32", "this CPU's bfloat16 convolutions measured no faster than its float32 ones"),
        ]
    } else {
        &[("fp32", "this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX)")]
    };
    let chosen =
        choices.iter().find(|(precision, reason)| stderr.contains(&format!("precision: {precision} (auto: {reason})")));
    let Some(&(expected, _)) = chosen else { panic!("none of {choices:?}: {stderr}") };
    assert!(!stderr.contains("emulated"), "auto never chooses an emulated bf16: {stderr}");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["precision"], expected, "the run keeps what auto chose, not `auto`");
}

/// `convnets bench --json` for one step without warm-up, with `args` (networks and options): its
/// JSON lines, one per network.
fn bench_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = vec!["bench", "--steps", "1", "--warmup", "0", "--json"];
    command.extend_from_slice(args);
    let (code, stdout, stderr) = common::convnets(&command);
    assert_eq!(code, 0, "{stderr}");
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `convnets bench lenet-bn googlenet` for one step of 4 images with `options`: its JSON lines.
fn bench_lenet_and_googlenet(options: &[&str]) -> Vec<serde_json::Value> {
    bench_json(&[&["lenet-bn", "googlenet", "--batch-size", "4"], options].concat())
}

#[test]
fn bench_cpu_kernels_chooses_the_shims_convolutions_or_onednns_on_any_cpu() {
    let winograd = |choice| {
        let lines = bench_json(&["resnet18", "--batch-size", "2", "--cpu-kernels", choice]);
        lines[0]["winograd_convolutions"].as_u64().unwrap()
    };
    // ResNet-18 at 96 pixels: 10 of its 3x3 layers take Winograd's algorithm in training's three
    // products (one timed step and one fed by the pipeline) and 13 in evaluation (3 on 3x3 maps).
    assert_eq!(winograd("shim"), 2 * 30 + 13);
    assert_eq!(winograd("onednn"), 0);
}

#[test]
fn bench_reports_what_it_measured_as_one_json_object_per_network() {
    let lines =
        bench_lenet_and_googlenet(&["--precision", "bf16", "--memory-format", "channels-last", "--cuda-graphs"]);
    assert_eq!(lines.len(), 2);
    for (r, (model, side)) in lines.iter().zip([("lenet-bn", 28), ("googlenet", 96)]) {
        assert_eq!(r["model"], model);
        assert_eq!(r["side"], side);
        assert_eq!((r["batch"].as_u64(), r["steps"].as_u64()), (Some(4), Some(1)));
        assert_eq!(r["precision"], "bf16");
        assert_eq!(r["channels_last"], true);
        assert_eq!(r["cuda_graphs"], false, "no graphs on a CPU, even when asked for");
        assert_eq!(r["device"], "cpu");
        assert!(r["peak_gpu_mib"].is_null() && r["peak_rss_mib"].as_f64().unwrap() > 10.0);
        // The shim's kernels (pooling) share their work among libtorch's threads.
        assert!(r["threads"].as_i64().unwrap() >= 1);
        assert_eq!(r["shim_threads"], r["threads"]);
        for rate in ["train_examples_per_s", "epoch_examples_per_s", "eval_examples_per_s", "data_examples_per_s"] {
            assert!(r[rate].as_f64().unwrap() > 0.0, "{rate}");
        }
    }
    assert_eq!(lines[1]["params"], 5_977_530);
}

#[test]
fn bench_reports_each_network_s_own_peak_memory_when_it_measures_several() {
    // VGG at batch 32 keeps large blocks (its first activations are 100 MiB each): a LeNet measured
    // after it in the same process must not count them.
    let bench = |nets: &[&str]| -> Vec<f64> {
        let lines = bench_json(&[nets, &["--batch-size", "32"]].concat());
        lines.iter().map(|r| r["peak_rss_mib"].as_f64().unwrap()).collect()
    };
    let alone = bench(&["lenet-bn"])[0];
    let [vgg, after_vgg] = bench(&["vgg11-small", "lenet-bn"])[..] else { panic!("two networks, two lines") };
    assert!(vgg > alone + 300.0, "VGG's own peak {vgg} MiB, the LeNet's {alone} MiB");
    assert!(after_vgg < alone + 100.0, "the LeNet's peak: {after_vgg} MiB after VGG, {alone} MiB alone");
}

#[test]
fn profile_times_every_layer_of_a_training_step() {
    let config = convnets::bench::BenchConfig {
        device: Device::Cpu,
        batch_size: Some(16),
        steps: 2,
        warmup: 0,
        precision: Default::default(),
        memory_format: MemoryFormat::Auto,
        cuda_graphs: false,
    };
    let profile = convnets::bench::profile("lenet-bn", &config).unwrap();
    let leaves: Vec<_> = profile.records.iter().filter(|r| !r.container && !r.has_children).collect();
    assert_eq!(leaves.len(), 16);
    assert!(leaves.iter().all(|r| r.seconds > 0.0));
    let layers: f64 = leaves.iter().map(|r| r.seconds).sum();
    assert!(
        layers <= profile.forward_seconds,
        "layers {layers} s within the forward pass {} s",
        profile.forward_seconds
    );
    assert!(profile.backward_seconds > 0.0 && profile.step_seconds > 0.0);

    let table = convnets::bench::profile_table(&profile);
    let rows: Vec<&str> = table.lines().skip(2).take(16).collect();
    assert!(rows[0].trim_start().starts_with("Conv2d-1 ") && rows[0].contains("[16, 6, 24, 24]"), "{table}");
    assert!(rows[15].trim_start().starts_with("Linear-16 ") && rows[15].contains("[16, 10]"), "{table}");
    assert!(table.contains("% of the step") && table.contains("examples/s (eager, timed layer by layer)"));
}

/// Sets where convolutions take the shim's weight gradient and Winograd's algorithm for as long as
/// it lives, then restores the defaults (hold `RNG`: the settings are the whole process's).
struct KernelPolicies;

impl KernelPolicies {
    fn set(weight_grad: convnets::nn::KernelPolicy, winograd: convnets::nn::KernelPolicy) -> Self {
        convnets::nn::set_weight_grad_kernel(weight_grad);
        convnets::nn::set_winograd_kernel(winograd);
        KernelPolicies
    }
}

impl Drop for KernelPolicies {
    fn drop(&mut self) {
        convnets::nn::set_weight_grad_kernel(convnets::nn::KernelPolicy::Auto);
        convnets::nn::set_winograd_kernel(convnets::nn::KernelPolicy::Auto);
    }
}

/// The largest difference between `ours` and `exact` (float64).
fn max_error(ours: &Tensor, exact: &Tensor) -> f64 {
    (ours.to_kind(Kind::Double) - exact).abs().max().double_value(&[])
}

#[test]
fn training_convolutions_sum_weight_gradients_by_blocks_closer_to_exact_than_onednn_and_the_same_every_run() {
    use convnets::nn::{Conv2d, Ctx, KernelPolicy, Layer, training_conv_kernel_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(17);
    // [in, out, kernel, stride, padding], the input's shape, a bias, an input that needs its
    // gradient: VGG's and ResNet's 3x3, NiN's 5x5, a 1x1 (no gathering) and one with stride 2,
    // AlexNet's and GoogLeNet's first layers, and a batch of several blocks and groups.
    let cases = [
        ("3x3", [8, 16, 3, 1, 1], [3, 8, 13, 11], true, true),
        ("5x5 padded 2", [5, 7, 5, 1, 2], [2, 5, 9, 12], true, true),
        ("1x1", [6, 5, 1, 1, 0], [2, 6, 8, 7], true, true),
        ("1x1 stride 2", [6, 5, 1, 2, 0], [2, 6, 9, 8], false, true),
        ("11x11 stride 4", [1, 8, 11, 4, 1], [2, 1, 35, 35], true, false),
        ("7x7 stride 2", [2, 4, 7, 2, 3], [3, 2, 15, 15], false, true),
        ("many blocks", [4, 8, 3, 1, 1], [40, 4, 32, 32], true, true),
    ];
    for (name, conv, shape, bias, input_grad) in cases {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let bias = bias.then_some(convnets::nn::BiasInit::PytorchDefault);
        let layer = Conv2d::init(&vs.root(), conv, convnets::nn::WeightInit::XavierUniform, bias);
        accel::set_channels_last(&mut [layer.weight.shallow_clone()]).unwrap();
        let x = accel::channels_last(&(Tensor::randn(shape, (Kind::Float, Device::Cpu)) + 0.5)).unwrap();
        let x = x.set_requires_grad(input_grad);
        let grad_out =
            Tensor::randn(layer.forward(&x, &mut Ctx::new(true)).unwrap().size(), (Kind::Float, Device::Cpu));
        let mut inputs = layer.parameters();
        if input_grad {
            inputs.push(&x);
        }
        let pass = |policy| {
            let _policy = KernelPolicies::set(policy, KernelPolicy::Never);
            let before = training_conv_kernel_calls();
            let y = layer.forward(&x, &mut Ctx::new(true)).unwrap();
            let calls = training_conv_kernel_calls() - before;
            let grads = Tensor::run_backward(&[(&y * &grad_out).sum(Kind::Float)], &inputs, false, false);
            (y, grads, calls)
        };
        let (y, ours, calls) = pass(KernelPolicy::Always);
        assert_eq!(calls, 1, "{name}: by the shim");
        let (expected, theirs, calls) = pass(KernelPolicy::Never);
        assert_eq!(calls, 0, "{name}: by oneDNN");
        // The forward and the input's gradient are oneDNN's in both.
        assert!(y.equal(&expected), "{name}: outputs");
        assert_eq!(y.stride(), expected.stride(), "{name}: layout");
        if input_grad {
            assert!(ours.last().unwrap().equal(theirs.last().unwrap()), "{name}: dx");
        }
        let (s, p) = (conv[3], conv[4]);
        let exact_inputs: Vec<Tensor> =
            layer.parameters().iter().map(|t| t.to_kind(Kind::Double).detach().set_requires_grad(true)).collect();
        let sums = x.to_kind(Kind::Double).conv2d(&exact_inputs[0], exact_inputs.get(1), [s, s], [p, p], [1, 1], 1);
        let exact = Tensor::run_backward(
            &[(&sums * grad_out.to_kind(Kind::Double)).sum(Kind::Double)],
            &exact_inputs,
            false,
            false,
        );
        for (i, what) in ["dweight", "dbias"].iter().enumerate().take(exact.len()) {
            assert_eq!(ours[i].size(), theirs[i].size(), "{name} {what}");
            assert_eq!(ours[i].stride(), theirs[i].stride(), "{name} {what}: layout");
            let scale = exact[i].abs().max().double_value(&[]);
            let (mine, onednn) = (max_error(&ours[i], &exact[i]), max_error(&theirs[i], &exact[i]));
            assert!(
                mine <= 1e-5 * scale && mine <= (2.0 * onednn).max(1e-6 * scale),
                "{name} {what}: off by {mine}, oneDNN's by {onednn} (up to {scale})"
            );
        }
        // Blocks are cut and added in a fixed order: the same bits again, and on one thread
        // within the last bits (MKL computes a product by the threads it may use).
        let (_, again, _) = pass(KernelPolicy::Always);
        for (a, b) in again.iter().zip(&ours) {
            assert!(a.equal(b), "{name}: gradients differ from run to run");
        }
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let (_, one, _) = pass(KernelPolicy::Always);
        tch::set_num_threads(threads);
        for (a, b) in one.iter().zip(&ours) {
            assert_close(a, b, 1e-6, &format!("{name}: gradients on one thread and {threads}"));
        }
    }
}

#[test]
fn training_convolutions_leave_to_onednn_what_the_shim_s_weight_gradient_does_not_take() {
    use convnets::accel::Autocast;
    use convnets::nn::{Conv2d, Ctx, KernelPolicy, Layer, training_conv_kernel_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let layer = Conv2d::new(&vs.root(), 3, 4, 3, 1, 1);
    let nchw = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let calls = |x: &Tensor| {
        let before = training_conv_kernel_calls();
        let _ = layer.forward(x, &mut Ctx::new(true)).unwrap();
        training_conv_kernel_calls() - before
    };
    let _policy = KernelPolicies::set(KernelPolicy::Always, KernelPolicy::Never);
    assert_eq!(calls(&nchw), 0, "an NCHW map and weight");
    accel::set_channels_last(&mut [layer.weight.shallow_clone()]).unwrap();
    let x = accel::channels_last(&nchw).unwrap();
    assert_eq!(calls(&x), 1, "channels-last");
    assert_eq!(calls(&nchw), 0, "an NCHW map");
    assert_eq!(tch::no_grad(|| calls(&x)), 0, "no gradients");
    {
        let _autocast = Autocast::enter(Device::Cpu, Precision::Bf16).unwrap();
        assert_eq!(calls(&x), 0, "bf16 autocast");
    }
    let _ = layer.weight.shallow_clone().set_requires_grad(false);
    assert_eq!(calls(&x), 0, "a frozen weight");
    let _ = layer.weight.shallow_clone().set_requires_grad(true);
    convnets::nn::set_weight_grad_kernel(KernelPolicy::Never);
    assert_eq!(calls(&x), 0, "oneDNN's everywhere");
    // By default, where oneDNN's kernel is its AVX2 one, and with AVX-512 only where Winograd's
    // algorithm takes the forward or the input's gradient, which it does not for 3 to 4 channels.
    convnets::nn::set_weight_grad_kernel(KernelPolicy::Auto);
    let avx512 = cpuinfo_has_any(&["avx512f"]);
    if let Some(avx512) = avx512 {
        let with = if avx512 { "" } else { "out" };
        assert_eq!(calls(&x), u64::from(!avx512), "the default on a CPU with{with} AVX-512");
    }
    let winograd_calls = |cin: i64, cout: i64| {
        let layer = Conv2d::new(&vs.root(), cin, cout, 3, 1, 1);
        accel::set_channels_last(&mut [layer.weight.shallow_clone()]).unwrap();
        let x = accel::channels_last(&Tensor::randn([2, cin, 8, 8], (Kind::Float, Device::Cpu))).unwrap();
        let before = training_conv_kernel_calls();
        let _ = layer.forward(&x, &mut Ctx::new(true)).unwrap();
        training_conv_kernel_calls() - before
    };
    let _winograd = KernelPolicies::set(KernelPolicy::Auto, KernelPolicy::Auto);
    assert_eq!(winograd_calls(64, 64), 1, "the default, a layer Winograd's algorithm takes");
    assert_eq!(winograd_calls(64, 32), 1, "the default, a layer Winograd's algorithm takes the input's gradient of");
    convnets::nn::set_winograd_kernel(KernelPolicy::Never);
    if let Some(avx512) = avx512 {
        assert_eq!(winograd_calls(64, 64), u64::from(!avx512), "the default without Winograd's algorithm");
    }
}

#[test]
fn networks_trained_with_the_shim_s_weight_gradients_are_at_least_as_accurate() {
    use convnets::nn::{KernelPolicy, training_conv_kernel_calls, winograd_conv_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // Every convolution: ResNet-18's stem, 16 in its residual blocks and 3 shortcuts; GoogLeNet's
    // 3 before its 9 Inception blocks of 6.
    for (name, convolutions, winograd_layers) in [("resnet18", 20, 10), ("googlenet", 57, 8)] {
        let (net, exact_net, x) = channels_last_network_and_float64_copy(name, 19);
        let grads = |net: &Network, x: &Tensor| {
            let logits = net.forward_t(x, true).unwrap();
            let loss = (&logits * &logits).sum(logits.kind());
            Tensor::run_backward(&[loss], &net.vs.trainable_variables(), false, false)
        };
        let pass = |policy, winograd| {
            let _policy = KernelPolicies::set(policy, winograd);
            let (before, winograd_before) = (training_conv_kernel_calls(), winograd_conv_calls());
            let grads = grads(&net, &x);
            (grads, training_conv_kernel_calls() - before, winograd_conv_calls() - winograd_before)
        };
        let (ours, calls, _) = pass(KernelPolicy::Always, KernelPolicy::Never);
        assert_eq!(calls, convolutions, "{name}: convolutions by the shim");
        let (theirs, calls, _) = pass(KernelPolicy::Never, KernelPolicy::Never);
        assert_eq!(calls, 0, "{name}: by oneDNN");
        let exact = grads(&exact_net, &x.to_kind(Kind::Double));
        assert_at_least_as_accurate(name, &ours, &theirs, &exact, "oneDNN's");
        // And with Winograd's algorithm for the 3x3 layers it takes (at a 64-pixel input, those
        // of evaluation's test below: forward, input and weight gradients).
        let (winograd, calls, winograd_calls) = pass(KernelPolicy::Always, KernelPolicy::Always);
        assert_eq!(calls, convolutions, "{name}: convolutions by the shim, with Winograd's");
        assert_eq!(winograd_calls, 3 * winograd_layers, "{name}: products by Winograd's algorithm");
        assert_at_least_as_accurate(name, &winograd, &theirs, &exact, "oneDNN's");
    }
}

#[test]
fn winograd_convolutions_stay_within_a_few_units_in_the_last_place_of_exact_sums_forward_and_backward() {
    use convnets::nn::{Conv2d, Ctx, KernelPolicy, Layer, winograd_conv_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(23);
    // [in, out], the input's shape, a bias, and how many of the forward, the weight's gradient and
    // the input's gradient Winograd's algorithm takes (the input's gradient has the layer's
    // inputs as its output channels: under 64, oneDNN's); the second case has several blocks of
    // tiles, the last one short.
    let cases = [
        ("64 to 64", [64, 64], [3, 64, 8, 8], true, 3),
        ("8 to 64, several blocks", [8, 64], [9, 8, 12, 10], false, 2),
        ("72 to 128, 4x6 maps", [72, 128], [2, 72, 4, 6], true, 3),
    ];
    for (name, [cin, cout], shape, bias, expected_calls) in cases {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let bias = bias.then_some(convnets::nn::BiasInit::PytorchDefault);
        let layer = Conv2d::init(&vs.root(), [cin, cout, 3, 1, 1], convnets::nn::WeightInit::XavierUniform, bias);
        accel::set_channels_last(&mut [layer.weight.shallow_clone()]).unwrap();
        let x = accel::channels_last(&(Tensor::randn(shape, (Kind::Float, Device::Cpu)) + 0.5)).unwrap();
        let x = x.set_requires_grad(true);
        let grad_out = Tensor::randn([shape[0], cout, shape[2], shape[3]], (Kind::Float, Device::Cpu));
        let mut inputs = layer.parameters();
        inputs.push(&x);
        // Training through the shim's convolution (its weight gradient on), with and without
        // Winograd's algorithm for the forward and the input's gradient.
        let pass = |winograd| {
            let _policy = KernelPolicies::set(KernelPolicy::Always, winograd);
            let before = winograd_conv_calls();
            let y = layer.forward(&x, &mut Ctx::new(true)).unwrap();
            let grads = Tensor::run_backward(&[(&y * &grad_out).sum(Kind::Float)], &inputs, false, false);
            (y, grads, winograd_conv_calls() - before)
        };
        let (y, ours, calls) = pass(KernelPolicy::Always);
        assert_eq!(calls, expected_calls, "{name}: by Winograd's algorithm");
        let (direct, theirs, calls) = pass(KernelPolicy::Never);
        assert_eq!(calls, 0, "{name}: by oneDNN and the shim's windows");
        assert_eq!(y.stride(), direct.stride(), "{name}: layout");
        let exact_inputs: Vec<Tensor> =
            inputs.iter().map(|t| t.to_kind(Kind::Double).detach().set_requires_grad(true)).collect();
        let (weight, x64) = (&exact_inputs[0], exact_inputs.last().unwrap());
        let bias = (exact_inputs.len() == 3).then(|| &exact_inputs[1]);
        let exact_y = x64.conv2d(weight, bias, [1, 1], [1, 1], [1, 1], 1);
        let exact = Tensor::run_backward(
            &[(&exact_y * grad_out.to_kind(Kind::Double)).sum(Kind::Double)],
            &exact_inputs,
            false,
            false,
        );
        let names = if bias.is_some() { ["dweight", "dbias", "dx"].as_slice() } else { ["dweight", "dx"].as_slice() };
        let checks = std::iter::once(("output", &y, &direct, &exact_y))
            .chain(names.iter().enumerate().map(|(i, what)| (*what, &ours[i], &theirs[i], &exact[i])));
        for (what, mine, its, exact) in checks {
            assert_eq!(mine.stride(), its.stride(), "{name} {what}: layout");
            let scale = exact.abs().max().double_value(&[]);
            let (error, direct_error) = (max_error(mine, exact), max_error(its, exact));
            // As close as direct sums (measured: closer, 0.3-1.0 of their error), or within a few
            // units in the last place of the largest value (float32's is 1.2e-7 of it). The input's
            // gradient takes 4x4 tiles where they fit (the 8x8 maps): up to 2.4 times.
            let bound = if what == "dx" { 3.0 } else { 2.0 };
            assert!(
                error <= (bound * direct_error).max(1e-6 * scale),
                "{name} {what}: off by {error}, direct sums by {direct_error} (up to {scale})"
            );
        }
        // The weight's gradient's products are summed in a fixed order: the same bits again.
        let (_, again, _) = pass(KernelPolicy::Always);
        for (a, b) in again.iter().zip(&ours) {
            assert!(a.equal(b), "{name}: gradients differ from run to run");
        }
    }
}

#[test]
fn networks_evaluated_with_winograd_stay_as_close_to_exact_as_float32_allows() {
    use convnets::nn::{KernelPolicy, winograd_conv_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // At a 64-pixel input: ResNet-18's two first stages and its third (16x16 to 4x4 maps) but not
    // its last (2x2) or the convolutions with stride 2; GoogLeNet's 3x3 layer and its Inception
    // blocks' 3x3 paths down to 4x4 maps (its last two blocks' maps are 2x2).
    for (name, convolutions) in [("resnet18", 10), ("googlenet", 8)] {
        let (net, exact_net, x) = channels_last_network_and_float64_copy(name, 29);
        let eval = |winograd| {
            let _policy = KernelPolicies::set(KernelPolicy::Auto, winograd);
            let before = winograd_conv_calls();
            let y = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
            (y, winograd_conv_calls() - before)
        };
        let (ours, calls) = eval(KernelPolicy::Always);
        assert_eq!(calls, convolutions, "{name}: convolutions by Winograd's algorithm");
        let (theirs, calls) = eval(KernelPolicy::Never);
        assert_eq!(calls, 0, "{name}: by oneDNN");
        let exact = tch::no_grad(|| exact_net.forward_t(&x.to_kind(Kind::Double), false)).unwrap();
        let scale = exact.abs().max().double_value(&[]);
        let (error, onednn) = (max_error(&ours, &exact), max_error(&theirs, &exact));
        assert!(
            error <= (2.0 * onednn).max(1e-6 * scale),
            "{name}: off by {error}, oneDNN's by {onednn} (up to {scale})"
        );
        // Weights changed in place, as an optimizer's step changes them between evaluations
        // (GoogLeNet's layers without a batch norm fold to their own weight tensors): the next
        // pass uses the new ones.
        tch::no_grad(|| {
            for t in net.vs.trainable_variables().iter().chain(&exact_net.vs.trainable_variables()) {
                let _ = t.shallow_clone().f_mul_scalar_(1.25).unwrap();
            }
        });
        let (ours, _) = eval(KernelPolicy::Always);
        let exact = tch::no_grad(|| exact_net.forward_t(&x.to_kind(Kind::Double), false)).unwrap();
        let scale = exact.abs().max().double_value(&[]);
        let error = max_error(&ours, &exact);
        assert!(error <= 1e-5 * scale, "{name} after a change of its weights: off by {error} (up to {scale})");
    }
}

#[test]
fn evaluation_only_winograd_algorithms_stay_as_close_to_exact_as_float32_allows() {
    use convnets::nn::{Conv2d, Ctx, KernelPolicy, Layer, ReLU, Sequential, winograd_conv_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(31);
    // F(2x2, 5x5): AlexNet's 5x5 layer (96 to 256 channels on 26x26 maps after a ReLU), and 4x6
    // maps whose tiles are several blocks, the last one short, every window reaching into the
    // padding. F(3x3, 3x3): 3x3 maps (one tile each; 70 are two blocks) and 9x6 maps. F(4x4,
    // 3x3): 4x8 maps in two blocks, the last one short, every window reaching into the padding.
    // And one layer evaluated on 3x3, 8x8, 10x10 and 3x3 maps again: tiles of 3, 4, 2 and 3 (its
    // transformed weight kept for one tile size at a time).
    // A name, the kernel, [in, out] channels, and the input shapes evaluated in turn.
    type Case = (&'static str, i64, [i64; 2], &'static [[i64; 4]]);
    let cases: [Case; 6] = [
        ("AlexNet's 5x5", 5, [96, 256], &[[2, 96, 26, 26]]),
        ("5x5 on 4x6 maps", 5, [64, 72], &[[40, 64, 4, 6]]),
        ("3x3 on 3x3 maps", 3, [64, 64], &[[70, 64, 3, 3]]),
        ("3x3 on 9x6 maps", 3, [64, 80], &[[2, 64, 9, 6]]),
        ("3x3 on 4x8 maps", 3, [64, 72], &[[70, 64, 4, 8]]),
        (
            "3x3 on 3x3, 8x8, 10x10 and 3x3 maps",
            3,
            [64, 64],
            &[[4, 64, 3, 3], [3, 64, 8, 8], [3, 64, 10, 10], [4, 64, 3, 3]],
        ),
    ];
    for (name, kernel, [cin, cout], shapes) in cases {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let padding = kernel / 2;
        let layers = Sequential::new().add(Conv2d::new(&vs.root(), cin, cout, kernel, 1, padding)).add(ReLU);
        accel::set_channels_last(&mut vs.trainable_variables()).unwrap();
        for shape in shapes {
            let x = accel::channels_last(&Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu))).unwrap();
            let eval = |winograd| {
                let _policy = KernelPolicies::set(KernelPolicy::Auto, winograd);
                let before = winograd_conv_calls();
                let mut cx = Ctx::new(false);
                cx.fuse = true;
                let y = tch::no_grad(|| layers.forward(&x, &mut cx)).unwrap();
                (y, winograd_conv_calls() - before)
            };
            let (ours, calls) = eval(KernelPolicy::Always);
            assert_eq!(calls, 1, "{name} {shape:?}: by Winograd's algorithm");
            let (theirs, calls) = eval(KernelPolicy::Never);
            assert_eq!(calls, 0, "{name} {shape:?}: by oneDNN");
            assert_eq!(ours.stride(), theirs.stride(), "{name} {shape:?}: layout");
            let params: Vec<Tensor> = vs.trainable_variables().iter().map(|t| t.to_kind(Kind::Double)).collect();
            let (weight, bias) = if params[0].dim() == 4 { (&params[0], &params[1]) } else { (&params[1], &params[0]) };
            let exact = x.to_kind(Kind::Double).conv2d(weight, Some(bias), [1, 1], [padding, padding], [1, 1], 1);
            let exact = exact.relu();
            let scale = exact.abs().max().double_value(&[]);
            let (error, onednn) = (max_error(&ours, &exact), max_error(&theirs, &exact));
            // Their transforms scale by up to 8 and down to 1/24: measured 0.6-2.3 times oneDNN's
            // error (F(2x2, 3x3)'s on the 10x10 maps: 0.3), up to 3.2e-6 of the largest output
            // (one sign wrong in a transform: off by more than the output; F(4x4, 3x3) with
            // F(2x2, 5x5)'s points: 3-4 times oneDNN's error, up to 6.9e-6).
            assert!(
                error <= (3.0 * onednn).max(5e-6 * scale),
                "{name} {shape:?}: off by {error}, oneDNN's by {onednn} (up to {scale})"
            );
        }
    }
}

#[test]
fn evaluation_leaves_to_onednn_the_convolutions_winograd_does_not_take() {
    use convnets::accel::Autocast;
    use convnets::nn::{Conv2d, Ctx, KernelPolicy, Layer, ReLU, Sequential, Sigmoid, winograd_conv_calls};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let calls = |[cin, cout, kernel, stride]: [i64; 4], side: i64, sigmoid: bool, channels_last: bool| {
        let conv = Conv2d::new(&vs.root(), cin, cout, kernel, stride, kernel / 2);
        let layers =
            if sigmoid { Sequential::new().add(conv).add(Sigmoid) } else { Sequential::new().add(conv).add(ReLU) };
        let mut x = Tensor::randn([2, cin, side, side], (Kind::Float, Device::Cpu));
        if channels_last {
            accel::set_channels_last(&mut vs.trainable_variables()).unwrap();
            x = accel::channels_last(&x).unwrap();
        }
        let before = winograd_conv_calls();
        let mut cx = Ctx::new(false);
        cx.fuse = true;
        let y = tch::no_grad(|| layers.forward(&x, &mut cx)).unwrap();
        assert_eq!(y.size()[1], cout);
        winograd_conv_calls() - before
    };
    let _policy = KernelPolicies::set(KernelPolicy::Auto, KernelPolicy::Always);
    assert_eq!(calls([64, 64, 3, 1], 8, false, true), 1, "a 3x3 convolution with stride 1 and a ReLU");
    assert_eq!(calls([64, 64, 3, 1], 8, false, false), 0, "an NCHW map");
    assert_eq!(calls([64, 64, 3, 2], 8, false, true), 0, "stride 2");
    assert_eq!(calls([64, 64, 5, 1], 8, false, true), 1, "a 5x5 convolution with stride 1");
    assert_eq!(calls([32, 64, 5, 1], 8, false, true), 0, "a 5x5 convolution of 32 channels");
    assert_eq!(calls([64, 64, 7, 1], 8, false, true), 0, "a 7x7 kernel");
    assert_eq!(calls([64, 32, 3, 1], 8, false, true), 0, "32 output channels");
    assert_eq!(calls([60, 64, 3, 1], 8, false, true), 0, "input channels not a multiple of 8");
    assert_eq!(calls([64, 64, 3, 1], 3, false, true), 1, "a 3x3 map (one 3x3 tile)");
    assert_eq!(calls([64, 64, 3, 1], 5, false, true), 0, "a 5x5 map");
    assert_eq!(calls([64, 64, 3, 1], 7, false, true), 0, "an odd side");
    assert_eq!(calls([64, 64, 3, 1], 8, true, true), 0, "a sigmoid");
    {
        let _autocast = Autocast::enter(Device::Cpu, Precision::Bf16).unwrap();
        assert_eq!(calls([64, 64, 3, 1], 8, false, true), 0, "bf16 autocast");
    }
    convnets::nn::set_winograd_kernel(KernelPolicy::Never);
    assert_eq!(calls([64, 64, 3, 1], 8, false, true), 0, "oneDNN's everywhere");
    // By default on every CPU: measured faster than oneDNN's AVX2 and AVX-512 kernels.
    convnets::nn::set_winograd_kernel(KernelPolicy::Auto);
    assert_eq!(calls([64, 64, 3, 1], 8, false, true), 1, "the default");
}
