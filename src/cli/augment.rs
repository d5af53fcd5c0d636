//! `convnets augment`: d2l's `apply(img, aug)`, an image and augmented versions of it in one
//! picture.

use std::path::Path;

use crate::atomic::write_atomic;
use crate::data::{Image, Pipeline, Transform, decode};
use crate::error::usage;
use crate::report::plot;

pub fn run(image: &Path, out: &Path, count: usize, pipeline: Pipeline, seed: u64) -> anyhow::Result<()> {
    if pipeline.transforms.is_empty() {
        return Err(usage(
            "name an augmentation: --crop SIZE, --flip, --vertical-flip, --auto-augment POLICY or --color-jitter B,C,S,H",
        ));
    }
    if count == 0 {
        return Err(usage("--count must be at least 1"));
    }
    let original = decode::decode(image).map_err(|e| usage(e.to_string()))?;
    let versions: Vec<_> = (0..count).map(|k| pipeline.apply(original.clone(), seed, 0, k)).collect();
    fn tile(image: &Image, title: String) -> plot::Labelled<'_> {
        plot::Labelled {
            pixels: &image.pixels,
            channels: image.channels,
            size: (image.height, image.width),
            title: [title, String::new()],
            wrong: false,
        }
    }
    let tiles: Vec<plot::Labelled> = std::iter::once(tile(&original, "original".into()))
        .chain(versions.iter().enumerate().map(|(k, v)| tile(v, format!("augmented {}", k + 1))))
        .collect();
    let png = plot::prediction_grid(&tiles)?;
    write_atomic(out, &png).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    let names: Vec<String> = pipeline.transforms.iter().map(Transform::to_string).collect();
    println!("{} and {count} versions through {} written to {}", image.display(), names.join(", "), out.display());
    Ok(())
}
