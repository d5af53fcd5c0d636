//! `convnets eval`: a trained run's test accuracy, per class, and its confusion matrix.

use std::path::Path;

use super::args::DataArgs;
use super::data;
use crate::accel::parse_device;
use crate::error::usage;
use crate::train;

pub fn run(run: &Path, data: &DataArgs, device: &str, flip_tta: bool) -> anyhow::Result<()> {
    let device = parse_device(device).map_err(usage)?;
    let checkpoint = train::load_checkpoint(run, device)?;
    let config = &checkpoint.state.config;
    let data = data::load(data, Some(config), false, true)?;
    config.check_dataset(&data).map_err(usage)?;
    let prep = config.eval_prep();
    let evaluation = if flip_tta {
        train::evaluate_with_flips(&checkpoint.net, &data.test, config.batch_size, &prep)?
    } else {
        train::evaluate(&checkpoint.net, &data.test, config.batch_size, &prep)?
    };
    let tta = if flip_tta { ", each with its mirror image (--tta flip)" } else { "" };
    println!("{} after {} epochs, {} test images{tta}", config.net, checkpoint.state.epoch, data.test.len());
    print!("{}", evaluation.report(&config.classes));
    Ok(())
}
