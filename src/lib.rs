//! # hourglass
//!
//! The Hourglass hierarchical transformer (Nawrot et al., "Hierarchical Transformers Are More Efficient
//! Language Models", arXiv 2110.13711): a CPU reference in f32/f64 and, on NVIDIA GPUs, hand-written CUDA
//! kernels held against it.
//!
//! ```
//! use hourglass::{HourGlass, Tensor, Cpu};
//! let mut model = HourGlass::new(2, 16, 0.1, 32, &[2, 3]).unwrap();
//! model.train(false);
//! let x = Tensor::from_f64(&Cpu::new(), &[10, 2, 16], &vec![0.5; 10 * 2 * 16]).unwrap();
//! let y = model.forward(&x).unwrap();
//! assert_eq!(y.shape(), &[10, 2, 16]);
//! ```

// Every `unsafe` block says why it is sound (the kernel launches share one, in `device::cuda::kernels`).
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(unreachable_pub)]

pub mod checkpoint;
pub mod config;
pub mod device;
pub(crate) mod error;
pub mod fs;
pub mod model;
pub mod ops;
pub mod rng;
pub mod run;
pub mod tensor;
#[cfg(test)]
mod testing;
pub mod train;

pub use config::HourGlassConfig;
pub use device::{BackendCore, Cpu, Cuda, DType, DeviceKind};
pub use error::{Error, Result};
pub use model::{HourGlass, Parameters};
pub use ops::Backend;
pub use tensor::{Tensor, Tokens};

/// The README's Rust examples compile and run as doc-tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub(crate) struct ReadmeDoctests;
