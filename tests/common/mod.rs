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
