//! `convnets predict`: d2l's `predict_ch3` on the test set, or the user's own images.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::Device;

use super::args::DataArgs;
use super::data as load;
use crate::accel::parse_device;
use crate::atomic::write_atomic;
use crate::data::{self, Dataset};
use crate::error::usage;
use crate::models::Network;
use crate::report::plot;
use crate::train;

pub fn run(
    run: &Path,
    count: usize,
    out: Option<&Path>,
    images: &[PathBuf],
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
        predict_files(&checkpoint, images)
    }
}

/// d2l's `predict_ch3`: the first `count` test images with true and predicted labels.
fn predict_test(
    checkpoint: &train::Checkpoint,
    data: &Dataset,
    count: usize,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let config = &checkpoint.state.config;
    let count = count.min(data.test.len());
    let indices: Vec<usize> = (0..count).collect();
    let prep = config.eval_prep();
    let batch = data::make_batch(&data.test, &indices, &prep)?;
    let predicted = classify(&checkpoint.net, &batch.images(Device::Cpu, prep.normalize.as_ref())?)?;
    let mut tiles = Vec::new();
    let name = |c: usize| config.classes.get(c).map_or("?", String::as_str);
    for (i, p) in predicted.iter().enumerate() {
        let (truth, guess) = (name(data.test.labels[i] as usize), name(*p));
        println!("{i:>4}: true {truth:<11} predicted {guess:<11}{}", if truth == guess { "" } else { "  (wrong)" });
        tiles.push(plot::Labelled {
            pixels: data.test.image(i),
            channels: data.test.channels,
            size: (data.test.rows, data.test.cols),
            title: [truth.to_string(), guess.to_string()],
        });
    }
    if let Some(out) = out {
        let png = plot::prediction_grid(&tiles)?;
        write_atomic(out, &png).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
        eprintln!("picture written to {}", out.display());
    }
    Ok(())
}

/// Classifies the user's own images (PNG or JPEG), transformed as evaluation does.
fn predict_files(checkpoint: &train::Checkpoint, files: &[PathBuf]) -> anyhow::Result<()> {
    let config = &checkpoint.state.config;
    let channels = config.in_channels as usize;
    let mut pipeline = config.eval_prep().pipeline;
    if pipeline.fixed_size().is_none() {
        // d2l's data sets need no resize of their own images; the user's do.
        pipeline.transforms.push(data::Transform::Resize(config.image_side()));
    }
    let mut pixels = Vec::new();
    for file in files {
        let image = data::decode::decode_as(file, channels).map_err(|e| usage(e.to_string()))?;
        let image = pipeline.apply(image, config.seed, 0, 0);
        pixels.extend(image.pixels.iter().map(|&b| b as f32 / 255.0));
    }
    let size = config.image_side() as i64;
    let images = tch::Tensor::f_from_slice(&pixels)?.f_view([files.len() as i64, channels as i64, size, size])?;
    let images = match &config.normalize {
        Some(n) => n.apply(&images)?,
        None => images,
    };
    for (file, p) in files.iter().zip(classify(&checkpoint.net, &images)?) {
        println!("{}: {}", file.display(), config.classes.get(p).map_or("?", String::as_str));
    }
    Ok(())
}

fn classify(net: &Network, images: &tch::Tensor) -> anyhow::Result<Vec<usize>> {
    let classified = || -> anyhow::Result<Vec<i64>> {
        let images = images.f_to_device(net.device())?;
        let logits = tch::no_grad(|| net.forward_t(&images, false))?;
        Ok(Vec::<i64>::try_from(logits.f_argmax(1, false)?.f_to_device(Device::Cpu)?)?)
    };
    let predicted = classified().with_context(|| format!("{}: prediction failed", net.info.name))?;
    Ok(predicted.into_iter().map(|p| p as usize).collect())
}
