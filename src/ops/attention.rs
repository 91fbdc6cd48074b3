//! Multi-head scaled dot-product attention with a mask and dropout on the probabilities, fused: the CUDA
//! kernel (`kernels/attention.cu`) is flash-style (tiles, online softmax, no Tq x Tk matrix in memory) and
//! keeps the row logsumexp for backward; the CPU half computes the same function one (batch, head) at a time.
//!
//! Layout: `q[Tq, B, H·dh]`, `k, v[Tk, B, H·dh]` (the sequence-first layout of the reference), `lse[B, H, Tq]`.

use crate::device::cpu::{gemm, MatRef};
use crate::device::cuda::warp_per_row_config;
use crate::device::kernels::AttnParams;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::rng::DropoutMask;
use crate::tensor::{check_nonempty, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig};
use rayon::prelude::*;

/// Which keys each query may see. Every variant gives query `i` a contiguous key range `[lo, hi)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnMask {
    /// Key `j` is visible to query `i` iff `j <= i` (autoregressive).
    Causal,
    /// Every key is visible.
    Full,
    /// Attention-based shortening by `k`: query `i` sees every (shifted) key up to the end of its own window,
    /// `j / k <= i`, i.e. `[0, (i+1)·k)`.
    Funnel(usize),
    /// The per-window variant of shortening: query `i` sees only its own window, `[i·k, (i+1)·k)`.
    Window(usize),
    /// Attention-based upsampling by `k`: full-length query `i` sees shortened keys `j <= i / k`.
    UpCausal(usize),
    /// The per-window variant of upsampling: query `i` sees only shortened key `i / k`.
    UpWindow(usize),
}

impl AttnMask {
    /// The half-open range of keys query `i` sees, out of `kv_len` (empty when `lo >= hi`).
    pub fn key_range(self, i: usize, kv_len: usize) -> (usize, usize) {
        let (lo, hi) = match self {
            AttnMask::Causal => (0, i + 1),
            AttnMask::Full => (0, kv_len),
            AttnMask::Funnel(k) => (0, (i + 1) * k),
            AttnMask::Window(k) => (i * k, (i + 1) * k),
            AttnMask::UpCausal(k) => (0, i / k + 1),
            AttnMask::UpWindow(k) => (i / k, i / k + 1),
        };
        (lo.min(kv_len), hi.min(kv_len))
    }
    /// `(kind, parameter)` as the CUDA kernel reads it (see `mask_range` in `kernels/attention.cu`).
    pub fn code(self) -> (i32, i32) {
        match self {
            AttnMask::Causal => (0, 0),
            AttnMask::Full => (1, 0),
            AttnMask::Funnel(k) => (2, k as i32),
            AttnMask::Window(k) => (3, k as i32),
            AttnMask::UpCausal(k) => (4, k as i32),
            AttnMask::UpWindow(k) => (5, k as i32),
        }
    }
}

/// Sizes of one attention op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub d_head: usize,
}

impl AttnDims {
    pub fn scale(&self) -> f64 {
        1.0 / (self.d_head as f64).sqrt()
    }
    /// Index of probability `(b, h, i, j)` in the dropout stream: the same on every backend.
    pub fn dropout_index(&self, b: usize, h: usize, i: usize, j: usize) -> u64 {
        (((b * self.heads + h) * self.q_len + i) as u64) * self.kv_len as u64 + j as u64
    }
}

/// What attention's backward needs besides its inputs: the output and each row's logsumexp.
pub struct AttnSaved<B: BackendCore> {
    pub out: Tensor<B>,
    pub lse: Tensor<B>,
}

pub trait AttentionOps: BackendCore {
    /// Returns `(out[Tq,B,H·dh], lse[B,H,Tq])`.
    fn attention_fwd(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// Returns `(dq, dk, dv)`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn attention_bwd(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        out: &Self::Storage,
        lse: &Self::Storage,
        dout: &Self::Storage,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)>;
}

/// Copies head `(b, h)` of a `[len, B, H·dh]` tensor into a contiguous `[len, dh]` matrix.
fn gather_head<T: Element>(src: &[T], len: usize, b: usize, h: usize, d: &AttnDims) -> Vec<T> {
    let width = d.heads * d.d_head;
    let mut out = Vec::with_capacity(len * d.d_head);
    for t in 0..len {
        let row = (t * d.batch + b) * width + h * d.d_head;
        out.extend_from_slice(&src[row..row + d.d_head]);
    }
    out
}

/// Writes a contiguous `[len, dh]` matrix back as head `(b, h)` of a `[len, B, H·dh]` tensor.
fn scatter_head<T: Element>(
    dst: &mut [T],
    head: &[T],
    len: usize,
    b: usize,
    h: usize,
    d: &AttnDims,
) {
    let width = d.heads * d.d_head;
    for t in 0..len {
        let row = (t * d.batch + b) * width + h * d.d_head;
        dst[row..row + d.d_head].copy_from_slice(&head[t * d.d_head..][..d.d_head]);
    }
}

fn mat<T>(data: &[T], rows: usize, cols: usize) -> MatRef<'_, T> {
    MatRef {
        data,
        rows,
        cols,
        transposed: false,
    }
}

/// Scaled scores `S = Q·Kᵀ·scale` for one head, then the masked softmax written in place as probabilities
/// `P`; masked entries are 0. Returns each row's logsumexp (0 for a row that sees no key).
fn probabilities<T: Element>(
    qh: &[T],
    kh: &[T],
    d: &AttnDims,
    mask: AttnMask,
    scores: &mut [T],
) -> Vec<T> {
    let (tq, tk) = (d.q_len, d.kv_len);
    gemm(
        mat(qh, tq, d.d_head),
        MatRef {
            transposed: true,
            ..mat(kh, tk, d.d_head)
        },
        scores,
        T::zero(),
    );
    let scale = T::from_f64(d.scale());
    let mut lse = vec![T::zero(); tq];
    for (i, row) in scores.chunks_mut(tk).enumerate() {
        let (lo, hi) = mask.key_range(i, tk);
        if lo >= hi {
            row.iter_mut().for_each(|v| *v = T::zero());
            continue;
        }
        let mut max = row[lo] * scale;
        for &s in &row[lo..hi] {
            max = max.max(s * scale);
        }
        let mut sum = T::zero();
        for s in &mut row[lo..hi] {
            *s = (*s * scale - max).exp();
            sum += *s;
        }
        let inv = T::one() / sum;
        row.iter_mut().enumerate().for_each(|(j, v)| {
            *v = if j >= lo && j < hi {
                *v * inv
            } else {
                T::zero()
            }
        });
        lse[i] = max + sum.ln();
    }
    lse
}

/// Multiplies probabilities by the dropout mask (0 or 1/(1-p)) in place.
fn apply_dropout<T: Element>(
    p: &mut [T],
    b: usize,
    h: usize,
    d: &AttnDims,
    dropout: Option<DropoutMask>,
) {
    let Some(m) = dropout else { return };
    for (i, row) in p.chunks_mut(d.kv_len).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = *v * T::from_f64(m.factor(d.dropout_index(b, h, i, j)));
        }
    }
}

impl<T: Element> AttentionOps for Cpu<T> {
    fn attention_fwd(
        &self,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let per_head: Vec<(Vec<T>, Vec<T>)> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let qh = gather_head(q, d.q_len, b, h, &d);
                let kh = gather_head(k, d.kv_len, b, h, &d);
                let vh = gather_head(v, d.kv_len, b, h, &d);
                let mut p = vec![T::zero(); d.q_len * d.kv_len];
                let lse = probabilities(&qh, &kh, &d, mask, &mut p);
                apply_dropout(&mut p, b, h, &d, dropout);
                let mut oh = vec![T::zero(); d.q_len * d.d_head];
                gemm(
                    mat(&p, d.q_len, d.kv_len),
                    mat(&vh, d.kv_len, d.d_head),
                    &mut oh,
                    T::zero(),
                );
                (oh, lse)
            })
            .collect();
        let mut out = vec![T::zero(); d.q_len * d.batch * d.heads * d.d_head];
        let mut lse = Vec::with_capacity(d.batch * d.heads * d.q_len);
        for (bh, (oh, l)) in per_head.into_iter().enumerate() {
            scatter_head(&mut out, &oh, d.q_len, bh / d.heads, bh % d.heads, &d);
            lse.extend(l);
        }
        Ok((out, lse))
    }

    fn attention_bwd(
        &self,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        out: &Vec<T>,
        _lse: &Vec<T>,
        dout: &Vec<T>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let (tq, tk, dh) = (d.q_len, d.kv_len, d.d_head);
        let scale = T::from_f64(d.scale());
        let per_head: Vec<_> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let qh = gather_head(q, tq, b, h, &d);
                let kh = gather_head(k, tk, b, h, &d);
                let vh = gather_head(v, tk, b, h, &d);
                let oh = gather_head(out, tq, b, h, &d);
                let doh = gather_head(dout, tq, b, h, &d);
                // The CPU recomputes P exactly instead of from the saved logsumexp: same values, simpler.
                let mut p = vec![T::zero(); tq * tk];
                probabilities(&qh, &kh, &d, mask, &mut p);
                let mut p_drop = p.clone();
                apply_dropout(&mut p_drop, b, h, &d, dropout);
                // dV = P_dropᵀ · dO
                let mut dvh = vec![T::zero(); tk * dh];
                gemm(
                    MatRef {
                        transposed: true,
                        ..mat(&p_drop, tq, tk)
                    },
                    mat(&doh, tq, dh),
                    &mut dvh,
                    T::zero(),
                );
                // dP = (dO · Vᵀ) ∘ mask; dS = P ∘ (dP − rowsum(dO ∘ O))
                let mut ds = vec![T::zero(); tq * tk];
                gemm(
                    mat(&doh, tq, dh),
                    MatRef {
                        transposed: true,
                        ..mat(&vh, tk, dh)
                    },
                    &mut ds,
                    T::zero(),
                );
                apply_dropout(&mut ds, b, h, &d, dropout);
                for i in 0..tq {
                    let di = (0..dh).fold(T::zero(), |s, e| s + doh[i * dh + e] * oh[i * dh + e]);
                    for j in 0..tk {
                        ds[i * tk + j] = p[i * tk + j] * (ds[i * tk + j] - di) * scale;
                    }
                }
                let mut dqh = vec![T::zero(); tq * dh];
                gemm(mat(&ds, tq, tk), mat(&kh, tk, dh), &mut dqh, T::zero());
                let mut dkh = vec![T::zero(); tk * dh];
                gemm(
                    MatRef {
                        transposed: true,
                        ..mat(&ds, tq, tk)
                    },
                    mat(&qh, tq, dh),
                    &mut dkh,
                    T::zero(),
                );
                (dqh, dkh, dvh)
            })
            .collect();
        let width = d.heads * dh;
        let mut dq = vec![T::zero(); tq * d.batch * width];
        let mut dk = vec![T::zero(); tk * d.batch * width];
        let mut dv = vec![T::zero(); tk * d.batch * width];
        for (bh, (dqh, dkh, dvh)) in per_head.into_iter().enumerate() {
            let (b, h) = (bh / d.heads, bh % d.heads);
            scatter_head(&mut dq, &dqh, tq, b, h, &d);
            scatter_head(&mut dk, &dkh, tk, b, h, &d);
            scatter_head(&mut dv, &dvh, tk, b, h, &d);
        }
        Ok((dq, dk, dv))
    }
}

/// Tile sizes of the CUDA kernels for one head-dimension bucket: the mirror of the table at the end of
/// `kernels/attention.cu` (the grid depends on them; keep the two in step).
struct CudaTiles {
    /// Largest head dimension of the bucket: the kernels' names end in `_d{bucket}_f32`.
    bucket: usize,
    /// Queries per block of the forward kernel.
    fwd_q: usize,
    /// Keys per block of the dK/dV kernel.
    dkv_k: usize,
    /// Queries per block of the dQ kernel.
    dq_q: usize,
}

/// Threads per block of every attention kernel but `attention_bwd_dot_f32`.
const CUDA_ATTN_THREADS: u32 = 128;

impl CudaTiles {
    fn for_dims(d: &AttnDims) -> Result<Self> {
        if d.batch == 0 || d.heads == 0 || d.q_len == 0 || d.kv_len == 0 || d.d_head == 0 {
            return Err(shape_err!(
                "attention on CUDA needs every size to be at least 1, got {d:?}"
            ));
        }
        if d.batch * d.heads > 65_535 {
            return Err(shape_err!(
                "attention on CUDA supports at most 65535 batch x heads, got {}",
                d.batch * d.heads
            ));
        }
        let too_long = |n: usize| n > i32::MAX as usize / 2;
        if too_long(d.q_len) || too_long(d.kv_len) || too_long(d.heads * d.d_head) {
            return Err(shape_err!("attention on CUDA: sizes too large, got {d:?}"));
        }
        let (bucket, fwd_q, dkv_k, dq_q) = match d.d_head {
            1..=32 => (32, 64, 64, 64),
            33..=64 => (64, 64, 64, 64),
            65..=128 => (128, 64, 32, 32),
            dh => {
                return Err(shape_err!(
                    "attention on CUDA supports head dimensions up to 128, got {dh}"
                ))
            }
        };
        Ok(Self {
            bucket,
            fwd_q,
            dkv_k,
            dq_q,
        })
    }

    /// The kernel instance of this head-dimension bucket: `attention_{kernel}_d{bucket}_f32`.
    fn instance(&self, kernel: &str) -> String {
        format!("attention_{kernel}_d{}_f32", self.bucket)
    }
}

/// A grid of `ceil(rows / per_block) x (batch·heads)` blocks of 128 threads (static shared memory only).
fn attention_config(rows: usize, per_block: usize, d: &AttnDims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            rows.div_ceil(per_block) as u32,
            (d.batch * d.heads) as u32,
            1,
        ),
        block_dim: (CUDA_ATTN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The scalars every attention kernel takes after its tensors.
fn attn_params(d: &AttnDims, mask: AttnMask, dropout: Option<DropoutMask>) -> AttnParams {
    let (mask_kind, mask_param) = mask.code();
    AttnParams {
        batch: d.batch as i32,
        heads: d.heads as i32,
        q_len: d.q_len as i32,
        kv_len: d.kv_len as i32,
        d_head: d.d_head as i32,
        scale: d.scale() as f32,
        mask_kind,
        mask_param,
        seed: dropout.map_or(0, |m| m.seed),
        threshold: dropout.map_or(0, |m| m.threshold()),
        drop_scale: dropout.map_or(1.0, |m| m.scale() as f32),
        use_dropout: dropout.is_some() as i32,
    }
}

/// `kernels/attention.cu`: flash-style forward (`attention_fwd_d{32,64,128}_f32`), and backward as
/// `attention_bwd_dot_f32` (D = rowsum(dO ∘ O)), `attention_bwd_dkv_d*_f32` (blocks own key tiles) and
/// `attention_bwd_dq_d*_f32` (blocks own query tiles): deterministic, no atomics.
impl AttentionOps for Cuda {
    fn attention_fwd(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let tiles = CudaTiles::for_dims(&d)?;
        let width = d.heads * d.d_head;
        // SAFETY: the forward kernel's blocks cover every query tile of every (batch, head) and write out and lse for each query.
        let mut out = unsafe { self.alloc_uninit(d.q_len * d.batch * width) }?;
        // SAFETY: as for out.
        let mut lse = unsafe { self.alloc_uninit(d.batch * d.heads * d.q_len) }?;
        let a = attn_params(&d, mask, dropout);
        self.attention_fwd(
            &tiles.instance("fwd"),
            attention_config(d.q_len, tiles.fwd_q, &d),
            q,
            k,
            v,
            &mut out,
            &mut lse,
            a,
        )?;
        Ok((out, lse))
    }

    fn attention_bwd(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        out: &CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        let tiles = CudaTiles::for_dims(&d)?;
        let width = d.heads * d.d_head;
        let rows = d.batch * d.heads * d.q_len;
        let a = attn_params(&d, mask, dropout);

        // D_i = dO_i · O_i, one warp per row.
        // SAFETY: attention_bwd_dot_f32 writes every row (a warp per row, grid-strided).
        let mut dvec = unsafe { self.alloc_uninit(rows) }?;
        let config = warp_per_row_config(rows);
        self.attention_bwd_dot_f32(
            config, dout, out, &mut dvec, a.batch, a.heads, a.q_len, a.d_head,
        )?;

        // SAFETY: the dK/dV kernel's blocks own every key tile of every (batch, head) and write each key's rows.
        let mut dk = unsafe { self.alloc_uninit(d.kv_len * d.batch * width) }?;
        // SAFETY: as for dk.
        let mut dv = unsafe { self.alloc_uninit(d.kv_len * d.batch * width) }?;
        self.attention_bwd_dkv(
            &tiles.instance("bwd_dkv"),
            attention_config(d.kv_len, tiles.dkv_k, &d),
            q,
            k,
            v,
            dout,
            lse,
            &dvec,
            &mut dk,
            &mut dv,
            a,
        )?;

        // SAFETY: the dQ kernel's blocks own every query tile of every (batch, head) and write each query's row.
        let mut dq = unsafe { self.alloc_uninit(d.q_len * d.batch * width) }?;
        self.attention_bwd_dq(
            &tiles.instance("bwd_dq"),
            attention_config(d.q_len, tiles.dq_q, &d),
            q,
            k,
            v,
            dout,
            lse,
            &dvec,
            &mut dq,
            a,
        )?;
        Ok((dq, dk, dv))
    }
}

/// Checks `q[Tq,B,W]`, `k, v[Tk,B,W]` with `W = heads·d_head`, and returns the sizes.
fn dims<B: BackendCore>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    heads: usize,
) -> Result<AttnDims> {
    let [q_len, batch, width] = *q.shape() else {
        return Err(shape_err!(
            "attention query must be [seq, batch, width], got {:?}",
            q.shape()
        ));
    };
    if heads == 0 || width % heads != 0 {
        return Err(shape_err!(
            "attention width {width} is not divisible by {heads} heads"
        ));
    }
    let [kv_len, ..] = *k.shape() else {
        return Err(shape_err!(
            "attention key must be [seq, batch, width], got {:?}",
            k.shape()
        ));
    };
    k.expect_shape("attention key", &[kv_len, batch, width])?;
    check_nonempty("attention query", q.shape())?;
    check_nonempty("attention key", k.shape())?;
    v.expect_shape("attention value", &[kv_len, batch, width])?;
    Ok(AttnDims {
        batch,
        heads,
        q_len,
        kv_len,
        d_head: width / heads,
    })
}

/// Attention of `q` over `k, v` with `heads` heads; returns the output and what backward needs.
pub fn forward<B: AttentionOps>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    heads: usize,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> Result<AttnSaved<B>> {
    let d = dims(q, k, v, heads)?;
    let b = q.backend();
    let (out, lse) = b.attention_fwd(q.storage()?, k.storage()?, v.storage()?, d, mask, dropout)?;
    Ok(AttnSaved {
        out: Tensor::from_storage(b, q.shape(), out)?,
        lse: Tensor::from_storage(b, &[d.batch, d.heads, d.q_len], lse)?,
    })
}

/// Gradient of `forward`: returns `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward<B: AttentionOps>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    saved: &AttnSaved<B>,
    dout: &Tensor<B>,
    heads: usize,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> Result<(Tensor<B>, Tensor<B>, Tensor<B>)> {
    let d = dims(q, k, v, heads)?;
    dout.expect_shape("attention output gradient", q.shape())?;
    let b = q.backend();
    let (dq, dk, dv) = b.attention_bwd(
        q.storage()?,
        k.storage()?,
        v.storage()?,
        saved.out.storage()?,
        saved.lse.storage()?,
        dout.storage()?,
        d,
        mask,
        dropout,
    )?;
    Ok((
        Tensor::from_storage(b, q.shape(), dq)?,
        Tensor::from_storage(b, k.shape(), dk)?,
        Tensor::from_storage(b, v.shape(), dv)?,
    ))
}
