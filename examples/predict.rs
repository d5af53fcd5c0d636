//! A trained run loaded from its directory, classifying the first images of its own test set
//! with the probability of each guess, as `convnets predict` does.
//!
//! ```text
//! cargo run --release -- train lenet-bn --out runs/lenet
//! cargo run --release --example predict -- runs/lenet [COUNT]
//! ```

use std::path::PathBuf;

use anyhow::Context;
use convnets::data::{self, Dataset, FolderOptions, Source};
use convnets::train;
use tch::{Device, Kind};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let run = PathBuf::from(args.next().context("usage: predict RUN_DIR [COUNT]")?);
    let count: usize = args.next().map_or(Ok(8), |c| c.parse()).context("COUNT is a number")?;

    let checkpoint = train::load_checkpoint(&run, Device::Cpu)?;
    let config = &checkpoint.state.config;
    // The run's own data: where it trained (its configuration records it), else the defaults.
    let options = FolderOptions { val_split: config.val_split, ..FolderOptions::default() };
    let data = match &config.data_dir {
        Some(dir) => Dataset::from_source_as(Source::Run(dir.clone()), config.dataset.parse().ok(), &options)?,
        None => Dataset::load(None, None)?,
    };
    config.check_dataset(&data).map_err(anyhow::Error::msg)?;

    // The images as evaluation makes them (resize, crop, normalisation), then the network.
    let prep = config.eval_prep();
    let indices: Vec<usize> = (0..count.min(data.test.len())).collect();
    let batch = data::make_batch(&data.test, &indices, &prep)?;
    let images = batch.images(Device::Cpu, prep.normalize.as_ref())?;
    let logits = tch::no_grad(|| checkpoint.net.forward_t(&images, false))?;
    let probabilities = logits.f_softmax(1, Kind::Float)?;
    let (best, classes) = probabilities.f_max_dim(1, false)?;
    let (best, classes) = (Vec::<f32>::try_from(best)?, Vec::<i64>::try_from(classes)?);
    let truth = Vec::<i64>::try_from(&batch.labels)?;
    let name = |c: i64| config.classes.get(c as usize).map_or("?", String::as_str);
    for (i, ((p, c), t)) in best.iter().zip(&classes).zip(&truth).enumerate() {
        println!("{i:>3}: {:<12} {:>5.1}%   (true: {})", name(*c), 100.0 * p, name(*t));
    }
    Ok(())
}
