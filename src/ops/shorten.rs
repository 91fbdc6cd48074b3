//! ShiftRight(shift) fused with AvgPoolShortening(k) along the sequence of `x[T, B, D]`.
//!
//! Shortened row `s` averages the shifted rows `s·k .. min(s·k+k, T)`; shifted row `t` is `x[t-shift]`
//! (zero for `t < shift`). The last, partial window averages only the rows present, like PyTorch's
//! `avg_pool1d(k, ceil_mode=True)`. Output length `ceil(T / k)`.

use crate::device::cuda::rows_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor};
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

/// Sizes of one shortening: `[seq, batch, d]` down by `factor` after shifting right by `shift`.
#[derive(Clone, Copy, Debug)]
pub struct ShortenDims {
    pub(crate) seq: usize,
    pub(crate) batch: usize,
    pub(crate) d: usize,
    pub(crate) factor: usize,
    pub(crate) shift: usize,
}

impl ShortenDims {
    pub(crate) fn short_len(&self) -> usize {
        self.seq.div_ceil(self.factor)
    }
    /// Shifted rows `[lo, hi)` averaged into shortened row `s`, and how many rows that window holds.
    pub(crate) fn window(&self, s: usize) -> (usize, usize, usize) {
        let lo = s * self.factor;
        let hi = (lo + self.factor).min(self.seq);
        (lo, hi, hi - lo)
    }
}

pub trait ShortenOps: BackendCore {
    fn shorten_fwd(&self, x: &Self::Storage, d: ShortenDims) -> Result<Self::Storage>;
    fn shorten_bwd(&self, dshort: &Self::Storage, d: ShortenDims) -> Result<Self::Storage>;
}

impl<T: Element> ShortenOps for Cpu<T> {
    fn shorten_fwd(&self, x: &Vec<T>, d: ShortenDims) -> Result<Vec<T>> {
        let row = d.batch * d.d;
        let mut out = vec![T::zero(); d.short_len() * row];
        out.par_chunks_mut(row)
            .enumerate()
            .for_each(|(s, out_row)| {
                let (lo, hi, count) = d.window(s);
                let inv = T::from_f64(1.0 / count as f64);
                for t in lo.max(d.shift)..hi {
                    let src = &x[(t - d.shift) * row..][..row];
                    out_row
                        .iter_mut()
                        .zip(src)
                        .for_each(|(o, &v)| *o += v * inv);
                }
            });
        Ok(out)
    }

    fn shorten_bwd(&self, dshort: &Vec<T>, d: ShortenDims) -> Result<Vec<T>> {
        let row = d.batch * d.d;
        let mut dx = vec![T::zero(); d.seq * row];
        // Input row `t` was shifted to `t + shift` and lands in exactly one window (or beyond the end).
        dx.par_chunks_mut(row).enumerate().for_each(|(t, dx_row)| {
            let shifted = t + d.shift;
            if shifted < d.seq {
                let s = shifted / d.factor;
                let inv = T::from_f64(1.0 / d.window(s).2 as f64);
                let src = &dshort[s * row..][..row];
                dx_row.iter_mut().zip(src).for_each(|(o, &g)| *o = g * inv);
            }
        });
        Ok(dx)
    }
}

// CUDA half: `kernels/shorten.cu`, a 2-D grid over (position, element of the `batch · d` row).
impl ShortenOps for Cuda {
    fn shorten_fwd(&self, x: &CudaSlice<f32>, d: ShortenDims) -> Result<CudaSlice<f32>> {
        let row = d.batch * d.d;
        // SAFETY: shorten_fwd_f32 writes every (shortened position, element).
        let mut out = unsafe { self.alloc_uninit(d.short_len() * row) }?;
        let (seq, row_len, factor, shift) =
            (d.seq as i64, row as i64, d.factor as i32, d.shift as i64);
        let config = rows_config(d.short_len(), row);
        self.shorten_fwd_f32(config, x, &mut out, seq, row_len, factor, shift)?;
        Ok(out)
    }

    fn shorten_bwd(&self, dshort: &CudaSlice<f32>, d: ShortenDims) -> Result<CudaSlice<f32>> {
        let row = d.batch * d.d;
        // SAFETY: shorten_bwd_f32 writes every (position, element).
        let mut dx = unsafe { self.alloc_uninit(d.seq * row) }?;
        let (seq, row_len, factor, shift) =
            (d.seq as i64, row as i64, d.factor as i32, d.shift as i64);
        let config = rows_config(d.seq, row);
        self.shorten_bwd_f32(config, dshort, &mut dx, seq, row_len, factor, shift)?;
        Ok(dx)
    }
}

fn dims(x_shape: &[usize], factor: usize, shift: usize) -> Result<ShortenDims> {
    let [seq, batch, d] = *x_shape else {
        return Err(shape_err!(
            "shortening input must be [seq, batch, d_model], got {x_shape:?}"
        ));
    };
    check_nonempty("shortening input", x_shape)?;
    if factor == 0 {
        return Err(shape_err!("shortening factor must be at least 1, got 0"));
    }
    Ok(ShortenDims {
        seq,
        batch,
        d,
        factor,
        shift,
    })
}

/// `AvgPoolShortening(factor)(ShiftRight(shift)(x))`.
pub fn forward<B: ShortenOps>(x: &Tensor<B>, factor: usize, shift: usize) -> Result<Tensor<B>> {
    let d = dims(x.shape(), factor, shift)?;
    let out = x.backend().shorten_fwd(x.storage()?, d)?;
    Tensor::from_storage(x.backend(), &[d.short_len(), d.batch, d.d], out)
}

/// Gradient of `forward` for an input of shape `x_shape`.
pub fn backward<B: ShortenOps>(
    dshort: &Tensor<B>,
    x_shape: &[usize],
    factor: usize,
    shift: usize,
) -> Result<Tensor<B>> {
    let d = dims(x_shape, factor, shift)?;
    dshort.expect_shape("shortened gradient", &[d.short_len(), d.batch, d.d])?;
    let dx = dshort.backend().shorten_bwd(dshort.storage()?, d)?;
    Tensor::from_storage(dshort.backend(), x_shape, dx)
}
