//! What can be wrong with a data set's files, always naming the file.

use super::FILES;

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

/// A [`DataError::Invalid`] of `file`.
pub(crate) fn invalid(file: &str, reason: impl Into<String>) -> DataError {
    DataError::Invalid { file: file.to_string(), reason: reason.into() }
}
