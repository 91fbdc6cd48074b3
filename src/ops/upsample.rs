//! NaiveUpSampling(k) fused with the residual add: `y[t] = x[t] + short[t / k]` for `x[T, B, D]`,
//! `short[ceil(T/k), B, D]` (each shortened vector repeated k times, truncated to T).

use crate::device::cuda::rows_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor};
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

/// Sizes of one upsampling: `[seq, batch, d]` at full length, `factor` times shorter below.
#[derive(Clone, Copy, Debug)]
pub struct UpsampleDims {
    pub(crate) seq: usize,
    pub(crate) batch: usize,
    pub(crate) d: usize,
    pub(crate) factor: usize,
}

impl UpsampleDims {
    pub(crate) fn short_len(&self) -> usize {
        self.seq.div_ceil(self.factor)
    }
}

pub trait UpsampleOps: BackendCore {
    fn upsample_add_fwd(
        &self,
        x: &Self::Storage,
        short: &Self::Storage,
        d: UpsampleDims,
    ) -> Result<Self::Storage>;
    /// Gradient with respect to `short` (the gradient with respect to `x` is `dy` itself).
    fn upsample_bwd(&self, dy: &Self::Storage, d: UpsampleDims) -> Result<Self::Storage>;
}

impl<T: Element> UpsampleOps for Cpu<T> {
    fn upsample_add_fwd(&self, x: &Vec<T>, short: &Vec<T>, d: UpsampleDims) -> Result<Vec<T>> {
        let row = d.batch * d.d;
        let mut y = x.clone();
        y.par_chunks_mut(row).enumerate().for_each(|(t, y_row)| {
            let src = &short[(t / d.factor) * row..][..row];
            y_row.iter_mut().zip(src).for_each(|(o, &s)| *o += s);
        });
        Ok(y)
    }

    fn upsample_bwd(&self, dy: &Vec<T>, d: UpsampleDims) -> Result<Vec<T>> {
        let row = d.batch * d.d;
        let mut ds = vec![T::zero(); d.short_len() * row];
        ds.par_chunks_mut(row).enumerate().for_each(|(s, ds_row)| {
            for t in s * d.factor..((s + 1) * d.factor).min(d.seq) {
                ds_row
                    .iter_mut()
                    .zip(&dy[t * row..][..row])
                    .for_each(|(o, &g)| *o += g);
            }
        });
        Ok(ds)
    }
}

// CUDA half: `kernels/upsample.cu`, a 2-D grid over (position, element of the `batch · d` row).
impl UpsampleOps for Cuda {
    fn upsample_add_fwd(
        &self,
        x: &CudaSlice<f32>,
        short: &CudaSlice<f32>,
        d: UpsampleDims,
    ) -> Result<CudaSlice<f32>> {
        let row = d.batch * d.d;
        // SAFETY: upsample_add_fwd_f32 writes every (position, element).
        let mut y = unsafe { self.alloc_uninit(d.seq * row) }?;
        let (seq, row_len, factor) = (d.seq as i64, row as i64, d.factor as i32);
        let config = rows_config(d.seq, row);
        self.upsample_add_fwd_f32(config, x, short, &mut y, seq, row_len, factor)?;
        Ok(y)
    }

    fn upsample_bwd(&self, dy: &CudaSlice<f32>, d: UpsampleDims) -> Result<CudaSlice<f32>> {
        let row = d.batch * d.d;
        // SAFETY: upsample_bwd_f32 writes every (shortened position, element).
        let mut ds = unsafe { self.alloc_uninit(d.short_len() * row) }?;
        let (seq, row_len, factor) = (d.seq as i64, row as i64, d.factor as i32);
        let config = rows_config(d.short_len(), row);
        self.upsample_bwd_f32(config, dy, &mut ds, seq, row_len, factor)?;
        Ok(ds)
    }
}

fn dims(x_shape: &[usize], factor: usize) -> Result<UpsampleDims> {
    let [seq, batch, d] = *x_shape else {
        return Err(shape_err!(
            "upsampling target must be [seq, batch, d_model], got {x_shape:?}"
        ));
    };
    check_nonempty("upsampling target", x_shape)?;
    if factor == 0 {
        return Err(shape_err!("upsampling factor must be at least 1, got 0"));
    }
    Ok(UpsampleDims {
        seq,
        batch,
        d,
        factor,
    })
}

/// `x + NaiveUpSampling(factor)(short)` truncated to `x`'s length.
pub fn forward_add<B: UpsampleOps>(
    x: &Tensor<B>,
    short: &Tensor<B>,
    factor: usize,
) -> Result<Tensor<B>> {
    let d = dims(x.shape(), factor)?;
    short.expect_shape(
        "shortened input to upsampling",
        &[d.short_len(), d.batch, d.d],
    )?;
    let y = x
        .backend()
        .upsample_add_fwd(x.storage()?, short.storage()?, d)?;
    Tensor::from_storage(x.backend(), x.shape(), y)
}

/// Gradient of `forward_add` with respect to `short`.
pub fn backward<B: UpsampleOps>(dy: &Tensor<B>, factor: usize) -> Result<Tensor<B>> {
    let d = dims(dy.shape(), factor)?;
    let ds = dy.backend().upsample_bwd(dy.storage()?, d)?;
    Tensor::from_storage(dy.backend(), &[d.short_len(), d.batch, d.d], ds)
}
