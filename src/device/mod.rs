//! The device seam: a `Backend` owns storage and implements every op; the model is written once against it.
//!
//! `BackendCore` (here) is storage: allocation, host copies, residual adds. Each op's trait lives in its own
//! file under `src/ops/` with the CPU half and the CUDA launch side by side; `ops::Backend` gathers them.

pub(crate) mod cpu;
pub mod cuda;

use crate::error::Result;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

pub use cpu::Cpu;
pub use cuda::Cuda;

/// Element types a tensor can hold: f32 for normal use, f64 for finite-difference gradient checks, bf16 for
/// tensor-core operands (a backend's `Elem` is f32 or f64; any backend also holds bf16 tensors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    Bf16,
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::Bf16 => "bf16",
        })
    }
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
    fn exp2(self) -> Self;
    fn ln(self) -> Self;
    fn log2(self) -> Self;
    fn sqrt(self) -> Self;
    /// Rounds to bf16, to nearest with ties to even (what `__float2bfloat16_rn` does on the GPU).
    fn to_bf16(self) -> half::bf16;
    /// The bf16 value exactly (every bf16 is an f32 and an f64).
    fn from_bf16(v: half::bf16) -> Self;
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
    ($t:ty, $dtype:expr, $gemm:path, $to_bf16:path, $from_bf16:path) => {
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
            fn exp2(self) -> Self {
                <$t>::exp2(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn log2(self) -> Self {
                <$t>::log2(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn to_bf16(self) -> half::bf16 {
                $to_bf16(self)
            }
            fn from_bf16(v: half::bf16) -> Self {
                $from_bf16(v)
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
impl_element!(
    f32,
    DType::F32,
    matrixmultiply::sgemm,
    half::bf16::from_f32,
    half::bf16::to_f32
);
impl_element!(
    f64,
    DType::F64,
    matrixmultiply::dgemm,
    half::bf16::from_f64,
    half::bf16::to_f64
);

/// Storage and data movement: what every backend provides besides its ops.
pub trait BackendCore: Clone + Send + Sync + 'static {
    /// The scalar type of this backend's tensors.
    type Elem: Element;
    /// A flat buffer of `Elem` in this backend's memory.
    type Storage: Send + Sync;
    /// A flat buffer of bf16 in this backend's memory (GEMM operands in mixed precision).
    type Bf16Storage: Send + Sync;
    /// Token ids in this backend's memory (the embedding's rows, the loss's targets).
    type Ids: Send + Sync;
    /// A copy to the host queued by `read_async`.
    type PendingRead: Send;
    /// A captured piece of work that `replay` runs again (a CUDA graph).
    type Graph;

    fn kind(&self) -> DeviceKind;
    fn zeros(&self, len: usize) -> Result<Self::Storage>;
    fn upload(&self, data: &[Self::Elem]) -> Result<Self::Storage>;
    fn download(&self, storage: &Self::Storage) -> Result<Vec<Self::Elem>>;
    fn copy(&self, storage: &Self::Storage) -> Result<Self::Storage>;
    fn storage_len(storage: &Self::Storage) -> usize;
    fn bf16_len(storage: &Self::Bf16Storage) -> usize;
    /// Each element rounded to bf16 (to nearest, ties to even; the same bits on every backend).
    fn round_to_bf16(&self, storage: &Self::Storage) -> Result<Self::Bf16Storage>;
    /// Each bf16 element as `Elem`, exactly.
    fn widen_bf16(&self, storage: &Self::Bf16Storage) -> Result<Self::Storage>;
    /// `a + b`, elementwise (residual connections).
    fn add(&self, a: &Self::Storage, b: &Self::Storage) -> Result<Self::Storage>;
    /// `acc += x`, elementwise (gradient accumulation).
    fn add_assign(&self, acc: &mut Self::Storage, x: &Self::Storage) -> Result<()> {
        self.add_assign_from(acc, x, 0)
    }
    /// `acc[i] += x[offset + i]` for every element of `acc` (a slice of a stacked gradient); `x` holds at
    /// least `offset + acc.len()` elements (checked by the caller).
    fn add_assign_from(
        &self,
        acc: &mut Self::Storage,
        x: &Self::Storage,
        offset: usize,
    ) -> Result<()>;
    /// The buffers one after another (stacked weights).
    fn concat(&self, parts: &[&Self::Storage]) -> Result<Self::Storage>;
    /// `concat` of bf16 buffers.
    fn concat_bf16(&self, parts: &[&Self::Bf16Storage]) -> Result<Self::Bf16Storage>;
    /// Sets every element to zero.
    fn fill_zero(&self, storage: &mut Self::Storage) -> Result<()>;
    /// Elements `start..start + len` (in range: the caller checks) as a buffer of their own.
    fn copy_range(
        &self,
        storage: &Self::Storage,
        start: usize,
        len: usize,
    ) -> Result<Self::Storage>;
    fn copy_range_bf16(
        &self,
        storage: &Self::Bf16Storage,
        start: usize,
        len: usize,
    ) -> Result<Self::Bf16Storage>;
    /// Writes `src` over `dst[offset..offset + src.len()]` (in range: the caller checks).
    fn copy_into(&self, dst: &mut Self::Storage, offset: usize, src: &Self::Storage) -> Result<()>;
    fn copy_into_bf16(
        &self,
        dst: &mut Self::Bf16Storage,
        offset: usize,
        src: &Self::Bf16Storage,
    ) -> Result<()>;
    /// Waits until queued work is done (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// Bytes this device can still allocate, when it can tell (`memory::check` compares estimates with it).
    fn available_memory(&self) -> Option<u64>;

    fn upload_ids(&self, ids: &[u32]) -> Result<Self::Ids>;
    fn ids_len(ids: &Self::Ids) -> usize;

    // A training step with no host round trip (`train::device_step`): its inputs are queued into buffers
    // that stay where they are, its results come back a step later, and the work between can be captured
    // once and replayed. On the CPU the copies are immediate and there is nothing to capture.

    /// Queues a copy of `src` into `dst[offset..]` and returns at once (CUDA: through a pinned buffer, in
    /// stream order); `dst` must hold `offset + src.len()` elements (the caller checks).
    fn write_async(&self, dst: &mut Self::Storage, offset: usize, src: &[Self::Elem])
        -> Result<()>;
    /// `write_async` for token ids; `dst` holds exactly `src.len()` of them (the caller checks).
    fn write_ids_async(&self, dst: &mut Self::Ids, src: &[u32]) -> Result<()>;
    /// Stages dropout seeds for masks that name seed-table slots (`rng::staged_slot`): `seeds[i]` in slot
    /// `i + 1`. The CPU reads a mask's seed itself and keeps nothing.
    fn stage_seeds(&self, seeds: &[u64]) -> Result<()>;
    /// Queues a copy of `src` to the host; `finish_read` waits for it.
    fn read_async(&self, src: &Self::Storage) -> Result<Self::PendingRead>;
    fn finish_read(&self, read: Self::PendingRead) -> Result<Vec<Self::Elem>>;
    /// Whether `begin_capture` can work here.
    fn can_capture(&self) -> bool;
    /// Starts recording the work queued from now on instead of running it (errors where there is no graph).
    fn begin_capture(&self) -> Result<()>;
    /// Stops recording and makes the recording replayable; nothing recorded has run.
    fn end_capture(&self) -> Result<Self::Graph>;
    /// Queues the recorded work once more, reading and writing the buffers it was recorded with.
    fn replay(&self, graph: &Self::Graph) -> Result<()>;
}
