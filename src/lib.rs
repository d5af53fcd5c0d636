//! convnets: the modern convolutional networks of *Dive into Deep Learning* (AlexNet, VGG,
//! NiN, GoogLeNet, batch normalization, ResNet, DenseNet) on libtorch, with the tools the
//! chapter uses: torchsummary-style summaries, shape traces, Fashion-MNIST and `train_ch6`.
//!
//! ```no_run
//! use convnets::models::{NetConfig, Network};
//!
//! let net = Network::new("resnet18", NetConfig::default(), tch::Device::Cpu).unwrap();
//! assert_eq!(net.num_parameters(), 11_178_378);
//! let records = net.trace(&[1, 96, 96]).unwrap();
//! print!("{}", convnets::summary::torchsummary(&records, &[1, 96, 96], -1));
//! ```

pub mod accel;
pub mod bench;
pub mod chart;
pub mod cli;
pub mod data;
pub mod models;
pub mod nn;
pub mod parity;
pub mod summary;
pub mod trace;
pub mod train;
pub mod weights;

/// A mistake in what the user asked for (the CLI exits with code 2), as opposed to a failure
/// while doing it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}
