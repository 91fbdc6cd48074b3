//! Pointwise ops: ReLU fused with the dropout after it (and with rounding to bf16 for the GEMM after that),
//! dropout, forward and backward; scaling in place (gradient clipping).

use crate::device::cpu::PAR_MIN;
use crate::device::cuda::pointwise_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::Result;
use crate::rng::DropoutMask;
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

pub trait ElementwiseOps: BackendCore {
    /// `dropout(relu(x))` (`relu(x)` without a mask): the same products as the two ops in turn.
    fn relu_dropout(&self, x: &Self::Storage, mask: Option<DropoutMask>) -> Result<Self::Storage>;
    /// `relu_dropout` rounded to bf16 (for the GEMM that takes it).
    fn relu_dropout_bf16(
        &self,
        x: &Self::Storage,
        mask: Option<DropoutMask>,
    ) -> Result<Self::Bf16Storage>;
    /// Its gradient: `dx = dy · factor` where `x > 0` (`x` the ReLU's input or output), else 0.
    fn relu_dropout_bwd(
        &self,
        x: &Self::Storage,
        dy: &Self::Storage,
        mask: Option<DropoutMask>,
    ) -> Result<Self::Storage>;
    /// `x[n] · factor(n)`: dropout forward, and (the same map) its backward on the gradient.
    fn dropout(&self, x: &Self::Storage, mask: DropoutMask) -> Result<Self::Storage>;
    /// `x[n] ← x[n] · factor` in place, `factor` rounded to the element type first.
    fn scale(&self, x: &mut Self::Storage, factor: f64) -> Result<()>;
}

/// `f(index, value, factor)` over `x`, with each element's dropout factor (1 without a mask), in blocks of four: one
/// Philox call each (its four words), as the kernels do.
fn map_with_factors<T: Element>(
    x: &[T],
    mask: Option<DropoutMask>,
    f: impl Fn(usize, T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let apply = |(block, (out, x)): (usize, (&mut [T], &[T]))| {
        let factors = mask.map_or([1.0; 4], |m| m.factors4(block as u64));
        for (j, ((o, &v), factor)) in out.iter_mut().zip(x).zip(factors).enumerate() {
            *o = f(4 * block + j, v, T::from_f64(factor));
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
    out
}

impl<T: Element> ElementwiseOps for Cpu<T> {
    fn relu_dropout(&self, x: &Vec<T>, mask: Option<DropoutMask>) -> Result<Vec<T>> {
        Ok(map_with_factors(x, mask, |_, v, factor| {
            let relu = if v > T::zero() { v } else { T::zero() };
            match mask {
                Some(_) => relu * factor,
                None => relu,
            }
        }))
    }
    fn relu_dropout_bf16(&self, x: &Vec<T>, mask: Option<DropoutMask>) -> Result<Vec<half::bf16>> {
        self.round_to_bf16(&self.relu_dropout(x, mask)?)
    }
    fn relu_dropout_bwd(
        &self,
        x: &Vec<T>,
        dy: &Vec<T>,
        mask: Option<DropoutMask>,
    ) -> Result<Vec<T>> {
        Ok(map_with_factors(dy, mask, |i, g, factor| {
            let g = match mask {
                Some(_) => g * factor,
                None => g,
            };
            if x[i] > T::zero() {
                g
            } else {
                T::zero()
            }
        }))
    }
    fn dropout(&self, x: &Vec<T>, mask: DropoutMask) -> Result<Vec<T>> {
        Ok(map_with_factors(x, Some(mask), |_, v, factor| v * factor))
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
    fn relu_dropout(
        &self,
        x: &CudaSlice<f32>,
        mask: Option<DropoutMask>,
    ) -> Result<CudaSlice<f32>> {
        let (seed, threshold, scale, on) = self.dropout_args(mask)?;
        // SAFETY: relu_dropout_f32 writes every element (grid-stride over blocks of four covering n).
        let mut y = unsafe { self.alloc_uninit(x.len()) }?;
        let (config, n) = (pointwise_config(x.len().div_ceil(4)), x.len() as i64);
        self.relu_dropout_f32(config, x, &mut y, n, seed, threshold, scale, on)?;
        Ok(y)
    }

    fn relu_dropout_bf16(
        &self,
        x: &CudaSlice<f32>,
        mask: Option<DropoutMask>,
    ) -> Result<CudaSlice<half::bf16>> {
        let (seed, threshold, scale, on) = self.dropout_args(mask)?;
        // SAFETY: relu_dropout_bf16 writes every element, as the f32 kernel does.
        let mut y = unsafe { self.alloc_uninit(x.len()) }?;
        let (config, n) = (pointwise_config(x.len().div_ceil(4)), x.len() as i64);
        self.relu_dropout_bf16(config, x, &mut y, n, seed, threshold, scale, on)?;
        Ok(y)
    }

    fn relu_dropout_bwd(
        &self,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        mask: Option<DropoutMask>,
    ) -> Result<CudaSlice<f32>> {
        let (seed, threshold, scale, on) = self.dropout_args(mask)?;
        // SAFETY: relu_dropout_bwd_f32 writes every element (grid-stride over blocks of four covering n).
        let mut dx = unsafe { self.alloc_uninit(dy.len()) }?;
        let (config, n) = (pointwise_config(dy.len().div_ceil(4)), dy.len() as i64);
        self.relu_dropout_bwd_f32(config, x, dy, &mut dx, n, seed, threshold, scale, on)?;
        Ok(dx)
    }

    fn dropout(&self, x: &CudaSlice<f32>, mask: DropoutMask) -> Result<CudaSlice<f32>> {
        let n = x.len() as i64;
        let (seed, threshold) = (self.seed_ptr(Some(&mask))?, mask.threshold());
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
    relu_dropout(x, None, false)
}

/// `dx = dy` where `y = relu(x) > 0`, else 0.
pub fn relu_backward<B: ElementwiseOps>(y: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    relu_dropout_backward(y, dy, None)
}

/// `dropout(relu(x))` in one pass (the feed-forward's ReLU and the dropout after it), rounded to bf16 with
/// `bf16` (for the GEMM after it). The same values as `relu`, `dropout` (and `Tensor::to_bf16`) in turn.
pub fn relu_dropout<B: ElementwiseOps>(
    x: &Tensor<B>,
    mask: Option<DropoutMask>,
    bf16: bool,
) -> Result<Tensor<B>> {
    let b = x.backend();
    if bf16 {
        Tensor::from_bf16_storage(b, x.shape(), b.relu_dropout_bf16(x.storage()?, mask)?)
    } else {
        Tensor::from_storage(b, x.shape(), b.relu_dropout(x.storage()?, mask)?)
    }
}

/// The gradient of `relu_dropout` from its output's, given the ReLU's input `x` (or its output: the same
/// places are positive).
pub fn relu_dropout_backward<B: ElementwiseOps>(
    x: &Tensor<B>,
    dy: &Tensor<B>,
    mask: Option<DropoutMask>,
) -> Result<Tensor<B>> {
    dy.expect_shape("relu output gradient", x.shape())?;
    let b = x.backend();
    Tensor::from_storage(
        b,
        x.shape(),
        b.relu_dropout_bwd(x.storage()?, dy.storage()?, mask)?,
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
