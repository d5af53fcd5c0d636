//! Training recipes: the optimizers against libtorch's own, schedules, label smoothing, gradient
//! clipping and accumulation, the learning rate in the run's files, and exact resumption with
//! optimizer state.

use std::path::Path;

mod common;
use common::{RNG, small_data};
use convnets::models::{NetConfig, Network};
use convnets::train::{self, Optimizer, OptimizerName, Recipe, Schedule};
use tch::{COptimizer, Device, Kind, Tensor};

/// Our optimizer and libtorch's, from the same weights, on the same batches: the weights must
/// stay equal, bit for bit (`tolerance` 0: SGD rounds as libtorch's does), or up to float rounding
/// (`tolerance`, relative to how far the steps moved them). GoogLeNet has neither batch norm (a bias feeding one has a
/// gradient of rounding noise, which AdamW would scale up to full steps of either sign) nor
/// dropout.
fn agrees_with_libtorch(recipe: Recipe, theirs: COptimizer, tolerance: f64) {
    tch::manual_seed(5);
    let ours_net = Network::new("googlenet", NetConfig::default(), Device::Cpu).unwrap();
    let their_net = Network::new("googlenet", NetConfig::default(), Device::Cpu).unwrap();
    convnets::weights::load_state_dict(&their_net.vs, "googlenet", &convnets::weights::state_dict(&ours_net.vs), false)
        .unwrap();
    let mut ours = Optimizer::new(&ours_net.vs, 0.05, &recipe).unwrap();
    let mut theirs = theirs;
    for t in their_net.vs.trainable_variables() {
        theirs.add_parameters(&t, 0).unwrap();
    }
    let start: Vec<Tensor> = convnets::weights::state_dict(&ours_net.vs).iter().map(|(_, t)| t.copy()).collect();
    for step in 0..3 {
        let x = Tensor::rand([4, 1, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [4], (Kind::Int64, Device::Cpu));
        let _ = train::train_step(&ours_net, &mut ours, 0.0, &x, &y).unwrap();
        theirs.zero_grad().unwrap();
        let loss = convnets::nn::cross_entropy(&their_net.forward_t(&x, true).unwrap(), &y, 0.0).unwrap();
        loss.backward();
        theirs.step().unwrap();
        // Each parameter's difference from libtorch (a norm), relative to how far the steps moved it.
        let (a, b) = (convnets::weights::state_dict(&ours_net.vs), convnets::weights::state_dict(&their_net.vs));
        for (((name, a), (_, b)), a0) in a.iter().zip(&b).zip(&start) {
            let moved = (a - a0).norm().double_value(&[]);
            let diff = (a - b).norm().double_value(&[]);
            assert!(moved > 0.0, "{name} moved");
            // (Plus a floor for the last bits of weights that barely moved; 0: bit for bit.)
            let within = if tolerance == 0.0 { diff == 0.0 } else { diff <= tolerance * moved + 1e-5 };
            assert!(within, "{recipe:?}, step {step}, {name}: {diff:e} from libtorch, moved {moved:e}");
        }
    }
}

#[test]
fn sgd_with_momentum_nesterov_and_weight_decay_and_adamw_match_libtorch() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let sgd = |momentum: f64, nesterov: bool, weight_decay: f64| Recipe {
        momentum,
        nesterov,
        weight_decay,
        ..Recipe::default()
    };
    agrees_with_libtorch(sgd(0.9, false, 0.0), COptimizer::sgd(0.05, 0.9, 0.0, 0.0, false).unwrap(), 0.0);
    agrees_with_libtorch(sgd(0.9, true, 5e-4), COptimizer::sgd(0.05, 0.9, 0.0, 5e-4, true).unwrap(), 0.0);
    agrees_with_libtorch(sgd(0.0, false, 5e-4), COptimizer::sgd(0.05, 0.0, 0.0, 5e-4, false).unwrap(), 0.0);
    // AdamW divides each gradient by its own running scale, so where a gradient is rounding
    // noise (a dead ReLU's weights) libtorch's fused operations and ours take different full
    // steps: the bound is looser.
    let adamw = Recipe { optimizer: OptimizerName::Adamw, weight_decay: 0.01, ..Recipe::default() };
    agrees_with_libtorch(adamw, COptimizer::adamw(0.05, 0.9, 0.999, 0.01, 1e-8, false).unwrap(), 1e-2);
}

#[test]
fn schedules_give_the_rates_their_definitions_do() {
    let rates = |schedule: Schedule, warmup: usize| -> Vec<f64> {
        let recipe = Recipe { lr_schedule: schedule, warmup_epochs: warmup, ..Recipe::default() };
        (0..8).map(|e| (recipe.lr_at(0.1, e, 8) * 1e6).round() / 1e6).collect()
    };
    assert_eq!(rates(Schedule::Constant, 0), [0.1; 8]);
    assert_eq!(rates(Schedule::Step, 0), [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]);
    let cosine = rates(Schedule::Cosine, 0);
    assert_eq!(cosine[0], 0.1);
    assert_eq!(cosine[4], 0.05, "halfway, half the rate");
    assert!(cosine.windows(2).all(|w| w[1] < w[0]));
    // Warm-up: 1/3 and 2/3 of the rate, then the cosine over the 6 epochs left.
    let warm = rates(Schedule::Cosine, 2);
    assert_eq!(warm[..3], [0.033333, 0.066667, 0.1]);
    assert_eq!(warm[5], 0.05);
    let one = rates(Schedule::Onecycle, 0);
    assert_eq!(one[0], 0.004, "starts at a 25th of the rate");
    let peak = one.iter().position(|&r| r == one.iter().cloned().fold(0.0, f64::max)).unwrap();
    assert!(one[peak] <= 0.1 && (2..=3).contains(&peak), "rises over the first 30%: {one:?}");
    assert!(one[peak..].windows(2).all(|w| w[1] < w[0]) && one[7] < 0.01, "then falls: {one:?}");
}

#[test]
fn label_smoothing_is_pytorchs_cross_entropy_with_it() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let logits = Tensor::randn([6, 10], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 3, 9, 2, 2, 7]);
    let smoothed = convnets::nn::cross_entropy(&logits, &labels, 0.1).unwrap().double_value(&[]);
    // (1 - 0.1) * NLL + 0.1 * mean over classes of -log p.
    let log_p = logits.log_softmax(-1, Kind::Float);
    let nll = log_p.nll_loss(&labels).double_value(&[]);
    let uniform = -log_p.mean(Kind::Float).double_value(&[]);
    assert!((smoothed - (0.9 * nll + 0.1 * uniform)).abs() < 1e-5);
}

#[test]
fn a_resumed_run_with_optimizer_state_and_a_schedule_ends_where_an_uninterrupted_one_does() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = small_data(300, 60);
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for (split, prefix) in [(&sample.train, "train"), (&sample.test, "t10k")] {
        let images = common::idx_images(split.len() as u32, 28, 28, &split.images);
        std::fs::write(data.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(data.join(format!("{prefix}-labels-idx1-ubyte")), common::idx_labels(&split.labels)).unwrap();
    }
    let data = data.to_str().unwrap();
    for recipe in [
        &[
            "--momentum",
            "0.9",
            "--nesterov",
            "--weight-decay",
            "5e-4",
            "--lr-schedule",
            "cosine",
            "--warmup-epochs",
            "1",
            "--label-smoothing",
            "0.1",
        ][..],
        &["--optimizer", "adamw", "--weight-decay", "0.05", "--lr-schedule", "onecycle", "--lr", "0.01"],
        &["--momentum", "0.9", "--lr-schedule", "cosine", "--clip-grad-norm", "0.5", "--accum-steps", "2"],
        &["--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1", "--lr-schedule", "step"],
        &[
            "--momentum",
            "0.9",
            "--lr-schedule",
            "step",
            "--model-ema",
            "--model-ema-steps",
            "2",
            "--warmup-epochs",
            "1",
        ],
    ] {
        let common = [&["--epochs", "4", "--batch-size", "50", "--data", data][..], recipe].concat();
        let (straight, resumed) = (tmp.path().join("straight"), tmp.path().join("resumed"));
        let _ = (std::fs::remove_dir_all(&straight), std::fs::remove_dir_all(&resumed));
        let (code, _, err) =
            common::convnets(&[&["train", "lenet-bn", "--out", straight.to_str().unwrap()][..], &common].concat());
        assert_eq!(code, 0, "{err}");
        // Stopped in epoch 3 (a failure injected there), then resumed from epoch 2's checkpoint.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnets"))
            .args([&["train", "lenet-bn", "--out", resumed.to_str().unwrap()][..], &common].concat())
            .env("CONVNETS_FAIL_AT", "3:1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let checkpoint = train::load_checkpoint(&resumed, Device::Cpu).unwrap();
        assert_eq!(checkpoint.state.epoch, 2);
        assert!(checkpoint.optimizer.iter().any(|(k, _)| k == "optimizer.steps"), "optimizer state in the checkpoint");
        let (code, _, err) = common::convnets(&["train", "--resume", resumed.to_str().unwrap(), "--data", data]);
        assert_eq!(code, 0, "{err}");

        let (a, b) = (
            train::load_checkpoint(&straight, Device::Cpu).unwrap(),
            train::load_checkpoint(&resumed, Device::Cpu).unwrap(),
        );
        let epochs = |h: &train::History| {
            h.epochs.iter().map(|e| (e.train_loss, e.test_acc, e.lr, e.ema_test_acc)).collect::<Vec<_>>()
        };
        assert_eq!(a.ema.len(), b.ema.len(), "{recipe:?}");
        for ((name, x), (_, y)) in a.ema.iter().zip(&b.ema) {
            assert!(x.equal(y), "{name} differs after resuming ({recipe:?})");
        }
        assert_eq!(epochs(&a.state.history), epochs(&b.state.history), "{recipe:?}");
        for ((name, x), (_, y)) in
            convnets::weights::state_dict(&a.net.vs).iter().zip(&convnets::weights::state_dict(&b.net.vs))
        {
            assert!(x.equal(y), "{name} differs after resuming ({recipe:?})");
        }
        // The rate of each epoch is in metrics.csv and in the TensorBoard file.
        let rates: Vec<f64> = a.state.history.epochs.iter().map(|e| e.lr.unwrap()).collect();
        let config = &a.state.config;
        assert_eq!(rates, (0..4).map(|e| config.recipe.lr_at(config.lr, e, 4)).collect::<Vec<_>>());
        assert!(rates.windows(2).any(|w| w[0] != w[1]), "a schedule: {rates:?}");
        let csv = std::fs::read_to_string(straight.join("metrics.csv")).unwrap();
        assert!(csv.starts_with("x,train_loss,train_acc,test_acc,lr\n"), "{csv}");
        let last_row = csv.lines().last().unwrap();
        assert!(last_row.ends_with(&format!(",{:.6}", rates[3])), "{last_row}");
        let events =
            convnets::report::tensorboard::read_scalars(&convnets::report::tensorboard::event_file(&resumed).unwrap())
                .unwrap();
        let logged: Vec<f32> = events.iter().filter(|(_, t, _)| t == "learning_rate").map(|s| s.2).collect();
        assert_eq!(logged, rates.iter().map(|&r| r as f32).collect::<Vec<_>>());
    }
}

#[test]
fn recipe_flags_are_checked_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    for (args, expected) in [
        (&["--momentum", "1.5"][..], "--momentum must be at least 0 and below 1, got 1.5"),
        (&["--nesterov"], "--nesterov needs --optimizer sgd with a --momentum above 0"),
        (&["--optimizer", "adamw", "--momentum", "0.9"], "--momentum is SGD's"),
        (&["--warmup-epochs", "3", "--epochs", "3"], "--warmup-epochs 3 leaves no epoch of the 3 after it"),
        (&["--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1"),
        (
            &["--lr-schedule", "linear"],
            "unknown learning-rate schedule \"linear\": expected constant, step, cosine, onecycle",
        ),
        (&["--optimizer", "lamb"], "unknown optimizer \"lamb\": expected sgd, adamw"),
        (&["--clip-grad-norm", "0"], "--clip-grad-norm must be a positive number, got 0"),
        (&["--accum-steps", "0"], "--accum-steps must be at least 1"),
        (&["--accum-steps", "-2"], "--accum-steps must be at least 1"),
        (&["--mixup-alpha", "-0.2"], "--mixup-alpha must be 0 or more, got -0.2"),
    ] {
        let (code, _, err) = common::convnets(&[&["train", "lenet-bn", "--out", out][..], args].concat());
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!Path::new(out).exists(), "nothing written for {args:?}");
    }
    let (code, _, err) = common::convnets(&[
        "train",
        "lenet-bn",
        "--epochs",
        "2",
        "--out",
        out,
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
        "--lr-schedule",
        "step",
    ]);
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(out).join("config.json")).unwrap()).unwrap();
    assert_eq!(config["recipe"]["momentum"], 0.9);
    assert_eq!(config["recipe"]["lr_schedule"], "step");
    let (code, _, err) = common::convnets(&["train", "--resume", out, "--epochs", "3", "--momentum", "0.5"]);
    assert_eq!(code, 2, "the recipe belongs to the run: {err}");
}

#[test]
fn clipping_scales_every_gradient_to_the_total_norm_as_pytorch_does() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(9);
    let net = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);
    let params = net.vs.trainable_variables();
    let backward = || {
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        convnets::nn::cross_entropy(&net.forward_t(&x, true).unwrap(), &y, 0.0).unwrap().backward();
        params.iter().map(|p| p.grad().copy()).collect::<Vec<_>>()
    };
    let grads = backward();
    // The total 2-norm in float64: the norm of the per-tensor norms.
    let total: f64 =
        grads.iter().map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    // Above the limit: every gradient times max_norm / (norm + 1e-6).
    let reported = train::clip_grad_norm(&params, total / 2.0).unwrap().double_value(&[]);
    assert!((reported - total).abs() <= 1e-5 * total, "{reported} vs {total}");
    let factor = (total / 2.0) / (total + 1e-6);
    for (p, g) in params.iter().zip(&grads) {
        let expected = g.to_kind(Kind::Double) * factor;
        let worst = (p.grad().to_kind(Kind::Double) - &expected).abs().max().double_value(&[]);
        assert!(worst <= 1e-6 * total, "clipped gradient off by {worst}");
    }
    // Below it: unchanged.
    let grads = backward();
    let _ = train::clip_grad_norm(&params, total * 2.0).unwrap();
    for (p, g) in params.iter().zip(&grads) {
        assert!(p.grad().equal(g));
    }
}

#[test]
fn k_accumulated_batches_update_as_one_k_times_batch() {
    // GoogLeNet has neither batch norm (which sees each micro-batch alone) nor dropout.
    let tmp = tempfile::tempdir().unwrap();
    let data = common::idx_dataset(&tmp.path().join("data"), 48, 16);
    let train = |out: &str, batch: &str, accum: &str| {
        let run = tmp.path().join(out);
        let (code, _, err) = common::convnets(&[
            "train",
            "googlenet",
            "--data",
            data.to_str().unwrap(),
            "--resize",
            "16",
            "--epochs",
            "2",
            "--lr",
            "0.02",
            "--momentum",
            "0.9",
            "--batch-size",
            batch,
            "--accum-steps",
            accum,
            "--out",
            run.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        train::load_checkpoint(&run, Device::Cpu).unwrap()
    };
    let (whole, accumulated) = (train("whole", "16", "1"), train("accumulated", "8", "2"));
    assert!(accumulated.state.optimizer.contains("2 micro-batches per update"), "{}", accumulated.state.optimizer);
    let (a, b) = (whole.net.vs.variables(), accumulated.net.vs.variables());
    let fresh = {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        Network::new("googlenet", NetConfig::default(), Device::Cpu).unwrap().vs.variables()
    };
    // The two runs sum the same gradients in another order, and the kernels libtorch picks
    // (AVX2 or AVX-512) round differently; a ReLU or pooling choice that flips on such a
    // difference grows with the rate (at lr 0.1 they ended 2% of their movement apart on an
    // AVX-512 machine, 0.06% at 0.02). The weights agree to 1% of how far they moved, where a wrong
    // scale of the accumulated gradient (a missing 1/K) would leave them as far apart as they moved.
    let mut moved = 0f64;
    for (name, t) in &a {
        let diff = (t - &b[name]).abs().max().double_value(&[]);
        let moved_here = (t - &fresh[name]).abs().max().double_value(&[]);
        assert!(diff <= 1e-6 + 1e-2 * moved_here, "{name}: {diff} apart after moving {moved_here}");
        moved = moved.max(moved_here);
    }
    assert!(moved > 1e-3, "the six updates moved the weights ({moved})");
    // A last group shorter than K: 5 batches, 2 per update: updates after batches 2, 4 and 5.
    let groups: Vec<(usize, usize)> =
        (0..5).map(|i| train::MicroBatch::of(i, 5, 2)).map(|m| (m.index, m.len)).collect();
    assert_eq!(groups, [(0, 2), (1, 2), (0, 2), (1, 2), (0, 1)]);
}

#[test]
fn mixup_and_cutmix_mix_a_batch_with_itself_rolled_and_the_labels_alike() {
    let x = Tensor::arange(4 * 3 * 8 * 10, (Kind::Float, Device::Cpu)).view([4, 3, 8, 10]);
    let labels = Tensor::from_slice(&[2i64, 0, 1, 2]);
    let rolled = x.roll([1], [0]);
    // MixUp at lam 0.3: 0.3 of each image, 0.7 of the one before it (the last for the first).
    let (mixed, soft) = train::Mix::MixUp { lam: 0.3 }.apply(&x, &labels, 3).unwrap();
    let expected = &rolled * 0.7 + &x * 0.3;
    assert!(f64::try_from((&mixed - &expected).abs().max()).unwrap() < 1e-3);
    let rows: Vec<Vec<f32>> = (0..4).map(|i| Vec::<f32>::try_from(soft.get(i)).unwrap()).collect();
    // Image 0 (class 2) mixed with image 3 (class 2); image 1 (class 0) with image 0 (class 2).
    assert!((rows[0][2] - 1.0).abs() < 1e-6, "{rows:?}");
    assert!((rows[1][0] - 0.3).abs() < 1e-6 && (rows[1][2] - 0.7).abs() < 1e-6, "{rows:?}");
    // CutMix: the box from the rolled batch, the rest as it was, labels by the area kept.
    let cut = train::Mix::CutMix { top: 2, bottom: 6, left: 3, right: 8 };
    let (mixed, soft) = cut.apply(&x, &labels, 3).unwrap();
    let inside = |t: &Tensor| t.narrow(2, 2, 4).narrow(3, 3, 5);
    assert!(inside(&mixed).equal(&inside(&rolled)));
    let outside = Tensor::ones([4, 3, 8, 10], (Kind::Float, Device::Cpu));
    let _ = inside(&outside).fill_(0.0);
    assert!((&mixed * &outside).equal(&(&x * &outside)));
    let lam = 1.0 - 20.0 / 80.0;
    assert!((cut.lam(8, 10) - lam).abs() < 1e-12);
    assert!((f64::try_from(soft.get(1).get(0)).unwrap() - lam).abs() < 1e-6);
    assert!(
        f64::try_from((soft.sum_dim_intlist([1i64].as_slice(), false, Kind::Float) - 1.0).abs().max()).unwrap() < 1e-6
    );
}

#[test]
fn mix_draws_follow_their_distributions_and_repeat_for_the_same_batch() {
    let (mut mixups, mut lam_sum, n) = (0, 0.0, 4000u64);
    for batch in 0..n {
        let mix = train::draw_mix(0.2, 1.0, [5, 2, batch, 0], 32, 32).unwrap();
        assert_eq!(train::draw_mix(0.2, 1.0, [5, 2, batch, 0], 32, 32), Some(mix), "the same draw for the same batch");
        match mix {
            train::Mix::MixUp { lam } => {
                mixups += 1;
                lam_sum += lam;
                assert!((0.0..=1.0).contains(&lam));
            }
            train::Mix::CutMix { top, bottom, left, right } => {
                assert!(0 <= top && top <= bottom && bottom <= 32 && 0 <= left && left <= right && right <= 32);
            }
        }
    }
    assert!((1800..=2200).contains(&mixups), "one of the two per batch, each half the time: {mixups}");
    let mean = lam_sum / mixups as f64;
    assert!((mean - 0.5).abs() < 0.03, "Beta(0.2, 0.2) is centred on 1/2: {mean}");
    assert_eq!(train::draw_mix(0.0, 0.0, [5, 2, 0, 0], 32, 32), None);
    assert!(matches!(train::draw_mix(0.0, 1.0, [5, 2, 0, 0], 32, 32), Some(train::Mix::CutMix { .. })));
}

#[test]
fn the_weights_average_copies_then_averages_every_n_batches_and_exports() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(4);
    let net = Network::new("lenet-bn", NetConfig::default(), Device::Cpu).unwrap();
    let mut config = train::TrainConfig::d2l("lenet-bn").unwrap();
    // torchvision's adjustment: alpha = (1 - decay) * batch * steps / epochs, here 0.1 * 1.
    (config.batch_size, config.epochs) = (1, 2);
    config.recipe = Recipe { model_ema: true, model_ema_decay: 0.9, model_ema_steps: 2, ..Recipe::default() };
    let mut ema = train::Ema::new(&net, &config).unwrap();
    assert!((ema.decay - 0.9).abs() < 1e-12);
    let weight = |n: &Network| n.vs.variables()["0.weight"].copy();
    let shift = |by: f64| {
        tch::no_grad(|| {
            net.vs.variables().values().filter(|t| t.is_floating_point()).for_each(|t| {
                let _ = t.shallow_clone().g_add_scalar_(by);
            })
        })
    };
    shift(1.0);
    ema.after_batch(&net, 1, 0, 0).unwrap(); // the first update copies
    assert!(weight(&ema.net).equal(&weight(&net)));
    let before = weight(&ema.net);
    shift(1.0);
    ema.after_batch(&net, 1, 1, 0).unwrap(); // not a multiple of 2 batches: nothing
    assert!(weight(&ema.net).equal(&before));
    ema.after_batch(&net, 1, 2, 0).unwrap();
    let expected = &before * 0.9 + weight(&net) * 0.1;
    assert!(f64::try_from((weight(&ema.net) - expected).abs().max()).unwrap() < 1e-6);
    // During warm-up every update copies.
    shift(1.0);
    ema.after_batch(&net, 0, 4, 1).unwrap();
    ema.after_batch(&net, 0, 6, 1).unwrap();
    assert!(weight(&ema.net).equal(&weight(&net)));

    // A run keeps the average in its checkpoint, reports it and exports it on request.
    drop(_rng);
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (code, _, err) = common::convnets(&[
        "train",
        "lenet-bn",
        "--epochs",
        "2",
        "--model-ema",
        "--model-ema-steps",
        "3",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(", EMA 0."), "{err}");
    let checkpoint = train::load_checkpoint(&run, Device::Cpu).unwrap();
    assert!(checkpoint.state.history.epochs.iter().all(|e| e.ema_test_acc.is_some()));
    let exported = tmp.path().join("ema.safetensors");
    let (code, _, err) =
        common::convnets(&["export", run.to_str().unwrap(), "--ema", "--out", exported.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let written: std::collections::HashMap<String, Tensor> =
        convnets::weights::read_tensors(&exported).unwrap().into_iter().collect();
    let average: std::collections::HashMap<&str, &Tensor> =
        checkpoint.ema.iter().filter_map(|(k, t)| k.strip_prefix(train::EMA_PREFIX).map(|k| (k, t))).collect();
    assert!(written["0.weight"].equal(average["0.weight"]));
    assert!(!written["0.weight"].equal(&checkpoint.net.vs.variables()["0.weight"]), "the average, not the weights");
    let plain = tmp.path().join("plain");
    let (code, _, _) = common::convnets(&["train", "lenet-bn", "--epochs", "1", "--out", plain.to_str().unwrap()]);
    assert_eq!(code, 0);
    let (code, _, err) =
        common::convnets(&["export", plain.to_str().unwrap(), "--ema", "--out", exported.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("has no average of its weights: train with --model-ema"), "{err}");
}
