//! The networks: parameter counts, output shapes, summaries against real PyTorch output, batch
//! norm behaviour, and the input errors.

use convnets::models::{self, MODELS, NetConfig, Network};
use convnets::nn::{BatchNorm, Ctx, ScratchBatchNorm};
use convnets::summary;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

mod common;
use common::convnets;

fn net(name: &str) -> Network {
    Network::new(name, NetConfig::default(), Device::Cpu).unwrap()
}

fn golden(file: &str) -> String {
    std::fs::read_to_string(common::golden(file)).unwrap()
}

#[test]
fn parameter_counts_match_the_reference_table() {
    let expected = [
        ("alexnet", 46_764_746),
        ("vgg11", 128_806_154),
        ("vgg11-small", 43_093_322),
        ("nin", 1_992_166),
        ("googlenet", 5_977_530),
        ("lenet-bn-scratch", 44_878),
        ("lenet-bn", 44_878),
        ("resnet18", 11_178_378),
        ("densenet", 758_226),
    ];
    let book: Vec<&str> = MODELS.iter().filter(|m| m.origin == models::Origin::Book).map(|m| m.name).collect();
    assert_eq!(book, expected.iter().map(|e| e.0).collect::<Vec<_>>());
    for (name, count) in expected {
        assert_eq!(net(name).num_parameters(), count, "{name}");
    }
}

#[test]
fn batch_norm_statistics_are_state_not_parameters() {
    let n = net("resnet18");
    let variables = n.vs.variables();
    assert!(variables.contains_key("0.1.running_mean"));
    assert!(variables.contains_key("1.0.bn1.running_var"));
    let trainable: i64 = n.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(trainable, 11_178_378);
    let scratch = net("lenet-bn-scratch");
    let variables = scratch.vs.variables();
    assert_eq!(variables["1.moving_mean"].size(), [1, 6, 1, 1]);
    assert_eq!(variables["10.moving_var"].size(), [1, 120]);
    assert!(!variables["1.moving_mean"].requires_grad());
    assert!(variables["1.gamma"].requires_grad());
}

#[test]
fn outputs_have_ten_classes_at_the_d2l_input_and_another_size() {
    tch::manual_seed(0);
    // (network, another input size it takes)
    let cases = [
        ("alexnet", 200),
        ("vgg11-small", 230),
        ("nin", 96),
        ("googlenet", 64),
        ("lenet-bn-scratch", 30),
        ("lenet-bn", 31),
        ("resnet18", 64),
        ("densenet", 48),
    ];
    for (name, other) in cases {
        let n = net(name);
        for size in [n.info.input_size, other] {
            let x = Tensor::rand([2, 1, size, size], (Kind::Float, Device::Cpu));
            let y = tch::no_grad(|| n.forward_t(&x, false)).unwrap();
            assert_eq!(y.size(), [2, 10], "{name} at {size}");
            assert!(bool::try_from(y.isfinite().all()).unwrap(), "{name} at {size}");
        }
    }
    // Full-width VGG-11 once, at a batch of one (it is large).
    let n = net("vgg11");
    let y = tch::no_grad(|| n.forward_t(&Tensor::rand([1, 1, 224, 224], (Kind::Float, Device::Cpu)), false)).unwrap();
    assert_eq!(y.size(), [1, 10]);
}

#[test]
fn configurable_channels_and_classes() {
    for info in MODELS.iter().filter(|m| m.name != "vgg11") {
        let n = Network::from_info(info, NetConfig { in_channels: 3, num_classes: 7 }, Device::Cpu);
        let records = n.trace(&[3, info.input_size, info.input_size]).unwrap();
        assert_eq!(records[0].output[1..], [7], "{}", info.name);
    }
}

#[test]
fn torchsummary_tables_are_byte_identical_to_torchsummary() {
    for (name, file, batch) in
        [("alexnet", "alexnet", 128), ("googlenet", "googlenet", 128), ("resnet18", "resnet18", 256)]
    {
        let n = net(name);
        let input = n.default_input();
        let records = n.trace(&input).unwrap();
        assert_eq!(summary::torchsummary(&records, &input, -1), golden(&format!("{file}.torchsummary.txt")), "{name}");
        assert_eq!(
            summary::torchsummary(&records, &input, batch),
            golden(&format!("{file}.torchsummary.batch.txt")),
            "{name} batch {batch}"
        );
    }
    let n = net("lenet-bn");
    let records = n.trace(&[1, 28, 28]).unwrap();
    assert_eq!(summary::torchsummary(&records, &[1, 28, 28], -1), golden("lenet_bn.torchsummary.txt"));
}

#[test]
fn scratch_batch_norm_summary_counts_gamma_and_beta() {
    let n = net("lenet-bn-scratch");
    let text = summary::torchsummary(&n.trace(&[1, 28, 28]).unwrap(), &[1, 28, 28], 256);
    // torchsummary itself prints 0 for these rows and 44,426 in all; the gamma/beta are real.
    assert!(text.contains("         BatchNorm-2           [256, 6, 24, 24]              12\n"), "{text}");
    assert!(text.contains("        BatchNorm-11                 [256, 120]             240\n"), "{text}");
    assert!(text.contains("Total params: 44,878\n"));
    // Everything else is as the built-in layer's table with the batch size shown.
    let builtin = golden("lenet_bn.torchsummary.txt").replace("[-1,", "[256,");
    let footer =
        |t: &str| t.lines().skip_while(|l| !l.starts_with("Total params")).map(String::from).collect::<Vec<_>>();
    assert_eq!(footer(&text)[..3], footer(&builtin)[..3]);
}

#[test]
fn torchinfo_trees_match_torchinfo() {
    // torchinfo's default depth (3), and DenseNet, whose conv blocks are at depth 4, at 4 too.
    let cases = [
        ("googlenet", 128, 3, "googlenet.torchinfo.txt"),
        ("resnet18", 256, 3, "resnet18.torchinfo.txt"),
        ("densenet", 256, 3, "densenet.torchinfo.txt"),
        ("densenet", 256, 4, "densenet.torchinfo.depth4.txt"),
    ];
    for (name, batch, depth, file) in cases {
        let n = net(name);
        let input = n.default_input();
        let records = n.trace(&input).unwrap();
        assert_eq!(summary::torchinfo(&records, &input, batch, depth), golden(file), "{name}, depth {depth}");
    }
}

#[test]
fn torchinfo_lists_the_dense_blocks_uncalled_net_container_as_torchinfo_does() {
    // DenseBlock runs the conv blocks of its `net` one by one and never calls `net`; torchinfo
    // 1.8 still inserts that Sequential (add_missing_container_layers) with no output, one
    // level above the conv blocks, and numbers every depth across the whole tree.
    let n = net("densenet");
    let records = n.trace(&n.default_input()).unwrap();
    let tree = summary::torchinfo(&records, &n.default_input(), 256, 4);
    let rows: Vec<&str> = tree.lines().skip(9).take(6).collect();
    assert_eq!(
        rows,
        [
            "├─DenseBlock: 1-2                        [256, 192, 24, 24]        --                        --",
            "│    └─Sequential: 2-5                   --                        --                        --",
            "│    │    └─Sequential: 3-1              [256, 32, 24, 24]         --                        --",
            "│    │    │    └─BatchNorm2d: 4-1        [256, 64, 24, 24]         128                       32,768",
            "│    │    │    └─ReLU: 4-2               [256, 64, 24, 24]         --                        --",
            "│    │    │    └─Conv2d: 4-3             [256, 32, 24, 24]         18,464                    2,722,627,584",
        ],
        "{tree}"
    );
    // The second block's container is the next at depth 2, after the transition block's layers.
    assert!(tree.contains("├─DenseBlock: 1-4                        [256, 224, 12, 12]        --                        --\n│    └─Sequential: 2-10                  --"), "{tree}");
    // Totals are unchanged: the container owns nothing and computes nothing.
    assert!(tree.contains("Total params: 758,226\n"), "{tree}");
    // torchsummary lists no container, called or not.
    let table = summary::torchsummary(&records, &n.default_input(), -1);
    assert!(!table.contains("Sequential"), "{table}");
    assert!(table.contains("Total params: 758,226"), "{table}");
}

#[test]
fn shape_trace_prints_top_level_layers_like_the_seed() {
    let n = net("alexnet");
    let text = summary::shapes(&n.trace(&[1, 224, 224]).unwrap());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 21);
    assert_eq!(lines[0], "Conv2d output shape:\t torch.Size([1, 96, 54, 54])");
    assert_eq!(lines[12], "MaxPool2d output shape:\t torch.Size([1, 256, 5, 5])");
    assert_eq!(lines[13], "Flatten output shape:\t torch.Size([1, 6400])");
    let densenet = summary::shapes(&net("densenet").trace(&[1, 96, 96]).unwrap());
    assert!(densenet.contains("DenseBlock output shape:\t torch.Size([1, 192, 24, 24])"), "{densenet}");
    assert!(densenet.contains("Sequential output shape:\t torch.Size([1, 96, 12, 12])"), "{densenet}");
    assert!(densenet.ends_with("Linear output shape:\t torch.Size([1, 10])\n"));
}

#[test]
fn residual_adds_the_shortcut_x() {
    // With conv2's weights and bias at zero, bn2 outputs beta = 0, so the block's output must be
    // relu(X): the shortcut itself. The seed's `Y += Y` would give zeros.
    let vs = VarStore::new(Device::Cpu);
    let block = models::resnet::Residual::new(&vs.root(), 3, 3, false, 1);
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.starts_with("conv2.") {
                let _ = t.shallow_clone().zero_();
            }
        }
    });
    let x = Tensor::randn([4, 3, 6, 6], (Kind::Float, Device::Cpu));
    let y = Ctx::new(false).call(&block, &x).unwrap();
    assert!(y.allclose(&x.relu(), 1e-6, 1e-6, false));
    let down = models::resnet::Residual::new(&vs.root().sub("down"), 3, 6, true, 2);
    assert_eq!(Ctx::new(false).call(&down, &x).unwrap().size(), [4, 6, 3, 3]);
}

#[test]
fn dense_and_transition_blocks_have_the_books_shapes() {
    let vs = VarStore::new(Device::Cpu);
    let block = models::densenet::DenseBlock::new(&vs.root(), 2, 3, 10);
    let y = Ctx::new(false).call(&block, &Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu))).unwrap();
    assert_eq!(y.size(), [4, 23, 8, 8]);
    let transition = models::densenet::transition_block(&vs.root().sub("t"), 23, 10);
    assert_eq!(Ctx::new(false).call(&transition, &y).unwrap().size(), [4, 10, 4, 4]);
}

/// A built-in and a from-scratch batch norm over the same weights and statistics.
fn batch_norm_pair(features: i64, dims: usize) -> (VarStore, BatchNorm, ScratchBatchNorm) {
    let vs = VarStore::new(Device::Cpu);
    let builtin = BatchNorm::new(&vs.root().sub("builtin"), features, dims);
    let scratch = ScratchBatchNorm::new(&vs.root().sub("scratch"), features, dims);
    let shape: Vec<i64> = scratch.gamma.size();
    tch::no_grad(|| {
        let gamma = Tensor::rand([features], (Kind::Float, Device::Cpu)) + 0.5;
        let beta = Tensor::randn([features], (Kind::Float, Device::Cpu));
        builtin.weight.shallow_clone().copy_(&gamma);
        builtin.bias.shallow_clone().copy_(&beta);
        scratch.gamma.shallow_clone().copy_(&gamma.reshape(&shape));
        scratch.beta.shallow_clone().copy_(&beta.reshape(&shape));
    });
    (vs, builtin, scratch)
}

#[test]
fn both_batch_norms_agree_in_train_and_eval_mode() {
    tch::manual_seed(1);
    for (dims, input) in [(4usize, vec![8i64, 5, 6, 6]), (2, vec![16, 5])] {
        let (_vs, builtin, scratch) = batch_norm_pair(5, dims);
        let x = Tensor::randn(&input, (Kind::Float, Device::Cpu)) * 3.0 + 2.0;

        // Train mode: both normalise with the batch statistics.
        let a = Ctx::new(true).call(&builtin, &x).unwrap();
        let b = Ctx::new(true).call(&scratch, &x).unwrap();
        assert!(a.allclose(&b, 1e-4, 1e-5, false), "train mode, {dims}-d");
        let axes: &[i64] = if dims == 4 { &[0, 2, 3] } else { &[0] };
        let normalized = (&a - builtin.bias.reshape(scratch.beta.size())) / scratch.gamma.shallow_clone();
        let mean = normalized.mean_dim(axes, false, Kind::Float);
        assert!(mean.abs().max().double_value(&[]) < 1e-4, "batch mean is removed");

        // Both moved their running mean by 1 - 0.9 = 0.1 of the batch mean.
        let batch_mean = x.mean_dim(axes, false, Kind::Float);
        assert!(builtin.running_mean.allclose(&(&batch_mean * 0.1), 1e-5, 1e-6, false));
        assert!(scratch.moving_mean.reshape([-1]).allclose(&(&batch_mean * 0.1), 1e-5, 1e-6, false));
        assert_eq!(builtin.num_batches_tracked.int64_value(&[]), 1);

        // Eval mode with the same statistics: the same outputs, and no statistics change.
        tch::no_grad(|| {
            scratch.moving_var.shallow_clone().copy_(&builtin.running_var.reshape(scratch.moving_var.size()))
        });
        let before = builtin.running_mean.copy();
        let a = Ctx::new(false).call(&builtin, &x).unwrap();
        let b = Ctx::new(false).call(&scratch, &x).unwrap();
        assert!(a.allclose(&b, 1e-4, 1e-5, false), "eval mode, {dims}-d");
        assert!(builtin.running_mean.equal(&before));
        // Eval output uses the running statistics, so it differs from the batch-normalised one.
        let train_again = Ctx::new(true).call(&scratch, &x).unwrap();
        assert!(!train_again.allclose(&b, 1e-3, 1e-3, false));
    }
}

#[test]
fn scratch_batch_norm_mode_follows_the_flag_not_autograd() {
    let (_vs, _, scratch) = batch_norm_pair(3, 4);
    let x = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) + 5.0;
    // Training under no_grad still uses batch statistics and updates the moving mean.
    let y = tch::no_grad(|| Ctx::new(true).call(&scratch, &x).unwrap());
    assert!(scratch.moving_mean.abs().sum(Kind::Float).double_value(&[]) > 0.1);
    let centered = (&y - &scratch.beta) / &scratch.gamma;
    assert!(centered.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float).abs().max().double_value(&[]) < 1e-4);
    // Eval with autograd on uses the moving statistics and leaves them alone.
    let before = scratch.moving_mean.copy();
    let _ = Ctx::new(false).call(&scratch, &x.set_requires_grad(true)).unwrap();
    assert!(scratch.moving_mean.equal(&before));
}

#[test]
fn dropout_is_active_only_in_training() {
    let n = net("alexnet");
    tch::manual_seed(3);
    let x = Tensor::rand([2, 1, 224, 224], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        let e1 = n.forward_t(&x, false).unwrap();
        let e2 = n.forward_t(&x, false).unwrap();
        assert!(e1.equal(&e2), "eval is deterministic");
        let t1 = n.forward_t(&x, true).unwrap();
        assert!(!t1.allclose(&e1, 1e-4, 1e-4, false), "train mode drops units");
    });
}

#[test]
fn inputs_a_network_cannot_take_are_reported_with_sizes_that_work() {
    let err = net("alexnet").check_input(&[1, 96, 96]).unwrap_err();
    assert_eq!(err.error.layer, "Linear-15");
    assert_eq!(err.error.shape, [1, 256]);
    assert_eq!(err.working_sizes, vec![193..=224]);
    assert_eq!(
        err.to_string(),
        "alexnet cannot take a 1x96x96 input: Linear-15 received shape [1, 256]: expects 6400 input \
         features; inputs that work: 1x193x193 to 1x224x224"
    );
    let err = net("resnet18").check_input(&[1, 0, 5]).unwrap_err();
    assert!(err.to_string().contains("every size at least 1"), "{err}");
    let err = net("nin").check_input(&[1, 10, 10]).unwrap_err();
    assert_eq!(err.error.layer, "Conv2d-1");
    assert!(err.to_string().contains("leaves 0x0: the input is too small"), "{err}");
    assert!(err.to_string().ends_with("inputs that work: 1x67x67 and larger"), "{err}");
    let err = net("lenet-bn").check_input(&[3, 28, 28]).unwrap_err();
    assert!(err.to_string().contains("Conv2d-1 received shape [1, 3, 28, 28]: expects 1 channels, got 3"), "{err}");
    // Forward passes report the same errors instead of panicking inside libtorch.
    let err =
        net("vgg11-small").forward_t(&Tensor::zeros([2, 1, 64, 64], (Kind::Float, Device::Cpu)), false).unwrap_err();
    assert_eq!(err.layer, "Linear-23");
    // One example per channel cannot be batch-normalised in training.
    let err = net("lenet-bn").forward_t(&Tensor::zeros([1, 1, 28, 28], (Kind::Float, Device::Cpu)), true).unwrap_err();
    assert!(err.reason.contains("batch of at least 2"), "{err}");
}

#[test]
fn what_libtorch_refuses_inside_a_layer_is_an_error_naming_the_layer() {
    // Integer images pass every shape check but no convolution kernel takes them.
    for name in ["lenet-bn", "lenet-bn-scratch", "resnet18", "googlenet", "densenet"] {
        let network = net(name);
        let [c, h, w] = network.default_input();
        let err = network.forward_t(&Tensor::zeros([2, c, h, w], (Kind::Int64, Device::Cpu)), true).unwrap_err();
        assert_eq!(err.layer, "Conv2d-1", "{name}: {err}");
        assert_eq!(err.shape, [2, c, h, w]);
        let first_line = err.reason.lines().next().unwrap();
        assert_eq!(first_line, "libtorch: Input type (long int) and bias type (float) should be the same", "{name}");
        // libtorch's C++ stack only when asked for (the CLI's one-line errors are tested unset).
        assert_eq!(err.reason.contains('\n'), convnets::backtraces_wanted(), "{err}");
    }
    // Inside a block: a batch norm that is handed a tensor on which libtorch cannot normalise.
    let (_vs, built_in, scratch) = batch_norm_pair(3, 4);
    let ints = Tensor::ones([4, 3, 2, 2], (Kind::Int64, Device::Cpu));
    for (layer, err) in [
        ("BatchNorm2d", Ctx::new(true).call(&built_in, &ints).unwrap_err()),
        ("BatchNorm", Ctx::new(true).call(&scratch, &ints).unwrap_err()),
    ] {
        assert_eq!(err.layer, format!("{layer}-1"));
        assert!(err.reason.starts_with("libtorch: "), "{err}");
    }
}

#[test]
fn cli_summary_and_errors() {
    let (code, out, _) = convnets(&["summary", "resnet18", "--batch-size", "256"]);
    assert_eq!(code, 0);
    assert_eq!(out, golden("resnet18.torchsummary.batch.txt"));
    let (code, out, _) = convnets(&["summary", "googlenet", "--style", "tree"]);
    assert_eq!((code, out), (0, golden("googlenet.torchinfo.txt")));
    // torchinfo's default depth folds DenseNet's conv blocks into their rows; --depth 4 unfolds them.
    let (code, out, _) = convnets(&["summary", "densenet", "--style", "tree"]);
    assert_eq!((code, out), (0, golden("densenet.torchinfo.txt")));
    let (code, out, _) = convnets(&["summary", "densenet", "--style", "tree", "--depth", "4"]);
    assert_eq!((code, out), (0, golden("densenet.torchinfo.depth4.txt")));
    let (code, _, err) = convnets(&["summary", "densenet", "--depth", "2"]);
    assert_eq!(code, 2);
    assert_eq!(err, "error: --depth applies to --style tree (torchsummary's table lists every layer)\n");
    let (code, out, _) = convnets(&["summary", "alexnet", "--input", "1x224x224"]);
    assert_eq!((code, out), (0, golden("alexnet.torchsummary.txt")));

    let (code, _, err) = convnets(&["summary", "resnet"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown network 'resnet'; valid names: alexnet, vgg11, vgg11-small, nin, googlenet"),
        "{err}"
    );
    let (code, _, err) = convnets(&["shapes", "alexnet", "--input", "1x64x64"]);
    assert_eq!(code, 2);
    assert!(err.contains("inputs that work: 1x193x193 to 1x224x224"), "{err}");
    for bad in ["0x5x5", "axb", "1x2x3x4", ""] {
        let (code, _, err) = convnets(&["summary", "alexnet", "--input", bad]);
        assert_eq!(code, 2, "{bad}");
        assert!(err.contains("is not an input shape: use CxHxW"), "{bad}: {err}");
    }
    let (code, _, err) = convnets(&["summary", "alexnet", "--batch-size", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--batch-size must be"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn cli_lists_models_and_traces_shapes() {
    let (code, out, _) = convnets(&["models"]);
    assert_eq!(code, 0);
    // The book's nine, then torchvision's eight apart, each group with its heading and columns.
    let (book, torchvision) = out.split_once("\n\n").unwrap();
    assert_eq!(book.lines().count(), 2 + 9, "{out}");
    assert_eq!(torchvision.lines().count(), 2 + 8, "{out}");
    assert!(book.contains("resnet18           1x96x96       11,178,378  ResNet-18"), "{out}");
    assert!(torchvision.starts_with("torchvision's networks"), "{out}");
    assert!(torchvision.contains("tv-resnet18        3x224x224     11,689,512  torchvision's resnet18"), "{out}");
    let (code, out, _) = convnets(&["models", "--json"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 17);
    assert_eq!(lines.iter().filter(|l| l["origin"] == "torchvision").count(), 8);
    let resnet = lines.iter().find(|l| l["name"] == "resnet18").unwrap();
    assert_eq!(resnet["params"], 11_178_378);
    assert_eq!(resnet["batch_size"], 256);
    assert_eq!(resnet["book"]["test_acc_band"], serde_json::json!([0.894, 0.924]));
    let full_vgg = lines.iter().find(|l| l["name"] == "vgg11").unwrap();
    assert!(full_vgg["book"].is_null(), "d2l does not train full-width VGG");
    let (code, out, _) = convnets(&["shapes", "nin"]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with(
            "AdaptiveAvgPool2d output shape:\t torch.Size([1, 10, 1, 1])\nFlatten output shape:\t torch.Size([1, 10])\n"
        ),
        "{out}"
    );
}
