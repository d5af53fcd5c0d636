//! Image folders in torchvision's `ImageFolder` layout: `DIR/train/<class>/*.{jpg,jpeg,png}` and
//! `DIR/val/<class>/...`, classes sorted by folder name, files by name. Images are decoded (by
//! the `image` crate: zune-jpeg, png) when their batch is made, so a folder of any size trains
//! in bounded memory: as RGB (grey ones repeated, as PIL's `convert("RGB")`), or as grey when
//! every image of the folder is.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::{DataError, Image, Split, invalid};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// The held-out part of a folder without `val/` is drawn with this seed, always the same.
const HOLDOUT_SEED: u64 = 0x5EED;
/// An image file and its class.
type Labelled = (PathBuf, u8);
/// Larger images are refused before they are decoded.
const MAX_PIXELS: u64 = 64 << 20;

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

/// Whether the file holds a grey image (read from its header alone).
fn is_grey(path: &Path) -> bool {
    let decoder = image::ImageReader::open(path)
        .ok()
        .and_then(|r| r.with_guessed_format().ok())
        .and_then(|r| r.into_decoder().ok());
    decoder.is_some_and(|d| {
        use image::ImageDecoder;
        matches!(d.color_type(), image::ColorType::L8 | image::ColorType::L16)
    })
}

/// Decodes one image as `channels` planes (1: grey as PIL's `convert("L")`; 3: RGB, grey
/// repeated), naming the file when it cannot.
pub fn decode_as(path: &Path, channels: usize) -> anyhow::Result<Image> {
    let rgb = decode(path)?;
    if channels == 3 {
        return Ok(rgb);
    }
    let n = rgb.height * rgb.width;
    let (r, g, b) = (&rgb.pixels[..n], &rgb.pixels[n..2 * n], &rgb.pixels[2 * n..]);
    let pixels = (0..n)
        .map(|i| ((r[i] as u32 * 19595 + g[i] as u32 * 38470 + b[i] as u32 * 7471 + 0x8000) >> 16) as u8)
        .collect();
    Ok(Image { pixels, channels: 1, height: rgb.height, width: rgb.width })
}

/// Decodes one image as RGB planes, naming the file when it cannot.
pub fn decode(path: &Path) -> anyhow::Result<Image> {
    let bad = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return decode_jpeg(&bytes).map_err(|e| bad(format!("not a readable image: {e}")));
    }
    decode_other(&bytes).map_err(|e| bad(format!("not a readable image: {e}")))
}

thread_local! {
    /// Each decoding thread's interleaved RGB buffer, reused from image to image (a fresh one
    /// per photo was zeroed, and its pages faulted in, every time).
    static DECODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A JPEG as RGB planes, decoded by zune-jpeg with the options `image` gives it (so the same
/// pixels), grey ones repeated into three channels as `image`'s `into_rgb8` does.
fn decode_jpeg(bytes: &[u8]) -> anyhow::Result<Image> {
    use zune_core::colorspace::ColorSpace;
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    decoder.decode_headers()?;
    let (w, h) = decoder.dimensions().ok_or_else(|| anyhow::anyhow!("no dimensions"))?;
    anyhow::ensure!((w * h) as u64 <= MAX_PIXELS, "{w}x{h} is more than {MAX_PIXELS} pixels");
    let grey = decoder.input_colorspace() == Some(ColorSpace::Luma);
    let out = if grey { ColorSpace::Luma } else { ColorSpace::RGB };
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(out));
    let n = w * h;
    let mut pixels = vec![0u8; 3 * n];
    DECODED.with_borrow_mut(|decoded| -> anyhow::Result<()> {
        let len = if grey { n } else { 3 * n };
        if decoded.len() < len {
            decoded.resize(len, 0);
        }
        decoder.decode_into(&mut decoded[..len])?;
        if grey {
            pixels.chunks_exact_mut(n).for_each(|plane| plane.copy_from_slice(&decoded[..n]));
        } else {
            to_planes(&decoded[..len], &mut pixels);
        }
        Ok(())
    })?;
    Ok(Image { pixels, channels: 3, height: h, width: w })
}

/// A PNG (or anything else `image` reads) as RGB planes.
fn decode_other(bytes: &[u8]) -> anyhow::Result<Image> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let rgb = reader.decode()?.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut pixels = vec![0u8; 3 * h * w];
    to_planes(rgb.as_raw(), &mut pixels);
    Ok(Image { pixels, channels: 3, height: h, width: w })
}

/// Interleaved RGB pixels to three planes (R, then G, then B).
fn to_planes(rgb: &[u8], planes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { to_planes_avx2(rgb, planes) };
    }
    to_planes_portable(rgb, planes)
}

/// The same loop compiled for AVX2, whose byte shuffles de-interleave 32 pixels at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_planes_avx2(rgb: &[u8], planes: &mut [u8]) {
    to_planes_portable(rgb, planes)
}

#[inline(always)]
fn to_planes_portable(rgb: &[u8], planes: &mut [u8]) {
    let n = rgb.len() / 3;
    let (r, rest) = planes.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for ((px, (r, g)), b) in rgb.chunks_exact(3).zip(r.iter_mut().zip(g.iter_mut())).zip(b.iter_mut()) {
        (*r, *g, *b) = (px[0], px[1], px[2]);
    }
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
    /// Files left out as unreadable (with `skip_bad`), with why.
    pub skipped: Vec<String>,
}

/// Loads `dir`: its `train` and `val` folders, or `train` alone with a `val_split` fraction of
/// it held out (by a fixed seed, so that every command holds out the same images). Every file is decoded once to check it when `skip_bad`
/// asks for unreadable ones to be left out; otherwise one is an error when its batch is made.
pub fn load(dir: &Path, val_split: Option<f64>, skip_bad: bool) -> Result<Folder, DataError> {
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
    if skip_bad {
        for files in [&mut train, &mut test] {
            let results: Vec<Option<String>> =
                files.par_iter().map(|(p, _)| decode(p).err().map(|e| e.to_string())).collect();
            let mut keep = results.iter();
            files.retain(|_| keep.next().is_some_and(|r| r.is_none()));
            skipped.extend(results.into_iter().flatten());
        }
    }
    if train.is_empty() || test.is_empty() {
        return Err(invalid(&dir.display().to_string(), "no readable images left in train or val"));
    }
    // torchvision converts every image to RGB; a folder of grey images only (Fashion-MNIST's,
    // say) stays grey, one channel, as the MNISTs do.
    let grey = train.par_iter().chain(test.par_iter()).all(|(p, _)| is_grey(p));
    let channels = if grey { 1 } else { 3 };
    Ok(Folder { train: split(train, channels), test: split(test, channels), classes, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG of `w` x `h` with some structure, colour or grey, as `image` encodes it.
    fn jpeg(w: u32, h: u32, grey: bool) -> Vec<u8> {
        let colour =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]));
        let picture = if grey {
            image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(colour).to_luma8())
        } else {
            image::DynamicImage::ImageRgb8(colour)
        };
        let mut bytes = Vec::new();
        picture.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
        bytes
    }

    #[test]
    fn jpegs_decode_to_the_pixels_image_gives_in_colour_and_grey() {
        for (w, h, grey) in [(37, 29, false), (64, 48, false), (33, 41, true), (16, 16, true)] {
            let bytes = jpeg(w, h, grey);
            let ours = decode_jpeg(&bytes).unwrap();
            let theirs = decode_other(&bytes).unwrap();
            assert_eq!((ours.height, ours.width), (h as usize, w as usize));
            assert_eq!(ours, theirs, "{w}x{h}, grey: {grey}");
        }
        let error = decode_jpeg(&jpeg(20, 20, false)[..200]).unwrap_err().to_string();
        assert!(!error.is_empty());
    }
}
