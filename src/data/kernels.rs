//! The pipeline's hot loops, written so the compiler vectorises them (SSE2 transposes; loops
//! compiled for AVX2 where the CPU has it, checked at run time): each gives exactly what its
//! plain definition gives, and the policy around them (which transform, which size) lives in
//! `transforms`, `resize` and `loader`.

/// A `rows` x `cols` image, transposed.
pub(crate) fn transpose(image: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    transpose_strided(image, cols, rows, cols)
}

/// [`transpose`] of the `rows` x `cols` region whose row r starts at `image[r * stride]`.
pub(crate) fn transpose_strided(image: &[u8], stride: usize, rows: usize, cols: usize) -> Vec<u8> {
    // Square blocks transposed in registers (16x16 with SSE2, 8x8 in u64s elsewhere): a
    // byte-by-byte transpose of a photo-sized plane was an eighth of an image folder's pipeline.
    let mut out = vec![0u8; rows * cols];
    #[cfg(target_arch = "x86_64")]
    let (done_rows, done_cols) = {
        let (full_rows, full_cols) = (rows / 16 * 16, cols / 16 * 16);
        for r0 in (0..full_rows).step_by(16) {
            for c0 in (0..full_cols).step_by(16) {
                transpose_16x16(&image[r0 * stride + c0..], stride, &mut out[c0 * rows + r0..], rows);
            }
        }
        (full_rows, full_cols)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (done_rows, done_cols) = (0, 0);
    let (full_rows, full_cols) = (rows / 8 * 8, cols / 8 * 8);
    for r0 in (0..full_rows).step_by(8) {
        for c0 in (0..full_cols).step_by(8) {
            if r0 < done_rows && c0 < done_cols {
                continue;
            }
            let mut block = [0u64; 8];
            for (i, word) in block.iter_mut().enumerate() {
                let at = (r0 + i) * stride + c0;
                *word = u64::from_le_bytes(image[at..at + 8].try_into().expect("8 bytes"));
            }
            transpose_8x8(&mut block);
            for (j, word) in block.iter().enumerate() {
                let at = (c0 + j) * rows + r0;
                out[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    // The ragged right and bottom edges, byte by byte.
    for r in 0..rows {
        let start = if r < full_rows { full_cols } else { 0 };
        for c in start..cols {
            out[c * rows + r] = image[r * stride + c];
        }
    }
    out
}

/// Transposes the 16x16 bytes at `src` (rows `stride` apart) into `dst` (rows `dst_stride`
/// apart): four rounds of SSE2 byte unpacks, each interleaving register i with register i + 8,
/// turn rows into columns (a perfect-shuffle network).
#[cfg(target_arch = "x86_64")]
fn transpose_16x16(src: &[u8], stride: usize, dst: &mut [u8], dst_stride: usize) {
    use std::arch::x86_64::*;
    assert!(src.len() >= 15 * stride + 16 && dst.len() >= 15 * dst_stride + 16, "16x16 blocks in bounds");
    // SAFETY: SSE2 is part of x86-64; the 16 loads and 16 stores of 16 bytes lie within `src`
    // and `dst`, as asserted just above.
    unsafe {
        let mut r = [_mm_setzero_si128(); 16];
        for (i, row) in r.iter_mut().enumerate() {
            *row = _mm_loadu_si128(src.as_ptr().add(i * stride) as *const __m128i);
        }
        for _ in 0..4 {
            let mut next = [_mm_setzero_si128(); 16];
            for i in 0..8 {
                next[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
                next[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
            }
            r = next;
        }
        for (j, column) in r.iter().enumerate() {
            _mm_storeu_si128(dst.as_mut_ptr().add(j * dst_stride) as *mut __m128i, *column);
        }
    }
}

/// Transposes the 8x8 byte matrix whose row i is `block[i]` (byte j of a word is column j).
#[inline(always)]
fn transpose_8x8(block: &mut [u64; 8]) {
    for (shift, mask) in [(8, 0x00FF_00FF_00FF_00FFu64), (16, 0x0000_FFFF_0000_FFFF), (32, 0x0000_0000_FFFF_FFFF)] {
        let step = shift / 8;
        for i in 0..8 {
            if i & step == 0 {
                let (a, b) = (block[i], block[i + step]);
                let t = ((a >> shift) ^ b) & mask;
                block[i + step] = b ^ t;
                block[i] = a ^ (t << shift);
            }
        }
    }
}

/// Interleaved RGB pixels to three planes (R, then G, then B).
pub(crate) fn to_planes(rgb: &[u8], planes: &mut [u8]) {
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

/// `(p / 255 - mean) / std` for each pixel, 8 at a time with AVX2 where the CPU has it
/// (divisions as IEEE defines them at any width, so the same values).
pub(crate) fn to_floats(src: &[u8], dst: &mut [f32], mean: f32, std: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { to_floats_avx2(src, dst, mean, std) };
    }
    to_floats_portable(src, dst, mean, std)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_floats_avx2(src: &[u8], dst: &mut [f32], mean: f32, std: f32) {
    to_floats_portable(src, dst, mean, std)
}

#[inline(always)]
fn to_floats_portable(src: &[u8], dst: &mut [f32], mean: f32, std: f32) {
    dst.iter_mut().zip(src).for_each(|(d, &p)| *d = (p as f32 / 255.0 - mean) / std);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_transpose_is_the_transpose_for_every_shape() {
        for rows in [1, 7, 8, 9, 16, 23, 40] {
            for cols in [1, 3, 8, 15, 17, 32, 41] {
                let image: Vec<u8> = (0..rows * cols).map(|i| (i * 37 % 251) as u8).collect();
                let expected: Vec<u8> =
                    (0..cols).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| image[r * cols + c]).collect();
                assert_eq!(transpose(&image, rows, cols), expected, "{rows}x{cols}");
            }
        }
    }
}
