//! What a data set holds: counts and class balance (`convnets data info`), and the per-channel
//! statistics `--normalize auto` normalises with.

use super::{Dataset, Image, Normalize, Prep, Split};

/// Counts, class balance and pixel statistics of a split (`convnets data info`).
pub fn describe(split: &Split, classes: &[String]) -> String {
    // An image folder's splits (rows 0) hold files, even when empty.
    let mut out = if split.rows > 0 {
        let n = (split.images.len() as f64).max(1.0);
        let mean = split.images.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / n;
        let var = split.images.iter().map(|&p| (p as f64 / 255.0 - mean).powi(2)).sum::<f64>() / n;
        format!(
            "{} images of {}{}x{}, pixel mean {:.4}, std {:.4} (scaled to [0, 1])\n",
            split.len(),
            if split.channels == 1 { String::new() } else { format!("{}x", split.channels) },
            split.rows,
            split.cols,
            mean,
            var.sqrt()
        )
    } else {
        // An image folder's are decoded when used: no pixel statistics without reading them all.
        format!("{} image files, {} channel(s), decoded when used\n", split.len(), split.channels)
    };
    let mut counts = vec![0usize; classes.len()];
    for &l in &split.labels {
        if let Some(count) = counts.get_mut(l as usize) {
            *count += 1;
        }
    }
    for (class, count) in classes.iter().zip(counts) {
        out += &format!("  {class:<11} {count:>6} ({:.1}%)\n", 100.0 * count as f64 / split.len().max(1) as f64);
    }
    out
}

/// The per-channel mean and standard deviation of `data`'s training images as `prep` makes them
/// (at most 2,000 of them, evenly spread), read from the cache beside the data when a previous
/// run computed them, else computed and cached there (`convnets-normalize.json`, keyed by data
/// set, size and transforms).
pub fn normalization(data: &Dataset, prep: &Prep) -> anyhow::Result<Normalize> {
    let key = format!("{} {} {:?}", data.format.name(), data.train.len(), prep.pipeline);
    let cache = data.source.dir().map(|dir| dir.join("convnets-normalize.json"));
    let cached: std::collections::HashMap<String, Normalize> = cache
        .as_ref()
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if let Some(stats) = cached.get(&key) {
        return Ok(stats.clone());
    }
    let split = &data.train;
    let step = split.len().div_ceil(2000).max(1);
    let images = (0..split.len())
        .step_by(step)
        .map(|i| Ok(prep.pipeline.apply(split.load(i)?, prep.seed, 0, i)))
        .collect::<anyhow::Result<Vec<Image>>>()?;
    let stats = Normalize::of(&images);
    if let Some(path) = cache {
        let mut all = cached;
        all.insert(key, stats.clone());
        // A cache only: a read-only data folder just means computing again next time.
        let _ = crate::atomic::write_atomic(&path, &serde_json::to_vec_pretty(&all)?);
    }
    Ok(stats)
}
