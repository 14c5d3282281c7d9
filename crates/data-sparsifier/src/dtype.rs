//! Element types: the [`DType`] enum and the [`Element`] trait the kernels are generic over.

/// The 16-bit float element types, from the `half` crate: re-exported so that callers need no
/// `half` dependency of their own (`use data_sparsifier::dtype::{bf16, f16};`).
pub use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The floating-point element types this crate handles.
///
/// ```
/// use data_sparsifier::DType;
/// assert_eq!("bf16".parse::<DType>().unwrap(), DType::BF16);
/// assert_eq!(DType::F16.size_in_bytes(), 2);
/// assert_eq!(DType::F64.safetensors_name(), "F64");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// 16-bit IEEE half precision ([`f16`]).
    F16,
    /// 16-bit brain float ([`bf16`]).
    BF16,
}

impl DType {
    /// All supported dtypes.
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The safetensors spelling (`F32`, `F64`, `F16`, `BF16`).
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Ok(DType::F32),
            "f64" | "float64" | "double" => Ok(DType::F64),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(Error::UnsupportedDType {
                what: "dtype name".into(),
                dtype: s.to_string(),
            }),
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A supported element type. Kernels are generic over it and work on `&[T]` slices.
///
/// `Acc` is the accumulator: `f32` for `f32`, `f16` and `bf16` (half precision accumulates in f32),
/// `f64` for `f64`. This matches PyTorch's CPU reductions for these dtypes.
///
/// ```
/// use data_sparsifier::Element;
/// use data_sparsifier::dtype::bf16;
/// let x = bf16::from_f32(-1.5);
/// assert_eq!(x.to_acc(), -1.5f32);
/// assert_eq!(<bf16 as Element>::from_f64(2.0), bf16::from_f32(2.0));
/// ```
pub trait Element:
    sealed::Sealed + Copy + Send + Sync + PartialEq + PartialOrd + fmt::Debug + bytemuck::Pod + 'static
{
    /// The dtype tag.
    const DTYPE: DType;
    /// The additive zero.
    const ZERO: Self;
    /// Accumulator type for sums and means.
    type Acc: Copy
        + Send
        + Sync
        + PartialOrd
        + fmt::Debug
        + std::ops::Add<Output = Self::Acc>
        + std::ops::Mul<Output = Self::Acc>
        + std::ops::Div<Output = Self::Acc>
        + std::iter::Sum
        + 'static;
    /// Widens to the accumulator.
    fn to_acc(self) -> Self::Acc;
    /// Narrows from the accumulator (round to nearest).
    fn from_acc(acc: Self::Acc) -> Self;
    /// Widens to f64 (exact for every supported type).
    fn to_f64(self) -> f64;
    /// Narrows from f64 (round to nearest).
    fn from_f64(v: f64) -> Self;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
    /// The accumulator's zero.
    fn acc_zero() -> Self::Acc;
    /// An accumulator from a count (for dividing sums into means).
    fn acc_from_usize(n: usize) -> Self::Acc;
    /// The accumulator as f64.
    fn acc_to_f64(acc: Self::Acc) -> f64;
    /// An accumulator from f64 (rounding to nearest).
    fn acc_from_f64(v: f64) -> Self::Acc;
}

macro_rules! impl_element {
    ($t:ty, $dt:expr, $acc:ty, $zero:expr, |$a:ident| $to:expr, |$b:ident| $from:expr, |$c:ident| $tof64:expr, |$d:ident| $fromf64:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dt;
            const ZERO: Self = $zero;
            type Acc = $acc;
            #[inline(always)]
            fn to_acc(self) -> $acc {
                let $a = self;
                $to
            }
            #[inline(always)]
            fn from_acc(acc: $acc) -> Self {
                let $b = acc;
                $from
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                let $c = self;
                $tof64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                let $d = v;
                $fromf64
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                #[allow(clippy::eq_op)]
                {
                    self != self
                }
            }
            #[inline(always)]
            fn acc_zero() -> $acc {
                0.0
            }
            #[inline(always)]
            fn acc_from_usize(n: usize) -> $acc {
                n as $acc
            }
            #[inline(always)]
            fn acc_to_f64(acc: $acc) -> f64 {
                acc as f64
            }
            #[inline(always)]
            fn acc_from_f64(v: f64) -> $acc {
                v as $acc
            }
        }
    };
}

impl_element!(f32, DType::F32, f32, 0.0, |x| x, |a| a, |x| x as f64, |v| v
    as f32);
impl_element!(f64, DType::F64, f64, 0.0, |x| x, |a| a, |x| x, |v| v);
impl_element!(
    f16,
    DType::F16,
    f32,
    f16::ZERO,
    |x| x.to_f32(),
    |a| f16::from_f32(a),
    |x| x.to_f64(),
    |v| f16::from_f64(v)
);
impl_element!(
    bf16,
    DType::BF16,
    f32,
    bf16::ZERO,
    |x| x.to_f32(),
    |a| bf16::from_f32(a),
    |x| x.to_f64(),
    |v| bf16::from_f64(v)
);

/// Calls `$body` with `$T` bound to the element type of a runtime [`DType`].
///
/// ```
/// use data_sparsifier::{with_dtype, DType, Element};
/// fn size(d: DType) -> usize { with_dtype!(d, T => std::mem::size_of::<T>()) }
/// assert_eq!(size(DType::BF16), 2);
/// ```
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::F16 => {
                type $T = $crate::dtype::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = $crate::dtype::bf16;
                $body
            }
        }
    };
}
