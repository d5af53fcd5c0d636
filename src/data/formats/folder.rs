//! Image folders in torchvision's `ImageFolder` layout: `DIR/train/<class>/*.{jpg,jpeg,png}` and
//! `DIR/val/<class>/...`, classes sorted by folder name, files by name. Images are decoded (see
//! `decode`) when their batch is made, so a folder of any size trains in bounded memory: as RGB
//! (grey ones repeated, as PIL's `convert("RGB")`), or as grey when every image of the folder is.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::data::decode::{decode, is_grey};
use crate::data::error::invalid;
use crate::data::{DataError, FolderOptions, Split};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// The held-out part of a folder without `val/` is drawn with this seed, always the same.
const HOLDOUT_SEED: u64 = 0x5EED;
/// An image file and its class.
type Labelled = (PathBuf, u8);

/// Whether `dir` looks like an image folder: a `train` folder of class folders.
pub fn detect(dir: &Path) -> bool {
    dir.join("train").is_dir()
}

/// The image files of each class folder of `dir`, classes sorted by name.
fn scan(dir: &Path) -> Result<(Vec<String>, Vec<Labelled>), DataError> {
    let name = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { file: name.clone(), source })?;
    let mut classes: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    classes.sort();
    if classes.is_empty() {
        return Err(invalid(&name, "no class folders (expected one folder of images per class)"));
    }
    if classes.len() > 256 {
        return Err(invalid(&name, format!("{} classes; at most 256 are supported", classes.len())));
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut images: Vec<PathBuf> = std::fs::read_dir(class)
            .map_err(|source| DataError::Io { file: class.display().to_string(), source })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
            })
            .collect();
        if images.is_empty() {
            return Err(invalid(
                &class.display().to_string(),
                "an empty class folder (no .jpg, .jpeg or .png files): remove it or add images",
            ));
        }
        images.sort();
        files.extend(images.into_iter().map(|p| (p, label as u8)));
    }
    let names =
        classes.iter().map(|c| c.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned())).collect();
    Ok((names, files))
}

/// A split of file-backed images with `channels` channels.
fn split(files: Vec<Labelled>, channels: usize) -> Split {
    let (files, labels) = files.into_iter().unzip();
    Split { images: Vec::new(), labels, channels, rows: 0, cols: 0, files }
}

/// What [`load`] found.
pub struct Folder {
    pub train: Split,
    pub test: Split,
    pub classes: Vec<String>,
    /// Files left out as unreadable (with `skip_bad_images`), with why.
    pub skipped: Vec<String>,
}

/// Loads `dir`: its `train` and `val` folders, or `train` alone with a `val_split` fraction of
/// it held out (by a fixed seed, so that every command holds out the same images), or, with
/// `train_only` and neither, `train` and an empty test split. Every file is decoded once to check
/// it when `skip_bad_images` asks for unreadable ones to be left out; otherwise one is an error
/// when its batch is made.
pub fn load(dir: &Path, options: &FolderOptions) -> Result<Folder, DataError> {
    let val_split = options.val_split;
    let (classes, mut train) = scan(&dir.join("train"))?;
    let val_dir = dir.join("val");
    let mut test = if val_dir.is_dir() {
        if val_split.is_some() {
            return Err(invalid(
                &val_dir.display().to_string(),
                "a val folder exists: --val-split holds out nothing more",
            ));
        }
        let (val_classes, val) = scan(&val_dir)?;
        if val_classes != classes {
            return Err(invalid(
                &val_dir.display().to_string(),
                format!("its classes {val_classes:?} are not train's {classes:?}"),
            ));
        }
        val
    } else if val_split.is_none() && options.train_only {
        Vec::new()
    } else {
        let fraction = val_split.ok_or_else(|| {
            invalid(
                &dir.display().to_string(),
                "no val folder: add DIR/val/<class>/... or hold out a part with --val-split 0.1",
            )
        })?;
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(invalid(
                &dir.display().to_string(),
                format!("--val-split must be between 0 and 1, got {fraction}"),
            ));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(HOLDOUT_SEED);
        train.shuffle(&mut rng);
        let held = ((train.len() as f64 * fraction).round() as usize).clamp(1, train.len().saturating_sub(1));
        let mut test: Vec<_> = train.drain(..held).collect();
        test.sort();
        train.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        test
    };
    let mut skipped = Vec::new();
    if options.skip_bad_images {
        for files in [&mut train, &mut test] {
            let results: Vec<Option<String>> =
                files.par_iter().map(|(p, _)| decode(p).err().map(|e| e.to_string())).collect();
            let mut keep = results.iter();
            files.retain(|_| keep.next().is_some_and(|r| r.is_none()));
            skipped.extend(results.into_iter().flatten());
        }
    }
    if train.is_empty() || (test.is_empty() && !options.train_only) {
        return Err(invalid(&dir.display().to_string(), "no readable images left in train or val"));
    }
    // torchvision converts every image to RGB; a folder of grey images only (Fashion-MNIST's,
    // say) stays grey, one channel, as the MNISTs do.
    let grey = train.par_iter().chain(test.par_iter()).all(|(p, _)| is_grey(p));
    let channels = if grey { 1 } else { 3 };
    Ok(Folder { train: split(train, channels), test: split(test, channels), classes, skipped })
}
