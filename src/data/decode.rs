//! Image files decoded as the transforms take them: JPEG by zune-jpeg into a reused buffer, PNG
//! (and what else the `image` crate reads) through `image`; RGB planes, or grey as PIL's
//! `convert("L")` makes it. Refuses images too large to decode safely, naming the file.

use std::path::Path;

use super::Image;
use super::kernels::to_planes;
use crate::error::catch_panic;

/// Larger images are refused before they are decoded.
const MAX_PIXELS: u64 = 64 << 20;

/// Whether the file holds a grey image (read from its header alone).
pub(crate) fn is_grey(path: &Path) -> bool {
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
    Ok(if channels == 3 { rgb } else { to_grey(&rgb) })
}

/// An RGB image in grey, as PIL's `convert("L")` computes it (ITU-R 601-2 luma, 16-bit fixed
/// point, rounded).
pub fn to_grey(rgb: &Image) -> Image {
    let n = rgb.height * rgb.width;
    let (r, g, b) = (&rgb.pixels[..n], &rgb.pixels[n..2 * n], &rgb.pixels[2 * n..]);
    let pixels = (0..n)
        .map(|i| ((r[i] as u32 * 19595 + g[i] as u32 * 38470 + b[i] as u32 * 7471 + 0x8000) >> 16) as u8)
        .collect();
    Image { pixels, channels: 1, height: rgb.height, width: rgb.width }
}

/// Decodes one image as RGB planes, naming the file when it cannot.
pub fn decode(path: &Path) -> anyhow::Result<Image> {
    let bad = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    decode_bytes(&bytes).map_err(|e| bad(format!("not a readable image: {e}")))
}

/// Decodes the bytes of an image file (JPEG, PNG, ...) as RGB planes. A decoder that panics on
/// a malformed file (zune-jpeg 0.5.15 asserts on some crafted JPEGs) is an error like any other
/// unreadable image, not the end of the thread that decodes.
pub fn decode_bytes(bytes: &[u8]) -> anyhow::Result<Image> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return catch_panic("the JPEG decoder", || decode_jpeg(bytes));
    }
    catch_panic("the image decoder", || decode_other(bytes))
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
