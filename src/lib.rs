//! convnets: the modern convolutional networks of *Dive into Deep Learning* (AlexNet, VGG,
//! NiN, GoogLeNet, batch normalization, ResNet, DenseNet) on libtorch, with the tools the
//! chapter uses (torchsummary-style summaries, shape traces, d2l's `train_ch6`) and what people
//! need past the book: MNIST, CIFAR and folders of their own images, training recipes,
//! data-parallel training, ONNX and safetensors exports, TensorBoard files and a live view.
//!
//! ```no_run
//! use convnets::models::{NetConfig, Network};
//!
//! let net = Network::new("resnet18", NetConfig::default(), tch::Device::Cpu).unwrap();
//! assert_eq!(net.num_parameters(), 11_178_378);
//! let records = net.trace(&[1, 96, 96]).unwrap();
//! print!("{}", convnets::summary::torchsummary(&records, &[1, 96, 96], -1));
//! ```
//!
//! The modules from the top down (each uses only those below it): `cli` wires the rest
//! together; `bench`, `parity`, `export` and `report` (the console, files, TensorBoard and the
//! live view, as observers of a run) sit on `train` (the loop, checkpoints, evaluation); `train`
//! on `models` (the zoo and `Network`), `data`, `distributed` and `weights`; `models` on `nn`
//! (layers, the tracing mechanism, losses), `summary` renders `nn`'s traces; and under all,
//! `accel`, `onnx` (the format), `ffi` (the C++ shim), `atomic` and `error`.

pub mod accel;
pub mod atomic;
pub mod bench;
pub mod cli;
pub mod data;
pub mod distributed;
pub mod error;
pub mod export;
mod ffi;
pub mod models;
pub mod nn;
pub mod onnx;
pub mod parity;
pub mod report;
pub mod summary;
pub mod train;
pub mod weights;

pub use error::{UsageError, backtraces_wanted, error_line, libtorch_message, torch_error, usage};
