//! Fashion-MNIST as d2l's `load_data_fashion_mnist` serves it, one concern a file: the IDX
//! format (`idx`), torchvision's `Resize` (`transforms`), seeded, shuffled batches prepared on a
//! background thread (`loader`) and the official files (`download`); here, where the data comes
//! from (`--data`, `$CONVNETS_DATA`, the user cache, the embedded sample) and the splits.

mod cifar;
mod download;
pub mod folder;
mod idx;
mod loader;
mod transforms;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cifar::{CIFAR10_CLASSES, Cifar};
pub use download::{MIRRORS, OFFICIAL_MD5, cifar_archive, download, download_cifar, mirrors};
pub use idx::{parse_images, parse_labels, parse_split};
pub use loader::{Batch, DeviceBatch, DeviceBatches, Prep, batches, device_batches, epoch_order, make_batch};
pub use transforms::{Image, Normalize, Pipeline, Resize, Transform};

/// Fashion-MNIST's ten classes, in label order.
pub const CLASSES: [&str; 10] =
    ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

/// The four files of the data set, without the optional `.gz`.
pub const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Something wrong with a data file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{dir}: no {name} or {name}.gz; expected the four Fashion-MNIST files ({files}) — `convnets data download` fetches them", files = FILES.join(", "))]
    Missing { dir: String, name: String },
}

fn invalid(file: &str, reason: impl Into<String>) -> DataError {
    DataError::Invalid { file: file.to_string(), reason: reason.into() }
}

/// Images (bytes, each image its channels' planes of row-major pixels) and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// 1 for grey images, 3 for colour (red, green and blue planes).
    pub channels: usize,
    /// Height and width of every image; 0 for an image folder's, whose sizes vary.
    pub rows: usize,
    pub cols: usize,
    /// An image folder's files, decoded when their batch is made (`images` is then empty).
    pub files: Vec<PathBuf>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`, plane after plane (images held in memory).
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.channels * self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }

    /// Image `i`, decoded from its file when the split is an image folder's.
    pub fn load(&self, i: usize) -> anyhow::Result<Image> {
        match self.files.get(i) {
            Some(path) => folder::decode_as(path, self.channels),
            None => Ok(Image {
                pixels: self.image(i).to_vec(),
                channels: self.channels,
                height: self.rows,
                width: self.cols,
            }),
        }
    }
}

/// Where the data came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--data DIR`.
    Flag(PathBuf),
    /// `$CONVNETS_DATA`.
    Env(PathBuf),
    /// The user cache, where `convnets data download` writes.
    Cache(PathBuf),
    /// The sample compiled into the binary.
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Source::Flag(p) => write!(f, "{} (from --data)", p.display()),
            Source::Env(p) => write!(f, "{} (from $CONVNETS_DATA)", p.display()),
            Source::Cache(p) => write!(f, "{} (the user cache)", p.display()),
            Source::Embedded => write!(
                f,
                "the embedded sample (2,000 train / 500 test images; use --data DIR, $CONVNETS_DATA or `convnets data download` for the full set)"
            ),
        }
    }
}

/// The user cache directory of `format`'s files: `$XDG_CACHE_HOME` or `~/.cache`, then
/// `convnets/<name>` (where `convnets data download <name>` puts them).
pub fn cache_dir_of(format: Format) -> Option<PathBuf> {
    cache_dir().map(|d| d.with_file_name(format.name()))
}

/// The user cache directory for the data set: `$XDG_CACHE_HOME` or `~/.cache`, then
/// `convnets/fashion-mnist`.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("convnets").join("fashion-mnist"))
}

/// Picks the data source: `--data DIR`, then `$CONVNETS_DATA`, then the user cache when it holds
/// the files, then the embedded sample. An explicitly named directory is never skipped.
pub fn resolve_source(flag: Option<&Path>) -> Source {
    if let Some(dir) = flag {
        return Source::Flag(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("CONVNETS_DATA").filter(|v| !v.is_empty()) {
        return Source::Env(PathBuf::from(dir));
    }
    match cache_dir() {
        Some(dir) if FILES.iter().all(|f| find_file(&dir, f).is_some()) => Source::Cache(dir),
        _ => Source::Embedded,
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)].into_iter().find(|p| p.is_file())
}

/// The data sets convnets reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The IDX files of Fashion-MNIST (d2l's data set, the default).
    FashionMnist,
    /// The same IDX files of MNIST's digits.
    Mnist,
    Cifar10,
    Cifar100,
    /// torchvision's `ImageFolder` layout: `train/<class>/*.jpg|png` and `val/<class>/...`.
    Folder,
}

impl Format {
    pub const ALL: [Format; 5] =
        [Format::FashionMnist, Format::Mnist, Format::Cifar10, Format::Cifar100, Format::Folder];

    pub fn name(self) -> &'static str {
        match self {
            Format::FashionMnist => "fashion-mnist",
            Format::Mnist => "mnist",
            Format::Cifar10 => "cifar10",
            Format::Cifar100 => "cifar100",
            Format::Folder => "folder",
        }
    }

    /// The height and width of its images as the network sees them by default (an image
    /// folder's are cropped to ImageNet's 224).
    pub fn side(self) -> usize {
        match self {
            Format::FashionMnist | Format::Mnist => 28,
            Format::Cifar10 | Format::Cifar100 => cifar::SIDE,
            Format::Folder => 224,
        }
    }

    /// The training-time augmentation usual for the data set: for CIFAR, torchvision's
    /// `RandomCrop(32, padding=4)` and `RandomHorizontalFlip()`; none for the MNISTs (d2l's).
    pub fn augmentation(self) -> Vec<Transform> {
        match self {
            Format::FashionMnist | Format::Mnist => Vec::new(),
            Format::Cifar10 | Format::Cifar100 => {
                vec![Transform::RandomCrop { size: cifar::SIDE, padding: 4 }, Transform::RandomHorizontalFlip]
            }
            // An image folder's crop depends on the network's input: see `TrainConfig::train_prep`.
            Format::Folder => Vec::new(),
        }
    }

    /// Whether training on it augments by default (CIFAR and image folders; not d2l's MNISTs).
    pub fn augments(self) -> bool {
        matches!(self, Format::Cifar10 | Format::Cifar100 | Format::Folder)
    }

    fn cifar(self) -> Option<Cifar> {
        match self {
            Format::Cifar10 => Some(Cifar::Ten),
            Format::Cifar100 => Some(Cifar::Hundred),
            _ => None,
        }
    }

    /// The data set whose files are in `dir`: IDX files are Fashion-MNIST's unless told
    /// otherwise (MNIST's files have the same names and format).
    pub fn detect(dir: &Path) -> Option<Format> {
        if FILES.iter().all(|f| find_file(dir, f).is_some()) {
            Some(Format::FashionMnist)
        } else if Cifar::Ten.find(dir).is_some() {
            Some(Format::Cifar10)
        } else if Cifar::Hundred.find(dir).is_some() {
            Some(Format::Cifar100)
        } else if folder::detect(dir) {
            Some(Format::Folder)
        } else {
            None
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            format!("unknown dataset {s:?}: expected {}", names.join(", "))
        })
    }
}

/// A data set: its train and test splits and class names.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub format: Format,
    /// Class names, in label order.
    pub classes: Vec<String>,
    pub train: Arc<Split>,
    pub test: Arc<Split>,
    pub source: Source,
    /// Image-folder files left out as unreadable (`--skip-bad-images`), each with why.
    pub skipped: Vec<String>,
}

/// What loading an image folder takes besides its path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderOptions {
    /// Without a `val` folder: the fraction of `train` held out for evaluation (always the same
    /// images for the same folder).
    pub val_split: Option<f64>,
    /// Leave unreadable images out (each is decoded once to check), instead of failing on them.
    pub skip_bad_images: bool,
}

const SAMPLE: [&[u8]; 4] = [
    include_bytes!("../../data/sample/train-images-idx3-ubyte.gz"),
    include_bytes!("../../data/sample/train-labels-idx1-ubyte.gz"),
    include_bytes!("../../data/sample/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../../data/sample/t10k-labels-idx1-ubyte.gz"),
];

impl Dataset {
    /// Loads from where [`resolve_source`] points, Fashion-MNIST unless the folder holds another
    /// data set or `format` names one.
    pub fn load(flag: Option<&Path>, format: Option<Format>) -> Result<Self, DataError> {
        Self::load_with(flag, format, &FolderOptions::default())
    }

    /// [`Dataset::load`], with what an image folder needs.
    pub fn load_with(flag: Option<&Path>, format: Option<Format>, options: &FolderOptions) -> Result<Self, DataError> {
        let source = resolve_source(flag);
        match (format, &source) {
            (Some(f), Source::Embedded | Source::Cache(_)) if f != Format::FashionMnist => {
                match cache_dir_of(f).filter(|d| d.is_dir()) {
                    Some(cached) => Self::from_source_as(Source::Cache(cached), format, options),
                    None => Err(DataError::Missing {
                        dir: "the embedded sample and the user cache".into(),
                        name: format!(
                            "{} (give its folder with --data DIR, or `convnets data download {0}`)",
                            f.name()
                        ),
                    }),
                }
            }
            _ => Self::from_source_as(source, format, options),
        }
    }

    /// Fashion-MNIST from `source`.
    pub fn from_source(source: Source) -> Result<Self, DataError> {
        Self::from_source_as(source, Some(Format::FashionMnist), &FolderOptions::default())
    }

    fn from_source_as(source: Source, format: Option<Format>, options: &FolderOptions) -> Result<Self, DataError> {
        let dir = match &source {
            Source::Embedded => None,
            Source::Flag(dir) | Source::Env(dir) | Source::Cache(dir) => {
                if !dir.is_dir() {
                    return Err(DataError::Io {
                        file: dir.display().to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                    });
                }
                Some(dir.clone())
            }
        };
        let format = format.or_else(|| dir.as_deref().and_then(Format::detect)).unwrap_or(Format::FashionMnist);
        if let (Format::Folder, Some(dir)) = (format, &dir) {
            let found = folder::load(dir, options.val_split, options.skip_bad_images)?;
            return Ok(Dataset {
                format,
                classes: found.classes,
                train: Arc::new(found.train),
                test: Arc::new(found.test),
                source,
                skipped: found.skipped,
            });
        }
        if let (Some(cifar), Some(dir)) = (format.cifar(), &dir) {
            let folder = cifar.find(dir).ok_or_else(|| DataError::Missing {
                dir: dir.display().to_string(),
                name: format!("{} binary files", format.name()),
            })?;
            let (train, test, classes) = cifar.load(&folder)?;
            return Ok(Dataset {
                format,
                classes,
                train: Arc::new(train),
                test: Arc::new(test),
                source,
                skipped: Vec::new(),
            });
        }
        let (files, names): (Vec<Vec<u8>>, Vec<String>) = match &dir {
            None => (
                SAMPLE.iter().map(|b| b.to_vec()).collect(),
                FILES.iter().map(|f| format!("embedded {f}.gz")).collect(),
            ),
            Some(dir) => {
                let mut files = Vec::new();
                let mut names = Vec::new();
                for name in FILES {
                    let path = find_file(dir, name)
                        .ok_or_else(|| DataError::Missing { dir: dir.display().to_string(), name: name.to_string() })?;
                    let file = path.display().to_string();
                    files.push(std::fs::read(&path).map_err(|source| DataError::Io { file: file.clone(), source })?);
                    names.push(file);
                }
                (files, names)
            }
        };
        let train = parse_split(&files[0], &names[0], &files[1], &names[1])?;
        let test = parse_split(&files[2], &names[2], &files[3], &names[3])?;
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(invalid(
                &names[2],
                format!("test images are {}x{}, train images {}x{}", test.rows, test.cols, train.rows, train.cols),
            ));
        }
        let classes = match format {
            Format::Mnist => (0..10).map(|d| d.to_string()).collect(),
            _ => CLASSES.iter().map(|c| c.to_string()).collect(),
        };
        Ok(Dataset { format, classes, train: Arc::new(train), test: Arc::new(test), source, skipped: Vec::new() })
    }

    /// The channels of its images.
    pub fn channels(&self) -> usize {
        self.train.channels
    }
}

/// Counts, class balance and pixel statistics of a split (`convnets data info`).
pub fn describe(split: &Split, classes: &[String]) -> String {
    let mut out = if split.files.is_empty() {
        let n = split.images.len() as f64;
        let mean = split.images.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / n;
        let var = split.images.iter().map(|&p| (p as f64 / 255.0 - mean).powi(2)).sum::<f64>() / n;
        format!(
            "{} images of {}{}x{}, pixel mean {:.4}, std {:.4} (scaled to [0, 1])\n",
            split.len(),
            if split.channels == 1 { String::new() } else { format!("{}x", split.channels) },
            split.rows,
            split.cols,
            mean,
            var.sqrt()
        )
    } else {
        // An image folder's are decoded when used: no pixel statistics without reading them all.
        format!("{} image files, {} channel(s), decoded when used\n", split.len(), split.channels)
    };
    let mut counts = vec![0usize; classes.len()];
    for &l in &split.labels {
        if let Some(count) = counts.get_mut(l as usize) {
            *count += 1;
        }
    }
    for (class, count) in classes.iter().zip(counts) {
        out += &format!("  {class:<11} {count:>6} ({:.1}%)\n", 100.0 * count as f64 / split.len().max(1) as f64);
    }
    out
}

/// The per-channel mean and standard deviation of `data`'s training images as `prep` makes them
/// (at most 2,000 of them, evenly spread), read from the cache beside the data when a previous
/// run computed them, else computed and cached there (`convnets-normalize.json`, keyed by data
/// set, size and transforms).
pub fn normalization(data: &Dataset, prep: &Prep) -> anyhow::Result<Normalize> {
    let key = format!("{} {} {:?}", data.format.name(), data.train.len(), prep.pipeline);
    let cache = match &data.source {
        Source::Flag(dir) | Source::Env(dir) | Source::Cache(dir) => Some(dir.join("convnets-normalize.json")),
        Source::Embedded => None,
    };
    let cached: std::collections::HashMap<String, Normalize> = cache
        .as_ref()
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if let Some(stats) = cached.get(&key) {
        return Ok(stats.clone());
    }
    let split = &data.train;
    let step = split.len().div_ceil(2000).max(1);
    let images = (0..split.len())
        .step_by(step)
        .map(|i| Ok(prep.pipeline.apply(split.load(i)?, prep.seed, 0, i)))
        .collect::<anyhow::Result<Vec<Image>>>()?;
    let stats = Normalize::of(&images);
    if let Some(path) = cache {
        let mut all = cached;
        all.insert(key, stats.clone());
        // A cache only: a read-only data folder just means computing again next time.
        let _ = crate::weights::write_atomic(&path, &serde_json::to_vec_pretty(&all)?);
    }
    Ok(stats)
}
