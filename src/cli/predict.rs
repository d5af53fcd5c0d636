//! `convnets predict`: d2l's `predict_ch3` on the test set, or the user's own images with their
//! most likely classes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::{Device, Kind, Tensor};

use super::args::DataArgs;
use super::data as load;
use crate::accel::parse_device;
use crate::atomic::write_atomic;
use crate::data::{self, Dataset, Format};
use crate::error::usage;
use crate::models::Network;
use crate::report::plot;
use crate::train;

/// How `--image` predictions are printed.
pub struct Output {
    /// The most likely classes per image (default 5).
    pub topk: Option<usize>,
    /// One JSON object per image.
    pub json: bool,
}

pub fn run(
    run: &Path,
    count: usize,
    out: Option<&Path>,
    images: &[PathBuf],
    output: Output,
    data: &DataArgs,
    device: &str,
) -> anyhow::Result<()> {
    let device = parse_device(device).map_err(usage)?;
    let checkpoint = train::load_checkpoint(run, device)?;
    if images.is_empty() {
        let data = load::load(data, Some(&checkpoint.state.config), false, true)?;
        checkpoint.state.config.check_dataset(&data).map_err(usage)?;
        predict_test(&checkpoint, &data, count, out)
    } else {
        predict_files(&checkpoint, images, &output)
    }
}

/// d2l's `predict_ch3`: `count` test images with true and predicted labels (an image folder's
/// spread across its classes), printed and drawn as the network saw them.
fn predict_test(
    checkpoint: &train::Checkpoint,
    data: &Dataset,
    count: usize,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let config = &checkpoint.state.config;
    let indices: Vec<usize> = match data.format {
        Format::Folder => data.test.spread(count, config.seed),
        _ => (0..count.min(data.test.len())).collect(),
    };
    let prep = config.eval_prep();
    let batch = data::make_batch(&data.test, &indices, &prep)?;
    let probabilities = classify(&checkpoint.net, &batch.images(Device::Cpu, prep.normalize.as_ref())?)?;
    // The images as the network received them, before normalisation: (N, C, H, W) bytes.
    let shape = batch.pixels.size();
    let (size, plane) = ((shape[2] as usize, shape[3] as usize), (shape[1] * shape[2] * shape[3]) as usize);
    let pixels = Vec::<u8>::try_from(batch.pixels.f_contiguous()?.f_view([-1])?)?;
    let name = |c: usize| config.classes.get(c).map_or("?", String::as_str);
    let mut tiles = Vec::new();
    for (k, (&i, probabilities)) in indices.iter().zip(&probabilities).enumerate() {
        let (truth, guess) = (name(data.test.labels[i] as usize), name(top_k(probabilities, 1)[0].0));
        let wrong = truth != guess;
        match wrong {
            true => println!("{i:>4}: true {truth:<11} predicted {guess:<11}  (wrong)"),
            false => println!("{i:>4}: true {truth:<11} predicted {guess}"),
        }
        tiles.push(plot::Labelled {
            pixels: &pixels[k * plane..(k + 1) * plane],
            channels: shape[1] as usize,
            size,
            title: [truth.to_string(), guess.to_string()],
            wrong,
        });
    }
    if let Some(out) = out {
        let png = plot::prediction_grid(&tiles)?;
        write_atomic(out, &png).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
        eprintln!("picture written to {}", out.display());
    }
    Ok(())
}

/// Classifies the user's own images (PNG or JPEG), transformed as evaluation does, printing each
/// one's most likely classes.
fn predict_files(checkpoint: &train::Checkpoint, files: &[PathBuf], output: &Output) -> anyhow::Result<()> {
    let config = &checkpoint.state.config;
    let topk = output.topk.unwrap_or(5);
    if topk == 0 {
        return Err(usage("--topk must be at least 1"));
    }
    let channels = config.in_channels as usize;
    let mut pipeline = config.eval_prep().pipeline;
    if pipeline.fixed_size().is_none() {
        // d2l's data sets need no resize of their own images; the user's do.
        pipeline.transforms.push(data::Transform::Resize(config.eval_side()));
    }
    let mut pixels = Vec::new();
    for file in files {
        let image = data::decode::decode_as(file, channels).map_err(|e| usage(e.to_string()))?;
        let image = pipeline.apply(image, config.seed, 0, 0);
        pixels.extend(image.pixels.iter().map(|&b| b as f32 / 255.0));
    }
    let size = config.eval_side() as i64;
    let images = Tensor::f_from_slice(&pixels)?.f_view([files.len() as i64, channels as i64, size, size])?;
    let images = match &config.normalize {
        Some(n) => n.apply(&images)?,
        None => images,
    };
    let name = |c: usize| config.classes.get(c).map_or("?", String::as_str);
    for (file, probabilities) in files.iter().zip(classify(&checkpoint.net, &images)?) {
        let top = top_k(&probabilities, topk);
        if output.json {
            let predictions: Vec<serde_json::Value> =
                top.iter().map(|&(c, p)| serde_json::json!({"class": name(c), "index": c, "probability": p})).collect();
            println!("{}", serde_json::json!({"image": file.display().to_string(), "predictions": predictions}));
        } else {
            let classes: Vec<String> = top.iter().map(|&(c, p)| format!("{} ({:.1}%)", name(c), 100.0 * p)).collect();
            println!("{}: {}", file.display(), classes.join(", "));
        }
    }
    Ok(())
}

/// The `k` most likely classes of one image and their probabilities, most likely first (ties in
/// class order); at most every class.
fn top_k(probabilities: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = probabilities.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

/// Each image's class probabilities (softmax of the eval-mode logits).
fn classify(net: &Network, images: &Tensor) -> anyhow::Result<Vec<Vec<f64>>> {
    let classified = || -> anyhow::Result<Vec<Vec<f64>>> {
        let images = images.f_to_device(net.device())?;
        let logits = tch::no_grad(|| net.forward_t(&images, false))?;
        let probabilities = logits.f_softmax(1, Kind::Double)?.f_to_device(Device::Cpu)?;
        Ok(Vec::<Vec<f64>>::try_from(probabilities)?)
    };
    classified().with_context(|| format!("{}: prediction failed", net.info.name))
}
