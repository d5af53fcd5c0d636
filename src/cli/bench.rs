//! `convnets bench`, `profile` and `parity`: speed and numerical agreement with PyTorch.

use std::path::Path;

use super::args::{DataArgs, SpeedArgs};
use super::{data, warn_if_bf16_emulated};
use crate::accel::parse_device;
use crate::error::usage;
use crate::models::{self, MODELS};

/// Measures `nets` (d2l's eight by default), as a table or one JSON object each.
#[allow(clippy::too_many_arguments)]
pub fn bench(
    nets: Vec<String>,
    device: &str,
    batch_size: Option<usize>,
    steps: usize,
    warmup: usize,
    json: bool,
    speed: &SpeedArgs,
    data: &DataArgs,
) -> anyhow::Result<()> {
    let device = parse_device(device).map_err(usage)?;
    if steps == 0 || batch_size == Some(0) {
        return Err(usage("--steps and --batch-size must be at least 1"));
    }
    let nets: Vec<String> = if nets.is_empty() {
        MODELS.iter().filter(|m| m.book.is_some()).map(|m| m.name.to_string()).collect()
    } else {
        nets
    };
    for net in &nets {
        models::find(net).map_err(|e| usage(e.to_string()))?;
    }
    let data = data::load(data, None, false, true)?;
    speed.apply_cpu_kernels();
    let config = speed.bench_config(device, batch_size, steps, warmup);
    warn_if_bf16_emulated(device, config.precision);
    let mut results = Vec::new();
    for net in &nets {
        let result = crate::bench::bench(net, &config, &data)?;
        if json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            eprintln!("{net}: {:.1} train examples/s", result.train_examples_per_s);
        }
        results.push(result);
    }
    if !json {
        print!("{}", crate::bench::table(&results));
    }
    Ok(())
}

/// Where a training step of `net` spends its time.
pub fn profile(
    net: &str,
    device: &str,
    batch_size: Option<usize>,
    passes: usize,
    speed: &SpeedArgs,
) -> anyhow::Result<()> {
    let device = parse_device(device).map_err(usage)?;
    if passes == 0 || batch_size == Some(0) {
        return Err(usage("--passes and --batch-size must be at least 1"));
    }
    models::find(net).map_err(|e| usage(e.to_string()))?;
    speed.apply_cpu_kernels();
    let config = speed.bench_config(device, batch_size, passes, 1);
    warn_if_bf16_emulated(device, config.precision);
    let profile = crate::bench::profile(net, &config)?;
    print!("{}", crate::bench::profile_table(&profile));
    Ok(())
}

/// Replays a parity file on `net`; fails when an item differs beyond tolerance.
pub fn parity(file: &Path, net: &str) -> anyhow::Result<()> {
    models::find(net).map_err(|e| usage(e.to_string()))?;
    let report = crate::parity::run(file, net)?;
    println!("{report}");
    if !report.passed() {
        anyhow::bail!("{net} differs from PyTorch beyond tolerance");
    }
    Ok(())
}
