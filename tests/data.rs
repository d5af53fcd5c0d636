//! Fashion-MNIST: IDX parsing and validation, the embedded sample, source resolution, resize
//! against Pillow, batching, and the download path (against a local server, never the network).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use convnets::data::{self, DataError, Dataset, Resize, Source, Split};

mod common;
use common::{gz, idx_images, idx_labels};

fn err_text(e: DataError) -> String {
    e.to_string()
}

#[test]
fn idx_files_parse_gzipped_or_not() {
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    let images = idx_images(2, 3, 4, &pixels);
    let labels = idx_labels(&[7, 2]);
    for (im, lb) in [(images.clone(), labels.clone()), (gz(&images), gz(&labels))] {
        let split = data::parse_split(&im, "a", &lb, "b").unwrap();
        assert_eq!((split.len(), split.rows, split.cols), (2, 3, 4));
        assert_eq!(split.image(1), &pixels[12..]);
        assert_eq!(split.labels, [7, 2]);
    }
}

#[test]
fn every_validation_error_names_the_file_and_the_problem() {
    let pixels = vec![0u8; 2 * 28 * 28];
    let good = idx_images(2, 28, 28, &pixels);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0, 8], "too short for an IDX image header"),
        (idx_labels(&[1; 12]), "magic number 0x00000801 is not 0x00000803"),
        (good[..good.len() - 5].to_vec(), "the file has 1563 bytes of data"),
        ([good.clone(), vec![1]].concat(), "the file has 1569 bytes of data"),
        (gz(&good[..good.len() - 5]), "truncated: the header promises 1568 bytes of data, the file has 1563"),
        (gz(&[good.clone(), vec![1, 2]].concat()), "trailing data after the 1568 bytes"),
        (idx_images(2, 0, 28, &[]), "image size 0x28 is empty"),
        (good[..100].iter().copied().chain([0x1f]).collect(), "the file has 85 bytes of data"),
        (vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3], "too short for an IDX image header"),
    ];
    for (bytes, expected) in cases {
        let e = err_text(data::parse_images(&bytes, "dir/train-images-idx3-ubyte.gz").unwrap_err());
        assert!(e.starts_with("dir/train-images-idx3-ubyte.gz: "), "{e}");
        assert!(e.contains(expected), "expected '{expected}' in '{e}'");
    }
    let labels = [
        (idx_labels(&[1, 10]), "label 10 at index 1 is not a class (0-9)"),
        (idx_images(0, 1, 1, &[]), "magic number 0x00000803 is not 0x00000801"),
        (idx_labels(&[1, 2])[..9].to_vec(), "the header promises 2 labels, the file has 1"),
        (vec![0, 0], "too short for an IDX label header"),
    ];
    for (bytes, expected) in labels {
        let e = err_text(data::parse_labels(&bytes, "l.gz").unwrap_err());
        assert!(e.starts_with("l.gz: ") && e.contains(expected), "expected '{expected}' in '{e}'");
    }
    let e = err_text(data::parse_split(&good, "i", &idx_labels(&[1, 2, 3]), "l").unwrap_err());
    assert_eq!(e, "l: 3 labels for 2 images in i");
}

#[test]
fn a_header_claiming_billions_of_images_fails_before_allocating() {
    // 2^32 - 1 images of 28x28 (3.4 TB) in a file of a few bytes: beyond any plausible data set.
    let huge = idx_images(u32::MAX, 28, 28, &[1, 2, 3]);
    for bytes in [huge.clone(), gz(&huge)] {
        let e = err_text(data::parse_images(&bytes, "f").unwrap_err());
        assert_eq!(e, "f: 4294967295 images of 28x28 is too large");
    }
    // A million images (784 MB) promised, 3 bytes present: rejected from the length (raw) or
    // after reading what the stream really holds (gzip), without reserving the claimed size.
    let million = idx_images(1_000_000, 28, 28, &[1, 2, 3]);
    let e = err_text(data::parse_images(&million, "f").unwrap_err());
    assert!(e.contains("the header promises 1000000 images of 28x28 (784000000 bytes), the file has 3 bytes"), "{e}");
    let e = err_text(data::parse_images(&gz(&million), "f").unwrap_err());
    assert!(e.contains("truncated: the header promises 784000000 bytes of data, the file has 3"), "{e}");
    let overflow = idx_images(u32::MAX, u32::MAX, u32::MAX, &[]);
    let e = err_text(data::parse_images(&overflow, "f").unwrap_err());
    assert!(e.contains("is too large"), "{e}");
    let labels = [0, 0, 8, 1, 0xff, 0xff, 0xff, 0xff];
    let e = err_text(data::parse_labels(&labels, "l").unwrap_err());
    assert_eq!(e, "l: the header promises 4294967295 labels, the file has 0");
    let e = err_text(data::parse_labels(&gz(&labels), "l").unwrap_err());
    assert_eq!(e, "l: truncated: the header promises 4294967295 bytes of data, the file has 0");
}

#[test]
fn the_embedded_sample_is_real_fashion_mnist() {
    let data = Dataset::from_source(Source::Embedded).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (2000, 500));
    assert_eq!((data.train.rows, data.train.cols), (28, 28));
    // The first training image of Fashion-MNIST is an ankle boot, the first test image too.
    assert_eq!(data.train.labels[..5], [9, 0, 0, 3, 0]);
    assert_eq!(data.test.labels[0], 9);
    let info = data::describe(&data.train, &data.classes);
    assert!(info.starts_with("2000 images of 28x28, pixel mean 0.2"), "{info}");
    assert!(info.contains("  trouser        216 (10.8%)\n"), "{info}");
}

fn write_dataset(dir: &Path, train: usize, gzip: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let sample = Dataset::from_source(Source::Embedded).unwrap();
    let take = |split: &Split, n: usize| {
        (idx_images(n as u32, 28, 28, &split.images[..n * 784]), idx_labels(&split.labels[..n]))
    };
    let (tri, trl) = take(&sample.train, train);
    let (tei, tel) = take(&sample.test, 10);
    for (name, bytes) in data::FILES.iter().zip([tri, trl, tei, tel]) {
        if gzip {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn data_info(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convnets"));
    cmd.arg("data").arg("info").args(args).env_remove("CONVNETS_DATA").env("HOME", "/nonexistent");
    cmd.env_remove("XDG_CACHE_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn sources_resolve_flag_then_env_then_cache_then_embedded() {
    let tmp = tempfile::tempdir().unwrap();
    let (flag, env, cache) = (tmp.path().join("flag"), tmp.path().join("env"), tmp.path().join("xdg"));
    write_dataset(&flag, 30, true);
    write_dataset(&env, 40, false);
    write_dataset(&cache.join("convnets/fashion-mnist"), 50, true);

    let (code, out, err) =
        data_info(&["--data", flag.to_str().unwrap()], &[("CONVNETS_DATA", &env), ("XDG_CACHE_HOME", &cache)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(from --data)") && out.starts_with("train: 30 images"), "{err}{out}");
    let (_, out, err) = data_info(&[], &[("CONVNETS_DATA", &env), ("XDG_CACHE_HOME", &cache)]);
    assert!(err.contains("(from $CONVNETS_DATA)") && out.starts_with("train: 40 images"), "{err}{out}");
    let (_, out, err) = data_info(&[], &[("XDG_CACHE_HOME", &cache)]);
    assert!(err.contains("(the user cache)") && out.starts_with("train: 50 images"), "{err}{out}");
    let (_, out, err) = data_info(&[], &[]);
    assert!(err.contains("data: the embedded sample") && out.starts_with("train: 2000 images"), "{err}{out}");

    // A named directory that is missing or broken is an error, not a silent fallback.
    let (code, _, err) = data_info(&["--data", tmp.path().join("nope").to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("nope: no such directory"), "{err}");
    std::fs::remove_file(env.join("t10k-labels-idx1-ubyte")).unwrap();
    let (code, _, err) = data_info(&[], &[("CONVNETS_DATA", &env)]);
    assert_eq!(code, 1);
    assert!(err.contains("no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"), "{err}");
    std::fs::write(flag.join("train-labels-idx1-ubyte.gz"), b"not an IDX file at all").unwrap();
    let (code, _, err) = data_info(&["--data", flag.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("train-labels-idx1-ubyte.gz: magic number"), "{err}");
}

#[test]
fn resize_matches_pillow_bilinear_on_small_images() {
    let image = [0u8, 50, 100, 150, 200, 250, 30, 60, 90, 120, 180, 210, 240, 10, 70, 130];
    // Values from Pillow 12: Image.fromarray(a, "L").resize((w, h), Image.BILINEAR).
    assert_eq!(
        Resize::new(4, 4, 6, 6).apply(&image),
        [
            0, 25, 58, 92, 125, 150, 100, 125, 136, 80, 85, 105, 182, 205, 199, 84, 70, 85, 108, 125, 144, 153, 170,
            185, 165, 115, 75, 115, 148, 170, 240, 125, 20, 60, 100, 130
        ]
    );
    assert_eq!(Resize::new(4, 4, 3, 3).apply(&image), [75, 94, 110, 157, 145, 126, 149, 73, 139]);
    assert_eq!(Resize::new(4, 4, 4, 4).apply(&image), image);
    // A constant image stays constant at any size.
    assert!(Resize::new(5, 7, 13, 3).apply(&[77; 35]).iter().all(|&v| v == 77));
}

#[test]
fn resize_matches_pillow_on_real_images() {
    let data = Dataset::from_source(Source::Embedded).unwrap();
    // (image, size, sum of pixels, sum of pixel * index mod 1000003), computed with Pillow.
    let expected = [
        (0, 96, 542381u64, 565089u64),
        (0, 224, 2955760, 782965),
        (1, 96, 796825, 697881),
        (1, 224, 4342216, 200161),
        (2, 96, 1087952, 698861),
        (2, 224, 5925032, 340656),
    ];
    for (i, size, sum, weighted) in expected {
        let out = Resize::new(28, 28, size, size).apply(data.train.image(i));
        assert_eq!(out.iter().map(|&v| v as u64).sum::<u64>(), sum, "image {i} at {size}");
        let w = out.iter().enumerate().map(|(k, &v)| k as u64 * v as u64).sum::<u64>() % 1_000_003;
        assert_eq!(w, weighted, "image {i} at {size}");
    }
}

#[test]
fn batches_cover_every_example_once_in_a_seeded_order() {
    let a = data::epoch_order(1000, 7, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(a, data::epoch_order(1000, 7, 0));
    assert_ne!(a, data::epoch_order(1000, 7, 1));
    assert_ne!(a, data::epoch_order(1000, 8, 0));

    let sample = Dataset::from_source(Source::Embedded).unwrap();
    let order: Vec<usize> = (0..300).rev().collect();
    let batches: Vec<_> = data::batches(sample.train.clone(), order, 128, data::Prep::d2l(Some(32)))
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .unwrap();
    let sizes: Vec<i64> = batches.iter().map(|b| b.pixels.size()[0]).collect();
    assert_eq!(sizes, [128, 128, 44], "the last partial batch is kept");
    assert_eq!(batches[0].pixels.size(), [128, 1, 32, 32]);
    assert_eq!(batches[0].pixels.kind(), tch::Kind::Uint8);
    let first_label = batches[0].labels.int64_value(&[0]);
    assert_eq!(first_label, sample.train.labels[299] as i64);
    // The first batch's first image is training image 299, resized as Resize does it.
    let resized = data::Resize::new(28, 28, 32, 32).apply(sample.train.image(299));
    assert_eq!(Vec::<u8>::try_from(batches[0].pixels.get(0).flatten(0, -1)).unwrap(), resized);
    let images = batches[0].images(tch::Device::Cpu, None).unwrap();
    assert_eq!(images.kind(), tch::Kind::Float);
    let max = images.max().double_value(&[]);
    assert!(max <= 1.0 && max > 0.9 && images.min().double_value(&[]) >= 0.0);
    // Unresized pixels are exactly ToTensor's byte / 255 in float32.
    let plain =
        data::make_batch(&sample.train, &[0], &data::Prep::d2l(None)).unwrap().images(tch::Device::Cpu, None).unwrap();
    let floats = Vec::<f32>::try_from(plain.flatten(0, -1)).unwrap();
    let expected: Vec<f32> = sample.train.image(0).iter().map(|&b| b as f32 / 255.0).collect();
    assert_eq!(floats, expected);
}

#[test]
fn device_batches_deliver_the_same_batches_as_inputs() {
    let sample = Dataset::from_source(Source::Embedded).unwrap();
    let order: Vec<usize> = (0..300).rev().collect();
    let host: Vec<_> = data::batches(sample.train.clone(), order.clone(), 128, data::Prep::d2l(Some(32)))
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .unwrap();
    let on_device: Vec<_> =
        data::device_batches(sample.train.clone(), order, 128, data::Prep::d2l(Some(32)), tch::Device::Cpu)
            .collect::<anyhow::Result<_>>()
            .unwrap();
    assert_eq!(on_device.len(), 3, "the last partial batch is kept");
    for (h, d) in host.iter().zip(&on_device) {
        assert_eq!(d.images.kind(), tch::Kind::Float);
        assert!(d.images.equal(&h.images(tch::Device::Cpu, None).unwrap()));
        assert!(d.labels.equal(&h.labels) && d.host_labels.equal(&h.labels));
    }
    assert_eq!(on_device[2].images.size(), [44, 1, 32, 32]);
}

/// Serves `files` over HTTP on 127.0.0.1 for `requests` requests; other paths get 404.
fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = files.iter().find(|(p, _)| *p == path).map(|f| f.1.clone());
            let (status, body) = match body {
                Some(b) => ("200 OK", b),
                None => ("404 Not Found", b"missing".to_vec()),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn download_falls_back_to_the_second_mirror_and_checks_md5() {
    use md5::Digest;
    let files: Vec<(String, Vec<u8>)> =
        data::FILES.iter().enumerate().map(|(i, f)| (format!("/second/{f}.gz"), vec![i as u8; 100 + i])).collect();
    let sums: Vec<String> = files.iter().map(|(_, b)| format!("{:x}", md5::Md5::digest(b))).collect();
    let sums: [&str; 4] = [&sums[0], &sums[1], &sums[2], &sums[3]];
    let base = serve(files.clone(), 8);
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = vec![format!("{base}/first/"), format!("{base}/second")];
    let mut log = Vec::new();
    data::download(tmp.path(), &mirrors, &sums, |l| log.push(l.to_string())).unwrap();
    for (name, bytes) in data::FILES.iter().zip(&files) {
        assert_eq!(std::fs::read(tmp.path().join(format!("{name}.gz"))).unwrap(), bytes.1);
    }
    assert!(log[0].contains("/second/train-images-idx3-ubyte.gz, md5 ok"), "{log:?}");
    // A second run finds them present and fetches nothing (the server is gone by now).
    data::download(tmp.path(), &mirrors, &sums, |_| {}).unwrap();

    // Wrong checksums: nothing is written, and the error lists every mirror's failure.
    let base = serve(files, 2);
    let empty = tempfile::tempdir().unwrap();
    let wrong = ["0".repeat(32), "0".repeat(32), "0".repeat(32), "0".repeat(32)];
    let wrong: [&str; 4] = [&wrong[0], &wrong[1], &wrong[2], &wrong[3]];
    let e = data::download(empty.path(), &[format!("{base}/first"), format!("{base}/second")], &wrong, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("could not download train-images-idx3-ubyte.gz:"), "{e}");
    assert!(e.contains("/first/train-images-idx3-ubyte.gz: http status: 404"), "{e}");
    assert!(e.contains("/second/train-images-idx3-ubyte.gz: md5 "), "{e}");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "no partial file");
}

/// A .tar.gz of `files` (path in the archive, bytes).
fn tar_gz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn cifar_downloads_are_md5_checked_and_unpacked_whole() {
    use md5::Digest;
    let record = |label: u8| std::iter::once(label).chain(std::iter::repeat_n(label * 20, 3072)).collect::<Vec<u8>>();
    let batch: Vec<u8> = (0..10).flat_map(record).collect();
    let mut files: Vec<(String, Vec<u8>)> =
        (1..=5).map(|i| (format!("cifar-10-batches-bin/data_batch_{i}.bin"), batch.clone())).collect();
    files.push(("cifar-10-batches-bin/test_batch.bin".into(), batch.clone()));
    files.push(("cifar-10-batches-bin/batches.meta.txt".into(), b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n".to_vec()));
    let archive = tar_gz(&files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect::<Vec<_>>());
    let md5 = format!("{:x}", md5::Md5::digest(&archive));
    let base = serve(vec![("/cifar.tar.gz".into(), archive)], 2);
    let url = format!("{base}/cifar.tar.gz");
    let cache = tempfile::tempdir().unwrap();
    // Where `convnets data download cifar10` puts it.
    let dir = cache.path().join("convnets/cifar10");

    // A wrong checksum writes nothing.
    let err = data::download_cifar(&dir, data::Cifar::Ten, &url, &"0".repeat(32), |_| {}).unwrap_err().to_string();
    assert!(err.contains("md5") && err.contains(&md5), "{err}");
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().count() == 0, "nothing written");

    let mut log = Vec::new();
    data::download_cifar(&dir, data::Cifar::Ten, &url, &md5, |l| log.push(l.to_string())).unwrap();
    assert!(log[0].ends_with("md5 ok"), "{log:?}");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["cifar-10-batches-bin"], "the archive's folder alone, no leftovers");
    let loaded = Dataset::load(Some(&dir), None).unwrap();
    assert_eq!((loaded.train.len(), loaded.test.len()), (50, 10));
    assert_eq!(loaded.classes[9], "j");
    // Present already: nothing fetched (the server has answered its two requests).
    let mut log = Vec::new();
    data::download_cifar(&dir, data::Cifar::Ten, &url, &md5, |l| log.push(l.to_string())).unwrap();
    assert!(log[0].ends_with("already present"), "{log:?}");
    // --dataset cifar10 without --data finds it in the user cache.
    let out = Command::new(env!("CARGO_BIN_EXE_convnets"))
        .args(["data", "info", "--dataset", "cifar10"])
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("CONVNETS_DATA")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("train: 50 images of 3x32x32"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
}
