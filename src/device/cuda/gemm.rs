//! The GEMMs: `c = op(a)·op(b) + beta·c` on row-major matrices, f32 or bf16 operands, through cuBLASLt (the bias
//! in its epilogue: `gemm_lt`) or cublasGemmEx (`GemmPath`); and the deterministic column sums that give a
//! bias (or a LayerNorm parameter) its gradient.

use super::error::cuda_err;
use super::gemm_lt::GemmLt;
use super::gemm_operand::{GemmElem, GemmOperand};
use super::handle::Cuda;
use super::launch_config::pointwise_config;
use super::options::GemmPath;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};

impl Cuda {
    /// The GEMM path in use: `GemmEx` when asked for or when libcublasLt is missing.
    pub fn gemm_path(&self) -> GemmPath {
        match self.gemm_lt() {
            Some(_) => GemmPath::Lt,
            None => GemmPath::GemmEx,
        }
    }

    /// The GEMM shapes that the `Lt` path could not plan and ran through cublasGemmEx, each with the reason.
    pub fn gemm_fallbacks(&self) -> Vec<String> {
        self.gemm_lt().map_or_else(Vec::new, GemmLt::fallbacks)
    }

    /// `c = op(a)·op(b) + beta·c` on row-major matrices, without copies. `a` and `b` are f32, or bf16 on the
    /// tensor cores; either way products accumulate in f32 into f32 `c` (compute type 32F).
    pub(crate) fn gemm<T: GemmElem>(
        &self,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
        c: &mut CudaSlice<f32>,
        beta: f32,
    ) -> Result<()> {
        self.gemm_bias(a, b, None, c, beta)
    }

    /// `gemm` plus `bias[n]` added to every row of `c[m, n]` (only with beta 0): in cuBLASLt's epilogue, or
    /// by a broadcast into `c` before cublasGemmEx (see `GemmPath`).
    pub(crate) fn gemm_bias<T: GemmElem>(
        &self,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
        bias: Option<&CudaSlice<f32>>,
        c: &mut CudaSlice<f32>,
        beta: f32,
    ) -> Result<()> {
        let (m, k) = a.op_dims();
        let (kb, n) = b.op_dims();
        if k != kb
            || c.len() != m * n
            || a.data.len() != a.rows * a.cols
            || b.data.len() != b.rows * b.cols
        {
            return Err(Error::Shape(format!(
                "gemm: [{m}, {k}] x [{kb}, {n}] into {} elements (operands hold {} and {})",
                c.len(),
                a.data.len(),
                b.data.len()
            )));
        }
        if let Some(bias) = bias {
            if bias.len() != n || beta != 0.0 {
                return Err(Error::Shape(format!(
                    "gemm: a bias of {} elements for {n} columns, with beta {beta} (a bias needs beta 0)",
                    bias.len()
                )));
            }
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.count_launch();
        if let Some(lt) = self.gemm_lt() {
            if lt.matmul(a, b, bias, c, beta)? {
                return Ok(());
            }
        }
        let beta = match bias {
            Some(bias) => {
                let (rows, cols) = (m as i64, n as i32);
                self.broadcast_rows_f32(pointwise_config(m * n), bias, c, rows, cols)?;
                1.0
            }
            None => beta,
        };
        self.gemm_ex(a, b, c, beta)
    }

    /// `gemm` through cublasGemmEx (sizes checked by the caller): a row-major `[r, c]` buffer is cuBLAS's
    /// column-major `[c, r]`, so we ask for `cᵀ = op(b)ᵀ·op(a)ᵀ`.
    fn gemm_ex<T: GemmElem>(
        &self,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
        c: &mut CudaSlice<f32>,
        beta: f32,
    ) -> Result<()> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let (m, k) = a.op_dims();
        let n = b.op_dims().1;
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let alpha = 1.0f32;
        let stream = self.stream();
        let (a_ptr, _a_done) = a.data.device_ptr(stream);
        let (b_ptr, _b_done) = b.data.device_ptr(stream);
        let (c_ptr, _c_done) = c.device_ptr_mut(stream);
        // SAFETY: the caller checked the sizes against the buffers, which live on this context's stream (the
        // cuBLAS handle's); alpha and beta are f32 as compute type 32F requires, and outlive the call.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas().handle(),
                op(b.transposed),
                op(a.transposed),
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                b_ptr as *const _,
                T::CUDA_TYPE,
                b.cols.max(1) as i32,
                a_ptr as *const _,
                T::CUDA_TYPE,
                a.cols.max(1) as i32,
                &beta as *const f32 as *const _,
                c_ptr as *mut _,
                cudaDataType_t::CUDA_R_32F,
                n.max(1) as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cuda_err)
    }

    /// `acc[c] += Σ_r x[r, c]` for row-major `x[rows, cols]`, deterministically (`kernels/elementwise.cu`).
    pub(crate) fn col_sum_add(
        &self,
        x: &CudaSlice<f32>,
        acc: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if cols == 0 {
            return Ok(());
        }
        let (n_rows, n_cols) = (rows as i64, cols as i32);
        // The kernel's shared-memory tile assumes exactly these block dimensions (COL_SUM_COLS, COL_SUM_LANES).
        let config = LaunchConfig {
            grid_dim: (cols.div_ceil(8) as u32, 1, 1),
            block_dim: (8, 128, 1),
            shared_mem_bytes: 0,
        };
        self.col_sum_add_f32(config, x, acc, n_rows, n_cols)
    }
}
