//! torchvision's automatic augmentation (`--auto-augment`): every operation against
//! torchvision 0.26's outputs at fixed magnitudes, the magnitude tables and learned policies, the
//! policies' draws, MixUp/CutMix/erasing at fixed parameters, and training with a policy.

use std::collections::HashMap;

use convnets::data::{self, AutoAugment, Image, Interpolation, Op, Policy, Space};
use rand::SeedableRng;

mod common;

#[derive(serde::Deserialize)]
struct GoldenImage {
    shape: [usize; 3],
    pixels: String,
}

#[derive(serde::Deserialize)]
struct OpCase {
    image: String,
    op: String,
    magnitude: f64,
    bilinear: bool,
    output: String,
}

#[derive(serde::Deserialize)]
struct Table {
    signed: bool,
    values: Option<Vec<f64>>,
}

#[derive(serde::Deserialize)]
struct Batch {
    shape: [i64; 4],
    values: Vec<f32>,
    labels: Vec<i64>,
}

#[derive(serde::Deserialize)]
struct Mixed {
    images: Vec<f32>,
    labels: Vec<f32>,
}

/// A learned sub-policy's steps: operation, probability, magnitude bin.
type Steps = Vec<(String, f64, Option<usize>)>;

#[derive(serde::Deserialize)]
struct Golden {
    images: HashMap<String, GoldenImage>,
    ops: Vec<OpCase>,
    magnitudes: HashMap<String, HashMap<String, Table>>,
    policies: HashMap<String, Vec<Steps>>,
    batch: Batch,
    mixup: Mixed,
    cutmix: Mixed,
    erase: Erased,
}

#[derive(serde::Deserialize)]
struct Erased {
    top: i64,
    left: i64,
    height: i64,
    width: i64,
    image: Vec<f32>,
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(common::golden("torchvision/auto_augment.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn every_operation_matches_torchvision_within_one_grey_level() {
    let golden = golden();
    assert_eq!(golden.ops.len(), 141);
    let mut report = Vec::new();
    for case in &golden.ops {
        let source = &golden.images[&case.image];
        let [channels, height, width] = source.shape;
        let image = Image { pixels: bytes(&source.pixels), channels, height, width };
        let op = Op::from_name(&case.op).unwrap();
        let interpolation = if case.bilinear { Interpolation::Bilinear } else { Interpolation::Nearest };
        let ours = data::apply_op(image, op, case.magnitude, interpolation);
        let theirs = bytes(&case.output);
        assert_eq!(ours.pixels.len(), theirs.len());
        // Nearest sampling picks the same pixels; arithmetic may round a value the other way.
        let geometric = matches!(op, Op::ShearX | Op::ShearY | Op::TranslateX | Op::TranslateY | Op::Rotate);
        let tolerance = if geometric && !case.bilinear { 0 } else { 1 };
        let off: Vec<(usize, u8, u8)> = ours
            .pixels
            .iter()
            .zip(&theirs)
            .enumerate()
            .filter(|(_, (a, b))| a.abs_diff(**b) > tolerance)
            .map(|(i, (a, b))| (i, *a, *b))
            .collect();
        if !off.is_empty() {
            report.push(format!(
                "{} {} {} bilinear={}: {} of {} values off by more than {tolerance}, first {:?}",
                case.image,
                case.op,
                case.magnitude,
                case.bilinear,
                off.len(),
                theirs.len(),
                &off[..off.len().min(4)]
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn magnitude_tables_and_learned_policies_are_torchvisions() {
    let golden = golden();
    let spaces = [
        ("ra", Space::RandAugment, 31),
        ("ta_wide", Space::TrivialAugmentWide, 31),
        ("imagenet", Space::AutoAugment, 10),
        ("augmix", Space::AugMix, 10),
    ];
    for (name, space, bins) in spaces {
        let tables = &golden.magnitudes[name];
        let ours: Vec<&str> = space.ops().iter().map(|op| op.name()).collect();
        let mut theirs: Vec<&str> = tables.keys().map(String::as_str).collect();
        let mut sorted = ours.clone();
        sorted.sort();
        theirs.sort();
        assert_eq!(sorted, theirs, "{name}'s operations");
        for op in space.ops() {
            let table = &tables[op.name()];
            let magnitudes = space.magnitudes(*op, bins, 18, 23);
            let values = magnitudes.values.map(|v| v.iter().map(|&m| m as f64).collect::<Vec<_>>());
            assert_eq!(values, table.values, "{name} {}", op.name());
            assert_eq!(magnitudes.signed, table.signed, "{name} {}", op.name());
        }
    }
    for (name, policy) in [("imagenet", Policy::ImageNet), ("cifar10", Policy::Cifar10), ("svhn", Policy::Svhn)] {
        let ours: Vec<Steps> = policy
            .sub_policies()
            .iter()
            .map(|pair| pair.iter().map(|&(op, p, bin)| (op.name().to_string(), p as f64, bin)).collect())
            .collect();
        let theirs = &golden.policies[name];
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(theirs) {
            for ((op_a, p_a, bin_a), (op_b, p_b, bin_b)) in a.iter().zip(b) {
                assert_eq!((op_a, bin_a), (op_b, bin_b), "{name}");
                assert!((p_a - p_b).abs() < 1e-6, "{name}: {p_a} vs {p_b}");
            }
        }
    }
}

#[test]
fn policies_draw_their_operations_magnitudes_and_signs_as_torchvision_does() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = 14_000;
    // TrivialAugmentWide: one of 14 operations, any of 31 bins, either sign.
    let mut per_op: HashMap<&str, usize> = HashMap::new();
    let (mut negative, mut signed) = (0, 0);
    let mut bins = [0usize; 31];
    for _ in 0..n {
        let ops = AutoAugment::TrivialAugmentWide.draw_ops(40, 40, &mut rng);
        assert_eq!(ops.len(), 1);
        let (op, magnitude) = ops[0];
        *per_op.entry(op.name()).or_default() += 1;
        let table = Space::TrivialAugmentWide.magnitudes(op, 31, 40, 40);
        if let Some(values) = table.values {
            if op == Op::Posterize {
                // Its table repeats values: the bin cannot be told from the magnitude.
                continue;
            }
            let bin = values.iter().position(|&v| v as f64 == magnitude.abs()).expect("a magnitude of the table");
            bins[bin] += 1;
            if table.signed && magnitude != 0.0 {
                signed += 1;
                negative += usize::from(magnitude < 0.0);
            }
        } else {
            assert_eq!(magnitude, 0.0);
        }
    }
    assert_eq!(per_op.len(), 14);
    for (op, count) in &per_op {
        assert!((800..1200).contains(count), "{op}: {count} of {n}, expected about 1000");
    }
    let fraction = negative as f64 / signed as f64;
    assert!((0.47..0.53).contains(&fraction), "negated {fraction}");
    let expected_per_bin = bins.iter().sum::<usize>() as f64 / 31.0;
    assert!(bins.iter().all(|&b| (b as f64 - expected_per_bin).abs() < 0.25 * expected_per_bin), "{bins:?}");

    // RandAugment: two operations, each at the fixed magnitude bin.
    let ra = AutoAugment::parse("ra", 9, 3).unwrap();
    for _ in 0..500 {
        let ops = ra.draw_ops(40, 50, &mut rng);
        assert_eq!(ops.len(), 2);
        for (op, magnitude) in ops {
            let expected = Space::RandAugment.magnitudes(op, 31, 40, 50).values.map_or(0.0, |v| v[9] as f64);
            assert_eq!(magnitude.abs(), expected, "{}", op.name());
        }
    }

    // AutoAugment's ImageNet policy: each step applied with its probability. Over the 25
    // sub-policies the first step applies with probability mean(p1) = 0.576.
    let policy = Policy::ImageNet.sub_policies();
    let mean_steps: f32 = policy.iter().map(|pair| pair[0].1 + pair[1].1).sum::<f32>() / 25.0;
    let steps: usize = (0..n).map(|_| AutoAugment::Learned(Policy::ImageNet).draw_ops(40, 40, &mut rng).len()).sum();
    let per_image = steps as f32 / n as f32;
    assert!((per_image - mean_steps).abs() < 0.03, "{per_image} steps per image, expected {mean_steps}");
}

#[test]
fn augmix_mixes_its_chains_with_beta_and_dirichlet_weights() {
    let golden = golden();
    let source = &golden.images["colour"];
    let [channels, height, width] = source.shape;
    let image = Image { pixels: bytes(&source.pixels), channels, height, width };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let (mut keeps, mut depths) = (Vec::new(), [0usize; 4]);
    for _ in 0..3000 {
        let draw = data::AugMixDraw::draw(3, height, width, &mut rng);
        let total: f32 = draw.keep + draw.chains.iter().map(|(w, _)| w).sum::<f32>();
        assert!((total - 1.0).abs() < 1e-5, "weights sum to {total}");
        assert_eq!(draw.chains.len(), 3);
        for (_, steps) in &draw.chains {
            depths[steps.len()] += 1;
            for &(op, magnitude) in steps {
                // Severity 3: bins 0, 1 and 2 of 10.
                if let Some(values) = Space::AugMix.magnitudes(op, 10, height, width).values {
                    assert!(values[..3].iter().any(|&v| v as f64 == magnitude.abs()), "{} {magnitude}", op.name());
                }
            }
        }
        keeps.push(draw.keep);
    }
    // Beta(1, 1) is uniform: mean 1/2, a quarter below 1/4.
    let mean = keeps.iter().sum::<f32>() / keeps.len() as f32;
    assert!((mean - 0.5).abs() < 0.02, "mean share {mean}");
    let below = keeps.iter().filter(|&&k| k < 0.25).count() as f32 / keeps.len() as f32;
    assert!((below - 0.25).abs() < 0.03, "{below}");
    assert_eq!(depths[0], 0);
    for d in 1..=3 {
        assert!((2700..3300).contains(&depths[d]), "{depths:?}");
    }

    // The mix: the image's share plus each chain's bilinear result, truncated.
    let draw = data::AugMixDraw {
        keep: 0.25,
        chains: vec![(0.5, vec![(Op::Rotate, 20.0), (Op::Equalize, 0.0)]), (0.25, vec![(Op::Posterize, 2.0)])],
    };
    let rotated = data::apply_op(image.clone(), Op::Rotate, 20.0, Interpolation::Bilinear);
    let first = data::apply_op(rotated, Op::Equalize, 0.0, Interpolation::Bilinear);
    let second = data::apply_op(image.clone(), Op::Posterize, 2.0, Interpolation::Bilinear);
    let mixed = draw.mix(image.clone());
    for i in 0..image.pixels.len() {
        let expected = 0.25 * image.pixels[i] as f32 + 0.5 * first.pixels[i] as f32 + 0.25 * second.pixels[i] as f32;
        assert_eq!(mixed.pixels[i], expected as u8, "value {i}");
    }
}

#[test]
fn mixup_cutmix_and_erasing_match_torchvision_at_fixed_parameters() {
    use convnets::train::Mix;
    use tch::{Kind, Tensor};
    let golden = golden();
    let batch = Tensor::from_slice(&golden.batch.values).reshape(golden.batch.shape);
    let labels = Tensor::from_slice(&golden.batch.labels);
    let close = |ours: &Tensor, theirs: &[f32], what: &str| {
        let ours: Vec<f32> = Vec::try_from(ours.to_kind(Kind::Float).flatten(0, -1)).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{what}");
        let worst = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{what}: off by {worst}");
    };
    let (images, soft) = Mix::MixUp { lam: 0.3 }.apply(&batch, &labels, 5).unwrap();
    close(&images, &golden.mixup.images, "mixup images");
    close(&soft, &golden.mixup.labels, "mixup labels");
    let cut = Mix::CutMix { top: 1, bottom: 4, left: 2, right: 6 };
    assert!((cut.lam(6, 7) - (1.0 - 12.0 / 42.0)).abs() < 1e-12);
    let (images, soft) = cut.apply(&batch, &labels, 5).unwrap();
    close(&images, &golden.cutmix.images, "cutmix images");
    close(&soft, &golden.cutmix.labels, "cutmix labels");
    let e = &golden.erase;
    let first = batch.narrow(0, 0, 1).copy();
    data::Erasure { top: e.top, left: e.left, height: e.height, width: e.width }.erase(&first).unwrap();
    close(&first, &e.image, "erased");
}

#[test]
fn every_policy_and_the_crops_area_train_record_themselves_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::colour_folder(&tmp.path().join("photos"), 4);
    let base = ["lenet-bn", "--data", data.as_str(), "--batch-size", "4"];
    let crop = ["--train-crop-scale", "0.35,1", "--train-crop-ratio", "0.8,1.25"];
    let ra = [&base[..], &crop, &["--epochs", "2", "--auto-augment", "ra", "--ra-magnitude", "12"]].concat();
    let (straight, resumed) = common::straight_and_resumed(&tmp.path().join("ra"), &ra, "2:2");
    common::assert_same_weights(&straight, &resumed);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["auto_augment"], serde_json::json!({"policy": "ra", "magnitude": 12}));
    let run = convnets::train::load_checkpoint(&straight, tch::Device::Cpu).unwrap();
    let names: Vec<String> = run.state.config.train_prep(0).pipeline.transforms.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        names,
        [
            "RandomResizedCrop(28, scale=(0.35, 1), ratio=(0.8, 1.25))",
            "RandomHorizontalFlip()",
            "RandAugment(num_ops=2, magnitude=12)"
        ]
    );
    assert_eq!(config["crops"]["scale"], serde_json::json!([0.35, 1.0]));
    let refused = [
        (
            &["train", "lenet-bn", "--train-crop-scale", "0.5,1"][..],
            "error: --train-crop-scale applies to image folders",
        ),
        (
            &["train", "lenet-bn", "--data", data.as_str(), "--train-crop-ratio", "2,1"],
            "error: --train-crop-ratio must be LO,HI with 0 < LO <= HI, got 2,1",
        ),
        (
            &["train", "lenet-bn", "--train-crop-scale", "0.5"],
            "error: invalid value '0.5' for '--train-crop-scale <LO,HI>': expected two numbers LO,HI",
        ),
    ];
    for (args, expected) in refused {
        let (code, _, err) = common::convnets(args);
        assert_eq!(code, 2, "{err}");
        assert!(err.lines().last().unwrap().starts_with(expected), "{err}");
    }
    // A resumed run keeps its policy: --auto-augment is refused beside --resume.
    let (code, _, err) = common::convnets(&["train", "--resume", straight.to_str().unwrap(), "--auto-augment", "ra"]);
    assert_eq!(code, 2, "{err}");
    for (policy, recorded) in [
        ("ta_wide", serde_json::json!({"policy": "ta_wide"})),
        ("augmix", serde_json::json!({"policy": "augmix", "severity": 3})),
        ("imagenet", serde_json::json!({"policy": "imagenet"})),
    ] {
        let out = tmp.path().join(policy);
        let args = [&base[..], &["--epochs", "1", "--auto-augment", policy, "--out", out.to_str().unwrap()]].concat();
        let (code, _, err) = common::convnets(&[&["train"], &args[..]].concat());
        assert_eq!(code, 0, "{policy}: {err}");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["auto_augment"], recorded, "{policy}");
    }
    let (code, _, err) = common::convnets(&["train", "lenet-bn", "--auto-augment", "ra", "--ra-magnitude", "31"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: invalid value '31' for '--ra-magnitude"), "{err}");
    assert!(err.contains("31 is not in 0..=30"), "{err}");
}

#[test]
fn augment_draws_a_policys_versions_of_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = tmp.path().join("photo.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 3) as u8, (y * 4) as u8, 120])).save(&photo).unwrap();
    let grid = tmp.path().join("grid.png");
    let args = ["augment", photo.to_str().unwrap(), "--auto-augment", "ta_wide", "--count", "6"];
    let (code, stdout, err) = common::convnets(&[&args[..], &["--out", grid.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("6 versions through TrivialAugmentWide()"), "{stdout}");
    assert!(image::open(&grid).unwrap().width() >= 7 * 64);
}
