//! Data sets beyond Fashion-MNIST, on files the tests make in the official layouts: CIFAR-10 and
//! CIFAR-100 (binary), MNIST (IDX). Colour flows through training, evaluation, prediction and
//! export; class names come from the data set.

use std::path::Path;

use convnets::data::{CropArea, Dataset, Format, Image, Pipeline, Source, Transform};
use rand::SeedableRng;

mod common;
use common::{convnets, idx_images, idx_labels};

/// `n` CIFAR records with `label_bytes` label bytes: label `i % classes`, the image's planes
/// filled so that each class looks different (red for even classes, blue for odd).
fn cifar_records(n: usize, label_bytes: usize, classes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let label = (i % classes) as u8;
        if label_bytes == 2 {
            out.push(label / 5); // the coarse label
        }
        out.push(label);
        for plane in 0..3 {
            let level = if label.is_multiple_of(2) == (plane == 0) { 200 } else { 20 };
            out.extend((0..1024).map(|p| level + ((p + i) % 7) as u8));
        }
    }
    out
}

fn write_cifar10(dir: &Path, per_batch: usize, names: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), cifar_records(per_batch, 1, 10)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_records(per_batch, 1, 10)).unwrap();
    if names {
        let names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"].join("\n");
        std::fs::write(dir.join("batches.meta.txt"), names + "\n\n").unwrap();
    }
}

#[test]
fn cifar_10_and_100_load_in_their_official_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    // The archive's folder under the named directory, names from batches.meta.txt.
    write_cifar10(&tmp.path().join("c10/cifar-10-batches-bin"), 20, true);
    let data = Dataset::load(Some(&tmp.path().join("c10")), None).unwrap();
    assert_eq!(data.format, Format::Cifar10);
    assert_eq!((data.train.len(), data.test.len()), (100, 20));
    assert_eq!((data.train.channels, data.train.rows, data.train.cols), (3, 32, 32));
    assert_eq!(data.classes[..2], ["plane", "car"]);
    assert_eq!(data.train.labels[..3], [0, 1, 2]);
    // Image 1 (class 1, odd): its red plane dark, its blue plane bright.
    let image = data.train.image(1);
    assert_eq!((image[0], image[2048]), (21, 201));

    // CIFAR-100: the fine label after the coarse one.
    let c100 = tmp.path().join("c100");
    std::fs::create_dir_all(&c100).unwrap();
    std::fs::write(c100.join("train.bin"), cifar_records(200, 2, 100)).unwrap();
    std::fs::write(c100.join("test.bin"), cifar_records(100, 2, 100)).unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("thing{i}")).collect();
    std::fs::write(c100.join("fine_label_names.txt"), names.join("\n")).unwrap();
    let data = Dataset::load(Some(&c100), None).unwrap();
    assert_eq!(data.format, Format::Cifar100);
    assert_eq!(data.classes.len(), 100);
    assert_eq!(data.train.labels[57], 57, "the fine label, not the coarse one (11)");

    // Damaged files are errors naming the file.
    std::fs::write(c100.join("test.bin"), &cifar_records(3, 2, 100)[..3000]).unwrap();
    let err = Dataset::load(Some(&c100), None).unwrap_err().to_string();
    assert!(err.contains("test.bin: 3000 bytes is not a whole number of 3074-byte records"), "{err}");
    let mut bad = cifar_records(2, 1, 10);
    bad[3073] = 10;
    std::fs::write(tmp.path().join("c10/cifar-10-batches-bin/test_batch.bin"), bad).unwrap();
    let err = Dataset::load(Some(&tmp.path().join("c10")), None).unwrap_err().to_string();
    assert!(err.contains("test_batch.bin: label 10 of record 1 is not a class (0-9)"), "{err}");
    let err = Dataset::load(Some(tmp.path()), Some(Format::Cifar100)).unwrap_err().to_string();
    assert!(err.contains("no cifar100 binary files"), "{err}");
}

#[test]
fn mnist_is_the_same_idx_files_with_digit_names() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = Dataset::from_source(Source::Embedded).unwrap();
    for (split, prefix) in [(&sample.train, "train"), (&sample.test, "t10k")] {
        let n = 40;
        std::fs::write(
            tmp.path().join(format!("{prefix}-images-idx3-ubyte")),
            idx_images(n as u32, 28, 28, &split.images[..n * 784]),
        )
        .unwrap();
        std::fs::write(tmp.path().join(format!("{prefix}-labels-idx1-ubyte")), idx_labels(&split.labels[..n])).unwrap();
    }
    let data = Dataset::load(Some(tmp.path()), Some(Format::Mnist)).unwrap();
    assert_eq!(data.classes, (0..10).map(|d| d.to_string()).collect::<Vec<_>>());
    assert_eq!(Dataset::load(Some(tmp.path()), None).unwrap().format, Format::FashionMnist, "IDX defaults to d2l's");
    assert_eq!("mnist".parse::<Format>(), Ok(Format::Mnist));
    assert!("imagenet".parse::<Format>().unwrap_err().contains("expected fashion-mnist, mnist, cifar10, cifar100"));
    let err = Dataset::load(None, Some(Format::Cifar10)).unwrap_err().to_string();
    assert!(err.contains("give its folder with --data DIR"), "{err}");
}

#[test]
fn colour_images_train_evaluate_predict_and_export_with_their_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    let cifar = tmp.path().join("cifar");
    write_cifar10(&cifar, 40, false); // names from the built-in list
    let cifar = cifar.to_str().unwrap();
    let run = tmp.path().join("run");
    let run = run.to_str().unwrap();

    // LeNet takes 28x28: CIFAR's 32x32 needs --resize 28, and the error says so.
    let (code, _, err) = convnets(&["train", "lenet-bn", "--data", cifar, "--epochs", "1", "--out", run]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lenet-bn cannot take a 3x32x32 input") && err.contains("3x28x28"), "{err}");
    let (code, out, err) = convnets(&[
        "train",
        "lenet-bn",
        "--data",
        cifar,
        "--epochs",
        "3",
        "--resize",
        "28",
        "--batch-size",
        "20",
        "--out",
        run,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("data: cifar10 "), "{err}");
    assert!(out.contains("test acc"), "{out}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(run).join("config.json")).unwrap()).unwrap();
    assert_eq!((config["in_channels"].as_i64(), config["num_classes"].as_i64()), (Some(3), Some(10)));
    assert_eq!(config["dataset"], "cifar10");
    assert_eq!(config["classes"][0], "airplane");

    let (code, out, err) = convnets(&["eval", run, "--data", cifar]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("airplane") && out.contains("truck"), "{out}");
    let (code, out, err) =
        convnets(&["predict", run, "--data", cifar, "--count", "4", "--out", &format!("{run}/grid.png")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("true airplane") && out.contains("true automobile"), "{out}");
    // The picture is in colour: the first image (class 0) is red, the second (class 1) cyan.
    let grid = convnets::data::decode::decode_as(Path::new(&format!("{run}/grid.png")), 3).unwrap();
    let (planes, h, w) = (grid.pixels, grid.height, grid.width);
    let pixel = |y: usize, x: usize| [planes[y * w + x], planes[h * w + y * w + x], planes[2 * h * w + y * w + x]];
    let (first, second) = (pixel(80, 50), pixel(80, 50 + w / 4));
    assert!(first[0] > 150 && first[1] < 60 && first[2] < 60, "{first:?}");
    assert!(second[0] < 60 && second[1] > 150 && second[2] > 150, "{second:?}");

    // The user's own colour PNG: a red square reads as the red classes do.
    let png = tmp.path().join("red.png");
    let mut encoder = png::Encoder::new(std::fs::File::create(&png).unwrap(), 40, 30);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().unwrap().write_image_data(&[200, 20, 20].repeat(40 * 30)).unwrap();
    let (code, out, err) = convnets(&["predict", run, "--image", png.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{}: ", png.display())), "{out}");

    // A resumed run or an evaluation on other data is refused with both sides named.
    let fashion = common::idx_dataset(&tmp.path().join("fashion"), 64, 16);
    let (code, _, err) = convnets(&["train", "--resume", run, "--epochs", "4", "--data", fashion.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the run trained on cifar10 (3 channel(s), 10 classes) but the data is fashion-mnist (1 channel(s), 10 classes)"), "{err}");
    // Without --data, the run continues on its own.
    let (code, _, err) = convnets(&["train", "--resume", run, "--epochs", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("data: cifar10 {} (the run's data)", Path::new(cifar).canonicalize().unwrap().display())),
        "{err}"
    );

    // ONNX: three input channels, CIFAR's names.
    let onnx = format!("{run}/model.onnx");
    let (code, _, err) = convnets(&["export", run, "--out", &onnx]);
    assert_eq!(code, 0, "{err}");
    let model = <convnets::onnx::proto::ModelProto as prost::Message>::decode(std::fs::read(&onnx).unwrap().as_slice())
        .unwrap();
    let classes = model.metadata_props.iter().find(|p| p.key == "convnets.classes").unwrap();
    assert!(classes.value.starts_with("[\"airplane\",\"automobile\""), "{}", classes.value);
    let preprocessing = model.metadata_props.iter().find(|p| p.key == "convnets.preprocessing").unwrap();
    assert!(
        preprocessing.value.contains("N x 3 x 28 x 28") && preprocessing.value.contains("RGB"),
        "{}",
        preprocessing.value
    );

    let (code, out, _) = convnets(&["data", "info", "--data", cifar]);
    assert_eq!(code, 0);
    assert!(out.contains("train: 200 images of 3x32x32") && out.contains("airplane"), "{out}");
}

#[test]
fn summaries_take_other_channel_and_class_counts() {
    let (code, out, err) = convnets(&["summary", "resnet18", "--in-channels", "3", "--classes", "100"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Linear-50                  [-1, 100]          51,300"), "{out}");
    assert!(out.contains("Conv2d-1           [-1, 64, 48, 48]           9,472"), "3 input channels: {out}");
    let (code, _, err) = convnets(&["shapes", "lenet-bn", "--input", "3x28x28", "--in-channels", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--input has 3 channels but --in-channels says 1"), "{err}");
    let (code, _, err) = convnets(&["summary", "nin", "--classes", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--classes must be at least 1, got 0"), "{err}");
}

fn image(h: usize, w: usize) -> Image {
    // Two planes: the row index and the column index, so every crop shows where it came from.
    let mut pixels: Vec<u8> = (0..h * w).map(|i| (i / w) as u8).collect();
    pixels.extend((0..h * w).map(|i| (i % w) as u8));
    Image { pixels, channels: 2, height: h, width: w }
}

#[test]
fn transforms_follow_torchvision() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    // CenterCrop(4) of 10x9: torchvision's int(round((10 - 4) / 2.0)) = 3 for the top and
    // int(round((9 - 4) / 2.0)) = 2 for the left (Python rounds halves to the even neighbour).
    let crop = Transform::CenterCrop(4).apply(image(10, 9), &mut rng);
    assert_eq!((crop.height, crop.width), (4, 4));
    assert_eq!((crop.pixels[0], crop.pixels[16]), (3, 2), "top row 3, left column 2");
    // Resize(6) keeps the aspect ratio: the shorter side 6, the longer 6 * 12 / 8 = 9.
    let resized = Transform::ResizeShorter(6).apply(image(8, 12), &mut rng);
    assert_eq!((resized.height, resized.width), (6, 9));
    // RandomCrop(8, padding=2): an 8x8 window of the zero-padded 12x12 image.
    for _ in 0..50 {
        let out = Transform::RandomCrop { size: 8, padding: 2 }.apply(image(8, 8), &mut rng);
        assert_eq!((out.height, out.width, out.channels), (8, 8, 2));
        let rows = &out.pixels[..64];
        let top = (0..8).find(|&y| rows[y * 8..y * 8 + 8].iter().any(|&v| v > 0)).unwrap_or(8);
        assert!(top <= 3, "at most 2 rows of padding (and row 0 is 0 itself): {rows:?}");
    }
    // The flip mirrors every row of every plane, half of the time.
    let flips = (0..200)
        .filter(|_| {
            let out = Transform::RandomHorizontalFlip.apply(image(3, 5), &mut rng);
            out.pixels[15] == 4 // the column plane's first value is the last column
        })
        .count();
    assert!((70..130).contains(&flips), "{flips} of 200");
    // RandomResizedCrop: always the asked size.
    for _ in 0..50 {
        let out = Transform::RandomResizedCrop(16, CropArea::DEFAULT).apply(image(30, 50), &mut rng);
        assert_eq!((out.height, out.width), (16, 16));
    }
    // Its scale and ratio: boxes of 25% to 50% of the area, 1/2 to 2 times as wide as high.
    let area = CropArea { scale: [0.25, 0.5], ratio: [0.5, 2.0] };
    for _ in 0..500 {
        let (top, left, h, w) = area.draw_box(200, 300, &mut rng);
        let share = (h * w) as f64 / 60_000.0;
        assert!((0.245..0.505).contains(&share), "{h}x{w}");
        assert!((0.49..2.01).contains(&(w as f64 / h as f64)), "{h}x{w}");
        assert!(top + h <= 200 && left + w <= 300);
    }
    // The whole area at ratio 1 never fits a 30x50 image: torchvision's fallback, the central
    // 30x30 square.
    let whole = CropArea { scale: [1.0, 1.0], ratio: [1.0, 1.0] };
    let out = Transform::RandomResizedCrop(16, whole).apply(image(30, 50), &mut rng);
    let centre = Pipeline { transforms: vec![Transform::CenterCrop(30), Transform::Resize(16)] };
    assert_eq!(out, centre.apply(image(30, 50), 0, 0, 0));
    assert_eq!(
        Transform::RandomResizedCrop(16, whole).to_string(),
        "RandomResizedCrop(16, scale=(1, 1), ratio=(1, 1))"
    );
}

#[test]
fn augmented_draws_depend_on_seed_epoch_and_image_only() {
    let pipeline =
        Pipeline { transforms: vec![Transform::RandomCrop { size: 6, padding: 3 }, Transform::RandomHorizontalFlip] };
    let a = pipeline.apply(image(6, 6), 7, 2, 11);
    assert_eq!(a, pipeline.apply(image(6, 6), 7, 2, 11), "the same (seed, epoch, image): the same draws");
    let others = [
        pipeline.apply(image(6, 6), 8, 2, 11),
        pipeline.apply(image(6, 6), 7, 3, 11),
        pipeline.apply(image(6, 6), 7, 2, 12),
    ];
    assert!(others.iter().any(|o| *o != a), "another seed, epoch or image draws anew");
    assert_eq!(Pipeline::d2l(Some(32)).resize_only(), Some(Some(32)));
    assert_eq!(pipeline.output_size(6, 6), (6, 6));
}

#[test]
fn cifar_trains_with_augmentation_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let cifar = tmp.path().join("cifar");
    write_cifar10(&cifar, 30, true);
    let cifar = cifar.to_str().unwrap();
    let common = ["--data", cifar, "--epochs", "3", "--resize", "28", "--batch-size", "25"];
    let (straight, resumed) = (tmp.path().join("a"), tmp.path().join("b"));
    let (code, _, err) = convnets(&[&["train", "lenet-bn", "--out", straight.to_str().unwrap()][..], &common].concat());
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["augment"], true, "CIFAR's default");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnets"))
        .args([&["train", "lenet-bn", "--out", resumed.to_str().unwrap()][..], &common].concat())
        .env("CONVNETS_FAIL_AT", "2:3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let (code, _, err) = convnets(&["train", "--resume", resumed.to_str().unwrap(), "--data", cifar]);
    assert_eq!(code, 0, "{err}");
    let metrics = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap()
    };
    let losses = |v: serde_json::Value| {
        v["epochs"].as_array().unwrap().iter().map(|e| e["train_loss"].as_f64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(losses(metrics(&straight)), losses(metrics(&resumed)));

    // --augment none trains as d2l would, on other batches.
    let plain = tmp.path().join("plain");
    let (code, _, err) = convnets(
        &[&["train", "lenet-bn", "--augment", "none", "--out", plain.to_str().unwrap()][..], &common].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(losses(metrics(&plain)), losses(metrics(&straight)), "augmentation changes what the network sees");
}

#[test]
fn normalize_auto_uses_the_training_images_statistics_cached_beside_the_data() {
    // Two planes: 0 and 255 in halves (mean 0.5, std 0.5), and a constant 51 (0.2, std 0 -> 1e-6).
    let mut pixels: Vec<u8> = (0..16).map(|i| if i < 8 { 0 } else { 255 }).collect();
    pixels.extend([51u8; 16]);
    let stats = convnets::data::Normalize::of(&[Image { pixels, channels: 2, height: 4, width: 4 }]);
    assert!((stats.mean[0] - 0.5).abs() < 1e-12 && (stats.mean[1] - 0.2).abs() < 1e-12, "{stats:?}");
    assert!((stats.std[0] - 0.5).abs() < 1e-12 && stats.std[1] == 1e-6, "{stats:?}");
    let x = tch::Tensor::from_slice(&[1.0f32, 0.2]).view([1, 2, 1, 1]);
    let y = Vec::<f32>::try_from(stats.apply(&x).unwrap().flatten(0, -1)).unwrap();
    assert!((y[0] - 1.0).abs() < 1e-6 && y[1].abs() < 1e-3, "(1 - 0.5) / 0.5 and (0.2 - 0.2) / 1e-6: {y:?}");

    let tmp = tempfile::tempdir().unwrap();
    let cifar = tmp.path().join("cifar");
    write_cifar10(&cifar, 20, true);
    let run = tmp.path().join("run");
    let args = [
        "train",
        "lenet-bn",
        "--data",
        cifar.to_str().unwrap(),
        "--resize",
        "28",
        "--epochs",
        "1",
        "--normalize",
        "auto",
    ];
    let (code, _, err) = convnets(&[&args[..], &["--out", run.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("normalize: mean ["), "{err}");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    let mean: Vec<f64> = config["normalize"]["mean"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(mean.len(), 3);
    // Even classes are red (200-ish), odd ones dark in red: the red mean is about (207 + 23) / 2 / 255.
    assert!((mean[0] - 0.45).abs() < 0.03, "{mean:?}");
    let cache = std::fs::read_to_string(cifar.join("convnets-normalize.json")).unwrap();
    assert!(cache.contains("cifar10 100"), "{cache}");
    // The export says how to normalise.
    let onnx = tmp.path().join("m.onnx");
    let (code, _, err) = convnets(&["export", run.to_str().unwrap(), "--out", onnx.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let model = <convnets::onnx::proto::ModelProto as prost::Message>::decode(std::fs::read(&onnx).unwrap().as_slice())
        .unwrap();
    let pre = model.metadata_props.iter().find(|p| p.key == "convnets.preprocessing").unwrap();
    assert!(pre.value.contains("(x - mean) / std with mean ["), "{}", pre.value);
    let (code, _, err) = convnets(&["eval", run.to_str().unwrap(), "--data", cifar.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_help_names_every_kind_of_data_train_takes() {
    let (code, out, _) = convnets(&["--help"]);
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.trim_start().starts_with("train ")).unwrap();
    assert!(line.contains("Fashion-MNIST, MNIST, CIFAR-10/100 or a folder of your own images"), "{line}");
    let (code, out, _) = convnets(&["train", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("or an image folder (train/<class>/*.jpg|png, and val/ or --val-split)"), "{out}");
}
