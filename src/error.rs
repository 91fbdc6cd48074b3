//! One error type for the crate: every bad input becomes an `Error` whose message names the shape or value.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A tensor's shape does not fit the operation (the message names both shapes).
    #[error("shape error: {0}")]
    Shape(String),
    /// A model configuration that cannot be built.
    #[error("config error: {0}")]
    Config(String),
    /// A checkpoint or tensor file that is missing tensors, has extra or mis-shaped ones, or is corrupt.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// The CUDA device could not be used (no driver, no GPU, built without nvcc, or a failed call).
    #[error("cuda error: {0}")]
    Cuda(String),
    /// Training cannot go on: a non-finite loss or gradient (the message names the step), or a run that does
    /// not fit its checkpoint or data.
    #[error("training error: {0}")]
    Training(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Builds an `Error::Shape` from a format string.
macro_rules! shape_err {
    ($($arg:tt)*) => { $crate::error::Error::Shape(format!($($arg)*)) };
}
pub(crate) use shape_err;
