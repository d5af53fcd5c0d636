//! Image folders (torchvision's ImageFolder layout) made by the tests: PNG and JPEG, colour and
//! grey, odd sizes, a corrupt file, an empty class; and Fashion-MNIST's sample as PNGs, which
//! must train exactly as its IDX files do.

use std::path::Path;

use convnets::data::{Dataset, FolderOptions, Format};
use image::{GrayImage, RgbImage};

mod common;
use common::{convnets, idx_images, idx_labels};

fn colour(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(w, h, |x, y| image::Rgb([rgb[0], rgb[1].wrapping_add((x + y) as u8), rgb[2]]))
        .save(path)
        .unwrap();
}

fn grey(path: &Path, w: u32, h: u32, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    GrayImage::from_fn(w, h, |x, _| image::Luma([v.wrapping_add(x as u8)])).save(path).unwrap();
}

/// cat: red-ish PNGs and a JPEG; dog: blue-ish, one of them grey; odd sizes throughout.
fn photos(dir: &Path, per_class: u32) {
    for i in 0..per_class {
        colour(&dir.join(format!("train/cat/{i}.png")), 37 + i, 29, [220, 10, 10]);
        colour(&dir.join(format!("train/dog/{i}.jpg")), 31, 41 + i, [10, 10, 220]);
    }
    grey(&dir.join("train/dog/grey.png"), 23, 23, 40);
    colour(&dir.join("train/cat/photo.JPEG"), 50, 38, [200, 30, 30]);
}

#[test]
fn a_folder_of_photos_loads_with_its_classes_and_refuses_what_it_cannot_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    photos(dir, 4);
    let err = Dataset::load(Some(dir), None).unwrap_err().to_string();
    assert!(err.contains("no val folder: add DIR/val/<class>/... or hold out a part with --val-split 0.1"), "{err}");
    let options = FolderOptions { val_split: Some(0.25), ..FolderOptions::default() };
    let data = Dataset::load_with(Some(dir), None, &options).unwrap();
    assert_eq!(data.format, Format::Folder);
    assert_eq!(data.classes, ["cat", "dog"]);
    assert_eq!(data.train.len() + data.test.len(), 10);
    assert_eq!(data.test.len(), 3, "a quarter of 10, rounded");
    assert_eq!(data.channels(), 3, "colour images: RGB");
    let again = Dataset::load_with(Some(dir), None, &options).unwrap();
    assert_eq!(again.test.files, data.test.files, "the same images are held out every time");
    // Every image decodes as RGB planes of its own size.
    let first = data.train.load(0).unwrap();
    assert_eq!(first.channels, 3);
    assert!(first.height >= 23 && first.width >= 23);

    // An empty class folder, and no class folder at all, are errors naming the folder.
    std::fs::create_dir(dir.join("train/bird")).unwrap();
    let err = Dataset::load_with(Some(dir), None, &options).unwrap_err().to_string();
    assert!(err.contains("train/bird: an empty class folder"), "{err}");
    std::fs::remove_dir(dir.join("train/bird")).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("train")).unwrap();
    let err = Dataset::load_with(Some(&empty), None, &options).unwrap_err().to_string();
    assert!(err.contains("no class folders"), "{err}");

    // A corrupt file: named when its batch is made, or left out and listed with --skip-bad-images.
    std::fs::write(dir.join("train/dog/broken.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let skipping = FolderOptions { val_split: Some(0.25), skip_bad_images: true, ..FolderOptions::default() };
    let data = Dataset::load_with(Some(dir), None, &skipping).unwrap();
    assert_eq!(data.skipped.len(), 1, "{:?}", data.skipped);
    assert!(data.skipped[0].contains("broken.jpg: not a readable image"), "{:?}", data.skipped);
    assert_eq!(data.train.len() + data.test.len(), 10);
}

#[test]
fn photos_train_with_crops_and_flips_and_a_corrupt_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    photos(&dir, 6);
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(dir.join("val").join(class)).unwrap();
    }
    colour(&dir.join("val/cat/a.png"), 40, 33, [210, 20, 20]);
    colour(&dir.join("val/dog/a.jpg"), 33, 40, [20, 20, 210]);
    let data = dir.to_str().unwrap();
    let run = tmp.path().join("run");
    let run = run.to_str().unwrap();
    // lenet-bn on the folder, resized to its 28x28, in batches of 4.
    let train = |epochs: &str, out: &str, extra: &[&str]| {
        let args = ["train", "lenet-bn", "--data", data, "--resize", "28", "--epochs", epochs, "--batch-size", "4"];
        convnets(&[&args[..], &["--out", out], extra].concat())
    };
    let (code, out, err) = train("2", run, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("data: folder "), "{err}");
    assert!(out.contains("test acc"), "{out}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(run).join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["dataset"].as_str(), config["in_channels"].as_i64(), config["augment"].as_bool()),
        (Some("folder"), Some(3), Some(true))
    );
    let (code, out, err) = convnets(&["eval", run, "--data", data]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cat") && out.contains("2 test images"), "{out}");
    // The run remembers its data: eval and predict find the folder without --data.
    let (code, out, err) = convnets(&["eval", run]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(the run's data)") && out.contains("cat") && out.contains("2 test images"), "{err}{out}");
    let (code, out, err) = convnets(&["predict", run, "--count", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("true cat") && out.contains("true dog"), "{out}");
    // The user's own JPEG, through evaluation's Resize + CenterCrop.
    let (code, out, err) = convnets(&["predict", run, "--image", &format!("{data}/val/dog/a.jpg")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": cat (") || out.contains(": dog ("), "{out}");
    assert_eq!(out.matches("%)").count(), 2, "both classes, the likelier first: {out}");

    std::fs::write(dir.join("train/dog/broken.jpg"), b"garbage").unwrap();
    let (code, _, err) = train("1", &format!("{run}2"), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broken.jpg: not a readable image") && err.contains("training failed at epoch 1"), "{err}");
    let (code, _, err) = train("1", &format!("{run}3"), &["--skip-bad-images"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left out 1 unreadable image(s)") && err.contains("broken.jpg"), "{err}");
}

#[test]
fn fashion_mnist_as_pngs_trains_exactly_as_its_idx_files() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = Dataset::from_source(convnets::data::Source::Embedded).unwrap();
    let (idx, folder) = (tmp.path().join("idx"), tmp.path().join("pngs"));
    std::fs::create_dir_all(&idx).unwrap();
    // ImageFolder numbers the classes by folder name and orders images by class, then file name:
    // the IDX files are written in that order and with those labels.
    let mut by_name = sample.classes.clone();
    by_name.sort();
    let folder_label = |label: u8| by_name.iter().position(|c| *c == sample.classes[label as usize]).unwrap() as u8;
    for (split, n, prefix, sub) in [(&sample.train, 300, "train", "train"), (&sample.test, 100, "t10k", "val")] {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (folder_label(split.labels[i]), i));
        let mut pixels = Vec::new();
        for &i in &order {
            pixels.extend_from_slice(split.image(i));
            let class = &sample.classes[split.labels[i] as usize];
            let path = folder.join(sub).join(class).join(format!("{i:05}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            GrayImage::from_raw(28, 28, split.image(i).to_vec()).unwrap().save(&path).unwrap();
        }
        let labels: Vec<u8> = order.iter().map(|&i| folder_label(split.labels[i])).collect();
        std::fs::write(idx.join(format!("{prefix}-images-idx3-ubyte")), idx_images(n as u32, 28, 28, &pixels)).unwrap();
        std::fs::write(idx.join(format!("{prefix}-labels-idx1-ubyte")), idx_labels(&labels)).unwrap();
    }
    let metrics = |data: &Path, extra: &[&str], out: &str| {
        let out = tmp.path().join(out);
        let args = [
            &[
                "train",
                "lenet-bn",
                "--data",
                data.to_str().unwrap(),
                "--epochs",
                "2",
                "--batch-size",
                "50",
                "--out",
                out.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        let (code, _, err) = convnets(&args);
        assert_eq!(code, 0, "{err}");
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
        m["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["train_loss"].as_f64(), e["test_acc"].as_f64()))
            .collect::<Vec<_>>()
    };
    let from_idx = metrics(&idx, &[], "a");
    // Grey PNGs stay one channel; without augmentation the 28x28 images are used as they are.
    let from_pngs = metrics(&folder, &["--augment", "none", "--resize", "28"], "b");
    assert_eq!(from_idx, from_pngs);
}

#[test]
fn the_pipeline_benchmark_counts_every_training_image_of_every_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    photos(tmp.path(), 3); // 3 cats + 1 JPEG, 3 dogs + 1 grey: 8 training images, no val/
    let dir = tmp.path().to_str().unwrap();
    let (code, out, err) =
        convnets(&["data", "bench", "--data", dir, "--side", "24", "--batch-size", "3", "--epochs", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("16 images to 24x24 in "), "{out}");
    assert!(out.contains(" images/s, ") && out.trim_end().ends_with("images per CPU second"), "{out}");
    // Neither needs a val/ folder, which they never read.
    let (code, out, err) = convnets(&["data", "info", "--data", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("train: 8 image files, 3 channel(s)") && out.contains("test: 0 image files"), "{out}");
}

#[test]
fn lenet_trains_on_a_folder_at_its_own_28x28_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    photos(&dir, 2);
    let run = tmp.path().join("run");
    let args = ["train", "lenet-bn", "--data", dir.to_str().unwrap(), "--val-split", "0.3", "--epochs", "1"];
    let (code, out, err) = convnets(&[&args[..], &["--batch-size", "4", "--out", run.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test acc"), "{out}");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["resize"], 28);
    assert_eq!(config["data_dir"].as_str(), Some(dir.canonicalize().unwrap().to_str().unwrap()));
}

#[test]
fn a_jpeg_that_makes_the_decoder_panic_is_an_unreadable_image_named_in_one_line() {
    // Found by fuzzing: zune-jpeg 0.5.15 asserts (panics) on this 706-byte file.
    let bytes = std::fs::read(common::golden("decoder_panic.jpg")).unwrap();
    let err = convnets::data::decode::decode_bytes(&bytes).unwrap_err().to_string();
    assert!(err.starts_with("the JPEG decoder failed: "), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    photos(&dir, 2);
    colour(&dir.join("val/cat/a.png"), 40, 33, [210, 20, 20]);
    colour(&dir.join("val/dog/a.jpg"), 33, 40, [20, 20, 210]);
    std::fs::write(dir.join("train/cat/fuzzed.jpg"), &bytes).unwrap();
    let data = dir.to_str().unwrap();
    let args = ["train", "lenet-bn", "--data", data, "--epochs", "1", "--batch-size", "4"];
    let (code, _, err) = convnets(&[&args[..], &["--out", tmp.path().join("run").to_str().unwrap()]].concat());
    assert_eq!(code, 1, "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("fuzzed.jpg: not a readable image: the JPEG decoder failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) =
        convnets(&[&args[..], &["--skip-bad-images", "--out", tmp.path().join("r2").to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left out 1 unreadable image(s)") && err.contains("fuzzed.jpg"), "{err}");
}
