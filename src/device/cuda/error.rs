//! cudarc's errors (driver, cuBLAS, cuBLASLt) as the crate's: every file of the CUDA backend maps them here.

use crate::error::Error;

/// Maps any cudarc error to ours, keeping its text.
pub(crate) fn cuda_err(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{e:?}"))
}
