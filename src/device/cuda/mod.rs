//! The CUDA backend: one context and stream, cuBLAS, and the PTX that build.rs compiled from `kernels/`.
//!
//! Every op queues its kernels on the one stream with no host synchronisation; memory comes from the
//! driver's stream-ordered pool (`cuMemAllocAsync`), which we tell to keep freed blocks, so a training step
//! reuses the previous step's activations instead of calling cudaMalloc per op. The stream is a created one,
//! not the legacy default stream, so that a whole training step can be captured into a CUDA graph and
//! replayed (`begin_capture`, `end_capture`, `replay`): cuBLAS gets a fixed workspace for that, dropout seeds
//! are read from device memory (`seeds`), and per-step inputs arrive through pinned buffers (`staging`).
//!
//! Each file uses only those listed after it: `backend_core` (`BackendCore` for `Cuda`), `gemm`, `seeds` (where
//! the dropout kernels read their seeds), `launch_config`, `kernels` (a typed `Cuda` method per kernel), `handle`
//! (`Cuda` itself), `gemm_lt`, `seed_table`, `staging`, `emulator`, `ptxas` (the build's report of every
//! kernel's resources), `modules` (the kernels as the build embedded them), `options`, `gemm_operand`, `error`.

mod backend_core;
pub mod emulator;
mod error;
mod gemm;
mod gemm_lt;
mod gemm_operand;
mod handle;
pub(crate) mod kernels;
mod launch_config;
pub mod modules;
mod options;
pub mod ptxas;
mod seed_table;
mod seeds;
mod staging;

pub(crate) use error::cuda_err;
pub(crate) use gemm_operand::{GemmElem, GemmOperand};
pub use handle::{bench_device_or_skip, device_or_skip, Cuda};
pub(crate) use launch_config::{pointwise_config, rows_config, warp_per_row_config};
pub use modules::NVCC_FOUND;
pub use options::{AttnVersion, CudaOptions, GemmPath, KernelSource};
