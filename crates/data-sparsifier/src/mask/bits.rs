//! Bit helpers over `u64` words in the mask's layout (bit `i` is bit `i % 64` of word `i / 64`):
//! masks of low bits, reading and ORing runs of up to 64 bits at any offset, spreading one flag per
//! block over the block's cells. The mask and the kernels share them.

/// The low `n` bits set (`n <= 64`).
#[inline(always)]
pub(crate) fn low_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Bits `lo..hi` (`0 <= lo <= hi <= 64`) set.
#[inline]
pub(crate) fn bit_range(lo: usize, hi: usize) -> u64 {
    low_bits((hi - lo) as u32) << lo
}

/// `len <= 64` bits of a bitset starting at bit `start` (bits past the end read as 0).
#[inline(always)]
pub(crate) fn get_bits(bits: &[u64], start: usize, len: u32) -> u64 {
    let (w, o) = (start / 64, (start % 64) as u32);
    let lo = bits.get(w).copied().unwrap_or(0) >> o;
    let v = if o == 0 {
        lo
    } else {
        lo | (bits.get(w + 1).copied().unwrap_or(0) << (64 - o))
    };
    v & low_bits(len)
}

/// ORs the low `n` bits of `v` into a bitset at bit `start` (`n <= 64`; higher bits of `v` zero).
#[inline(always)]
pub(crate) fn or_bits(bits: &mut [u64], start: usize, v: u64, n: u32) {
    let (w, o) = (start / 64, (start % 64) as u32);
    bits[w] |= v << o;
    if o != 0 && o + n > 64 {
        bits[w + 1] |= v >> (64 - o);
    }
}

/// Spreads flag `i` of a word to bits `i·bw .. (i+1)·bw` (`bw` a power of two up to 64; `64 / bw`
/// flags), for one block width, with what it needs worked out once (for the loops).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    bw: usize,
    /// Bit 0 of every `bw`-bit field.
    starts: u64,
    /// `bw` ones.
    ones: u64,
    /// The CPU has BMI2 and `bw` is a power of two up to 64: [`spread_pdep`].
    pdep: bool,
}

impl Spread {
    /// The spread for `bw`.
    #[inline(always)]
    pub(crate) fn new(bw: usize) -> Spread {
        let ones = low_bits(bw as u32);
        let pow2 = bw.is_power_of_two() && bw <= 64;
        Spread {
            bw,
            // All ones divided by one field of ones.
            starts: if bw >= 64 || bw == 0 {
                1
            } else {
                u64::MAX / ones
            },
            ones,
            pdep: pow2 && crate::simd::has_v3(),
        }
    }

    /// Flag `i` of `f` spread over bits `i·bw .. (i+1)·bw`.
    #[inline(always)]
    pub(crate) fn of(&self, f: u64) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.pdep {
            // SAFETY: the CPU has BMI2 (`has_v3`, checked in `new`).
            return unsafe { spread_pdep(f, self.starts, self.ones) };
        }
        spread_portable(f, self.bw)
    }
}

/// [`Spread::of`] with BMI2: `pdep` puts bit `i` of `f` at bit `i·bw` (the bits of `starts`), and the
/// product with `ones` (`bw` ones) repeats it over the `bw` bits above: no carries, the copies do
/// not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
#[inline]
fn spread_pdep(f: u64, starts: u64, ones: u64) -> u64 {
    std::arch::x86_64::_pdep_u64(f, starts).wrapping_mul(ones)
}

/// [`Spread::of`] in plain Rust (shifts and masks).
#[inline(always)]
pub(crate) fn spread_portable(f: u64, bw: usize) -> u64 {
    match bw {
        1 => f,
        2 => {
            let mut x = f & 0xFFFF_FFFF;
            x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
            x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
            x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
            x = (x | (x << 2)) & 0x3333_3333_3333_3333;
            x = (x | (x << 1)) & 0x5555_5555_5555_5555;
            x * 0x3
        }
        4 => {
            let mut x = f & 0xFFFF;
            x = (x | (x << 24)) & 0x0000_00FF_0000_00FF;
            x = (x | (x << 12)) & 0x000F_000F_000F_000F;
            x = (x | (x << 6)) & 0x0303_0303_0303_0303;
            x = (x | (x << 3)) & 0x1111_1111_1111_1111;
            x * 0xF
        }
        8 => {
            let mut x = f & 0xFF;
            x = (x | (x << 28)) & 0x0000_000F_0000_000F;
            x = (x | (x << 14)) & 0x0003_0003_0003_0003;
            x = (x | (x << 7)) & 0x0101_0101_0101_0101;
            x * 0xFF
        }
        16 => {
            let mut x = f & 0xF;
            x = (x | (x << 30)) & 0x0000_0003_0000_0003;
            x = (x | (x << 15)) & 0x0001_0001_0001_0001;
            x * 0xFFFF
        }
        32 => ((f & 1) | ((f & 2) << 31)) * 0xFFFF_FFFF,
        _ => {
            if f & 1 == 1 {
                u64::MAX
            } else {
                0
            }
        }
    }
}

/// Calls `f` with the index of every 0 bit among the first `n` bits of `bits`, in order.
#[inline(always)]
pub(crate) fn for_each_zero(bits: &[u64], n: usize, mut f: impl FnMut(usize)) {
    for (wi, &kw) in bits.iter().enumerate() {
        let mut zeros = !kw;
        if wi == bits.len() - 1 && n % 64 != 0 {
            zeros &= low_bits((n % 64) as u32);
        }
        while zeros != 0 {
            f(wi * 64 + zeros.trailing_zeros() as usize);
            zeros &= zeros - 1;
        }
    }
}

/// Sets (`keep`) or clears the bits `start..end` of a bitset (`start < end`, inside it).
#[inline]
pub(crate) fn set_bit_range(words: &mut [u64], start: usize, end: usize, keep: bool) {
    let (w0, w1) = (start / 64, (end - 1) / 64);
    for (i, w) in words[w0..=w1].iter_mut().enumerate() {
        let lo = if i == 0 { start % 64 } else { 0 };
        let hi = if w0 + i == w1 { (end - 1) % 64 + 1 } else { 64 };
        let bits = bit_range(lo, hi);
        if keep {
            *w |= bits;
        } else {
            *w &= !bits;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_matches_naive() {
        for bw in [1usize, 2, 4, 8, 16, 32, 64] {
            for seed in 0..50u64 {
                let f = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (seed << 7);
                let per = 64 / bw;
                let mut want = 0u64;
                for i in 0..per {
                    if (f >> i) & 1 == 1 {
                        want |= low_bits(bw as u32) << (i * bw);
                    }
                }
                assert_eq!(
                    Spread::new(bw).of(f & low_bits(per as u32)),
                    want,
                    "bw {bw}"
                );
                assert_eq!(
                    spread_portable(f & low_bits(per as u32), bw),
                    want,
                    "bw {bw}"
                );
            }
        }
    }

    #[test]
    fn bit_runs_read_and_or_at_any_offset() {
        let mut bits = vec![0u64; 3];
        or_bits(&mut bits, 60, 0b1011, 4);
        or_bits(&mut bits, 62, 0b111, 3);
        assert_eq!(get_bits(&bits, 60, 5), 0b11111);
        assert_eq!(get_bits(&bits, 190, 10), 0);
        assert_eq!(bit_range(3, 5), 0b11000);
        assert_eq!(bit_range(0, 64), u64::MAX);
        let mut w = vec![0u64; 3];
        set_bit_range(&mut w, 60, 130, true);
        set_bit_range(&mut w, 62, 63, false);
        let want: Vec<bool> = (0..192)
            .map(|i| (60..130).contains(&i) && i != 62)
            .collect();
        assert_eq!(
            (0..192)
                .map(|i| get_bits(&w, i, 1) == 1)
                .collect::<Vec<_>>(),
            want
        );
        let mut zeros = Vec::new();
        for_each_zero(&[!0b1001_0000u64], 10, |i| zeros.push(i));
        assert_eq!(zeros, [4, 7]);
    }
}
