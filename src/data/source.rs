//! Where the data comes from: `--data DIR`, then `$CONVNETS_DATA`, then the user cache, then the
//! sample embedded in the binary.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{FILES, Format};

/// Where the data came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--data DIR`.
    Flag(PathBuf),
    /// `$CONVNETS_DATA`.
    Env(PathBuf),
    /// The user cache, where `convnets data download` writes.
    Cache(PathBuf),
    /// The directory a run trained on, as its configuration recorded it (`eval`, `predict` and
    /// `--resume` without `--data`).
    Run(PathBuf),
    /// The sample compiled into the binary.
    Embedded,
}

impl Source {
    /// The directory the data is in (none for the embedded sample).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Source::Flag(dir) | Source::Env(dir) | Source::Cache(dir) | Source::Run(dir) => Some(dir),
            Source::Embedded => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Source::Flag(p) => write!(f, "{} (from --data)", p.display()),
            Source::Env(p) => write!(f, "{} (from $CONVNETS_DATA)", p.display()),
            Source::Cache(p) => write!(f, "{} (the user cache)", p.display()),
            Source::Run(p) => write!(f, "{} (the run's data)", p.display()),
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

pub(crate) fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)].into_iter().find(|p| p.is_file())
}
