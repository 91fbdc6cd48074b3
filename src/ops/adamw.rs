//! One AdamW step, as PyTorch's `torch.optim.AdamW`: `p ← p·(1 − lr·wd)`, then
//! `p ← p − lr · m̂ / (sqrt(v̂) + eps)` with `m̂ = m / (1 − β1^t)`, `v̂ = v / (1 − β2^t)` (moments updated first),
//! on the gradient times `grad_scale` (gradient clipping's factor, folded in: no pass of its own over the
//! gradients; the same f32 product the separate scaling computed). Fused into one kernel per parameter tensor:
//! `kernels/adamw.cu`.

use crate::device::cuda::pointwise_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

/// Hyper-parameters of one step; `step` counts from 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    /// Multiplies the gradient first (1 = as it is; `max_norm / norm` when clipping).
    pub grad_scale: f64,
}

impl AdamWStep {
    /// `(1 − β1^t, 1 − β2^t)`.
    fn bias_corrections(&self) -> (f64, f64) {
        (
            1.0 - self.beta1.powi(self.step as i32),
            1.0 - self.beta2.powi(self.step as i32),
        )
    }
}

pub trait AdamWOps: BackendCore {
    fn adamw(
        &self,
        p: &mut Self::Storage,
        g: &Self::Storage,
        m: &mut Self::Storage,
        v: &mut Self::Storage,
        h: AdamWStep,
    ) -> Result<()>;
}

impl<T: Element> AdamWOps for Cpu<T> {
    fn adamw(
        &self,
        p: &mut Vec<T>,
        g: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        h: AdamWStep,
    ) -> Result<()> {
        let (b1, b2) = h.bias_corrections();
        let f = T::from_f64;
        let (lr, beta1, beta2, eps, decay) = (
            f(h.lr),
            f(h.beta1),
            f(h.beta2),
            f(h.eps),
            f(1.0 - h.lr * h.weight_decay),
        );
        let (b1, b2, scale) = (f(b1), f(b2), f(h.grad_scale));
        p.par_iter_mut()
            .zip(g.par_iter())
            .zip(m.par_iter_mut().zip(v.par_iter_mut()))
            .for_each(|((p, &g), (m, v))| {
                let g = g * scale;
                *m = beta1 * *m + (T::one() - beta1) * g;
                *v = beta2 * *v + (T::one() - beta2) * g * g;
                *p = *p * decay - lr * (*m / b1) / ((*v / b2).sqrt() + eps);
            });
        Ok(())
    }
}

impl AdamWOps for Cuda {
    fn adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        h: AdamWStep,
    ) -> Result<()> {
        let (b1, b2) = h.bias_corrections();
        let n = p.len();
        self.adamw_f32(
            pointwise_config(n),
            p,
            g,
            m,
            v,
            n as i64,
            h.lr as f32,
            h.beta1 as f32,
            h.beta2 as f32,
            h.eps as f32,
            h.weight_decay as f32,
            b1 as f32,
            b2 as f32,
            h.grad_scale as f32,
        )
    }
}

/// Updates `param` in place from `grad`, with moment buffers `m` and `v` of the same shape.
pub fn step<B: AdamWOps>(
    param: &mut Tensor<B>,
    grad: &Tensor<B>,
    m: &mut Tensor<B>,
    v: &mut Tensor<B>,
    h: AdamWStep,
) -> Result<()> {
    for (what, t) in [
        ("gradient", grad.shape()),
        ("first moment", m.shape()),
        ("second moment", v.shape()),
    ] {
        if t != param.shape() {
            return Err(shape_err!(
                "AdamW: {what} has shape {t:?}, the parameter {:?}",
                param.shape()
            ));
        }
    }
    if h.step == 0 {
        return Err(shape_err!("AdamW step counts from 1, got 0"));
    }
    if !(h.grad_scale.is_finite() && h.grad_scale > 0.0) {
        return Err(shape_err!(
            "AdamW: the gradient scale must be positive and finite, got {}",
            h.grad_scale
        ));
    }
    let b = param.backend().clone();
    b.adamw(
        param.storage_mut()?,
        grad.storage()?,
        m.storage_mut()?,
        v.storage_mut()?,
        h,
    )
}
