//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use convnets::data::{Dataset, Source, Split};

/// libtorch's random generator is global: tests that depend on it take turns.
pub static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The first `n` examples of a split.
pub fn slice(split: &Split, n: usize) -> Split {
    Split {
        images: split.images[..n * split.channels * split.rows * split.cols].to_vec(),
        labels: split.labels[..n].to_vec(),
        channels: split.channels,
        rows: split.rows,
        cols: split.cols,
        files: split.files.iter().take(n).cloned().collect(),
    }
}

/// The first `train` and `test` examples of the embedded sample.
pub fn small_data(train: usize, test: usize) -> Dataset {
    let full = Dataset::from_source(Source::Embedded).unwrap();
    Dataset { train: Arc::new(slice(&full.train, train)), test: Arc::new(slice(&full.test, test)), ..full }
}

/// A file of `tests/golden/`.
pub fn golden(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(file)
}

/// Runs the `convnets` binary (without the user's `$CONVNETS_DATA`): exit code, stdout, stderr.
pub fn convnets(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_convnets")).args(args).env_remove("CONVNETS_DATA").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Writes the first `train` training and `test` test images of the embedded sample as IDX
/// files in `dir`, which it returns.
pub fn idx_dataset(dir: &Path, train: usize, test: usize) -> PathBuf {
    let sample = Dataset::from_source(Source::Embedded).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for (split, n, prefix) in [(&sample.train, train, "train"), (&sample.test, test, "t10k")] {
        let images = idx_images(n as u32, 28, 28, &split.images[..n * 784]);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), idx_labels(&split.labels[..n])).unwrap();
    }
    dir.to_path_buf()
}

/// An IDX3 image file: header and pixels.
pub fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = [0x803, count, rows, cols].iter().flat_map(|v: &u32| v.to_be_bytes()).collect();
    out.extend(pixels);
    out
}

/// An IDX1 label file.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = [0x801, labels.len() as u32].iter().flat_map(|v: &u32| v.to_be_bytes()).collect();
    out.extend(labels);
    out
}

pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Runs `convnets train ARGS` twice: straight into `dir/straight`, and into `dir/resumed` with a
/// libtorch failure injected at `fail_at` (`EPOCH:BATCH`, which must stop it with exit code 1)
/// and then `--resume`d. Returns the two run directories.
pub fn straight_and_resumed(dir: &Path, args: &[&str], fail_at: &str) -> (PathBuf, PathBuf) {
    let (straight, resumed) = (dir.join("straight"), dir.join("resumed"));
    fn with_out<'a>(args: &[&'a str], out: &'a Path) -> Vec<&'a str> {
        [&["train"][..], args, &["--out", out.to_str().unwrap()]].concat()
    }
    let (code, _, err) = convnets(&with_out(args, &straight));
    assert_eq!(code, 0, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_convnets"))
        .args(with_out(args, &resumed))
        .env("CONVNETS_FAIL_AT", fail_at)
        .env_remove("CONVNETS_DATA")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, _, err) = convnets(&["train", "--resume", resumed.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    (straight, resumed)
}

/// Asserts that two runs' checkpoints hold the same weights and state, bit for bit.
pub fn assert_same_weights(a: &Path, b: &Path) {
    let load = |run: &Path| convnets::train::load_checkpoint(run, tch::Device::Cpu).unwrap();
    let (a, b) = (load(a), load(b));
    let (a, b) = (convnets::weights::state_dict(&a.net.vs), convnets::weights::state_dict(&b.net.vs));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs after resuming");
    }
}

/// A colour folder of three classes (`train/` with `per_class` images each, `val/` with 2).
pub fn colour_folder(dir: &std::path::Path, per_class: u32) -> String {
    for (split, n) in [("train", per_class), ("val", 2)] {
        for (c, class) in ["red", "green", "blue"].iter().enumerate() {
            let path = dir.join(split).join(class);
            std::fs::create_dir_all(&path).unwrap();
            for i in 0..n {
                let pixel = |x: u32, y: u32| {
                    let mut rgb = [((x * 7 + y * (3 + i)) % 64) as u8; 3];
                    rgb[c] = 160 + ((x + y * i) % 90) as u8;
                    image::Rgb(rgb)
                };
                image::RgbImage::from_fn(48, 40, pixel).save(path.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    dir.to_str().unwrap().to_string()
}
