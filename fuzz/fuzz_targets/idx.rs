//! IDX image and label files, gzipped or not, as `convnets` reads them from disk.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((count, rows, cols, pixels)) = convnets::data::parse_images(data, "fuzz") {
        assert_eq!(pixels.len(), count * rows * cols);
    }
    if let Ok(labels) = convnets::data::parse_labels(data, "fuzz") {
        assert!(labels.iter().all(|&l| l < 10));
    }
});
