//! Runtime CPU dispatch for the lookup kernels and the DataNorm passes: the same Rust code
//! compiled a second time for AVX2, FMA, BMI2 and F16C (x86-64-v3), chosen when the CPU has them
//! ([`has_v3`]). The few loops that the compiler does not vectorize well are written with
//! `std::arch` intrinsics ([`crate::norm`]'s `avx2` module) and called only when [`has_v3`] holds.
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

/// Whether this CPU has AVX2, FMA, BMI2 and F16C: the features [`dispatch`] compiles for and the
/// intrinsic loops use. Cached in one byte (one load and a compare), since the loops ask often.
#[inline(always)]
pub(crate) fn has_v3() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// 0: not asked yet; 1: no; 2: yes.
    static V3: AtomicU8 = AtomicU8::new(0);
    match V3.load(Ordering::Relaxed) {
        0 => {
            let yes = detect_v3();
            V3.store(1 + yes as u8, Ordering::Relaxed);
            yes
        }
        v => v == 2,
    }
}

/// [`has_v3`], asked of the CPU.
#[cold]
fn detect_v3() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `k` compiled for x86-64-v3 when this CPU has it ([`has_v3`]), else as it is.
#[inline]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    if has_v3() {
        // SAFETY: calling a function compiled with `target_feature` is sound when the CPU has
        // those features, and this CPU has them all (checked just above).
        return unsafe { v3(k) };
    }
    k.run()
}

/// `k.run()`, inlined into a function compiled for AVX2, FMA, BMI2 and F16C.
///
/// # Safety
/// The CPU must have those features ([`has_v3`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,f16c")]
unsafe fn v3<K: Kernel>(k: K) -> K::Output {
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
