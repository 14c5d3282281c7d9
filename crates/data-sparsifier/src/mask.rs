//! The bit-packed mask: 1 bit per element, 1 = keep, 0 = zero.
//!
//! PyTorch keeps a float (later int8) mask as large as the data; this one is 1/32 of an f32 table.
//!
//! Layout: element `i` (row-major flat index) is bit `i % 64` of word `i / 64`, least significant bit
//! first. As bytes (see [`Mask::to_packed_bytes`]), element `i` is bit `i % 8` of byte `i / 8`,
//! which is numpy's `packbits(bitorder="little")`. Bits past the last element are always zero.
//!
//! An [`UpdateMask`](crate::UpdateMask) implementation receives `&mut Mask` and can only change it in
//! place: PyTorch's "rebinding the mask is a bug" pitfall cannot be written in Rust.

use std::fmt;
use std::ops::Range;

use rayon::prelude::*;

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::tensor::{as_2d, checked_numel, numel, TensorView};

pub(crate) mod bits;
mod spans;

use bits::bit_range;
pub(crate) use spans::SpanWriter;

/// Elements handled per parallel task by the whole-mask operations (a multiple of 64).
const PAR_CHUNK_ELEMS: usize = 64 * 1024;
const PAR_CHUNK_WORDS: usize = PAR_CHUNK_ELEMS / 64;

/// A bit-packed keep/zero mask with the shape of its data.
///
/// ```
/// use data_sparsifier::Mask;
/// let mut m = Mask::ones([2, 4]);
/// m.zero_range(0..3);
/// m.set(7, false);
/// assert_eq!(m.count_kept(), 4);
/// assert_eq!(m.to_dense_u8(), vec![0, 0, 0, 1, 1, 1, 1, 0]);
/// assert_eq!(m.density(), 0.5);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    shape: Vec<usize>,
    len: usize,
    words: Vec<u64>,
}

#[inline]
fn word_count(len: usize) -> usize {
    len.div_ceil(64)
}

impl Mask {
    /// A mask that keeps everything.
    pub fn ones(shape: impl Into<Vec<usize>>) -> Self {
        let mut m = Self::zeros(shape);
        m.fill(true);
        m
    }
    /// A mask that zeroes everything.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::zeros([2, 3]);
    /// assert_eq!((m.count_kept(), m.len()), (0, 6));
    /// assert_eq!(Mask::ones([2, 3]).count_kept(), 6);
    /// ```
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        let len = numel(&shape);
        Mask {
            words: vec![0; word_count(len)],
            shape,
            len,
        }
    }
    /// The shape (the data's shape).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the mask has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The 2-D (rows, cols) view of the shape, see [`as_2d`].
    pub fn rows_cols(&self) -> Option<(usize, usize)> {
        as_2d(&self.shape)
    }
    /// Bytes used by the bits.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::ones([100, 3]);
    /// assert_eq!((m.shape(), m.len(), m.is_empty()), (&[100, 3][..], 300, false));
    /// assert_eq!(m.rows_cols(), Some((100, 3)));
    /// assert_eq!(m.size_in_bytes(), 40); // 300 bits in five 64-bit words
    /// ```
    pub fn size_in_bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Errors unless the mask has exactly `shape`.
    ///
    /// ```
    /// use data_sparsifier::{Error, Mask};
    /// let m = Mask::ones([2, 3]);
    /// assert!(m.check_shape("x", &[2, 3]).is_ok());
    /// assert!(matches!(m.check_shape("x", &[3, 2]), Err(Error::ShapeMismatch { .. })));
    /// ```
    pub fn check_shape(&self, what: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(Error::ShapeMismatch {
                what: format!("mask of {what}"),
                expected: shape.to_vec(),
                actual: self.shape.clone(),
            });
        }
        Ok(())
    }

    /// Sets every element to `keep`.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::ones([5]);
    /// m.fill(false);
    /// assert_eq!(m.count_kept(), 0);
    /// ```
    pub fn fill(&mut self, keep: bool) {
        let v = if keep { u64::MAX } else { 0 };
        self.words.iter_mut().for_each(|w| *w = v);
        self.clear_tail();
    }

    /// Whether element `i` is kept; `false` past the end.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        i < self.len && (self.words[i / 64] >> (i % 64)) & 1 == 1
    }

    /// Sets element `i`. Out-of-range indices are ignored; use [`Mask::len`] to stay in range.
    #[inline]
    pub fn set(&mut self, i: usize, keep: bool) {
        if i < self.len {
            let bit = 1u64 << (i % 64);
            if keep {
                self.words[i / 64] |= bit;
            } else {
                self.words[i / 64] &= !bit;
            }
        }
    }

    /// Sets every element in the flat range (clipped to the mask) to `keep`, a word at a time.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::zeros([10]);
    /// m.set_range(2..5, true);
    /// m.keep_range(8..100); // clipped to the mask
    /// m.zero_range(3..4);
    /// assert_eq!(m.to_dense_u8(), vec![0, 0, 1, 0, 1, 0, 0, 0, 1, 1]);
    /// ```
    pub fn set_range(&mut self, range: Range<usize>, keep: bool) {
        let (start, end) = (range.start.min(self.len), range.end.min(self.len));
        if start >= end {
            return;
        }
        bits::set_bit_range(&mut self.words, start, end, keep);
    }
    /// Keeps every element of the flat range.
    pub fn keep_range(&mut self, range: Range<usize>) {
        self.set_range(range, true)
    }
    /// Zeroes every element of the flat range.
    pub fn zero_range(&mut self, range: Range<usize>) {
        self.set_range(range, false)
    }

    /// Sets a 2-D block (`rows` × `cols`, clipped to the mask's 2-D view) to `keep`.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::ones([3, 3]);
    /// m.zero_block(0..2, 1..3);
    /// assert_eq!(m.to_dense_u8(), vec![1, 0, 0, 1, 0, 0, 1, 1, 1]);
    /// ```
    pub fn set_block(&mut self, rows: Range<usize>, cols: Range<usize>, keep: bool) {
        let Some((h, w)) = self.rows_cols() else {
            // N-D: treat as (first dim, rest).
            let h = self.shape.first().copied().unwrap_or(1);
            let w = self.len.checked_div(h).unwrap_or(0);
            return self.set_block_hw(h, w, rows, cols, keep);
        };
        self.set_block_hw(h, w, rows, cols, keep)
    }
    fn set_block_hw(
        &mut self,
        h: usize,
        w: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        keep: bool,
    ) {
        let (c0, c1) = (cols.start.min(w), cols.end.min(w));
        for r in rows.start.min(h)..rows.end.min(h) {
            self.set_range(r * w + c0..r * w + c1, keep);
        }
    }
    /// Keeps a 2-D block.
    pub fn keep_block(&mut self, rows: Range<usize>, cols: Range<usize>) {
        self.set_block(rows, cols, true)
    }
    /// Zeroes a 2-D block.
    pub fn zero_block(&mut self, rows: Range<usize>, cols: Range<usize>) {
        self.set_block(rows, cols, false)
    }

    /// Sets each bit to `pred(x)` for the matching element of a typed slice (in parallel):
    /// kept where the predicate holds, zeroed elsewhere.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::ones([4]);
    /// m.keep_where_slice(&[1.0f64, -2.0, 0.0, 5.0], |x| x > 0.0).unwrap();
    /// assert_eq!(m.to_dense_u8(), vec![1, 0, 0, 1]);
    /// assert!(m.keep_where_slice(&[1.0f64; 3], |_| true).is_err()); // wrong length
    /// ```
    pub fn keep_where_slice<T: Element>(
        &mut self,
        data: &[T],
        pred: impl Fn(T) -> bool + Sync,
    ) -> Result<()> {
        if data.len() != self.len {
            return Err(Error::ShapeMismatch {
                what: "keep_where data".into(),
                expected: self.shape.clone(),
                actual: vec![data.len()],
            });
        }
        self.words
            .par_chunks_mut(PAR_CHUNK_WORDS)
            .zip(data.par_chunks(PAR_CHUNK_ELEMS))
            .for_each(|(words, xs)| {
                for (w, chunk) in words.iter_mut().zip(xs.chunks(64)) {
                    let mut bits = 0u64;
                    for (j, &x) in chunk.iter().enumerate() {
                        bits |= (pred(x) as u64) << j;
                    }
                    *w = bits;
                }
            });
        Ok(())
    }

    /// Sets each bit to `pred(x)`, with `x` the element widened to f64; works for every dtype.
    ///
    /// ```
    /// use data_sparsifier::{Mask, Tensor};
    /// let t = Tensor::from_vec(vec![0.5f32, -3.0, 0.1, 2.0], [2, 2]).unwrap();
    /// let mut m = Mask::ones([2, 2]);
    /// m.keep_where(&t.view(), |x| x.abs() >= 1.0).unwrap();
    /// assert_eq!(m.to_dense_u8(), vec![0, 1, 0, 1]);
    /// ```
    pub fn keep_where(
        &mut self,
        data: &TensorView<'_>,
        pred: impl Fn(f64) -> bool + Sync,
    ) -> Result<()> {
        self.check_shape("keep_where data", data.shape())?;
        crate::with_dtype!(data.dtype(), T => {
            let s = data.as_slice::<T>().unwrap_or_default();
            self.keep_where_slice(s, |x: T| pred(x.to_f64()))
        })
    }

    fn check_same(&self, other: &Mask, op: &str) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch {
                what: format!("mask {op}"),
                expected: self.shape.clone(),
                actual: other.shape.clone(),
            });
        }
        Ok(())
    }
    /// Keeps only what both masks keep (`self &= other`).
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut a = Mask::from_bools([4], &[true, true, false, false]).unwrap();
    /// let b = Mask::from_bools([4], &[true, false, true, false]).unwrap();
    /// a.and(&b).unwrap();
    /// assert_eq!(a.to_bools(), [true, false, false, false]);
    /// assert!(a.and(&Mask::ones([5])).is_err());
    /// ```
    pub fn and(&mut self, other: &Mask) -> Result<()> {
        self.check_same(other, "and")?;
        self.words
            .iter_mut()
            .zip(&other.words)
            .for_each(|(a, b)| *a &= b);
        Ok(())
    }
    /// Keeps what either mask keeps (`self |= other`).
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut a = Mask::from_bools([4], &[true, true, false, false]).unwrap();
    /// let b = Mask::from_bools([4], &[true, false, true, false]).unwrap();
    /// a.or(&b).unwrap();
    /// assert_eq!(a.to_bools(), [true, true, true, false]);
    /// ```
    pub fn or(&mut self, other: &Mask) -> Result<()> {
        self.check_same(other, "or")?;
        self.words
            .iter_mut()
            .zip(&other.words)
            .for_each(|(a, b)| *a |= b);
        Ok(())
    }
    /// Flips every bit.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::from_bools([3], &[true, false, false]).unwrap();
    /// m.invert();
    /// assert_eq!(m.to_bools(), [false, true, true]);
    /// assert_eq!(m.count_kept(), 2); // the padding bits stay zero
    /// ```
    pub fn invert(&mut self) {
        self.words.iter_mut().for_each(|w| *w = !*w);
        self.clear_tail();
    }

    /// Number of kept elements.
    pub fn count_kept(&self) -> usize {
        self.words
            .par_chunks(PAR_CHUNK_WORDS)
            .map(|c| c.iter().map(|w| w.count_ones() as usize).sum::<usize>())
            .sum()
    }
    /// Number of zeroed elements.
    pub fn count_zeroed(&self) -> usize {
        self.len - self.count_kept()
    }
    /// Fraction kept (1.0 for an empty mask).
    pub fn density(&self) -> f64 {
        if self.len == 0 {
            1.0
        } else {
            self.count_kept() as f64 / self.len as f64
        }
    }
    /// Fraction zeroed, `1 - density`.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::ones([8]);
    /// m.zero_range(0..6);
    /// assert_eq!((m.count_kept(), m.count_zeroed()), (2, 6));
    /// assert_eq!((m.density(), m.sparsity()), (0.25, 0.75));
    /// ```
    pub fn sparsity(&self) -> f64 {
        1.0 - self.density()
    }

    /// Iterates the bits in flat order.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::from_dense_u8([3], &[1, 0, 1]).unwrap();
    /// assert_eq!(m.iter().len(), 3);
    /// assert_eq!(m.iter().filter(|&keep| keep).count(), 2);
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = bool> + '_ {
        (0..self.len).map(move |i| self.get(i))
    }

    /// A dense `u8` buffer, 1 = keep, 0 = zero.
    pub fn to_dense_u8(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        dense_u8_words(&self.words, &mut out);
        out
    }

    /// Writes the dense `u8` form (1 = keep, 0 = zero) of the mask elements
    /// `start .. start + out.len()` into `out`: the chunk-wise form of
    /// [`to_dense_u8`](Self::to_dense_u8), for writers that stream a large mask through a small
    /// buffer. `start` must be a multiple of 64 (a whole mask word).
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::ones([130]);
    /// m.zero_range(64..66);
    /// let mut out = [9u8; 66];
    /// m.dense_u8_into_at(64, &mut out).unwrap();
    /// assert_eq!(&out[..3], &[0, 0, 1]);
    /// assert_eq!(m.dense_u8_into_at(1, &mut out[..1]).is_err(), true);
    /// ```
    pub fn dense_u8_into_at(&self, start: usize, out: &mut [u8]) -> Result<()> {
        if start % 64 != 0 || start.saturating_add(out.len()) > self.len {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "mask chunk at element {start} (must be a multiple of 64 and inside the mask)"
                ),
                expected: vec![self.len],
                actual: vec![out.len()],
            });
        }
        dense_u8_words(&self.words[start / 64..], out);
        Ok(())
    }
    /// A dense `bool` buffer.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::ones([3]);
    /// m.set(1, false);
    /// assert_eq!(m.to_bools(), vec![true, false, true]);
    /// ```
    pub fn to_bools(&self) -> Vec<bool> {
        self.iter().collect()
    }
    /// A mask from a dense buffer of `u8` values: 0 = zero, anything else = keep.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::from_dense_u8([2, 2], &[1, 0, 7, 0]).unwrap(); // nonzero = keep
    /// assert_eq!(m.to_dense_u8(), vec![1, 0, 1, 0]);
    /// assert!(Mask::from_dense_u8([2, 2], &[1, 0, 1]).is_err()); // 3 values for 4 elements
    /// ```
    pub fn from_dense_u8(shape: impl Into<Vec<usize>>, dense: &[u8]) -> Result<Self> {
        let shape = shape.into();
        if checked_numel("dense mask buffer", &shape, 0)? != dense.len() {
            return Err(Error::ShapeMismatch {
                what: "dense mask buffer".into(),
                expected: shape,
                actual: vec![dense.len()],
            });
        }
        let mut m = Mask::zeros(shape);
        m.words
            .par_chunks_mut(PAR_CHUNK_WORDS)
            .zip(dense.par_chunks(PAR_CHUNK_ELEMS))
            .for_each(|(words, xs)| {
                for (w, chunk) in words.iter_mut().zip(xs.chunks(64)) {
                    *w = chunk
                        .iter()
                        .enumerate()
                        .fold(0u64, |acc, (j, &b)| acc | ((b != 0) as u64) << j);
                }
            });
        Ok(m)
    }
    /// A mask from a dense `bool` buffer.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::from_bools([3], &[false, true, true]).unwrap();
    /// assert!(!m.get(0) && m.get(1));
    /// assert!(Mask::from_bools([2], &[true]).is_err());
    /// ```
    pub fn from_bools(shape: impl Into<Vec<usize>>, dense: &[bool]) -> Result<Self> {
        let bytes: Vec<u8> = dense.iter().map(|&b| b as u8).collect();
        Self::from_dense_u8(shape, &bytes)
    }

    /// The bits as `ceil(len / 8)` bytes, element `i` at bit `i % 8` of byte `i / 8`.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::from_dense_u8([10], &[1, 0, 1, 1, 0, 0, 0, 0, 0, 1]).unwrap();
    /// assert_eq!(m.to_packed_bytes(), vec![0b0000_1101, 0b0000_0010]);
    /// ```
    pub fn to_packed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.words.len() * 8);
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.truncate(self.len.div_ceil(8));
        out
    }
    /// The inverse of [`Mask::to_packed_bytes`]. The byte count must be exactly `ceil(len / 8)` and
    /// the padding bits of the last byte must be zero, so a tampered buffer is rejected.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::from_packed_bytes([10], &[0b0000_1101, 0b0000_0010]).unwrap();
    /// assert_eq!(m.to_dense_u8(), vec![1, 0, 1, 1, 0, 0, 0, 0, 0, 1]);
    /// assert!(Mask::from_packed_bytes([10], &[0xff]).is_err()); // too short
    /// assert!(Mask::from_packed_bytes([10], &[0xff, 0b0000_0100]).is_err()); // bit 10 is past the end
    /// ```
    pub fn from_packed_bytes(shape: impl Into<Vec<usize>>, bytes: &[u8]) -> Result<Self> {
        let shape = shape.into();
        let want = checked_numel("packed mask", &shape, 0)?.div_ceil(8);
        if bytes.len() != want {
            return Err(Error::invalid_state(format!(
                "packed mask of shape {shape:?} needs {want} bytes, found {}",
                bytes.len()
            )));
        }
        let mut m = Mask::zeros(shape);
        for (w, chunk) in m.words.iter_mut().zip(bytes.chunks(8)) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(buf);
        }
        let before: usize = m.words.iter().map(|w| w.count_ones() as usize).sum();
        m.clear_tail();
        let after: usize = m.words.iter().map(|w| w.count_ones() as usize).sum();
        if before != after {
            return Err(Error::invalid_state(format!(
                "packed mask of shape {:?} has bits set past its last element",
                m.shape
            )));
        }
        Ok(m)
    }

    /// The raw words (for kernels). Bits past [`Mask::len`] are zero.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
    /// Runs `f` on the raw words, mutably, for kernels that write 64 elements at a time. Bits
    /// written past [`Mask::len`] are cleared when `f` returns, so counts stay exact.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::zeros([70]);
    /// m.with_words_mut(|w| w[1] = u64::MAX); // elements 64..128, but the mask ends at 70
    /// assert_eq!(m.count_kept(), 6);
    /// assert_eq!(m.words()[1], 0b11_1111);
    /// ```
    pub fn with_words_mut<R>(&mut self, f: impl FnOnce(&mut [u64]) -> R) -> R {
        let r = f(&mut self.words);
        self.clear_tail();
        r
    }

    /// Zeroes the elements of `data` whose bit is 0 (in parallel). `data` must have `len` elements;
    /// extra elements are left alone.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::from_dense_u8([4], &[1, 0, 0, 1]).unwrap();
    /// let mut data = vec![1.0f32, 2.0, 3.0, 4.0];
    /// m.apply(&mut data);
    /// assert_eq!(data, [1.0, 0.0, 0.0, 4.0]);
    /// ```
    pub fn apply<T: Element>(&self, data: &mut [T]) {
        Self::apply_words(&self.words, data)
    }

    /// Writes `mask · src` into `dst` for the mask elements `start .. start + src.len()`: the
    /// chunk-wise form of [`apply_into`](Self::apply_into), for writers that stream a large tensor
    /// through a small buffer. `start` must be a multiple of 64 (a whole mask word).
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let mut m = Mask::ones([200]);
    /// m.zero_range(60..70);
    /// let src: Vec<f32> = (0..200).map(|i| i as f32).collect();
    /// let mut dst = vec![0.0f32; 72];
    /// m.apply_into_at(64, &src[64..136], &mut dst).unwrap();
    /// assert_eq!(&dst[..7], &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 70.0]);
    /// ```
    pub fn apply_into_at<T: Element>(&self, start: usize, src: &[T], dst: &mut [T]) -> Result<()> {
        if start % 64 != 0 || src.len() != dst.len() || start.saturating_add(src.len()) > self.len {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "mask chunk at element {start} (must be a multiple of 64 and inside the mask, with src and dst of one length)"
                ),
                expected: vec![self.len],
                actual: vec![src.len(), dst.len()],
            });
        }
        // In parallel, each piece copied and masked while it is in cache: one pass over memory.
        dst.par_chunks_mut(PAR_CHUNK_ELEMS)
            .zip(src.par_chunks(PAR_CHUNK_ELEMS))
            .zip(self.words[start / 64..].par_chunks(PAR_CHUNK_WORDS))
            .for_each(|((d, s), words)| {
                d.copy_from_slice(s);
                Self::apply_chunk(words, d);
            });
        Ok(())
    }

    /// Zeroes the elements of `data` whose bit in `words` (from bit 0) is 0.
    fn apply_words<T: Element>(words: &[u64], data: &mut [T]) {
        data.par_chunks_mut(PAR_CHUNK_ELEMS)
            .zip(words.par_chunks(PAR_CHUNK_WORDS))
            .for_each(|(xs, words)| Self::apply_chunk(words, xs));
    }

    /// [`apply_words`](Self::apply_words) on one piece, in this thread.
    fn apply_chunk<T: Element>(words: &[u64], xs: &mut [T]) {
        // Zero is the all-zero bit pattern for every element type, so masking is a
        // branch-free AND of each element's bits with all-ones or all-zeros.
        match std::mem::size_of::<T>() {
            2 => and_words(bytemuck::cast_slice_mut::<T, u16>(xs), words),
            4 => and_words(bytemuck::cast_slice_mut::<T, u32>(xs), words),
            8 => and_words(bytemuck::cast_slice_mut::<T, u64>(xs), words),
            _ => {
                for (chunk, &w) in xs.chunks_mut(64).zip(words) {
                    for (j, x) in chunk.iter_mut().enumerate() {
                        if (w >> j) & 1 == 0 {
                            *x = T::ZERO;
                        }
                    }
                }
            }
        }
    }

    /// Writes `mask · src` into `dst` (same length): the masked copy without a clone first.
    ///
    /// ```
    /// use data_sparsifier::Mask;
    /// let m = Mask::from_dense_u8([3], &[0, 1, 1]).unwrap();
    /// let src = [5.0f64, 6.0, 7.0];
    /// let mut dst = [9.0f64; 3];
    /// m.apply_into(&src, &mut dst);
    /// assert_eq!(dst, [0.0, 6.0, 7.0]);
    /// ```
    pub fn apply_into<T: Element>(&self, src: &[T], dst: &mut [T]) {
        dst.par_chunks_mut(PAR_CHUNK_ELEMS)
            .zip(src.par_chunks(PAR_CHUNK_ELEMS))
            .zip(self.words.par_chunks(PAR_CHUNK_WORDS))
            .for_each(|((d, s), words)| {
                for ((dc, sc), &w) in d.chunks_mut(64).zip(s.chunks(64)).zip(words) {
                    for (j, (o, &x)) in dc.iter_mut().zip(sc).enumerate() {
                        *o = if (w >> j) & 1 == 1 { x } else { T::ZERO };
                    }
                }
            });
    }

    fn clear_tail(&mut self) {
        let rem = self.len % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= bit_range(0, rem);
            }
        }
    }
}

/// Unsigned lanes that [`Mask::apply`] masks: all-ones or all-zeros per mask bit.
trait Lane: bytemuck::Pod + std::ops::BitAndAssign {
    /// `LUT[b]` = the lane masks of the `N` bits of `b` (`N = 16 / size` lanes per 16 bytes).
    fn lut(bits: u64) -> [Self; 8];
    /// Lanes per lookup.
    const N: usize;
    const ZERO: Self;
}

const fn lut32() -> [[u32; 4]; 16] {
    let mut t = [[0u32; 4]; 16];
    let mut b = 0;
    while b < 16 {
        let mut j = 0;
        while j < 4 {
            t[b][j] = if (b >> j) & 1 == 1 { u32::MAX } else { 0 };
            j += 1;
        }
        b += 1;
    }
    t
}
const fn lut16() -> [[u16; 8]; 256] {
    let mut t = [[0u16; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            t[b][j] = if (b >> j) & 1 == 1 { u16::MAX } else { 0 };
            j += 1;
        }
        b += 1;
    }
    t
}
static LUT32: [[u32; 4]; 16] = lut32();
static LUT16: [[u16; 8]; 256] = lut16();

impl Lane for u16 {
    const N: usize = 8;
    const ZERO: Self = 0;
    #[inline(always)]
    fn lut(bits: u64) -> [u16; 8] {
        LUT16[(bits & 0xff) as usize]
    }
}
impl Lane for u32 {
    const N: usize = 4;
    const ZERO: Self = 0;
    #[inline(always)]
    fn lut(bits: u64) -> [u32; 8] {
        let m = LUT32[(bits & 0xf) as usize];
        [m[0], m[1], m[2], m[3], 0, 0, 0, 0]
    }
}
impl Lane for u64 {
    const N: usize = 2;
    const ZERO: Self = 0;
    #[inline(always)]
    fn lut(bits: u64) -> [u64; 8] {
        let l = |j: u64| ((bits >> j) & 1).wrapping_neg();
        [l(0), l(1), 0, 0, 0, 0, 0, 0]
    }
}

/// For each byte value, its 8 bits spread into the 8 bytes of a little-endian `u64`, bit 0 first.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b] |= (((b >> i) & 1) as u64) << (8 * i);
            i += 1;
        }
        b += 1;
    }
    t
};

/// The bits of `words` (from bit 0) as bytes 0/1 into `out`, in parallel, 8 bits per table look-up.
fn dense_u8_words(words: &[u64], out: &mut [u8]) {
    out.par_chunks_mut(PAR_CHUNK_ELEMS)
        .zip(words.par_chunks(PAR_CHUNK_WORDS))
        .for_each(|(out, words)| {
            for (o, &w) in out.chunks_mut(64).zip(words) {
                if let Ok(o) = <&mut [u8; 64]>::try_from(&mut *o) {
                    for (k, bytes) in o.chunks_exact_mut(8).enumerate() {
                        let spread = SPREAD[((w >> (8 * k)) & 0xFF) as usize];
                        bytes.copy_from_slice(&spread.to_le_bytes());
                    }
                } else {
                    for (j, b) in o.iter_mut().enumerate() {
                        *b = ((w >> j) & 1) as u8;
                    }
                }
            }
        });
}

/// ANDs each lane of `xs` with its mask bit (64 lanes per word); whole words of ones are skipped
/// and whole words of zeros are filled.
#[inline]
fn and_words<U: Lane>(xs: &mut [U], words: &[u64]) {
    for (chunk, &w) in xs.chunks_mut(64).zip(words) {
        if w == u64::MAX {
            continue;
        }
        if w == 0 {
            chunk.fill(U::ZERO);
            continue;
        }
        let done = chunk.len() / U::N * U::N;
        let mut groups = chunk.chunks_exact_mut(U::N);
        for (g, c) in (&mut groups).enumerate() {
            let m = U::lut(w >> (g * U::N));
            for (x, &m) in c.iter_mut().zip(&m[..U::N]) {
                *x &= m;
            }
        }
        for (j, x) in groups.into_remainder().iter_mut().enumerate() {
            if (w >> (done + j)) & 1 == 0 {
                *x = U::ZERO;
            }
        }
    }
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Mask({:?}, kept {}/{}",
            self.shape,
            self.count_kept(),
            self.len
        )?;
        if self.len <= 64 {
            let bits: String = self.iter().map(|b| if b { '1' } else { '0' }).collect();
            write!(f, ", {bits}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn streamed_dense_and_masked_chunks_equal_the_bit_by_bit_answer() {
        let mut rng = crate::random::Rng::new(7);
        for n in [1usize, 63, 64, 65, 1000, 200_003] {
            let dense: Vec<u8> = (0..n).map(|_| (rng.uniform() < 0.6) as u8).collect();
            let m = super::Mask::from_dense_u8([n], &dense).unwrap();
            assert_eq!(m.to_dense_u8(), dense);
            let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            for chunk in [64usize, 128 * 1024] {
                for start in (0..n).step_by(chunk) {
                    let len = chunk.min(n - start);
                    let mut out = vec![7u8; len];
                    m.dense_u8_into_at(start, &mut out).unwrap();
                    assert_eq!(out, dense[start..start + len]);
                    let mut dst = vec![-1.0f32; len];
                    m.apply_into_at(start, &src[start..start + len], &mut dst)
                        .unwrap();
                    for (j, &d) in dst.iter().enumerate() {
                        let keep = dense[start + j] == 1;
                        assert_eq!(d, if keep { src[start + j] } else { 0.0 });
                    }
                }
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn model_set_range(v: &mut [bool], r: Range<usize>, keep: bool) {
        let (s, e) = (r.start.min(v.len()), r.end.min(v.len()));
        if s < e {
            v[s..e].iter_mut().for_each(|b| *b = keep);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Fill(bool),
        Set(usize, bool),
        Range(usize, usize, bool),
        Block(usize, usize, usize, usize, bool),
        Invert,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<bool>().prop_map(Op::Fill),
            (0usize..400, any::<bool>()).prop_map(|(i, k)| Op::Set(i, k)),
            (0usize..400, 0usize..400, any::<bool>()).prop_map(|(a, b, k)| Op::Range(a, b, k)),
            (
                0usize..30,
                0usize..30,
                0usize..30,
                0usize..30,
                any::<bool>()
            )
                .prop_map(|(a, b, c, d, k)| Op::Block(a, b, c, d, k)),
            Just(Op::Invert),
        ]
    }

    proptest! {
        #[test]
        fn mask_ops_match_a_bool_model(h in 0usize..20, w in 0usize..20, ops in proptest::collection::vec(op(), 0..20)) {
            let mut m = Mask::ones([h, w]);
            let mut model = vec![true; h * w];
            for op in ops {
                match op {
                    Op::Fill(k) => { m.fill(k); model.iter_mut().for_each(|b| *b = k); }
                    Op::Set(i, k) => { m.set(i, k); if i < model.len() { model[i] = k; } }
                    Op::Range(a, b, k) => { m.set_range(a..b, k); model_set_range(&mut model, a..b, k); }
                    Op::Block(r0, r1, c0, c1, k) => {
                        m.set_block(r0..r1, c0..c1, k);
                        for r in r0.min(h)..r1.min(h) {
                            for c in c0.min(w)..c1.min(w) { model[r * w + c] = k; }
                        }
                    }
                    Op::Invert => { m.invert(); model.iter_mut().for_each(|b| *b = !*b); }
                }
            }
            prop_assert_eq!(m.to_bools(), model.clone());
            prop_assert_eq!(m.count_kept(), model.iter().filter(|b| **b).count());
            let packed = m.to_packed_bytes();
            prop_assert_eq!(Mask::from_packed_bytes([h, w], &packed).unwrap(), m.clone());
            let dense = m.to_dense_u8();
            prop_assert_eq!(Mask::from_dense_u8([h, w], &dense).unwrap(), m.clone());
        }

        #[test]
        fn and_or_match_model(a in proptest::collection::vec(any::<bool>(), 0..300), seed in any::<u64>()) {
            let b: Vec<bool> = a.iter().enumerate().map(|(i, _)| (seed >> (i % 64)) & 1 == 1).collect();
            let n = a.len();
            let (ma, mb) = (Mask::from_bools([n], &a).unwrap(), Mask::from_bools([n], &b).unwrap());
            let mut and = ma.clone(); and.and(&mb).unwrap();
            let mut or = ma.clone(); or.or(&mb).unwrap();
            prop_assert_eq!(and.to_bools(), a.iter().zip(&b).map(|(x, y)| *x && *y).collect::<Vec<_>>());
            prop_assert_eq!(or.to_bools(), a.iter().zip(&b).map(|(x, y)| *x || *y).collect::<Vec<_>>());
        }

        #[test]
        fn apply_zeroes_exactly_the_cleared_bits(bits in proptest::collection::vec(any::<bool>(), 0..1000)) {
            let n = bits.len();
            let m = Mask::from_bools([n], &bits).unwrap();
            let mut data: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let src = data.clone();
            m.apply(&mut data);
            let mut dst = vec![7.0f32; n];
            m.apply_into(&src, &mut dst);
            for i in 0..n {
                prop_assert_eq!(data[i], if bits[i] { src[i] } else { 0.0 });
            }
            prop_assert_eq!(dst, data);
        }
    }

    proptest! {
        #[test]
        fn chunked_apply_equals_whole_apply(bits in proptest::collection::vec(any::<bool>(), 1..700), chunk in 1usize..5) {
            let n = bits.len();
            let m = Mask::from_bools([n], &bits).unwrap();
            let src: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
            let mut whole = vec![0.0; n];
            m.apply_into(&src, &mut whole);
            let step = chunk * 64;
            let mut chunked = vec![-1.0; n];
            for start in (0..n).step_by(step) {
                let end = (start + step).min(n);
                m.apply_into_at(start, &src[start..end], &mut chunked[start..end]).unwrap();
            }
            prop_assert_eq!(chunked, whole);
            prop_assert!(m.apply_into_at(1, &src[..1], &mut [0.0]).is_err());
            prop_assert!(m.apply_into_at(0, &src, &mut vec![0.0; n + 1]).is_err());
        }
    }

    #[test]
    fn words_mut_clears_padding() {
        let mut m = Mask::zeros([3, 3]);
        m.with_words_mut(|w| w.iter_mut().for_each(|w| *w = u64::MAX));
        assert_eq!(m.count_kept(), 9);
        assert_eq!(m.to_packed_bytes(), vec![0xff, 0x01]);
    }

    #[test]
    fn tampered_packed_bytes_are_rejected() {
        assert!(Mask::from_packed_bytes([3, 3], &[0xff]).is_err());
        assert!(Mask::from_packed_bytes([3, 3], &[0xff, 0x03]).is_err());
        assert!(Mask::from_packed_bytes([3, 3], &[0xff, 0x01]).is_ok());
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let mut a = Mask::ones([2, 2]);
        assert!(a.and(&Mask::ones([4])).is_err());
        assert!(Mask::from_dense_u8([2, 2], &[1, 1, 1]).is_err());
        assert!(a.keep_where_slice(&[1.0f32; 3], |_| true).is_err());
    }

    #[test]
    fn empty_mask() {
        let m = Mask::ones([0, 5]);
        assert!(m.is_empty());
        assert_eq!(m.density(), 1.0);
        assert_eq!(m.to_packed_bytes(), Vec::<u8>::new());
    }
}
