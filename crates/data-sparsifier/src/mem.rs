//! Memory for large tables: copies whose pages the kernel is asked to back with transparent huge
//! pages (2 MiB), so that random row lookups do not miss the TLB on every row.
//!
//! With 4 KiB pages a 256 MiB table spans 65,536 pages, far more than a TLB holds, and each cold
//! row costs a page walk on top of its cache miss; the walks also limit how many misses are in
//! flight. Measured here on a 1M × 64 f32 table (`scripts/lookup_speed.py`), a bag over a
//! huge-page copy runs about 2.5x faster. numpy (and so PyTorch's tensors made from numpy arrays)
//! advises huge pages for large arrays in the same way.
//!
//! The advice is given before the memory is first written, as the kernel backs pages at their
//! first touch. Where the kernel has no transparent huge pages (or not on Linux), it is a no-op:
//! the copy is an ordinary one.

use std::mem::MaybeUninit;

/// Allocations smaller than this are left alone (a huge page is 2 MiB).
const MIN_BYTES: usize = 2 << 20;

/// A copy of `src` in memory advised for transparent huge pages.
pub(crate) fn huge_copy<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v = Vec::with_capacity(src.len());
    advise_huge_pages(v.spare_capacity_mut());
    v.extend_from_slice(src);
    v
}

/// An empty vector with room for `n` elements, advised for transparent huge pages (fill it with
/// `extend` or rayon's `par_extend`, which write in place).
pub(crate) fn huge_vec<T>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(v.spare_capacity_mut());
    v
}

/// Asks the kernel to back the whole pages of `mem` with transparent huge pages.
fn advise_huge_pages<T>(mem: &mut [MaybeUninit<T>]) {
    let bytes = std::mem::size_of_val(mem);
    if bytes < MIN_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = mem.as_mut_ptr() as usize;
        let first = start.next_multiple_of(PAGE);
        let end = (start + bytes) / PAGE * PAGE;
        if end > first {
            // SAFETY: madvise(MADV_HUGEPAGE) only tells the kernel how to back the pages of a
            // range; it never changes their contents, validity or protection. The range is
            // whole pages inside `mem`, memory this process owns and keeps alive (a Vec's spare
            // capacity). An error (EINVAL where the kernel has no transparent huge pages) leaves
            // the memory as it was, and is ignored.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_are_equal_and_small_ones_are_left_alone() {
        let big: Vec<u32> = (0..(3 << 20) / 4).collect();
        assert_eq!(super::huge_copy(&big), big);
        assert_eq!(super::huge_copy(&[1u8, 2, 3]), vec![1, 2, 3]);
        let mut v = super::huge_vec::<u64>(1 << 20);
        v.extend(0..1 << 20);
        assert_eq!(v.len(), 1 << 20);
    }
}
