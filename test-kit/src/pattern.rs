//! A deterministic page pattern: every word depends on a seed, the page index and its position,
//! so a misplaced, stale or torn page is detected; about one page in eight is all zeros, so
//! restore programs exercise `UFFDIO_ZEROPAGE`.

use std::io;

use crate::page_size;
use crate::rng::mix64;

/// Whether page `index` of a pattern image is all zeros (about one page in eight), so that
/// restore programs exercise `UFFDIO_ZEROPAGE`.
pub fn is_zero_page(seed: u64, index: u64) -> bool {
    mix64(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d)) % 8 == 0
}

/// Fills `page` with the pattern of page `index`: every 8-byte word is a function of the seed, the
/// page index and the word's position, so a misplaced, stale or torn page is detected. Zero pages
/// ([`is_zero_page`]) are all zeros.
pub fn fill_page(seed: u64, index: u64, page: &mut [u8]) {
    if is_zero_page(seed, index) {
        page.fill(0);
        return;
    }
    for (i, w) in page.chunks_mut(8).enumerate() {
        let v = pattern_word(seed, index, i);
        w.copy_from_slice(&v.to_ne_bytes()[..w.len()]);
    }
}

/// Word `i` (8 bytes, native endian) of the pattern of page `index`, as [`fill_page`] writes it.
/// Allocation-free and async-signal-safe, so a forked child can verify with it.
pub fn pattern_word(seed: u64, index: u64, i: usize) -> u64 {
    if is_zero_page(seed, index) {
        return 0;
    }
    mix64(mix64(seed ^ (index << 20)).wrapping_add(i as u64)) | 1
}

/// Checks `page` against the pattern of page `index`; returns the offset of the first wrong byte.
pub fn check_page(seed: u64, index: u64, page: &[u8], scratch: &mut [u8]) -> Result<(), usize> {
    let expected = &mut scratch[..page.len()];
    fill_page(seed, index, expected);
    match page.iter().zip(expected.iter()).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(off) => Err(off),
    }
}

/// Writes `pages` pattern pages of `seed` ([`fill_page`]; about one in eight all zero) to a new
/// file at `path`; returns how many are all zero.
pub fn write_pattern_file(path: &std::path::Path, pages: usize, seed: u64) -> io::Result<usize> {
    use std::io::Write;
    let mut w = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut page = vec![0u8; page_size()];
    let mut zeros = 0;
    for i in 0..pages as u64 {
        fill_page(seed, i, &mut page);
        zeros += usize::from(is_zero_page(seed, i));
        w.write_all(&page)?;
    }
    w.flush()?;
    Ok(zeros)
}

/// Byte `i` of a dense test image ([`dense_image`]): never zero (so a page installed as zeros
/// shows), and different from page to page (so a misplaced page shows).
pub fn dense_byte(i: usize) -> u8 {
    ((i / 4096 * 7 + i * 13) % 255 + 1) as u8
}

/// A dense test image of `len` bytes: [`dense_byte`] at every offset.
pub fn dense_image(len: usize) -> Vec<u8> {
    (0..len).map(dense_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_detects_errors() {
        let ps = 4096;
        let mut page = vec![0u8; ps];
        let mut scratch = vec![0u8; ps];
        for index in 0..64 {
            fill_page(7, index, &mut page);
            assert_eq!(check_page(7, index, &page, &mut scratch), Ok(()));
            if !is_zero_page(7, index) {
                assert!(check_page(7, index + 1, &page, &mut scratch).is_err());
                page[100] ^= 1;
                assert_eq!(check_page(7, index, &page, &mut scratch), Err(100));
            }
        }
        assert!((0..1000).any(|i| is_zero_page(7, i)));
        assert!((0..1000).any(|i| !is_zero_page(7, i)));
    }
}
