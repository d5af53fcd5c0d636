//! CIFAR-10 and CIFAR-100 in their official binary form: records of a label byte (CIFAR-100: a
//! coarse and a fine label byte) and a 32x32 colour image stored as its red, green and blue
//! planes, which is the CHW layout the pipeline keeps.

use std::path::{Path, PathBuf};

use crate::data::error::invalid;
use crate::data::{DataError, Split};

pub const SIDE: usize = 32;
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// The CIFAR-10 classes, as `batches.meta.txt` lists them (used when that file is missing).
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Which of the two data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    Ten,
    Hundred,
}

impl Cifar {
    /// Label bytes before each image: CIFAR-100 has a coarse label, then the fine one it uses.
    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    /// The folder the official archive unpacks to.
    pub fn folder(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar-10-batches-bin",
            Cifar::Hundred => "cifar-100-binary",
        }
    }

    /// (train files, test files, class-name file), as the archive names them.
    fn files(self) -> (Vec<String>, Vec<String>, &'static str) {
        match self {
            Cifar::Ten => (
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
                vec!["test_batch.bin".into()],
                "batches.meta.txt",
            ),
            Cifar::Hundred => (vec!["train.bin".into()], vec!["test.bin".into()], "fine_label_names.txt"),
        }
    }

    /// The folder under `dir` that holds this data set's files (`dir` itself or the archive's
    /// folder), if any.
    pub fn find(self, dir: &Path) -> Option<PathBuf> {
        let (train, _, _) = self.files();
        [dir.to_path_buf(), dir.join(self.folder())].into_iter().find(|d| d.join(&train[0]).is_file())
    }

    /// Train and test splits and the class names from the folder [`Cifar::find`] found.
    pub fn load(self, dir: &Path) -> Result<(Split, Split, Vec<String>), DataError> {
        let (train_files, test_files, names_file) = self.files();
        let split = |files: &[String]| -> Result<Split, DataError> {
            let mut split = Split {
                images: Vec::new(),
                labels: Vec::new(),
                channels: 3,
                rows: SIDE,
                cols: SIDE,
                files: Vec::new(),
            };
            for name in files {
                let path = dir.join(name);
                let file = path.display().to_string();
                let bytes = std::fs::read(&path).map_err(|source| DataError::Io { file: file.clone(), source })?;
                self.parse(&bytes, &file, &mut split)?;
            }
            Ok(split)
        };
        let (train, test) = (split(&train_files)?, split(&test_files)?);
        let names_path = dir.join(names_file);
        let classes: Vec<String> = match std::fs::read_to_string(&names_path) {
            Ok(text) => text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
            Err(_) if self == Cifar::Ten => CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
            Err(_) => (0..self.num_classes()).map(|c| format!("class {c}")).collect(),
        };
        if classes.len() != self.num_classes() {
            return Err(invalid(
                &names_path.display().to_string(),
                format!("{} class names, expected {}", classes.len(), self.num_classes()),
            ));
        }
        Ok((train, test, classes))
    }

    /// Appends the records of one file to `split`, checking their size and labels.
    pub fn parse(self, bytes: &[u8], file: &str, split: &mut Split) -> Result<(), DataError> {
        let record = self.label_bytes() + IMAGE_BYTES;
        if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
            return Err(invalid(
                file,
                format!(
                    "{} bytes is not a whole number of {record}-byte records (label and 3x32x32 image)",
                    bytes.len()
                ),
            ));
        }
        for (i, r) in bytes.chunks_exact(record).enumerate() {
            let label = r[self.label_bytes() - 1];
            if label as usize >= self.num_classes() {
                return Err(invalid(
                    file,
                    format!("label {label} of record {i} is not a class (0-{})", self.num_classes() - 1),
                ));
            }
            split.labels.push(label);
            split.images.extend_from_slice(&r[self.label_bytes()..]);
        }
        Ok(())
    }
}
