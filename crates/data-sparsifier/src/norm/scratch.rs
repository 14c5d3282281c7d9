//! The kernel's scratch space, passed in by the caller: the one-byte-per-block code buffer of the
//! fast path. [`DataNorm`](super::DataNorm) owns one and reuses it from step to step.

use std::sync::Mutex;

/// Scratch space of the DataNorm kernel, reused between calls of
/// [`compute_mask_with`](super::compute_mask_with).
///
/// For inputs of more than 32 768 blocks the kernel stores one byte per block. Allocating that
/// buffer afresh for every call costs page faults (the operating system zeroes every new page),
/// a sizable part of a step; a `Scratch` keeps its allocation, sized to the largest input so far,
/// until [`release`](Scratch::release) or drop.
///
/// ```
/// use data_sparsifier::norm::{compute_mask_with, DataNormConfig, Scratch};
/// use data_sparsifier::{random::randn, DType, Mask};
/// let mut scratch = Scratch::new();
/// let t = randn([1024, 256], DType::F32, 1); // 65 536 blocks of (1, 4)
/// let mut m = Mask::ones([1024, 256]);
/// compute_mask_with("t", t.view(), &DataNormConfig::default(), &mut m, &mut scratch).unwrap();
/// assert!(scratch.size_in_bytes() >= 65_536);
/// assert!(scratch.release() >= 65_536);
/// assert_eq!(scratch.size_in_bytes(), 0);
/// ```
#[derive(Debug, Default)]
pub struct Scratch {
    codes: Vec<u8>,
}

impl Scratch {
    /// Empty scratch space (no allocation until a large input needs it).
    pub const fn new() -> Self {
        Scratch { codes: Vec::new() }
    }

    /// Bytes currently held.
    pub fn size_in_bytes(&self) -> usize {
        self.codes.capacity()
    }

    /// Frees the held memory; returns its size in bytes.
    pub fn release(&mut self) -> usize {
        let n = self.codes.capacity();
        self.codes = Vec::new();
        n
    }

    /// A block-code buffer of `n` bytes (contents unspecified). The allocation is reused whenever
    /// its *capacity* is large enough, so a small input after a large one shortens the buffer
    /// without losing the large allocation; only a larger input than any before allocates.
    pub(crate) fn codes(&mut self, n: usize) -> &mut [u8] {
        if self.codes.capacity() >= n {
            // Growing back within the capacity zeroes the new bytes (a memset of at most one byte
            // per block; no page faults, the allocation's pages were touched when first used).
            self.codes.resize(n, 0);
        } else {
            // Free the old buffer before allocating the larger one.
            self.codes = Vec::new();
            self.codes = vec![0u8; n];
        }
        &mut self.codes
    }
}

/// A [`Scratch`] shared by the callers of one rule (`&self`): each call takes it and gives it back.
/// A call that finds it taken (another thread is stepping with the same rule) works with a fresh
/// one, and the larger of the two is kept.
#[derive(Debug, Default)]
pub(crate) struct ScratchPool(Mutex<Scratch>);

impl ScratchPool {
    /// Runs `f` with the pool's scratch.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        let mut s = self
            .0
            .try_lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        let r = f(&mut s);
        if let Ok(mut g) = self.0.lock() {
            if g.size_in_bytes() < s.size_in_bytes() {
                *g = s;
            }
        }
        r
    }

    /// Frees the pooled memory; returns its size in bytes.
    pub(crate) fn release(&self) -> usize {
        self.0.lock().map(|mut g| g.release()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_buffer_keeps_its_allocation_across_sizes() {
        // A large input, then a small one, then the large one again: the second large one reuses
        // the first allocation (no new pages to fault in).
        let mut s = Scratch::new();
        let (big, small) = (100_000, 1_000);
        let first = s.codes(big).as_ptr();
        assert_eq!(s.codes(big).len(), big);
        let c = s.codes(small);
        assert_eq!(c.len(), small);
        assert_eq!(c.as_ptr(), first);
        assert!(s.size_in_bytes() >= big);
        assert_eq!(s.codes(big).as_ptr(), first);
        // A larger input replaces the kept buffer.
        assert_eq!(s.codes(2 * big).len(), 2 * big);
        assert!(s.size_in_bytes() >= 2 * big);
    }

    #[test]
    fn the_pool_keeps_the_larger_scratch() {
        let pool = ScratchPool::default();
        pool.with(|s| {
            s.codes(1000);
        });
        // A nested call finds the scratch taken and works with a fresh one; the larger is kept.
        pool.with(|_| {
            pool.with(|s| {
                s.codes(5000);
            })
        });
        assert!(pool.with(|s| s.size_in_bytes()) >= 5000);
        assert!(pool.release() >= 5000);
        assert_eq!(pool.release(), 0);
    }
}
