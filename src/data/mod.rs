//! The data: d2l's Fashion-MNIST as `load_data_fashion_mnist` serves it, MNIST, CIFAR-10/100 and
//! image folders of one's own, one concern a file: where the data comes from (`source`), the
//! data sets and their splits (`dataset`, `split`), the file formats (`formats`) and image
//! decoding (`decode`), torchvision's transforms (`transforms`, `resize`, `normalize`) with the
//! vectorised loops under them (`kernels`), a run's training and evaluation transforms
//! (`presets`), seeded batches prepared on a background thread (`loader`), statistics (`stats`)
//! and the official downloads (`download`).

mod auto_augment;
mod color;
mod dataset;
pub mod decode;
mod download;
mod erasing;
mod error;
pub mod formats;
mod kernels;
mod loader;
mod normalize;
mod presets;
mod resize;
mod source;
mod split;
mod stats;
mod transforms;

pub use auto_augment::{
    AUGMIX_SEVERITY, AugMixDraw, AutoAugment, Interpolation, Magnitudes, Op, Policy, RA_MAGNITUDE, Space, apply_op,
};
pub use color::{ColorJitter, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation};
pub use dataset::{CLASSES, Dataset, FILES, FolderOptions, Format};
pub use download::{MIRRORS, OFFICIAL_MD5, cifar_archive, download, download_cifar, mirrors};
pub use erasing::{Erasure, draw as erasing_draw, random_erasing_};
pub use error::DataError;
pub use formats::idx::{parse_images, parse_labels, parse_split};
pub use formats::{CIFAR10_CLASSES, Cifar};
pub use loader::{Batch, DeviceBatch, DeviceBatches, Prep, batches, device_batches, epoch_order, make_batch};
pub use normalize::Normalize;
pub use presets::{CropSizes, Presets};
pub use resize::Resize;
pub use source::{Source, cache_dir, cache_dir_of, resolve_source};
pub use split::Split;
pub use stats::{describe, normalization};
pub use transforms::{CropArea, Image, Pipeline, Transform, parse_range};
