//! Pointwise ops: ReLU and dropout, forward and backward; scaling in place (gradient clipping).

use crate::device::cpu::PAR_MIN;
use crate::device::cuda::pointwise_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::Result;
use crate::rng::DropoutMask;
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

pub trait ElementwiseOps: BackendCore {
    fn relu_fwd(&self, x: &Self::Storage) -> Result<Self::Storage>;
    /// `dx = dy` where the forward output `y > 0`, else 0.
    fn relu_bwd(&self, y: &Self::Storage, dy: &Self::Storage) -> Result<Self::Storage>;
    /// `x[n] · factor(n)`: dropout forward, and (the same map) its backward on the gradient.
    fn dropout(&self, x: &Self::Storage, mask: DropoutMask) -> Result<Self::Storage>;
    /// `x[n] ← x[n] · factor` in place, `factor` rounded to the element type first.
    fn scale(&self, x: &mut Self::Storage, factor: f64) -> Result<()>;
}

/// Maps `f(index, value)` over a slice, in parallel when it is large.
fn map_indexed<T: Element>(x: &[T], f: impl Fn(usize, T) -> T + Sync) -> Vec<T> {
    if x.len() >= PAR_MIN {
        x.par_iter().enumerate().map(|(i, &v)| f(i, v)).collect()
    } else {
        x.iter().enumerate().map(|(i, &v)| f(i, v)).collect()
    }
}

impl<T: Element> ElementwiseOps for Cpu<T> {
    fn relu_fwd(&self, x: &Vec<T>) -> Result<Vec<T>> {
        Ok(map_indexed(
            x,
            |_, v| if v > T::zero() { v } else { T::zero() },
        ))
    }
    fn relu_bwd(&self, y: &Vec<T>, dy: &Vec<T>) -> Result<Vec<T>> {
        Ok(map_indexed(dy, |i, g| {
            if y[i] > T::zero() {
                g
            } else {
                T::zero()
            }
        }))
    }
    fn dropout(&self, x: &Vec<T>, mask: DropoutMask) -> Result<Vec<T>> {
        // Blocks of four elements: one Philox call each (its four words), as the kernel does.
        let mut out = vec![T::zero(); x.len()];
        let apply = |(block, (out, x)): (usize, (&mut [T], &[T]))| {
            let factors = mask.factors4(block as u64);
            for ((o, &v), f) in out.iter_mut().zip(x).zip(factors) {
                *o = v * T::from_f64(f);
            }
        };
        if x.len() >= PAR_MIN {
            out.par_chunks_mut(4)
                .zip(x.par_chunks(4))
                .enumerate()
                .for_each(apply);
        } else {
            out.chunks_mut(4)
                .zip(x.chunks(4))
                .enumerate()
                .for_each(apply);
        }
        Ok(out)
    }
    fn scale(&self, x: &mut Vec<T>, factor: f64) -> Result<()> {
        let f = T::from_f64(factor);
        if x.len() >= PAR_MIN {
            x.par_iter_mut().for_each(|v| *v = *v * f);
        } else {
            x.iter_mut().for_each(|v| *v = *v * f);
        }
        Ok(())
    }
}

// CUDA half: grid-stride pointwise kernels in `kernels/elementwise.cu`.
impl ElementwiseOps for Cuda {
    fn relu_fwd(&self, x: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        let n = x.len() as i64;
        // SAFETY: relu_fwd_f32 writes every element (grid-stride over n).
        let mut y = unsafe { self.alloc_uninit(x.len()) }?;
        self.relu_fwd_f32(pointwise_config(x.len()), x, &mut y, n)?;
        Ok(y)
    }

    fn relu_bwd(&self, y: &CudaSlice<f32>, dy: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        let n = dy.len() as i64;
        // SAFETY: relu_bwd_f32 writes every element (grid-stride over n).
        let mut dx = unsafe { self.alloc_uninit(dy.len()) }?;
        self.relu_bwd_f32(pointwise_config(dy.len()), y, dy, &mut dx, n)?;
        Ok(dx)
    }

    fn dropout(&self, x: &CudaSlice<f32>, mask: DropoutMask) -> Result<CudaSlice<f32>> {
        let n = x.len() as i64;
        let (seed, threshold) = (mask.seed, mask.threshold());
        // The CPU half multiplies by `scale()` rounded to f32 too, so kept values match exactly.
        let scale = mask.scale() as f32;
        // SAFETY: dropout_f32 writes every element (grid-stride over blocks of four covering n).
        let mut out = unsafe { self.alloc_uninit(x.len()) }?;
        self.dropout_f32(
            pointwise_config(x.len().div_ceil(4)),
            x,
            &mut out,
            n,
            seed,
            threshold,
            scale,
        )?;
        Ok(out)
    }

    fn scale(&self, x: &mut CudaSlice<f32>, factor: f64) -> Result<()> {
        let len = x.len();
        if len == 0 {
            return Ok(());
        }
        let (n, factor) = (len as i64, factor as f32);
        self.scale_f32(pointwise_config(len), x, n, factor)
    }
}

pub fn relu<B: ElementwiseOps>(x: &Tensor<B>) -> Result<Tensor<B>> {
    Tensor::from_storage(x.backend(), x.shape(), x.backend().relu_fwd(x.storage()?)?)
}

pub fn relu_backward<B: ElementwiseOps>(y: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    dy.expect_shape("relu output gradient", y.shape())?;
    Tensor::from_storage(
        y.backend(),
        y.shape(),
        y.backend().relu_bwd(y.storage()?, dy.storage()?)?,
    )
}

/// Dropout with a seeded mask; `None` (evaluation, or p = 0) is the identity. Backward is the same call on
/// the gradient with the same mask.
pub fn dropout<B: ElementwiseOps>(x: Tensor<B>, mask: Option<DropoutMask>) -> Result<Tensor<B>> {
    match mask {
        None => Ok(x),
        Some(m) => Tensor::from_storage(
            x.backend(),
            x.shape(),
            x.backend().dropout(x.storage()?, m)?,
        ),
    }
}

/// Multiplies every element of `x` by `factor`, in place (`factor` rounded to the element type, so the CPU's
/// f32 and CUDA agree bit for bit).
pub fn scale<B: ElementwiseOps>(x: &mut Tensor<B>, factor: f64) -> Result<()> {
    let b = x.backend().clone();
    b.scale(x.storage_mut()?, factor)
}
