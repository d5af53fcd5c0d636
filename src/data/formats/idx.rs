//! The IDX format of MNIST and Fashion-MNIST (gzipped or not), every field validated.

use std::io::Read;

use crate::data::error::invalid;
use crate::data::{CLASSES, DataError, Split};

const IMAGES_MAGIC: u32 = 0x0803;
/// Largest data section accepted (Fashion-MNIST's is 47 MB): a gzip bomb stops here.
const MAX_IDX_BYTES: usize = 1 << 32;
const LABELS_MAGIC: u32 = 0x0801;

/// Reads a big-endian u32 header field.
fn header_u32(header: &[u8], field: usize) -> u32 {
    u32::from_be_bytes(header[4 * field..4 * field + 4].try_into().unwrap())
}

/// Reads an IDX stream's body of exactly `expected` bytes, never allocating more than arrives.
fn read_body(mut reader: impl Read, expected: usize, file: &str) -> Result<Vec<u8>, DataError> {
    let mut body = Vec::new();
    (&mut reader)
        .take(expected as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| invalid(file, format!("cannot decompress or read: {e}")))?;
    match body.len().cmp(&expected) {
        std::cmp::Ordering::Less => Err(invalid(
            file,
            format!("truncated: the header promises {expected} bytes of data, the file has {}", body.len()),
        )),
        std::cmp::Ordering::Greater => {
            Err(invalid(file, format!("trailing data after the {expected} bytes the header promises")))
        }
        std::cmp::Ordering::Equal => Ok(body),
    }
}

/// Wraps the bytes of a file, gunzipping when they start with gzip's magic number.
fn decoder<'a>(bytes: impl Read + 'a, gz: bool) -> Box<dyn Read + 'a> {
    if gz { Box::new(flate2::read::MultiGzDecoder::new(bytes)) } else { Box::new(bytes) }
}

/// Parses an IDX3 image file (magic 0x803): returns (count, rows, cols, pixels).
pub fn parse_images(data: &[u8], file: &str) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let mut reader = decoder(data, gz);
    let mut header = [0u8; 16];
    reader.read_exact(&mut header).map_err(|_| invalid(file, "too short for an IDX image header (16 bytes)"))?;
    let magic = header_u32(&header, 0);
    if magic != IMAGES_MAGIC {
        return Err(invalid(
            file,
            format!("magic number {magic:#010x} is not 0x00000803 (unsigned bytes, 3 dimensions)"),
        ));
    }
    let (count, rows, cols) =
        (header_u32(&header, 1) as usize, header_u32(&header, 2) as usize, header_u32(&header, 3) as usize);
    if rows == 0 || cols == 0 {
        return Err(invalid(file, format!("image size {rows}x{cols} is empty")));
    }
    let expected = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| invalid(file, format!("{count} images of {rows}x{cols} is too large")))?;
    // An uncompressed file must be exactly as long as its header says, checked before reading.
    if !gz && data.len() - 16 != expected {
        return Err(invalid(
            file,
            format!(
                "the header promises {count} images of {rows}x{cols} ({expected} bytes), the file has {} bytes of data",
                data.len() - 16
            ),
        ));
    }
    let pixels = read_body(reader, expected, file)?;
    Ok((count, rows, cols, pixels))
}

/// Parses an IDX1 label file (magic 0x801), checking every label is a class.
pub fn parse_labels(data: &[u8], file: &str) -> Result<Vec<u8>, DataError> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let mut reader = decoder(data, gz);
    let mut header = [0u8; 8];
    reader.read_exact(&mut header).map_err(|_| invalid(file, "too short for an IDX label header (8 bytes)"))?;
    let magic = header_u32(&header, 0);
    if magic != LABELS_MAGIC {
        return Err(invalid(
            file,
            format!("magic number {magic:#010x} is not 0x00000801 (unsigned bytes, 1 dimension)"),
        ));
    }
    let count = header_u32(&header, 1) as usize;
    if count > MAX_IDX_BYTES {
        return Err(invalid(file, format!("{count} labels is too many")));
    }
    if !gz && data.len() - 8 != count {
        return Err(invalid(file, format!("the header promises {count} labels, the file has {}", data.len() - 8)));
    }
    let labels = read_body(reader, count, file)?;
    if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= CLASSES.len()) {
        return Err(invalid(file, format!("label {label} at index {i} is not a class (0-9)")));
    }
    Ok(labels)
}

/// Builds a split from the bytes of its image and label files.
pub fn parse_split(images: &[u8], images_file: &str, labels: &[u8], labels_file: &str) -> Result<Split, DataError> {
    let (count, rows, cols, pixels) = parse_images(images, images_file)?;
    let labels = parse_labels(labels, labels_file)?;
    if labels.len() != count {
        return Err(invalid(labels_file, format!("{} labels for {count} images in {images_file}", labels.len())));
    }
    Ok(Split { images: pixels, labels, channels: 1, rows, cols, files: Vec::new() })
}
