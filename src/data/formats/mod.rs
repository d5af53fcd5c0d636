//! The file formats convnets reads data sets from: the MNISTs' IDX files, CIFAR's binary
//! batches and torchvision's `ImageFolder` layout.

pub mod cifar;
pub mod folder;
pub mod idx;

pub use cifar::{CIFAR10_CLASSES, Cifar};
