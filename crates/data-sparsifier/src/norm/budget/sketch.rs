//! A weighted histogram of global keys with at most [`MAX_BUCKETS`] buckets: the survey's
//! summary of its sampled block scores, from which the plan's bracket is read.
//!
//! A bucket is `key >> shift`. The shift starts at 0 (every sampled key its own bucket) and grows
//! by one bit whenever more than `MAX_BUCKETS` buckets would be needed. The result depends only on
//! the multiset of weighted keys, not on the order of insertions and merges: the final shift is the
//! smallest one at which the union fits (a subset never needs a larger shift than the union), and
//! the bucket sums at a given shift are plain integer sums. So processes that merge the same
//! surveys in any order, through any collective, read the same bracket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most buckets a sketch keeps.
pub(crate) const MAX_BUCKETS: usize = 1 << 16;

/// Weighted key histogram; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sketch {
    shift: u32,
    buckets: BTreeMap<u64, u64>,
}

impl Sketch {
    /// Adds weight `w` at `key`.
    pub(crate) fn insert(&mut self, key: u64, w: u64) {
        *self.buckets.entry(key >> self.shift).or_default() += w;
        while self.buckets.len() > MAX_BUCKETS {
            self.coarsen_to(self.shift + 1);
        }
    }

    fn coarsen_to(&mut self, shift: u32) {
        if shift <= self.shift {
            return;
        }
        let d = shift - self.shift;
        let mut out = BTreeMap::new();
        for (b, w) in std::mem::take(&mut self.buckets) {
            *out.entry(b >> d).or_default() += w;
        }
        self.buckets = out;
        self.shift = shift;
    }

    /// Adds every bucket of `other`.
    pub(crate) fn merge(&mut self, other: &Sketch) {
        self.coarsen_to(other.shift);
        for (&b, &w) in &other.buckets {
            // `other`'s bucket `b` holds the keys `b << other.shift ..`.
            self.insert(b << other.shift, w);
        }
    }

    /// Total weight.
    pub(crate) fn total(&self) -> u128 {
        self.buckets.values().map(|&w| w as u128).sum()
    }

    /// The keys `(lo, hi)` of the bucket in which the cumulative weight first reaches `target`
    /// (the last bucket if it never does); `None` for an empty sketch.
    pub(crate) fn bucket_at(&self, target: u128) -> Option<(u64, u64)> {
        let mut cum = 0u128;
        let mut last = None;
        for (&b, &w) in &self.buckets {
            cum += w as u128;
            last = Some(b);
            if cum >= target {
                break;
            }
        }
        last.map(|b| {
            let lo = b << self.shift;
            (lo, lo | ((1u64 << self.shift) - 1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_in_any_order_gives_the_same_sketch() {
        let keys: Vec<u64> = (0..200_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20)
            .collect();
        let mut whole = Sketch::default();
        for &k in &keys {
            whole.insert(k, 3);
        }
        assert!(whole.buckets.len() <= MAX_BUCKETS && whole.shift > 0);
        let (a, b) = keys.split_at(150_000);
        let (mut sa, mut sb) = (Sketch::default(), Sketch::default());
        a.iter().for_each(|&k| sa.insert(k, 3));
        b.iter().for_each(|&k| sb.insert(k, 3));
        let mut ab = sa.clone();
        ab.merge(&sb);
        let mut ba = sb.clone();
        ba.merge(&sa);
        assert_eq!(ab, whole);
        assert_eq!(ba, whole);
        assert_eq!(whole.total(), 600_000);
    }

    #[test]
    fn bucket_at_walks_cumulative_weight() {
        let mut s = Sketch::default();
        for (k, w) in [(10u64, 2u64), (20, 1), (30, 5)] {
            s.insert(k, w);
        }
        assert_eq!(s.bucket_at(1), Some((10, 10)));
        assert_eq!(s.bucket_at(2), Some((10, 10)));
        assert_eq!(s.bucket_at(3), Some((20, 20)));
        assert_eq!(s.bucket_at(4), Some((30, 30)));
        assert_eq!(s.bucket_at(100), Some((30, 30)));
        assert_eq!(Sketch::default().bucket_at(1), None);
    }
}
