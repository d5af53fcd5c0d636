//! Fashion-MNIST as d2l's `load_data_fashion_mnist` serves it, one concern a file: the IDX
//! format (`idx`), torchvision's `Resize` (`transforms`), seeded, shuffled batches prepared on a
//! background thread (`loader`) and the official files (`download`); here, where the data comes
//! from (`--data`, `$CONVNETS_DATA`, the user cache, the embedded sample) and the splits.

mod download;
mod idx;
mod loader;
mod transforms;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use download::{MIRRORS, OFFICIAL_MD5, download, mirrors};
pub use idx::{parse_images, parse_labels, parse_split};
pub use loader::{Batch, DeviceBatch, DeviceBatches, batches, device_batches, epoch_order, make_batch};
pub use transforms::Resize;

/// The ten classes, in label order.
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

/// Images (row-major bytes) and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
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

/// Train and test splits.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub train: Arc<Split>,
    pub test: Arc<Split>,
    pub source: Source,
}

const SAMPLE: [&[u8]; 4] = [
    include_bytes!("../../data/sample/train-images-idx3-ubyte.gz"),
    include_bytes!("../../data/sample/train-labels-idx1-ubyte.gz"),
    include_bytes!("../../data/sample/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../../data/sample/t10k-labels-idx1-ubyte.gz"),
];

impl FashionMnist {
    /// Loads from where [`resolve_source`] points.
    pub fn load(flag: Option<&Path>) -> Result<Self, DataError> {
        Self::from_source(resolve_source(flag))
    }

    pub fn from_source(source: Source) -> Result<Self, DataError> {
        let (files, names): (Vec<Vec<u8>>, Vec<String>) = match &source {
            Source::Embedded => (
                SAMPLE.iter().map(|b| b.to_vec()).collect(),
                FILES.iter().map(|f| format!("embedded {f}.gz")).collect(),
            ),
            Source::Flag(dir) | Source::Env(dir) | Source::Cache(dir) => {
                if !dir.is_dir() {
                    return Err(DataError::Io {
                        file: dir.display().to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                    });
                }
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
        Ok(FashionMnist { train: Arc::new(train), test: Arc::new(test), source })
    }
}

/// Counts, class balance and pixel statistics of a split (`convnets data info`).
pub fn describe(split: &Split) -> String {
    let mut counts = [0usize; 10];
    for &l in &split.labels {
        counts[l as usize] += 1;
    }
    let n = split.images.len() as f64;
    let mean = split.images.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / n;
    let var = split.images.iter().map(|&p| (p as f64 / 255.0 - mean).powi(2)).sum::<f64>() / n;
    let mut out = format!(
        "{} images of {}x{}, pixel mean {:.4}, std {:.4} (scaled to [0, 1])\n",
        split.len(),
        split.rows,
        split.cols,
        mean,
        var.sqrt()
    );
    for (class, count) in CLASSES.iter().zip(counts) {
        out += &format!("  {class:<11} {count:>6} ({:.1}%)\n", 100.0 * count as f64 / split.len().max(1) as f64);
    }
    out
}
