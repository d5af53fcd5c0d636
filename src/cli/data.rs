//! `convnets data`: the official downloads, what the data in use holds, the pipeline's speed;
//! and how every command finds its data.

use std::path::PathBuf;

use tch::Device;

use super::args::DataArgs;
use super::at_least_one;
use crate::bench::cpu_seconds;
use crate::data::{self, Dataset, Format};
use crate::error::usage;
use crate::train::TrainConfig;

/// Loads the data set and says where it came from (and which images it left out): `--data`,
/// else the directory `run` trained on, else the defaults (`$CONVNETS_DATA`, the user cache,
/// the embedded sample); `--dataset`, else the run's data set. A run that held out part of an
/// image folder (`val_split`) holds out the same part again. `train_only`: an image folder
/// needs no test images (see [`data::FolderOptions`]).
pub fn load(args: &DataArgs, run: Option<&TrainConfig>, train_only: bool, report: bool) -> anyhow::Result<Dataset> {
    let options = data::FolderOptions {
        val_split: args.val_split.or(run.and_then(|r| r.val_split)),
        skip_bad_images: args.skip_bad_images,
        train_only,
    };
    let run_format = run.filter(|_| args.dir.is_none()).and_then(|r| r.dataset.parse().ok());
    let format = args.dataset.or(run_format);
    let data = match (&args.dir, run.and_then(|r| r.data_dir.clone())) {
        (None, Some(dir)) => Dataset::from_source_as(data::Source::Run(dir), format, &options)?,
        _ => Dataset::load_with(args.dir.as_deref(), format, &options)?,
    };
    let kind = if data.format == Format::FashionMnist { String::new() } else { format!("{} ", data.format.name()) };
    if !report {
        return Ok(data);
    }
    eprintln!("data: {kind}{}", data.source);
    if !data.skipped.is_empty() {
        eprintln!("data: left out {} unreadable image(s):", data.skipped.len());
        for why in &data.skipped {
            eprintln!("  {why}");
        }
    }
    Ok(data)
}

/// `convnets data download`: the official files of `dataset`, md5-checked, into `dir` or the
/// user cache.
pub fn download(dataset: Format, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir
        .or_else(|| data::cache_dir_of(dataset))
        .ok_or_else(|| usage("no cache directory ($HOME unset): pass --dir"))?;
    let log = |line: &str| eprintln!("{line}");
    match dataset {
        Format::FashionMnist => data::download(&dir, &data::mirrors(), &data::OFFICIAL_MD5, log)?,
        Format::Cifar10 | Format::Cifar100 => {
            let cifar = if dataset == Format::Cifar10 { data::Cifar::Ten } else { data::Cifar::Hundred };
            let (url, md5) = data::cifar_archive(cifar);
            data::download_cifar(&dir, cifar, url, md5, log)?;
        }
        other => {
            return Err(usage(format!("{} has no official download: give its folder with --data", other.name())));
        }
    }
    println!("{} is in {}", dataset.name(), dir.display());
    Ok(())
}

/// `convnets data info`: counts, class balance and pixel statistics of both splits.
pub fn info(args: &DataArgs) -> anyhow::Result<()> {
    let data = load(args, None, true, true)?;
    println!("train: {}", data::describe(&data.train, &data.classes).trim_end());
    println!("test: {}", data::describe(&data.test, &data.classes).trim_end());
    Ok(())
}

/// What `data bench` adds to the data set's own augmentation.
pub struct BenchRecipe {
    pub auto_augment: Option<data::AutoAugment>,
    pub random_erase: f64,
}

/// `convnets data bench`: the training pipeline alone over the training set, `epochs` times.
pub fn bench(
    args: &DataArgs,
    side: usize,
    batch_size: usize,
    epochs: usize,
    recipe: BenchRecipe,
) -> anyhow::Result<()> {
    let data = load(args, None, true, true)?;
    let mut config = TrainConfig::d2l("resnet18").map_err(|e| usage(e.to_string()))?;
    config.use_dataset(&data);
    config.auto_augment = recipe.auto_augment;
    config.random_erase = recipe.random_erase;
    config.validate().map_err(usage)?;
    config.resize = Some(at_least_one("--side", side as i64)?);
    // torchvision's ImageNet constants, as its reference training script uses them.
    let imagenet = data::Normalize { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] };
    config.normalize = Some(match data.channels() {
        3 => imagenet,
        c => data::Normalize { mean: vec![0.5; c], std: vec![0.25; c] },
    });
    let batch_size = at_least_one("--batch-size", batch_size as i64)?;
    let (cpu_started, started) = (cpu_seconds(), std::time::Instant::now());
    let mut images = 0;
    for epoch in 0..at_least_one("--epochs", epochs as i64)? {
        let prep = config.train_prep(epoch);
        let order = data::epoch_order(data.train.len(), config.seed, epoch);
        for (k, batch) in data::batches(data.train.clone(), order, batch_size, prep.clone()).into_iter().enumerate() {
            let batch = batch?;
            let input = batch.images(Device::Cpu, prep.normalize.as_ref())?;
            // Random erasing as training applies it (the batch-level augmentations).
            let at = [config.seed, epoch as u64, k as u64, 0];
            let (input, _) = crate::train::augment_batch(&config, at, &input, &batch.labels)?;
            images += input.size()[0] as usize;
        }
    }
    let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_started);
    println!(
        "{images} images to {side}x{side} in {wall:.2} s: {:.1} images/s, {:.1} images per CPU second",
        images as f64 / wall,
        images as f64 / cpu.max(1e-9)
    );
    Ok(())
}
