//! Softmax + cross-entropy over the last dimension, fused: one pass gives each row's loss
//! `logsumexp(z) − z[target]` and the gradient `(softmax(z) − onehot(target)) · scale` (scale = 1/rows for a
//! mean loss). Kernel: `kernels/loss.cu`.

use crate::device::cuda::warp_per_row_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor, Tokens};
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

pub trait LossOps: BackendCore {
    /// Returns `(loss[rows], dlogits[rows, vocab])` for `logits[rows, vocab]`.
    fn softmax_xent(
        &self,
        logits: &Self::Storage,
        targets: &Self::Ids,
        vocab: usize,
        scale: f64,
    ) -> Result<(Self::Storage, Self::Storage)>;
}

impl<T: Element> LossOps for Cpu<T> {
    fn softmax_xent(
        &self,
        logits: &Vec<T>,
        targets: &Vec<u32>,
        vocab: usize,
        scale: f64,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let mut dlogits = vec![T::zero(); logits.len()];
        let scale = T::from_f64(scale);
        let loss = dlogits
            .par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .zip(targets.par_iter())
            .map(|((dz, z), &t)| {
                let m = z.iter().fold(z[0], |a, &b| a.max(b));
                let sum = z.iter().fold(T::zero(), |s, &v| s + (v - m).exp());
                let lse = m + sum.ln();
                for (j, (dzj, &zj)) in dz.iter_mut().zip(z).enumerate() {
                    let onehot = if j == t as usize { T::one() } else { T::zero() };
                    *dzj = ((zj - lse).exp() - onehot) * scale;
                }
                lse - z[t as usize]
            })
            .collect();
        Ok((loss, dlogits))
    }
}

impl LossOps for Cuda {
    fn softmax_xent(
        &self,
        logits: &CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        vocab: usize,
        scale: f64,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let rows = targets.len();
        // SAFETY: softmax_xent_f32 writes every row's loss and all of its logits' gradient (a warp per row).
        let (mut loss, mut dlogits) =
            unsafe { (self.alloc_uninit(rows)?, self.alloc_uninit(rows * vocab)?) };
        let (rows_i, vocab_i, scale) = (rows as i64, vocab as i32, scale as f32);
        self.softmax_xent_f32(
            warp_per_row_config(rows),
            logits,
            targets,
            &mut loss,
            &mut dlogits,
            rows_i,
            vocab_i,
            scale,
        )?;
        Ok((loss, dlogits))
    }
}

/// Per-row losses `[rows]` and the gradient of `scale · Σ loss` with respect to `logits[rows, vocab]`.
pub fn softmax_cross_entropy<B: LossOps>(
    logits: &Tensor<B>,
    targets: &Tokens<B>,
    scale: f64,
) -> Result<(Tensor<B>, Tensor<B>)> {
    let [rows, vocab] = *logits.shape() else {
        return Err(shape_err!(
            "logits must be [rows, vocab], got {:?}",
            logits.shape()
        ));
    };
    check_nonempty("logits", logits.shape())?;
    if targets.len() != rows {
        return Err(shape_err!(
            "{} targets for logits of shape {:?}",
            targets.len(),
            logits.shape()
        ));
    }
    if targets.vocab() > vocab {
        return Err(shape_err!(
            "targets checked against a vocabulary of {}, but the logits have {vocab} columns",
            targets.vocab()
        ));
    }
    let b = logits.backend();
    let (loss, dlogits) = b.softmax_xent(logits.storage()?, targets.ids(), vocab, scale)?;
    Ok((
        Tensor::from_storage(b, &[rows], loss)?,
        Tensor::from_storage(b, logits.shape(), dlogits)?,
    ))
}
