//! The data sets convnets reads ([`Format`]) and a loaded one ([`Dataset`]): its splits and
//! class names, from wherever [`resolve_source`] points.

use std::path::Path;
use std::sync::Arc;

use super::error::invalid;
use super::formats::{Cifar, cifar, folder, idx};
use super::source::{cache_dir_of, find_file};
use super::{DataError, Source, Split, resolve_source};

/// Fashion-MNIST's ten classes, in label order.
pub const CLASSES: [&str; 10] =
    ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

/// The four files of the data set, without the optional `.gz`.
pub const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

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

    /// The height and width of its images as they come (an image folder's vary: 224, ImageNet's
    /// crop, stands for them in runs saved before a folder's run recorded the network's own).
    pub fn side(self) -> usize {
        match self {
            Format::FashionMnist | Format::Mnist => 28,
            Format::Cifar10 | Format::Cifar100 => cifar::SIDE,
            Format::Folder => 224,
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
    /// Without a `val` folder or a `val_split`, load `train` alone (and an empty test split)
    /// instead of refusing: for what reads the training images only (`convnets data bench`).
    pub train_only: bool,
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

    /// The data set in `source`: `format`'s, or what its directory holds.
    pub fn from_source_as(source: Source, format: Option<Format>, options: &FolderOptions) -> Result<Self, DataError> {
        let dir = source.dir().map(Path::to_path_buf);
        if let Some(dir) = dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(DataError::Io {
                file: dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        }
        let format = format.or_else(|| dir.as_deref().and_then(Format::detect)).unwrap_or(Format::FashionMnist);
        if let (Format::Folder, Some(dir)) = (format, &dir) {
            let found = folder::load(dir, options)?;
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
        let train = idx::parse_split(&files[0], &names[0], &files[1], &names[1])?;
        let test = idx::parse_split(&files[2], &names[2], &files[3], &names[3])?;
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
