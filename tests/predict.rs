//! `convnets predict`: the picture shows each image as the network saw it (checked by its
//! pixels, for an IDX run, a grey folder and a colour folder), a folder's images are a spread
//! across its classes, and the user's images get their most likely classes with probabilities.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use convnets::data::{Dataset, Image, Resize, Source, decode};
use convnets::report::plot;
use convnets::train;
use image::{GrayImage, RgbImage};

mod common;
use common::convnets;

/// Trains `args` for an epoch into `run` (which it returns), failing the test if it fails.
fn trained(run: PathBuf, args: &[&str]) -> PathBuf {
    let (code, _, err) = convnets(&[&["train"], args, &["--epochs", "1", "--out", run.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    run
}

/// `predict RUN --count N --out grid.png`: the test-set indices and true classes it printed, and
/// the picture, whose frames are red around wrong predictions alone.
fn predict_grid(run: &Path, count: usize) -> (Vec<usize>, Vec<String>, Image) {
    let grid = run.join("grid.png");
    let n = count.to_string();
    let (code, out, err) =
        convnets(&["predict", run.to_str().unwrap(), "--count", &n, "--out", grid.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (indices, truths) = out
        .lines()
        .map(|line| {
            let (index, rest) = line.split_once(": true ").unwrap();
            (index.trim().parse::<usize>().unwrap(), rest.split_whitespace().next().unwrap().to_string())
        })
        .unzip();
    let picture = decode::decode_as(&grid, 3).unwrap();
    let wrong: Vec<bool> = out.lines().map(|line| line.ends_with("(wrong)")).collect();
    let size = (picture.height, picture.width);
    for (k, &wrong) in wrong.iter().enumerate() {
        // Just left of the image, half-way down: the frame's line, or the cell's white.
        let (x, y, _, h) = plot::image_rect(count, shown(run), k);
        let at = (y + h / 2) * size.1 + x - 2;
        let rgb = [0, 1, 2].map(|c| picture.pixels[c * size.0 * size.1 + at]);
        assert_eq!(rgb[0] > 150 && rgb[1] < 60 && rgb[2] < 60, wrong, "cell {k}'s frame: {rgb:?}");
    }
    (indices, truths, picture)
}

/// The size of the images a run's network sees.
fn shown(run: &Path) -> (usize, usize) {
    let side = train::load_checkpoint(run, tch::Device::Cpu).unwrap().state.config.image_side();
    (side, side)
}

/// The picture's cell `k` of `count` images the network saw at `size`, as planes.
fn cell(grid: &Image, count: usize, size: (usize, usize), k: usize) -> Image {
    let (x, y, w, h) = plot::image_rect(count, size, k);
    let plane = grid.height * grid.width;
    let pixels = (0..3)
        .flat_map(|c| (y..y + h).flat_map(move |row| (x..x + w).map(move |col| c * plane + row * grid.width + col)))
        .map(|at| grid.pixels[at])
        .collect();
    Image { pixels, channels: 3, height: h, width: w }
}

/// The mean absolute difference of two images brought to 28x28 (grey ones compared in each
/// colour plane).
fn difference(a: &Image, b: &Image) -> f64 {
    let small = |im: &Image| -> Vec<Vec<u8>> {
        let resize = Resize::new(im.height, im.width, 28, 28);
        let planes: Vec<Vec<u8>> = im.pixels.chunks(im.height * im.width).map(|p| resize.apply(p)).collect();
        (0..3).map(|c| planes[c.min(planes.len() - 1)].clone()).collect()
    };
    let (a, b) = (small(a), small(b));
    let total: u64 = a.iter().flatten().zip(b.iter().flatten()).map(|(&x, &y)| x.abs_diff(y) as u64).sum();
    total as f64 / (3.0 * 28.0 * 28.0)
}

/// Each drawn cell is its own image (within a few grey levels) and unlike the others.
fn cells_show(grid: &Image, size: (usize, usize), expected: &[Image]) {
    for (k, image) in expected.iter().enumerate() {
        let drawn = cell(grid, expected.len(), size, k);
        let own = difference(&drawn, image);
        assert!(own < 12.0, "cell {k} differs from its image by {own:.1} grey levels on average");
        for (j, other) in expected.iter().enumerate().filter(|&(j, _)| j != k) {
            let theirs = difference(&drawn, other);
            assert!(theirs > own, "cell {k} is closer to image {j} ({theirs:.1}) than to its own ({own:.1})");
        }
    }
}

#[test]
fn the_picture_shows_each_idx_image_as_the_network_saw_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path().join("run"), &["lenet-bn"]);
    let (indices, _, grid) = predict_grid(&run, 6);
    assert_eq!(indices, [0, 1, 2, 3, 4, 5], "d2l's first test images");
    let sample = Dataset::from_source(Source::Embedded).unwrap();
    let images: Vec<Image> = indices.iter().map(|&i| sample.test.load(i).unwrap()).collect();
    cells_show(&grid, (28, 28), &images);
}

/// `per_class` images of `w` x `h` per class, `train/` and `val/`: grey, or coloured by class
/// (red, green, blue), each with a pattern of its own.
fn folder(dir: &Path, per_class: u32, w: u32, h: u32, colour: bool) {
    for (split, n) in [("train", per_class), ("val", per_class)] {
        for (c, class) in ["red", "green", "blue"].iter().enumerate() {
            let path = dir.join(split).join(class);
            std::fs::create_dir_all(&path).unwrap();
            for i in 0..n {
                let file = path.join(format!("{i}.png"));
                let value = |x: u32, y: u32| ((x * (3 + i) + y * (5 + c as u32 * 7)) % 256) as u8;
                if colour {
                    let pixel = |x, y| {
                        let mut rgb = [value(x, y) / 4; 3];
                        rgb[c] = 128 + value(x, y) / 2;
                        image::Rgb(rgb)
                    };
                    RgbImage::from_fn(w, h, pixel).save(&file).unwrap();
                } else {
                    GrayImage::from_fn(w, h, |x, y| image::Luma([value(x, y)])).save(&file).unwrap();
                }
            }
        }
    }
}

/// The run's data and evaluation transforms applied to test image `i` of `dir`.
fn seen(run: &Path, dir: &Path, i: usize) -> Image {
    let config = train::load_checkpoint(run, tch::Device::Cpu).unwrap().state.config;
    let data = Dataset::load(Some(dir), None).unwrap();
    config.eval_prep().pipeline.apply(data.test.load(i).unwrap(), config.seed, 0, i)
}

#[test]
fn a_grey_folders_picture_is_a_spread_across_classes_drawn_as_the_network_saw_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("grey");
    folder(&dir, 4, 28, 28, false);
    let data = dir.to_str().unwrap();
    let run = trained(tmp.path().join("run"), &["lenet-bn", "--data", data, "--augment", "none", "--batch-size", "4"]);
    let (indices, truths, grid) = predict_grid(&run, 6);
    // The folder's test images are listed class by class: the picture takes two of each.
    let classes: BTreeSet<&str> = truths.iter().map(String::as_str).collect();
    assert_eq!(classes, BTreeSet::from(["blue", "green", "red"]), "{truths:?}");
    assert_eq!(predict_grid(&run, 6).0, indices, "the same images every time");
    let images: Vec<Image> = indices.iter().map(|&i| seen(&run, &dir, i)).collect();
    assert!(images.iter().all(|im| im.channels == 1 && (im.height, im.width) == (28, 28)));
    cells_show(&grid, (28, 28), &images);
}

#[test]
fn a_colour_folders_photos_are_drawn_in_colour_at_a_size_a_person_can_see() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("colour");
    folder(&dir, 2, 260, 230, true);
    let data = dir.to_str().unwrap();
    // NiN sees 224x224 crops (Resize(256), CenterCrop(224)): drawn at 160x160.
    let run = trained(tmp.path().join("run"), &["nin", "--data", data, "--batch-size", "3"]);
    let (indices, truths, grid) = predict_grid(&run, 3);
    assert_eq!(truths.iter().collect::<BTreeSet<_>>().len(), 3, "{truths:?}");
    assert_eq!(plot::image_rect(3, (224, 224), 0).2, 160);
    let images: Vec<Image> = indices.iter().map(|&i| seen(&run, &dir, i)).collect();
    assert!(images.iter().all(|im| im.channels == 3 && (im.height, im.width) == (224, 224)));
    cells_show(&grid, (224, 224), &images);
    // In colour: each cell is mostly its class's colour.
    for (k, truth) in truths.iter().enumerate() {
        let drawn = cell(&grid, 3, (224, 224), k);
        let plane = drawn.height * drawn.width;
        let means: Vec<f64> =
            drawn.pixels.chunks(plane).map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / plane as f64).collect();
        let brightest = (0..3).max_by(|&a, &b| means[a].total_cmp(&means[b])).unwrap();
        assert_eq!(["red", "green", "blue"][brightest], truth, "cell {k}: {means:?}");
    }
}

#[test]
fn own_images_get_their_most_likely_classes_with_probabilities_as_lines_or_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("colour");
    folder(&dir, 2, 40, 30, true);
    let data = dir.to_str().unwrap();
    let run = trained(tmp.path().join("run"), &["lenet-bn", "--data", data, "--batch-size", "3"]);
    let run = run.to_str().unwrap();
    let (a, b) = (format!("{data}/val/red/0.png"), format!("{data}/val/blue/1.png"));

    let (code, out, err) = convnets(&["predict", run, "--image", &a, &b, "--topk", "2"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, file) in lines.iter().zip([&a, &b]) {
        let rest = line.strip_prefix(&format!("{file}: ")).unwrap_or_else(|| panic!("{line}"));
        let percents: Vec<f64> = rest
            .split(", ")
            .map(|entry| entry.rsplit_once(" (").unwrap().1.trim_end_matches("%)").parse().unwrap())
            .collect();
        assert_eq!(percents.len(), 2, "{line}");
        assert!(percents[0] >= percents[1] && percents.iter().sum::<f64>() <= 100.05, "{line}");
    }

    // JSON: one object per image; every class at most, however many are asked for.
    let (code, out, err) = convnets(&["predict", run, "--image", &a, &b, "--topk", "50", "--json"]);
    assert_eq!(code, 0, "{err}");
    for (line, file) in out.lines().zip([&a, &b]) {
        let object: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(object["image"], file.as_str());
        let predictions = object["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 3, "{line}");
        let total: f64 = predictions.iter().map(|p| p["probability"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{line}");
        let classes: BTreeSet<&str> = predictions.iter().map(|p| p["class"].as_str().unwrap()).collect();
        assert_eq!(classes, BTreeSet::from(["blue", "green", "red"]));
        assert!(predictions.windows(2).all(|w| w[0]["probability"].as_f64() >= w[1]["probability"].as_f64()));
    }
    assert_eq!(out.lines().count(), 2);

    let (code, _, err) = convnets(&["predict", run, "--image", &a, "--topk", "0"]);
    assert_eq!((code, err.as_str()), (2, "error: --topk must be at least 1\n"));
    let (code, _, err) = convnets(&["predict", run, "--topk", "3"]);
    assert_eq!(code, 2, "--topk is for --image: {err}");
}
