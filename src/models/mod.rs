//! The chapter's networks, one file per family, the zoo that lists them with d2l's settings,
//! and the [`Network`] that runs any of them.

pub mod alexnet;
pub mod densenet;
pub mod googlenet;
pub mod lenet;
pub mod nin;
pub mod resnet;
pub mod torchvision;
pub mod vgg;

mod network;
mod zoo;

pub use network::{InputError, Network};
pub use zoo::{BookResult, MODELS, ModelInfo, NetConfig, Origin, UnknownModel, find, model_names};
