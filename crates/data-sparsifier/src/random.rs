//! A tiny deterministic random generator (splitmix64 + Box–Muller) for tests, the demo and benches.
//! It is not cryptographic; it exists so that generated tables are reproducible from a seed without
//! pulling a random-number crate into the core.

use crate::dtype::DType;
use crate::tensor::Tensor;

/// A seeded splitmix64 generator.
///
/// ```
/// use data_sparsifier::random::Rng;
/// let mut a = Rng::new(7);
/// let mut b = Rng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.uniform();
/// assert!((0.0..1.0).contains(&u));
/// ```
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform integer in `0..n` (`n > 0`).
    ///
    /// ```
    /// use data_sparsifier::random::Rng;
    /// let mut rng = Rng::new(3);
    /// assert!((0..100).all(|_| rng.below(6) < 6));
    /// ```
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Standard normal.
    ///
    /// ```
    /// use data_sparsifier::random::Rng;
    /// let mut rng = Rng::new(11);
    /// let xs: Vec<f64> = (0..10_000).map(|_| rng.normal()).collect();
    /// let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    /// assert!(mean.abs() < 0.05);
    /// ```
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A tensor of standard-normal values, reproducible from `seed`.
///
/// ```
/// use data_sparsifier::{random::randn, DType};
/// let t = randn([3, 4], DType::F32, 1);
/// assert_eq!(t.shape(), &[3, 4]);
/// assert_eq!(t, randn([3, 4], DType::F32, 1));
/// ```
pub fn randn(shape: impl Into<Vec<usize>>, dtype: DType, seed: u64) -> Tensor {
    let shape = shape.into();
    let n = crate::tensor::numel(&shape);
    let mut rng = Rng::new(seed);
    let values: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    // The element count matches the shape by construction.
    Tensor::from_f64s(&values, dtype, shape).unwrap_or_else(|_| Tensor::zeros(dtype, [0]))
}
