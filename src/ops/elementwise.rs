//! Pointwise ops: ReLU and dropout, forward and backward.

use crate::device::cpu::PAR_MIN;
use crate::device::{BackendCore, Cpu, Element};
use crate::error::Result;
use crate::rng::DropoutMask;
use crate::tensor::Tensor;
use rayon::prelude::*;

pub trait ElementwiseOps: BackendCore {
    fn relu_fwd(&self, x: &Self::Storage) -> Result<Self::Storage>;
    /// `dx = dy` where the forward output `y > 0`, else 0.
    fn relu_bwd(&self, y: &Self::Storage, dy: &Self::Storage) -> Result<Self::Storage>;
    /// `x[n] · factor(n)`: dropout forward, and (the same map) its backward on the gradient.
    fn dropout(&self, x: &Self::Storage, mask: DropoutMask) -> Result<Self::Storage>;
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
        Ok(map_indexed(x, |i, v| {
            v * T::from_f64(mask.factor(i as u64))
        }))
    }
}

pub fn relu<B: ElementwiseOps>(x: &Tensor<B>) -> Result<Tensor<B>> {
    Tensor::from_storage(x.backend(), x.shape(), x.backend().relu_fwd(x.storage())?)
}

pub fn relu_backward<B: ElementwiseOps>(y: &Tensor<B>, dy: &Tensor<B>) -> Result<Tensor<B>> {
    dy.expect_shape("relu output gradient", y.shape())?;
    Tensor::from_storage(
        y.backend(),
        y.shape(),
        y.backend().relu_bwd(y.storage(), dy.storage())?,
    )
}

/// Dropout with a seeded mask; `None` (evaluation, or p = 0) is the identity. Backward is the same call on
/// the gradient with the same mask.
pub fn dropout<B: ElementwiseOps>(x: Tensor<B>, mask: Option<DropoutMask>) -> Result<Tensor<B>> {
    match mask {
        None => Ok(x),
        Some(m) => {
            Tensor::from_storage(x.backend(), x.shape(), x.backend().dropout(x.storage(), m)?)
        }
    }
}
