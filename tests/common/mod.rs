//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

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
