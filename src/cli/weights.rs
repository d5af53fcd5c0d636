//! `convnets import` and `convnets export`: weights in from PyTorch, and a trained network out as
//! ONNX or as a PyTorch `state_dict`.

use std::path::Path;

use tch::Device;

use super::args::ExportFormat;
use crate::accel::Precision;
use crate::atomic::write_atomic;
use crate::error::usage;
use crate::export::{self, ModelCard};
use crate::models::{self, Network, Origin};
use crate::train::{self, TrainConfig};
use crate::weights;

/// Loads a PyTorch `state_dict` (from under `key` in a checkpoint) into `net` and saves it as a
/// new run directory `out`.
pub fn import(file: &Path, net: &str, key: Option<&str>, out: &Path, allow_partial: bool) -> anyhow::Result<()> {
    let mut config = TrainConfig::d2l(net).map_err(|e| usage(e.to_string()))?;
    if models::find(net).is_ok_and(|info| info.origin == Origin::Torchvision) {
        // torchvision's files hold its ImageNet networks: predict classifies photos as it does.
        config.use_imagenet();
    }
    if out.join(train::CHECKPOINT_FILE).exists() {
        return Err(usage(format!("{} already holds a run; choose another --out", out.display())));
    }
    let network = Network::new(net, config.net_config(), Device::Cpu)?;
    let tensors = weights::read_tensors_under(file, key)?;
    let report = weights::load_state_dict(&network.vs, net, &tensors, allow_partial)?;
    for problem in &report.skipped {
        eprintln!("skipped: {problem}");
    }
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    train::run_dir::write_config(out, &config)?;
    let state = train::CheckpointState::new(config, 0, train::History::default());
    train::save_checkpoint(out, &network, None, None, &state)?;
    println!("loaded {} tensors into {net}; run directory {}", report.loaded.len(), out.display());
    Ok(())
}

/// Writes a run's network as ONNX, or its weights as safetensors (by `format`, else by `out`'s
/// extension).
pub fn export(run: &Path, out: &Path, format: Option<ExportFormat>, ema: bool) -> anyhow::Result<()> {
    let mut checkpoint = train::load_checkpoint(run, Device::Cpu)?;
    if ema {
        if checkpoint.ema.is_empty() {
            return Err(usage(format!("{} has no average of its weights: train with --model-ema", run.display())));
        }
        let average = train::Ema::averaged_weights(&checkpoint.ema);
        weights::load_state_dict(&checkpoint.net.vs, &checkpoint.state.config.net, &average, false)?;
    }
    let format = format.unwrap_or(if out.extension().is_some_and(|e| e == "onnx") {
        ExportFormat::Onnx
    } else {
        ExportFormat::Safetensors
    });
    let write =
        |bytes: &[u8]| write_atomic(out, bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()));
    let name = &checkpoint.state.config.net;
    match format {
        ExportFormat::Onnx => {
            // The trace runs in float32, laid out NCHW, whatever the run trained with.
            checkpoint.net.set_precision(Precision::Fp32)?;
            checkpoint.net.set_channels_last(false)?;
            let card = ModelCard::of_run(&checkpoint.state);
            write(&export::export(&checkpoint.net, &card)?)?;
            let [c, h, w] = card.input;
            println!(
                "{name} (ONNX opset {}, input \"{}\" batch x {c} x {h} x {w}, output \"{}\") written to {}",
                export::OPSET,
                export::INPUT,
                export::OUTPUT,
                out.display()
            );
        }
        ExportFormat::Safetensors => {
            let (bytes, count) = export::state_dict_file(&checkpoint.net)?;
            write(&bytes)?;
            println!("{count} tensors of {name} written to {}", out.display());
        }
    }
    Ok(())
}
