//! The GEMMs' operands, as `Cuda::gemm` (`gemm`) and cuBLASLt (`gemm_lt`) both take them.

use cudarc::driver::CudaSlice;

/// Element types our GEMMs take as inputs: f32, and bf16 (tensor cores); cuBLAS's name for each.
pub(crate) trait GemmElem: cudarc::driver::DeviceRepr {
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType;
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType;
    const IS_BF16: bool;
}

impl GemmElem for f32 {
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F;
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_32F;
    const IS_BF16: bool = false;
}

impl GemmElem for half::bf16 {
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_16BF;
    const IS_BF16: bool = true;
}

/// A row-major matrix operand on the device: `data` holds `rows x cols` before `transposed` is applied.
pub(crate) struct GemmOperand<'a, T = f32> {
    pub(crate) data: &'a CudaSlice<T>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) transposed: bool,
}

impl<T> Clone for GemmOperand<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for GemmOperand<'_, T> {}

impl<T> GemmOperand<'_, T> {
    pub(crate) fn op_dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
}
