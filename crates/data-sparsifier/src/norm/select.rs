//! Linear-time selection of the pruning threshold, with the tie-break "lowest block index first".
//!
//! Given the block keys and `k`, find the k-th smallest key `thr`. Every block with a key below
//! `thr` is pruned, plus the first `need_eq` blocks (in row-major block order) whose key equals
//! `thr`. Nothing is sorted:
//!
//! 1. a sample of block keys (computed straight from the data, before the score pass) gives a
//!    narrow key interval expected to hold the k-th key;
//! 2. the score pass counts the keys below and at the ends of that interval and collects the few
//!    strictly inside ([`coded_pass`](super::scores::coded_pass));
//! 3. `select_nth_unstable` on those few finds `thr`.
//!
//! If the interval missed (unlucky sample, or more keys inside than expected), a radix select on the
//! key bits (16 bits per parallel histogram pass) finds `thr` exactly instead. Either way the result
//! is exact; only the time differs.

use std::ops::Range;

use rayon::prelude::*;

use super::scores::{code, Bracket, Key, TaskStats};

/// Keys at most this many are selected by copying them (no bracket).
pub(crate) const SMALL: usize = 1 << 15;
/// Smallest sample for the bracket; it grows with the data (one key per 1 024 blocks) up to four
/// times this, so that the bracket, and with it the list of keys inside it, is narrower on large
/// tensors: the list holds about `8·sqrt(p(1-p)/s)` of the blocks (1.6% at `s = 65 536`, level
/// 0.5), 4 bytes a block, i.e. `S/256` for `(1, 4)` blocks of f32.
const SAMPLE: usize = 1 << 14;

/// The sample size for `n` blocks.
fn sample_size(n: usize) -> usize {
    (n / 1024).clamp(SAMPLE, 4 * SAMPLE).min(n)
}

/// The pruning threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Threshold<K> {
    /// The k-th smallest key.
    pub key: K,
    /// Blocks with a key `< key`.
    pub count_lt: usize,
    /// Blocks with a key `== key`.
    pub count_eq: usize,
    /// How many of the `== key` blocks are pruned (lowest block index first): `k - count_lt`.
    pub need_eq: usize,
}

impl<K: Key> Threshold<K> {
    fn new(key: K, count_lt: usize, count_eq: usize, k: usize) -> Self {
        debug_assert!(count_lt < k && k <= count_lt + count_eq);
        Threshold {
            key,
            count_lt,
            count_eq,
            need_eq: k - count_lt,
        }
    }
}

/// Deterministic sample positions in `0..n` (one per stride, jittered by a hash).
pub(crate) fn sample_positions(n: usize) -> Vec<usize> {
    let s = sample_size(n);
    let stride = n / s;
    (0..s)
        .map(|i| {
            let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            i * stride + (z % stride.max(1) as u64) as usize
        })
        .collect()
}

/// The bracket for rank `k` (1-based) of `n` keys from a sample of keys.
pub(crate) fn bracket_from_sample<K: Key>(mut sample: Vec<K>, n: usize, k: usize) -> Bracket<K> {
    sample.sort_unstable();
    let s = sample.len();
    let p = k as f64 / n as f64;
    let q = (p * s as f64) as isize - 1;
    let delta = (4.0 * (s as f64 * p * (1.0 - p)).sqrt()) as isize + 8;
    let lo = if q - delta < 0 {
        K::MIN
    } else {
        sample[(q - delta) as usize]
    };
    let hi = if q + delta >= s as isize {
        K::MAX
    } else {
        sample[(q + delta) as usize]
    };
    // The share of the sample from lo to hi: what a task reserves for its inside keys.
    let span = (q + delta).min(s as isize - 1) - (q - delta).max(0) + 1;
    Bracket {
        lo,
        hi,
        cap: (n / 16).max(4096),
        share: span.max(0) as f64 / s.max(1) as f64,
    }
}

/// Where the cut between pruned and kept blocks falls, in terms of block [`code`]s: every block
/// coded below `code` is pruned, every block coded above it is kept, and blocks coded `code` are
/// pruned if their key is below `thr` (only for `INSIDE`, where the keys are known) or, for a key
/// equal to `thr`, while their task's budget lasts (lowest block index first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cut<K> {
    /// The code holding the k-th smallest key.
    pub code: u8,
    /// The k-th smallest key.
    pub thr: K,
    /// Per task: how many blocks with a key equal to `thr` it prunes.
    pub budgets: Vec<usize>,
}

/// Shares `need` among tasks with `counts` candidates each, lowest tasks first.
pub(crate) fn share(need: usize, counts: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut left = need;
    counts
        .map(|c| {
            let take = c.min(left);
            left -= take;
            take
        })
        .collect()
}

/// The cut for rank `k` from the coded pass's per-task statistics, or `None` if the k-th key is
/// outside the bracket.
pub(crate) fn cut_from_stats<K: Key>(
    b: &Bracket<K>,
    stats: &[TaskStats<K>],
    k: usize,
) -> Option<Cut<K>> {
    let lt: usize = stats.iter().map(|s| s.lt).sum();
    let eq_lo: usize = stats.iter().map(|s| s.eq_lo).sum();
    let inside: usize = stats.iter().map(|s| s.inside.len()).sum();
    let eq_hi: usize = stats.iter().map(|s| s.eq_hi).sum();
    if k <= lt {
        return None;
    }
    if k <= lt + eq_lo {
        return Some(Cut {
            code: code::AT_LO,
            thr: b.lo,
            budgets: share(k - lt, stats.iter().map(|s| s.eq_lo)),
        });
    }
    let below = lt + eq_lo;
    if k <= below + inside {
        let (thr, n_lt) = select_inside(b, stats, k - below);
        let need = k - below - n_lt;
        let eq: Vec<usize> = stats
            .par_iter()
            .map(|s| s.inside.iter().filter(|&&x| x == thr).count())
            .collect();
        return Some(Cut {
            code: code::INSIDE,
            thr,
            budgets: share(need, eq.into_iter()),
        });
    }
    if b.hi != b.lo && k <= below + inside + eq_hi {
        return Some(Cut {
            code: code::AT_HI,
            thr: b.hi,
            budgets: share(k - below - inside, stats.iter().map(|s| s.eq_hi)),
        });
    }
    None
}

/// Buckets of the parallel selection among the inside keys.
const BUCKETS: usize = 4096;

/// The `r`-th smallest (1-based) of the keys inside the bracket, spread over the tasks' lists, and
/// how many inside keys are smaller. One parallel histogram pass over `BUCKETS` equal-width key
/// ranges of `(lo, hi)`, then `select_nth_unstable` within the one bucket that holds rank `r`.
fn select_inside<K: Key>(b: &Bracket<K>, stats: &[TaskStats<K>], r: usize) -> (K, usize) {
    let lo = b.lo.to_u64();
    let span = b.hi.to_u64().saturating_sub(lo) as f64;
    let scale = BUCKETS as f64 / (span + 1.0);
    // Monotone in the key, so the buckets are ordered.
    let bucket = |k: K| (((k.to_u64() - lo) as f64 * scale) as usize).min(BUCKETS - 1);
    let hist = stats
        .par_iter()
        .fold(
            || vec![0usize; BUCKETS],
            |mut h, s| {
                for &k in &s.inside {
                    h[bucket(k)] += 1;
                }
                h
            },
        )
        .reduce(
            || vec![0usize; BUCKETS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let mut below = 0usize;
    let mut target = 0usize;
    for (i, &c) in hist.iter().enumerate() {
        if r <= below + c {
            target = i;
            break;
        }
        below += c;
    }
    let mut keys: Vec<K> = stats
        .par_iter()
        .flat_map_iter(|s| s.inside.iter().copied().filter(|&k| bucket(k) == target))
        .collect();
    let (_, &mut thr, _) = keys.select_nth_unstable(r - below - 1);
    let lt = below + keys.iter().filter(|&&x| x < thr).count();
    (thr, lt)
}

/// The cut for exact keys: blocks are coded against `[thr, thr]`, so the cut is at `AT_LO`. Tie
/// budgets are per task, the tasks being the runs of blocks `ranges` (consecutive, in order).
pub(crate) fn cut_from_keys<K: Key>(
    keys: &[K],
    ranges: &[Range<usize>],
    t: &Threshold<K>,
) -> Cut<K> {
    Cut {
        code: code::AT_LO,
        thr: t.key,
        budgets: eq_budgets(keys, ranges, t.key, t.need_eq),
    }
}

/// The threshold for a small key set: copy and `select_nth_unstable`.
pub(crate) fn small_select<K: Key>(keys: &[K], k: usize) -> Threshold<K> {
    let mut v = keys.to_vec();
    let (_, &mut key, _) = v.select_nth_unstable(k - 1);
    let (lt, eq) = count_lt_eq_seq(keys, key);
    Threshold::new(key, lt, eq, k)
}

fn count_lt_eq_seq<K: Key>(keys: &[K], key: K) -> (usize, usize) {
    keys.iter().fold((0, 0), |(lt, eq), &x| {
        (lt + (x < key) as usize, eq + (x == key) as usize)
    })
}

const PAR_KEYS: usize = 1 << 16;

/// The exact k-th smallest key (1-based `k`, `1 <= k <= keys.len()`) by radix selection on 16-bit
/// digits, most significant first: one parallel histogram pass per digit, over the keys that share
/// the digits found so far. No extra memory beyond the 65536-bin histograms.
pub(crate) fn radix_select<K: Key>(keys: &[K], k: usize) -> Threshold<K> {
    const DIGIT: u32 = 16;
    let mut prefix: u64 = 0;
    let mut known = 0u32;
    let mut rank = k; // 1-based rank among keys that match the prefix
    while known < K::BITS {
        let shift = K::BITS - known - DIGIT;
        let matches = |x: u64| known == 0 || (x >> (shift + DIGIT)) == prefix;
        let hist = keys
            .par_chunks(PAR_KEYS)
            .fold(
                || vec![0usize; 1 << DIGIT],
                |mut h, c| {
                    for &x in c {
                        let x = x.to_u64();
                        if matches(x) {
                            h[((x >> shift) & 0xffff) as usize] += 1;
                        }
                    }
                    h
                },
            )
            .reduce(
                || vec![0usize; 1 << DIGIT],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let mut digit = 0usize;
        for (d, &c) in hist.iter().enumerate() {
            if rank <= c {
                digit = d;
                break;
            }
            rank -= c;
        }
        prefix = (prefix << DIGIT) | digit as u64;
        known += DIGIT;
    }
    let key = K::from_u64(prefix);
    let (lt, eq) = count_lt_eq(keys, key);
    Threshold::new(key, lt, eq, k)
}

/// Parallel count of keys `< key` and `== key`.
pub(crate) fn count_lt_eq<K: Key>(keys: &[K], key: K) -> (usize, usize) {
    keys.par_chunks(PAR_KEYS)
        .map(|c| count_lt_eq_seq(c, key))
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Per-task counts of keys `== key` (the tasks being the runs of blocks `ranges`, consecutive and
/// in order), turned into each task's share of the `need` equal keys to prune: the lowest block
/// indices get them.
pub(crate) fn eq_budgets<K: Key>(
    keys: &[K],
    ranges: &[Range<usize>],
    key: K,
    need: usize,
) -> Vec<usize> {
    let counts: Vec<usize> = ranges
        .par_iter()
        .map(|r| keys[r.clone()].iter().filter(|&&x| x == key).count())
        .collect();
    share(need, counts.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs of `per` blocks covering `n` blocks.
    fn chunks(n: usize, per: usize) -> Vec<Range<usize>> {
        (0..n.div_ceil(per))
            .map(|t| t * per..((t + 1) * per).min(n))
            .collect()
    }

    fn naive<K: Key>(keys: &[K], k: usize) -> Threshold<K> {
        let mut v = keys.to_vec();
        v.sort();
        let key = v[k - 1];
        let (lt, eq) = count_lt_eq_seq(keys, key);
        Threshold::new(key, lt, eq, k)
    }

    proptest! {
        #[test]
        fn radix_and_small_match_sorting(keys in proptest::collection::vec(0i32..50, 1..300), kf in 0.0f64..1.0, shift in 0u32..20) {
            let keys: Vec<i32> = keys.into_iter().map(|x| x << shift).collect();
            let k = 1 + ((keys.len() - 1) as f64 * kf) as usize;
            let want = naive(&keys, k);
            prop_assert_eq!(radix_select(&keys, k), want);
            prop_assert_eq!(small_select(&keys, k), want);
            let k64: Vec<i64> = keys.iter().map(|&x| (x as i64) << 20 | 7).collect();
            let t = radix_select(&k64, k);
            prop_assert_eq!(t, naive(&k64, k));
            let k16: Vec<i16> = keys.iter().map(|&x| (x >> shift) as i16).collect();
            prop_assert_eq!(radix_select(&k16, k), naive(&k16, k));
        }

        #[test]
        fn bracket_cut_is_exact_when_it_hits(keys in proptest::collection::vec(0i32..1000, 1..3000), kf in 0.0f64..1.0, tasks in 1usize..5) {
            let n = keys.len();
            let k = 1 + ((n - 1) as f64 * kf) as usize;
            let sample: Vec<i32> = sample_positions(n).iter().map(|&i| keys[i]).collect();
            let b = bracket_from_sample(sample, n, k);
            let per = n.div_ceil(tasks);
            let stats: Vec<TaskStats<i32>> = keys.chunks(per).map(|c| {
                let mut st = TaskStats::default();
                for &x in c {
                    match crate::norm::scores::code_of(x, b.lo, b.hi) {
                        code::BELOW => st.lt += 1,
                        code::AT_LO => st.eq_lo += 1,
                        code::INSIDE => st.inside.push(x),
                        code::AT_HI => st.eq_hi += 1,
                        _ => {}
                    }
                }
                st
            }).collect();
            if let Some(cut) = cut_from_stats(&b, &stats, k) {
                let t = naive(&keys, k);
                prop_assert_eq!(cut.thr, t.key);
                prop_assert_eq!(cut.budgets.iter().sum::<usize>(), t.need_eq);
                let by_keys = cut_from_keys(&keys, &chunks(n, per), &t);
                prop_assert_eq!(cut.budgets, by_keys.budgets);
            }
        }
    }

    #[test]
    fn budgets_go_to_the_lowest_indices() {
        let keys = [3i32, 1, 3, 3, 0, 3, 3];
        assert_eq!(eq_budgets(&keys, &chunks(7, 2), 3, 3), vec![1, 2, 0, 0]);
        assert_eq!(eq_budgets(&keys, &chunks(7, 3), 3, 5), vec![2, 2, 1]);
        // Runs of different lengths (a split block row).
        assert_eq!(eq_budgets(&keys, &[0..1, 1..6, 6..7], 3, 5), vec![1, 3, 1]);
    }

    #[test]
    fn sample_positions_are_in_range_and_spread() {
        for n in [1usize, 5, 100, 16384, 16385, 1 << 20] {
            let p = sample_positions(n);
            assert!(p.iter().all(|&i| i < n));
            assert!(p.windows(2).all(|w| w[0] < w[1]));
        }
        // The sample grows with the data, one per 1 024 blocks, from 16 384 to 65 536.
        assert_eq!(sample_positions(1 << 20).len(), 1 << 14);
        assert_eq!(sample_positions(1 << 25).len(), 1 << 15);
        assert_eq!(sample_positions(1 << 30).len(), 1 << 16);
    }
}
