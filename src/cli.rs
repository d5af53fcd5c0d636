//! The `convnets` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tch::Device;

use crate::models::{self, MODELS, NetConfig, Network};
use crate::summary;

/// A mistake in what the user asked for (exit code 2), as opposed to a failure while doing it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

#[derive(Parser)]
#[command(name = "convnets", version, about = "The modern CNNs of Dive into Deep Learning, in Rust on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// An input shape: `CxHxW`, `HxW` or a single size `N` (square).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub channels: Option<i64>,
    pub height: i64,
    pub width: i64,
}

impl InputShape {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Result<Vec<i64>, _> = s.split(['x', 'X']).map(|p| p.trim().parse::<i64>()).collect();
        let bad =
            || format!("'{s}' is not an input shape: use CxHxW (e.g. 1x224x224), HxW, or N for NxN, sizes at least 1");
        let parts = parts.map_err(|_| bad())?;
        if parts.iter().any(|&d| d < 1) {
            return Err(bad());
        }
        match parts[..] {
            [c, h, w] => Ok(InputShape { channels: Some(c), height: h, width: w }),
            [h, w] => Ok(InputShape { channels: None, height: h, width: w }),
            [n] => Ok(InputShape { channels: None, height: n, width: n }),
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SummaryStyle {
    /// torchsummary 1.5.1's table.
    Torchsummary,
    /// A torchinfo-like nested tree with mult-adds.
    Tree,
}

#[derive(Subcommand)]
enum Command {
    /// List every network with its d2l input size, parameter count and description.
    Models,
    /// Print a network's summary table, as torchsummary (default) or as a torchinfo-like tree.
    Summary {
        /// Network name (see `convnets models`).
        net: String,
        /// Input shape CxHxW (default: the network's d2l input).
        #[arg(long, value_parser = InputShape::parse)]
        input: Option<InputShape>,
        /// Batch size shown in shapes and sizes (torchsummary default -1; tree default: d2l's).
        #[arg(long, allow_negative_numbers = true)]
        batch_size: Option<i64>,
        #[arg(long, value_enum, default_value_t = SummaryStyle::Torchsummary)]
        style: SummaryStyle,
    },
    /// Print each top-level layer's output shape for one input, as the notebook's loops do.
    Shapes {
        net: String,
        #[arg(long, value_parser = InputShape::parse)]
        input: Option<InputShape>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.downcast_ref::<UsageError>().is_some() { 2 } else { 1 })
        }
    }
}

/// Builds `name` for `input` (its channels set the network's) and checks the input fits.
fn network_for(name: &str, input: Option<InputShape>) -> anyhow::Result<(Network, [i64; 3])> {
    let info = models::find(name).map_err(|e| usage(e.to_string()))?;
    let channels = input.and_then(|i| i.channels).unwrap_or(1);
    let net = Network::from_info(info, NetConfig { in_channels: channels, ..NetConfig::default() }, Device::Cpu);
    let shape = match input {
        Some(i) => [channels, i.height, i.width],
        None => net.default_input(),
    };
    net.check_input(&shape).map_err(|e| usage(e.to_string()))?;
    Ok((net, shape))
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Models => {
            println!("{:<18} {:<11} {:>12}  description", "name", "input", "params");
            for info in MODELS {
                let net = Network::from_info(info, NetConfig::default(), Device::Cpu);
                let [c, h, w] = net.default_input();
                let input = format!("{c}x{h}x{w}");
                println!(
                    "{:<18} {:<11} {:>12}  {}",
                    info.name,
                    input,
                    summary::thousands(net.num_parameters()),
                    info.description
                );
            }
        }
        Command::Summary { net, input, batch_size, style } => {
            let (net, shape) = network_for(&net, input)?;
            if batch_size.is_some_and(|b| b == 0 || b < -1) {
                return Err(usage("--batch-size must be -1 (unspecified) or at least 1"));
            }
            let records = net.trace(&shape)?;
            let text = match style {
                SummaryStyle::Torchsummary => summary::torchsummary(&records, &shape, batch_size.unwrap_or(-1)),
                SummaryStyle::Tree => {
                    let batch = batch_size.filter(|&b| b > 0).unwrap_or(net.info.batch_size);
                    summary::torchinfo(&records, &shape, batch)
                }
            };
            print!("{text}");
        }
        Command::Shapes { net, input } => {
            let (net, shape) = network_for(&net, input)?;
            print!("{}", summary::shapes(&net.trace(&shape)?));
        }
    }
    Ok(())
}
