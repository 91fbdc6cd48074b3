//! Fold and unfold of sequence windows: the reshapes behind LinearPoolingShortening (fold k shifted vectors
//! into one k·d vector, then Linear(k·d, d)) and LinearUpSampling (Linear(d, k·d), then unfold into k vectors).
//!
//! `fold(x[T, B, D], k, shift)[s, b, r·D + e] = x[s·k + r − shift, b, e]` when `shift <= s·k + r < T`, else 0
//! (ShiftRight(shift), then zero-padding of the last, partial window); output `[ceil(T/k), B, k·D]`.
//! `unfold` is its adjoint: `unfold(g, k, shift, T)[t, b, e] = g[p / k, b, (p % k)·D + e]` with `p = t + shift`
//! when `p < T`, else 0. So fold's backward is unfold and unfold's backward is fold (same k and shift), and
//! LinearUpSampling's forward is `unfold(·, k, 0, T)`. Kernels: `kernels/window.cu`.

use crate::device::cuda::rows_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor};
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

/// Sizes of one fold: full length `seq`, `batch`, width `d`, window `factor`, right shift `shift`.
#[derive(Clone, Copy, Debug)]
pub struct WindowDims {
    pub(crate) seq: usize,
    pub(crate) batch: usize,
    pub(crate) d: usize,
    pub(crate) factor: usize,
    pub(crate) shift: usize,
}

impl WindowDims {
    pub(crate) fn short_len(&self) -> usize {
        self.seq.div_ceil(self.factor)
    }
    /// The full-length row that shifted position `p` reads, if any.
    fn source(&self, p: usize) -> Option<usize> {
        (p >= self.shift && p < self.seq).then(|| p - self.shift)
    }
}

pub trait WindowOps: BackendCore {
    /// `[T, B, D]` → `[ceil(T/k), B, k·D]`.
    fn window_fold(&self, x: &Self::Storage, d: WindowDims) -> Result<Self::Storage>;
    /// `[ceil(T/k), B, k·D]` → `[T, B, D]`, the adjoint of `window_fold`.
    fn window_unfold(&self, g: &Self::Storage, d: WindowDims) -> Result<Self::Storage>;
}

impl<T: Element> WindowOps for Cpu<T> {
    fn window_fold(&self, x: &Vec<T>, d: WindowDims) -> Result<Vec<T>> {
        let mut out = vec![T::zero(); d.short_len() * d.batch * d.factor * d.d];
        // One chunk per (window s, batch b, slot r), in that order.
        out.par_chunks_mut(d.d).enumerate().for_each(|(row, dst)| {
            let (r, b, s) = (
                row % d.factor,
                (row / d.factor) % d.batch,
                row / (d.factor * d.batch),
            );
            if let Some(t) = d.source(s * d.factor + r) {
                dst.copy_from_slice(&x[(t * d.batch + b) * d.d..][..d.d]);
            }
        });
        Ok(out)
    }

    fn window_unfold(&self, g: &Vec<T>, d: WindowDims) -> Result<Vec<T>> {
        let mut dx = vec![T::zero(); d.seq * d.batch * d.d];
        dx.par_chunks_mut(d.d).enumerate().for_each(|(row, dst)| {
            let (t, b) = (row / d.batch, row % d.batch);
            let p = t + d.shift;
            if p < d.seq {
                let src = (((p / d.factor) * d.batch + b) * d.factor + p % d.factor) * d.d;
                dst.copy_from_slice(&g[src..][..d.d]);
            }
        });
        Ok(dx)
    }
}

/// The kernels' size arguments: seq, batch, d, factor, shift.
fn window_args(d: WindowDims) -> (i64, i32, i64, i32, i64) {
    (
        d.seq as i64,
        d.batch as i32,
        d.d as i64,
        d.factor as i32,
        d.shift as i64,
    )
}

impl WindowOps for Cuda {
    fn window_fold(&self, x: &CudaSlice<f32>, d: WindowDims) -> Result<CudaSlice<f32>> {
        let rows = d.short_len() * d.batch * d.factor;
        // SAFETY: window_fold_f32 writes every row, zeros outside the sequence.
        let mut out = unsafe { self.alloc_uninit(rows * d.d) }?;
        let (seq, batch, width, factor, shift) = window_args(d);
        let config = rows_config(rows, d.d);
        let short_len = d.short_len() as i64;
        self.window_fold_f32(
            config, x, &mut out, seq, batch, width, factor, shift, short_len,
        )?;
        Ok(out)
    }
    fn window_unfold(&self, g: &CudaSlice<f32>, d: WindowDims) -> Result<CudaSlice<f32>> {
        let rows = d.seq * d.batch;
        // SAFETY: window_unfold_f32 writes every row, zeros past the sequence.
        let mut dx = unsafe { self.alloc_uninit(rows * d.d) }?;
        let (seq, batch, width, factor, shift) = window_args(d);
        self.window_unfold_f32(
            rows_config(rows, d.d),
            g,
            &mut dx,
            seq,
            batch,
            width,
            factor,
            shift,
        )?;
        Ok(dx)
    }
}

fn dims(full_shape: &[usize], factor: usize, shift: usize) -> Result<WindowDims> {
    let [seq, batch, d] = *full_shape else {
        return Err(shape_err!(
            "window fold needs [seq, batch, d_model], got {full_shape:?}"
        ));
    };
    check_nonempty("window fold input", full_shape)?;
    if factor == 0 {
        return Err(shape_err!("window factor must be at least 1, got 0"));
    }
    Ok(WindowDims {
        seq,
        batch,
        d,
        factor,
        shift,
    })
}

/// ShiftRight(`shift`) then fold windows of `factor` vectors: `[T, B, D]` → `[ceil(T/k), B, k·D]`.
pub fn fold<B: WindowOps>(x: &Tensor<B>, factor: usize, shift: usize) -> Result<Tensor<B>> {
    let d = dims(x.shape(), factor, shift)?;
    let out = x.backend().window_fold(x.storage()?, d)?;
    Tensor::from_storage(x.backend(), &[d.short_len(), d.batch, factor * d.d], out)
}

/// The adjoint of `fold` (its backward, and LinearUpSampling's forward with shift 0): `[ceil(T/k), B, k·D]`
/// → `[T, B, D]` with `full_shape = [T, B, D]`.
pub fn unfold<B: WindowOps>(
    g: &Tensor<B>,
    factor: usize,
    shift: usize,
    full_shape: &[usize],
) -> Result<Tensor<B>> {
    let d = dims(full_shape, factor, shift)?;
    g.expect_shape("folded windows", &[d.short_len(), d.batch, factor * d.d])?;
    let dx = g.backend().window_unfold(g.storage()?, d)?;
    Tensor::from_storage(g.backend(), full_shape, dx)
}
