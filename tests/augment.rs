//! d2l's image-augmentation chapter: torchvision's colour adjustments (against torchvision
//! 0.26's outputs), ColorJitter's draws, the vertical flip, and training with them.

use convnets::data::{self, ColorJitter, Image, Pipeline, Transform};
use rand::SeedableRng;
use tch::Device;

mod common;

#[derive(serde::Deserialize)]
struct Case {
    image: String,
    op: String,
    factor: f32,
    output: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Golden {
    rgb: Vec<u8>,
    grey: Vec<u8>,
    cases: Vec<Case>,
}

#[test]
fn colour_adjustments_match_torchvision_within_one_grey_level() {
    let text = std::fs::read_to_string(common::golden("torchvision/color.json")).unwrap();
    let golden: Golden = serde_json::from_str(&text).unwrap();
    assert_eq!(golden.cases.len(), 20);
    for case in &golden.cases {
        let (pixels, channels) = if case.image == "rgb" { (&golden.rgb, 3) } else { (&golden.grey, 1) };
        let image = Image { pixels: pixels.clone(), channels, height: 12, width: 16 };
        let ours = match case.op.as_str() {
            "brightness" => data::adjust_brightness(image, case.factor),
            "contrast" => data::adjust_contrast(image, case.factor),
            "saturation" => data::adjust_saturation(image, case.factor),
            "hue" => data::adjust_hue(image, case.factor),
            op => panic!("{op}"),
        };
        let what = format!("{} {} {}", case.image, case.op, case.factor);
        assert_eq!(ours.pixels.len(), case.output.len(), "{what}");
        let worst = ours.pixels.iter().zip(&case.output).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 1, "{what}: {worst} grey levels off");
        let off = ours.pixels.iter().zip(&case.output).filter(|(a, b)| a != b).count();
        assert!(off * 50 <= ours.pixels.len(), "{what}: {off} of {} values off by one", ours.pixels.len());
    }
}

#[test]
fn color_jitter_draws_every_order_and_factors_in_their_ranges() {
    let jitter = ColorJitter::parse("0.4,0.3,0.5,0.1").unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut orders = std::collections::HashSet::new();
    let mut brightness_sum = 0f64;
    let n = 4000;
    for _ in 0..n {
        let draws = jitter.draw(&mut rng);
        assert_eq!(draws.len(), 4);
        orders.insert(draws.iter().map(|d| d.0).collect::<Vec<_>>());
        for (i, f) in draws {
            let (lo, hi) = [(0.6, 1.4), (0.7, 1.3), (0.5, 1.5), (-0.1, 0.1)][i];
            assert!((lo..=hi).contains(&f), "adjustment {i}: {f} outside [{lo}, {hi}]");
            if i == 0 {
                brightness_sum += f as f64;
            }
        }
    }
    assert_eq!(orders.len(), 24, "every order of the four adjustments");
    let mean = brightness_sum / n as f64;
    assert!((mean - 1.0).abs() < 0.02, "brightness factors centred on 1: {mean}");
    // A 0 leaves the adjustment out; brightness spreads clamp at 0.
    let only_hue = ColorJitter::parse("0,0,0,0.2").unwrap();
    assert!(only_hue.draw(&mut rng).iter().all(|d| d.0 == 3));
    let wide = ColorJitter::parse("1.5,0,0,0").unwrap();
    assert!((0..200).all(|_| wide.draw(&mut rng)[0].1 >= 0.0));
    for (bad, expected) in [
        ("0.4,0.4,0.4", "takes four numbers"),
        ("0.4,0.4,x,0.1", "takes four numbers"),
        ("0.4,-1,0.4,0.1", "must be 0 or more"),
        ("0,0,0,0.6", "hue must be at most 0.5"),
    ] {
        let err = ColorJitter::parse(bad).unwrap_err();
        assert!(err.contains(expected), "{bad}: {err}");
    }
}

#[test]
fn the_vertical_flip_reverses_rows_for_about_half_the_images() {
    let image = Image { pixels: (0..2 * 3 * 4).map(|v| v as u8).collect(), channels: 2, height: 3, width: 4 };
    let flipped: Vec<u8> =
        [8u8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 20, 21, 22, 23, 16, 17, 18, 19, 12, 13, 14, 15].to_vec();
    let pipeline = Pipeline { transforms: vec![Transform::RandomVerticalFlip] };
    let mut count = 0;
    for index in 0..400 {
        let out = pipeline.apply(image.clone(), 3, 1, index);
        if out.pixels == flipped {
            count += 1;
        } else {
            assert_eq!(out, image, "either flipped or as it was");
        }
        assert_eq!(pipeline.apply(image.clone(), 3, 1, index), out, "the same draw for the same image");
    }
    assert!((160..=240).contains(&count), "{count} of 400 flipped");
}

#[test]
fn training_with_jitter_and_vertical_flips_records_them_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    for split in ["train", "val"] {
        for (c, class) in ["red", "blue"].iter().enumerate() {
            let path = dir.join(split).join(class);
            std::fs::create_dir_all(&path).unwrap();
            for i in 0..6u32 {
                let pixel = |x: u32, y: u32| {
                    let mut rgb = [((x * 5 + y * (i + 2)) % 80) as u8; 3];
                    rgb[c * 2] = 150 + ((x * y + i) % 100) as u8;
                    image::Rgb(rgb)
                };
                image::RgbImage::from_fn(36, 30, pixel).save(path.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let args = [
        "lenet-bn",
        "--data",
        dir.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--color-jitter",
        "0.4,0.4,0.4,0.1",
        "--vertical-flip",
        "--random-erase",
        "0.5",
    ];
    let (straight, resumed) = common::straight_and_resumed(tmp.path(), &args, "2:2");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vertical_flip"], true);
    assert_eq!(config["random_erase"], 0.5);
    assert_eq!(config["color_jitter"]["hue"].as_f64().map(|h| (h * 10.0).round()), Some(1.0));
    common::assert_same_weights(&straight, &resumed);
    let a = convnets::train::load_checkpoint(&straight, Device::Cpu).unwrap();
    // The training pipeline ends with them, after the folder's crop and flip.
    let prep = a.state.config.train_prep(0);
    let names: Vec<String> = prep.pipeline.transforms.iter().map(Transform::to_string).collect();
    assert_eq!(
        names,
        [
            "RandomResizedCrop(28)",
            "RandomHorizontalFlip()",
            "RandomVerticalFlip()",
            "ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)"
        ]
    );
}

#[test]
fn augment_draws_an_image_and_its_augmented_versions_as_d2ls_apply_does() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = tmp.path().join("photo.png");
    image::RgbImage::from_fn(120, 80, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])).save(&photo).unwrap();
    let grid = tmp.path().join("grid.png");
    let (code, stdout, err) = common::convnets(&[
        "augment",
        photo.to_str().unwrap(),
        "--crop",
        "64",
        "--flip",
        "--color-jitter",
        "0.5,0,0,0",
        "--count",
        "4",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("4 versions through RandomResizedCrop(64), RandomHorizontalFlip(), ColorJitter(brightness=0.5"),
        "{stdout}"
    );
    let picture = image::open(&grid).unwrap().to_rgb8();
    // Five cells in a row: the original (drawn at its own 120x80) and four 64x64 crops, enlarged.
    assert!(picture.width() >= 5 * 84 && picture.height() >= 84, "{}x{}", picture.width(), picture.height());
    // The original's top-left pixel is drawn below its title.
    let (x, y, _, _) = convnets::report::plot::image_rect(5, (80, 120), 0);
    assert_eq!(picture.get_pixel(x as u32 + 10, y as u32 + 10).0, [20, 30, 90]);
    let (code, _, err) = common::convnets(&["augment", photo.to_str().unwrap(), "--out", grid.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("name an augmentation"), "{err}");
}

#[test]
fn a_folder_trains_and_evaluates_at_crop_sizes_of_its_own_and_evaluates_with_flips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    for split in ["train", "val"] {
        for (c, class) in ["left", "right"].iter().enumerate() {
            let path = dir.join(split).join(class);
            std::fs::create_dir_all(&path).unwrap();
            for i in 0..4u32 {
                // Bright on the left or on the right half: a mirror swaps the classes.
                let pixel = |x: u32, _y: u32| image::Luma([if (x < 40) == (c == 0) { 200 + i as u8 } else { 20 }]);
                image::GrayImage::from_fn(80, 70, pixel).save(path.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let run = tmp.path().join("run");
    let (code, _, err) = common::convnets(&[
        "train",
        "tv-resnet18",
        "--data",
        dir.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--train-crop-size",
        "48",
        "--val-crop-size",
        "64",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let checkpoint = convnets::train::load_checkpoint(&run, Device::Cpu).unwrap();
    let config = &checkpoint.state.config;
    let names = |prep: data::Prep| prep.pipeline.transforms.iter().map(Transform::to_string).collect::<Vec<_>>();
    assert_eq!(names(config.train_prep(0)), ["RandomResizedCrop(48)", "RandomHorizontalFlip()"]);
    assert_eq!(names(config.eval_prep()), ["Resize(73)", "CenterCrop(64)"], "64 / 0.875, rounded");
    assert_eq!(config.eval_side(), 64);
    // Flip TTA: each image's probabilities averaged with its mirror's, here computed by hand.
    let data = data::Dataset::load(Some(&dir), None).unwrap();
    let with_flips = convnets::train::evaluate_with_flips(&checkpoint.net, &data.test, 4, &config.eval_prep()).unwrap();
    let batch = data::make_batch(&data.test, &(0..data.test.len()).collect::<Vec<_>>(), &config.eval_prep()).unwrap();
    let x = batch.images(Device::Cpu, config.normalize.as_ref()).unwrap();
    let p = |x: &tch::Tensor| checkpoint.net.forward_t(x, false).unwrap().softmax(1, tch::Kind::Float);
    let predicted = Vec::<i64>::try_from((p(&x) + p(&x.flip([3]))).argmax(1, false)).unwrap();
    let correct = predicted.iter().zip(&data.test.labels).filter(|(p, l)| **p == **l as i64).count();
    assert!((with_flips.accuracy - correct as f64 / data.test.len() as f64).abs() < 1e-9);
    let (code, stdout, err) = common::convnets(&["eval", run.to_str().unwrap(), "--tta", "flip"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("each with its mirror image (--tta flip)"), "{stdout}");
    // Not for data sets without crops.
    let (code, _, err) = common::convnets(&[
        "train",
        "lenet-bn",
        "--val-crop-size",
        "24",
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--val-crop-size applies to image folders"), "{err}");
}

#[test]
fn random_erasing_zeroes_one_box_of_about_p_of_the_images_within_torchvisions_bounds() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (h, w) = (40i64, 60i64);
    let mut erased = 0;
    for _ in 0..2000 {
        let Some(e) = data::erasing_draw(0.5, h, w, &mut rng) else { continue };
        erased += 1;
        assert!(e.top >= 0 && e.left >= 0 && e.top + e.height <= h && e.left + e.width <= w, "{e:?}");
        assert!(e.height < h && e.width < w);
        let share = (e.height * e.width) as f64 / (h * w) as f64;
        assert!((0.01..=0.36).contains(&share), "{e:?}: {share} of the area");
    }
    assert!((900..=1100).contains(&erased), "{erased} of 2000 with p = 0.5");
    // On a batch: the box holds zeros, the rest is untouched, the same key erases alike.
    let ones = || tch::Tensor::ones([16, 3, 20, 30], (tch::Kind::Float, Device::Cpu));
    let (a, b) = (ones(), ones());
    data::random_erasing_(&a, 1.0, 42).unwrap();
    data::random_erasing_(&b, 1.0, 42).unwrap();
    assert!(a.equal(&b));
    let zeros = i64::try_from(a.eq(0.0).sum(tch::Kind::Int64)).unwrap();
    assert!(zeros > 0 && zeros % 3 == 0, "every channel of each box: {zeros}");
    // Each image erased in one box: its zeros are a rectangle in every channel.
    for k in 0..16 {
        let image = a.get(k);
        let per_channel: Vec<i64> =
            (0..3).map(|c| i64::try_from(image.get(c).eq(0.0).sum(tch::Kind::Int64)).unwrap()).collect();
        assert!(per_channel[0] > 0 && per_channel.iter().all(|&z| z == per_channel[0]), "image {k}: {per_channel:?}");
    }
    let untouched = ones();
    data::random_erasing_(&untouched, 0.0, 42).unwrap();
    assert!(untouched.equal(&ones()));
}
