//! Writing a mask in parallel tasks: each task owns some disjoint spans of the mask's bits and
//! writes them in order through a [`SpanWriter`], 64 bits at a time.
//!
//! A span need not start or end on a word boundary. A task writes the words that lie wholly inside
//! its spans in place; the few words that two spans share are handed back as `(word, bits)` pairs
//! and assembled once every task is done, so tasks never share memory.

use std::ops::Range;

use rayon::prelude::*;

use super::bits::low_bits;
use super::Mask;

/// One span of bits and the mask words wholly inside it.
struct Span<'m> {
    bits: Range<usize>,
    words: &'m mut [u64],
}

/// Writes one task's spans of a mask in order, least significant bit first: the bits pushed fill
/// the first span, then the next, and so on. A push must not cross the end of a span (a span is
/// typically one data row, or a task's whole run of rows).
pub(crate) struct SpanWriter<'m> {
    /// The words wholly inside the current span.
    out: &'m mut [u64],
    /// Mask word index of `out[0]`.
    first: usize,
    /// Mask word index of the word being assembled.
    word: usize,
    acc: u64,
    pos: u32,
    /// Bits left in the current span.
    left: usize,
    /// Whether the current span starts on a word and ends on a word or at the end of the mask.
    aligned: bool,
    /// Bits of the current span.
    span_len: usize,
    rest: std::vec::IntoIter<Span<'m>>,
    mask_len: usize,
    edges: Vec<(usize, u64)>,
}

impl<'m> SpanWriter<'m> {
    fn new(spans: Vec<Span<'m>>, mask_len: usize) -> Self {
        let mut w = SpanWriter {
            out: Default::default(),
            first: 0,
            word: 0,
            acc: 0,
            pos: 0,
            left: 0,
            aligned: false,
            span_len: 0,
            rest: spans.into_iter(),
            mask_len,
            edges: Vec::new(),
        };
        w.next_span();
        w
    }

    fn next_span(&mut self) {
        let Some(s) = self.rest.next() else {
            self.left = 0;
            return;
        };
        let (start, end) = (s.bits.start, s.bits.end);
        self.out = s.words;
        self.first = start.div_ceil(64);
        self.word = start / 64;
        self.pos = (start % 64) as u32;
        self.acc = 0;
        self.left = end - start;
        self.span_len = end - start;
        self.aligned = start % 64 == 0 && (end % 64 == 0 || end == self.mask_len);
    }

    #[inline(always)]
    fn flush(&mut self, v: u64) {
        match self.out.get_mut(self.word.wrapping_sub(self.first)) {
            Some(o) => *o = v,
            None => self.edges.push((self.word, v)),
        }
        self.word += 1;
    }

    /// Closes the span once it is full.
    #[inline(always)]
    fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.left, "a push crosses the end of a span");
        self.left -= n;
        if self.left == 0 {
            if self.pos > 0 {
                let v = self.acc;
                self.flush(v);
            }
            self.next_span();
        }
    }

    #[inline(always)]
    fn put(&mut self, bits: u64, n: u32) {
        debug_assert!((1..=64).contains(&n) && (n == 64 || bits >> n == 0));
        self.acc |= bits << self.pos;
        let total = self.pos + n;
        if total >= 64 {
            let v = self.acc;
            self.flush(v);
            self.acc = if self.pos == 0 {
                0
            } else {
                bits >> (64 - self.pos)
            };
            self.pos = total - 64;
        } else {
            self.pos = total;
        }
    }

    /// Appends the low `n` bits of `bits` (`1 <= n <= 64`; higher bits must be zero).
    #[inline(always)]
    pub(crate) fn push(&mut self, bits: u64, n: u32) {
        self.put(bits, n);
        self.advance(n as usize);
    }

    /// Appends the first `n` bits of a word slice.
    #[inline(always)]
    pub(crate) fn push_words(&mut self, src: &[u64], n: usize) {
        let full = n / 64;
        let i = self.word.wrapping_sub(self.first);
        if self.pos == 0 && i <= self.out.len() && full <= self.out.len() - i {
            self.out[i..i + full].copy_from_slice(&src[..full]);
            self.word += full;
        } else {
            for &w in &src[..full] {
                self.put(w, 64);
            }
        }
        let rem = (n % 64) as u32;
        if rem > 0 {
            self.put(src[full] & low_bits(rem), rem);
        }
        self.advance(n);
    }

    /// Appends `n` copies of one bit.
    #[inline(always)]
    pub(crate) fn push_fill(&mut self, keep: bool, n: usize) {
        let v = if keep { u64::MAX } else { 0 };
        let mut m = n;
        let i = self.word.wrapping_sub(self.first);
        if self.pos == 0 && i <= self.out.len() {
            let full = (m / 64).min(self.out.len() - i);
            self.out[i..i + full].fill(v);
            self.word += full;
            m -= full * 64;
        }
        while m >= 64 {
            self.put(v, 64);
            m -= 64;
        }
        if m > 0 {
            self.put(v & low_bits(m as u32), m as u32);
        }
        self.advance(n);
    }

    /// The words of the current span, if it is word-aligned (it starts on a word, and ends on one
    /// or at the end of the mask) and nothing of it is written yet: the caller writes them all and
    /// then calls [`close_aligned`](Self::close_aligned). Bits past the end of the mask that it
    /// sets are cleared later.
    #[inline(always)]
    pub(crate) fn aligned_words(&mut self) -> Option<&mut [u64]> {
        if !self.aligned || self.left != self.span_len || self.left == 0 {
            return None;
        }
        Some(&mut *self.out)
    }

    /// Closes the span whose words [`aligned_words`](Self::aligned_words) gave.
    #[inline(always)]
    pub(crate) fn close_aligned(&mut self) {
        self.pos = 0;
        self.left = 0;
        self.next_span();
    }

    /// Ends the task: returns the bits of shared words.
    fn finish(self) -> Vec<(usize, u64)> {
        debug_assert!(self.left == 0, "a task left bits of its spans unwritten");
        self.edges
    }
}

impl Mask {
    /// Rewrites the whole mask in parallel tasks. `spans[t]` are the bit spans task `t` writes
    /// (in order); together the spans of all tasks must cover the mask's bits exactly once. Task
    /// `t` runs `f(t, writer)` and must push exactly its spans' bits.
    ///
    /// Panics if the spans overlap or reach past the end of the mask (a kernel bug).
    pub(crate) fn write_spans<F>(&mut self, spans: Vec<Vec<Range<usize>>>, f: F)
    where
        F: Fn(usize, &mut SpanWriter<'_>) + Send + Sync,
    {
        let len = self.len;
        let mut order: Vec<(usize, usize, usize)> = spans
            .iter()
            .enumerate()
            .flat_map(|(t, s)| s.iter().enumerate().map(move |(j, r)| (r.start, t, j)))
            .collect();
        order.sort_unstable();
        let mut owned: Vec<Vec<Option<Span<'_>>>> = spans
            .iter()
            .map(|s| s.iter().map(|_| None).collect())
            .collect();
        let mut rest: &mut [u64] = &mut self.words;
        let (mut base, mut prev_end) = (0usize, 0usize);
        for &(_, t, j) in &order {
            let r = spans[t][j].clone();
            assert!(
                r.start >= prev_end && r.start <= r.end && r.end <= len,
                "mask spans overlap or leave the mask"
            );
            prev_end = r.end;
            // The words wholly inside the span; the mask's last word counts as whole when the span
            // reaches the end of the mask.
            let a = r.start.div_ceil(64);
            let b = if r.end == len {
                r.end.div_ceil(64)
            } else {
                r.end / 64
            };
            let words: &mut [u64] = if a < b {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(a - base);
                let (mine, tail) = tail.split_at_mut(b - a);
                rest = tail;
                base = b;
                mine
            } else {
                Default::default()
            };
            owned[t][j] = Some(Span { bits: r, words });
        }
        let edges: Vec<Vec<(usize, u64)>> = owned
            .into_par_iter()
            .enumerate()
            .map(|(t, spans)| {
                let mut wr = SpanWriter::new(spans.into_iter().flatten().collect(), len);
                f(t, &mut wr);
                wr.finish()
            })
            .collect();
        // Every bit belongs to exactly one span: clear the shared words, then OR their pieces in.
        for &(i, _) in edges.iter().flatten() {
            self.words[i] = 0;
        }
        for &(i, v) in edges.iter().flatten() {
            self.words[i] |= v;
        }
        self.clear_tail();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Spans of any alignment, written by pushes of every kind in parallel tasks, give the bits
        /// of a plain model.
        #[test]
        fn span_writers_match_a_bool_model(
            cuts in proptest::collection::vec(1usize..150, 1..12),
            seed in any::<u64>(),
            ntasks in 1usize..4,
        ) {
            let len: usize = cuts.iter().sum();
            let mut model = vec![false; len];
            let mut spans = vec![Vec::new(); ntasks];
            let mut s = 0;
            for (i, &c) in cuts.iter().enumerate() {
                spans[i % ntasks].push(s..s + c);
                s += c;
            }
            let bit = |i: usize| (seed.rotate_left((i % 64) as u32) ^ (i as u64 / 7)) & 1 == 1;
            for (i, b) in model.iter_mut().enumerate() {
                *b = bit(i);
            }
            let mut m = Mask::ones([len]);
            let spans2 = spans.clone();
            m.write_spans(spans, |t, wr| {
                for (k, r) in spans2[t].iter().enumerate() {
                    let mut i = r.start;
                    if k % 3 == 0 {
                        if let Some(out) = wr.aligned_words() {
                            for (j, o) in out.iter_mut().enumerate() {
                                *o = (0..64).fold(0, |a, b| a | (bit(r.start + j * 64 + b) as u64) << b);
                            }
                            wr.close_aligned();
                            continue;
                        }
                    }
                    while i < r.end {
                        let n = (r.end - i).min(1 + (i * 7) % 100);
                        let v: Vec<u64> = (0..n.div_ceil(64))
                            .map(|j| (0..64.min(n - j * 64)).fold(0u64, |a, b| a | (bit(i + j * 64 + b) as u64) << b))
                            .collect();
                        match i % 3 {
                            0 if n <= 64 => wr.push(v[0], n as u32),
                            _ if (i..i + n).all(|x| bit(x) == bit(i)) => wr.push_fill(bit(i), n),
                            _ => wr.push_words(&v, n),
                        }
                        i += n;
                    }
                }
            });
            prop_assert_eq!(m.to_bools(), model);
        }
    }
}
