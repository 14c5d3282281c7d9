//! Runtime CPU dispatch for the lookup kernels: the same Rust code compiled a second time for
//! AVX2 + FMA, chosen when the CPU has them.
//!
//! The answers do not change: the kernels only add and multiply in a fixed order (no
//! reassociation), and `f32::mul_add` is one correctly rounded fused multiply-add whether the
//! CPU does it (`vfmadd`) or libm does (a call per value, which is what makes the portable build
//! slow on the quantized tables: `cargo bench -p data-sparsifier --bench compact`).

/// A kernel to run under [`dispatch`]: its `run` is `#[inline(always)]`, so that it is compiled
/// into each dispatched version (a closure would stay a function of its own, compiled for the
/// baseline CPU).
pub(crate) trait Kernel {
    /// What the kernel returns.
    type Output;
    /// Runs the kernel.
    fn run(self) -> Self::Output;
}

/// Runs `k` compiled for AVX2 and FMA when this CPU has both, else as it is.
#[inline]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: calling a function compiled with `target_feature` is sound when the CPU has
            // those features, and this CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2_fma(k) };
        }
    }
    k.run()
}

/// `k.run()`, inlined into a function compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// Asks the CPU to bring the cache line holding `xs[i]` closer (nothing if `i` is out of range):
/// the lookups use it to start loading the rows of the next few indices while they add this one.
#[inline(always)]
pub(crate) fn prefetch<T>(xs: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = xs.get(i) {
        // SAFETY: `prefetcht0` is only a hint: it never faults and changes nothing the program
        // can observe, and the address is that of a live element. SSE, the one feature it
        // needs, is in every x86_64 CPU.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (x as *const T).cast::<i8>(),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xs, i);
}

#[cfg(test)]
mod tests {
    struct Fold<'a>(&'a [f32]);
    impl super::Kernel for Fold<'_> {
        type Output = f32;
        #[inline(always)]
        fn run(self) -> f32 {
            self.0
                .iter()
                .fold(0.0f32, |a, &x| x.mul_add(1.000_1, a) + x * 0.5)
        }
    }

    #[test]
    fn dispatch_gives_the_portable_answer() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.37 - 11.0).collect();
        let dispatched = super::dispatch(Fold(&xs));
        assert_eq!(
            dispatched.to_bits(),
            super::Kernel::run(Fold(&xs)).to_bits()
        );
    }
}
