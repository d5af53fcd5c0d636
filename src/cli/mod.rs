//! The `convnets` command line: the arguments (`args`), one file per family of commands, and
//! here the entry point that turns every failure into one line and an exit code.

mod args;
mod augment;
mod bench;
mod data;
mod evaluate;
mod inspect;
mod predict;
mod serve;
mod train;
mod weights;

use std::process::ExitCode;

use clap::Parser;

use crate::accel::PrecisionChoice;
use crate::data::{Pipeline, Transform};
use crate::error::{UsageError, error_line, libtorch_message, panic_is_caught, panic_text, stderr_line, usage};
use args::{Cli, Command, DataCommand};

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    // Every libtorch call on the paths a command takes is fallible, but a panic raised with one
    // of libtorch's errors (inside tch, or a call missed) must still end as one line, not as a
    // panic report with a C++ stack: the hook stays quiet for those, and `run_guarded` turns
    // them into errors; it stays quiet too for the panics the library catches itself (a
    // decoder's on a malformed image, see `error::catch_panic`), and for `println!` finding
    // stdout closed (`convnets models | head`). Any other panic is a bug and is reported as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if libtorch_panic(info.payload()).is_none() && !stdout_closed(info.payload()) && !panic_is_caught() {
            default_hook(info);
        }
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: clap's first paragraph, which names the problem and the arguments
            // (a missing one is on the lines after the first).
            let text = e.render().to_string();
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let line = if first.is_empty() { "error: invalid arguments".to_string() } else { first.join(" ") };
            stderr_line(&format!("{line} (see --help)"));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
    };
    match run_guarded(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line(&format!("error: {}", error_line(&e)));
            ExitCode::from(if e.downcast_ref::<UsageError>().is_some() { 2 } else { 1 })
        }
    }
}

/// [`run`], with a panic that carries a libtorch error turned into that error, and one from
/// writing to a closed stdout into success: whoever reads the output has read all they wanted,
/// as `head` has, and the command stops there.
fn run_guarded(command: Command) -> anyhow::Result<()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(command))) {
        Ok(result) => result,
        Err(payload) if stdout_closed(payload.as_ref()) => Ok(()),
        Err(payload) => match libtorch_panic(payload.as_ref()) {
            Some(message) => Err(anyhow::anyhow!("libtorch: {}", libtorch_message(&message))),
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// Whether a panic is `println!`'s on a stdout whose reader has gone (the process ignores
/// SIGPIPE, as Rust programs do, so the write fails with EPIPE instead of ending it).
fn stdout_closed(payload: &(dyn std::any::Any + Send)) -> bool {
    panic_text(payload)
        .is_some_and(|text| text.starts_with("failed printing to stdout") && text.contains("os error 32"))
}

/// libtorch's message, when a panic's payload is tch unwrapping one of its errors.
fn libtorch_panic(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    let text = panic_text(payload)?;
    // tch's `unwrap()`s read: called `Result::unwrap()` on an `Err` value: Torch("...")
    let start = text.find("Torch(\"")? + "Torch(\"".len();
    let message = text[start..].trim_end_matches(')').trim_end_matches('"');
    // Debug formatting escaped the message's line breaks and quotes.
    Some(message.replace("\\n", "\n").replace("\\\"", "\""))
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Models { json } => inspect::models(json),
        Command::Summary { net, input, batch_size, style, depth, shape } => {
            inspect::summary(&net, input, batch_size, style, depth, &shape)
        }
        Command::Shapes { net, input, shape } => inspect::shapes(&net, input, &shape),
        Command::Train(args) => train::run(*args),
        Command::Eval { run, data, device, tta } => evaluate::run(&run, &data, &device, tta.is_some()),
        Command::Augment {
            image,
            out,
            count,
            crop,
            crop_scale,
            crop_ratio,
            flip,
            vertical_flip,
            color_jitter,
            auto_augment,
            seed,
        } => {
            let auto_augment = auto_augment.policy().map_err(usage)?;
            let area = crate::data::CropSizes { scale: crop_scale, ratio: crop_ratio, ..Default::default() }.area();
            area.validate("--crop-").map_err(usage)?;
            let transforms = crop
                .map(|size| Transform::RandomResizedCrop(size, area))
                .into_iter()
                .chain(flip.then_some(Transform::RandomHorizontalFlip))
                .chain(vertical_flip.then_some(Transform::RandomVerticalFlip))
                .chain(auto_augment.map(Transform::AutoAugment))
                .chain(color_jitter.map(Transform::ColorJitter))
                .collect();
            augment::run(&image, &out, count, Pipeline { transforms }, seed)
        }
        Command::Predict { run, count, out, image, topk, json, data, device } => {
            let output = predict::Output { topk, json };
            predict::run(&run, count, out.as_deref(), &image, output, &data, &device)
        }
        Command::Import { weights, net, key, out, allow_partial } => {
            weights::import(&weights, &net, key.as_deref(), &out, allow_partial)
        }
        Command::Export { run, out, format, ema } => weights::export(&run, &out, format, ema),
        Command::Parity { file, net } => bench::parity(&file, &net),
        Command::Bench { nets, device, batch_size, steps, warmup, json, speed, data } => {
            bench::bench(nets, &device, batch_size, steps, warmup, json, &speed, &data)
        }
        Command::Profile { net, device, batch_size, passes, speed } => {
            bench::profile(&net, &device, batch_size, passes, &speed)
        }
        Command::Serve { dir, addr } => serve::run(&dir, addr.as_deref()),
        Command::Data { command } => match command {
            DataCommand::Download { dataset, dir } => data::download(dataset, dir),
            DataCommand::Info { data } => data::info(&data),
            DataCommand::Bench { data, side, batch_size, epochs, auto_augment, random_erase } => {
                let recipe = data::BenchRecipe { auto_augment: auto_augment.policy().map_err(usage)?, random_erase };
                data::bench(&data, side, batch_size, epochs, recipe)
            }
        },
    }
}

/// A count the user gave, which must be positive.
pub(crate) fn at_least_one(flag: &str, value: i64) -> anyhow::Result<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| usage(format!("{flag} must be at least 1, got {value}")))
}

/// Says so on stderr where `precision` is a fixed bf16 on a CPU that only emulates bfloat16
/// (`auto` never chooses it there).
pub(crate) fn warn_if_bf16_emulated(device: tch::Device, precision: PrecisionChoice) {
    let PrecisionChoice::Fixed(precision) = precision else { return };
    if let Some(warning) = crate::accel::emulated_bf16_warning(device, precision, crate::accel::cpu_has_bf16()) {
        eprintln!("{warning}");
    }
}
