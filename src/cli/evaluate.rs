//! `convnets eval`: a trained run's test accuracy, per class, and its confusion matrix.

use std::path::Path;

use super::args::DataArgs;
use super::data;
use crate::accel::parse_device;
use crate::error::usage;
use crate::train;

pub fn run(run: &Path, data: &DataArgs, device: &str) -> anyhow::Result<()> {
    let device = parse_device(device).map_err(usage)?;
    let checkpoint = train::load_checkpoint(run, device)?;
    let config = &checkpoint.state.config;
    let data = data::load(data, Some(config), false, true)?;
    config.check_dataset(&data).map_err(usage)?;
    let evaluation = train::evaluate(&checkpoint.net, &data.test, config.batch_size, &config.eval_prep())?;
    println!("{} after {} epochs, {} test images", config.net, checkpoint.state.epoch, data.test.len());
    print!("{}", evaluation.report(&config.classes));
    Ok(())
}
