//! The device seam: a `Backend` owns storage and implements every op; the model is written once against it.
//!
//! `BackendCore` (here) is storage: allocation, host copies, residual adds. Each op's trait lives in its own
//! file under `src/ops/` with the CPU half and the CUDA launch side by side; `ops::Backend` gathers them.

pub mod cpu;
pub mod cuda;
pub(crate) mod kernels;

use crate::error::Result;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

pub use cpu::Cpu;
pub use cuda::Cuda;

/// Element types a tensor can hold: f32 for normal use, f64 for finite-difference gradient checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
}

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda(usize),
}

/// Scalar arithmetic the CPU reference needs, over f32 and f64.
pub trait Element:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + bytemuck::Pod
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
    fn max(self, other: Self) -> Self {
        if self >= other {
            self
        } else {
            other
        }
    }
    /// C = alpha * A·B + beta * C over strided views (matrixmultiply's general GEMM).
    ///
    /// # Safety
    /// Pointers and strides must describe valid, non-overlapping (for C) memory of the given sizes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_strided(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! impl_element {
    ($t:ty, $dtype:expr, $gemm:path) => {
        impl Element for $t {
            const DTYPE: DType = $dtype;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            unsafe fn gemm_strided(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}
impl_element!(f32, DType::F32, matrixmultiply::sgemm);
impl_element!(f64, DType::F64, matrixmultiply::dgemm);

/// Storage and data movement: what every backend provides besides its ops.
pub trait BackendCore: Clone + Send + Sync + 'static {
    /// The scalar type of this backend's tensors.
    type Elem: Element;
    /// A flat buffer of `Elem` in this backend's memory.
    type Storage: Send + Sync;

    fn kind(&self) -> DeviceKind;
    fn zeros(&self, len: usize) -> Result<Self::Storage>;
    fn upload(&self, data: &[Self::Elem]) -> Result<Self::Storage>;
    fn download(&self, storage: &Self::Storage) -> Result<Vec<Self::Elem>>;
    fn copy(&self, storage: &Self::Storage) -> Result<Self::Storage>;
    fn storage_len(storage: &Self::Storage) -> usize;
    /// `a + b`, elementwise (residual connections).
    fn add(&self, a: &Self::Storage, b: &Self::Storage) -> Result<Self::Storage>;
    /// `acc += x`, elementwise (gradient accumulation).
    fn add_assign(&self, acc: &mut Self::Storage, x: &Self::Storage) -> Result<()>;
    /// Sets every element to zero.
    fn fill_zero(&self, storage: &mut Self::Storage) -> Result<()>;
    /// Waits until queued work is done (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// Bytes this device can still allocate, when it can tell (`memory::check` compares estimates with it).
    fn available_memory(&self) -> Option<u64>;
}
