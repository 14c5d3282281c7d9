//! The physical limits that the speed figures are ratios to: a plain parallel read and a plain
//! parallel copy of the same bytes, on rayon's threads. The criterion benches and the
//! `step_vs_read` example time these right beside the kernel, in the same process.

use rayon::prelude::*;

/// Bytes per parallel piece.
const PIECE: usize = 1 << 16;

/// A plain parallel read of `bytes`: the wrapping sum of its 8-byte words (a trailing partial
/// word is not read), in 64 KiB pieces. What reading the table once costs at best.
///
/// ```
/// use data_sparsifier::limits::parallel_read;
/// let bytes: Vec<u8> = (0..16u8).collect();
/// let want = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7])
///     .wrapping_add(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]));
/// assert_eq!(parallel_read(&bytes), want);
/// ```
pub fn parallel_read(bytes: &[u8]) -> u64 {
    bytes
        .par_chunks(PIECE)
        .map(|c| {
            c.chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
                .fold(0, u64::wrapping_add)
        })
        .reduce(|| 0, u64::wrapping_add)
}

/// A plain parallel copy of `src` into `dst` (as many bytes as the shorter holds), in 64 KiB
/// pieces.
///
/// ```
/// use data_sparsifier::limits::parallel_copy;
/// let src = vec![7u8; 200_000];
/// let mut dst = vec![0u8; 200_000];
/// parallel_copy(&src, &mut dst);
/// assert_eq!(src, dst);
/// ```
pub fn parallel_copy(src: &[u8], dst: &mut [u8]) {
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| {
            let n = d.len().min(s.len());
            d[..n].copy_from_slice(&s[..n]);
        });
}
