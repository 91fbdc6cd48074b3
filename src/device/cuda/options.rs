//! The choices a `Cuda` backend is opened with (`CudaOptions`), each from an environment variable by default.

use crate::error::{Error, Result};

/// How a `Cuda` backend runs what has more than one implementation; `CudaOptions::from_env` reads the
/// environment (`HOURGLASS_GEMM`, `HOURGLASS_ATTENTION`, `HOURGLASS_KERNELS`) for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    pub gemm: GemmPath,
    pub attention: AttnVersion,
    pub kernels: KernelSource,
}

impl CudaOptions {
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            gemm: GemmPath::from_env()?,
            attention: AttnVersion::from_env()?,
            kernels: KernelSource::from_env()?,
        })
    }
}

/// What the kernels are loaded from (`modules`). `Cubin` (the default): the embedded machine code for
/// the device's architecture, the PTX where there is none. `Ptx`: always the PTX, JIT-compiled by the driver:
/// the path of GPUs without a cubin, kept checkable on those with one, and the code with line numbers for a
/// profiler. The environment variable `HOURGLASS_KERNELS` (`cubin` or `ptx`) chooses for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSource {
    Cubin,
    Ptx,
}

impl KernelSource {
    /// `HOURGLASS_KERNELS`, or `Cubin` when it is not set.
    pub(crate) fn from_env() -> Result<Self> {
        env_choice(
            "HOURGLASS_KERNELS",
            [("cubin", Self::Cubin), ("ptx", Self::Ptx)],
        )
    }
}

/// Which bf16 tensor-core attention kernels run (`kernels/attention_mma.cu`), forward and backward. `Tuned`
/// (the default): the streamed operand tiles (K and V; Q and dO for dK/dV) through shared memory with
/// cp.async and ldmatrix, where the shape allows it (d_head at most 64, head size, strides and offsets
/// multiples of 8), the simple version elsewhere. `Simple`: fragments straight from global memory, always. The
/// environment variable `HOURGLASS_ATTENTION` (`tuned` or `simple`) chooses for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnVersion {
    Simple,
    Tuned,
}

impl AttnVersion {
    /// `HOURGLASS_ATTENTION`, or `Tuned` when it is not set.
    pub(crate) fn from_env() -> Result<Self> {
        env_choice(
            "HOURGLASS_ATTENTION",
            [("tuned", Self::Tuned), ("simple", Self::Simple)],
        )
    }
}

/// The value of the environment variable `var` among `choices` (the first when it is unset); any other value
/// is an error naming the variable, the value and the choices.
fn env_choice<T: Copy, const N: usize>(var: &str, choices: [(&str, T); N]) -> Result<T> {
    let Ok(value) = std::env::var(var) else {
        return Ok(choices[0].1);
    };
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|&(_, choice)| choice)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
            Error::Cuda(format!("{var}={value:?}: expected one of {names:?}"))
        })
}

/// Which cuBLAS interface runs the GEMMs. `Lt` (the default): cuBLASLt, the bias in the epilogue, plans
/// cached per shape, falling back to `GemmEx` for a shape it has no algorithm for. `GemmEx`: cublasGemmEx,
/// the bias written by a broadcast kernel first; the simple path, kept as a check on the other. The
/// environment variable `HOURGLASS_GEMM` (`lt` or `gemmex`) chooses for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    Lt,
    GemmEx,
}

impl GemmPath {
    /// `HOURGLASS_GEMM`, or `Lt` when it is not set.
    pub(crate) fn from_env() -> Result<Self> {
        env_choice(
            "HOURGLASS_GEMM",
            [("lt", Self::Lt), ("gemmex", Self::GemmEx)],
        )
    }
}
