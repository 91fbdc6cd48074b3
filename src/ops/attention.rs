//! Multi-head scaled dot-product attention with a mask and dropout on the probabilities, fused: the CUDA
//! kernel (`kernels/attention.cu`) is flash-style (tiles, online softmax, no Tq x Tk matrix in memory) and
//! keeps the row logsumexp for backward; the CPU half computes the same function one (batch, head) at a time.
//!
//! Layout: sequence first, as the reference: `out[Tq, B, H·dh]`, `lse[B, H, Tq]`. The inputs come as a
//! projection GEMM leaves them, side by side in one buffer, without copies ([`AttnLayout`]): self-attention
//! takes `qkv[T, B, 3·H·dh]` (`forward_packed`), cross-attention `q[Tq, B, H·dh]` and `kv[Tk, B, 2·H·dh]`
//! (`forward`); backward writes the gradients in the same places of buffers of the same shapes.

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

/// Where q, k and v sit in their buffers, in elements: q in rows of `q_stride` from column `q_offset`; k and v
/// in one buffer, rows of `kv_stride`, from columns `k_offset` and `v_offset`. Each is `heads·d_head` wide;
/// row `t·B + b` holds position `t` of batch entry `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnLayout {
    pub q_stride: usize,
    pub q_offset: usize,
    pub kv_stride: usize,
    pub k_offset: usize,
    pub v_offset: usize,
}

impl AttnLayout {
    /// q, k and v side by side in one `[T, B, 3·width]` buffer (self-attention's projections from one GEMM).
    pub fn packed(width: usize) -> Self {
        Self {
            q_stride: 3 * width,
            q_offset: 0,
            kv_stride: 3 * width,
            k_offset: width,
            v_offset: 2 * width,
        }
    }
    /// q in its own `[Tq, B, width]` buffer; k and v side by side in a `[Tk, B, 2·width]` one.
    pub fn split(width: usize) -> Self {
        Self {
            q_stride: width,
            q_offset: 0,
            kv_stride: 2 * width,
            k_offset: 0,
            v_offset: width,
        }
    }
}

/// Where backward writes: `Packed`, dq, dk and dv into one buffer laid out as the packed input; `Split`, dq
/// into one laid out as q and dk, dv into one laid out as kv. Every element of them is written.
pub enum AttnGrads<'a, S> {
    Packed(&'a mut S),
    Split { dq: &'a mut S, dkv: &'a mut S },
}

/// What attention's backward needs besides its inputs: the output and each row's logsumexp.
pub struct AttnSaved<B: BackendCore> {
    pub out: Tensor<B>,
    pub lse: Tensor<B>,
}

pub trait AttentionOps: BackendCore {
    /// Returns `(out[Tq,B,H·dh], lse[B,H,Tq])` from q in `q` and k, v in `kv` (the same buffer when packed),
    /// placed as `layout` says.
    fn attention_fwd(
        &self,
        q: &Self::Storage,
        kv: &Self::Storage,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// Writes dq, dk and dv into `grads`, in the places `layout` gives q, k and v.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        q: &Self::Storage,
        kv: &Self::Storage,
        layout: AttnLayout,
        saved: (&Self::Storage, &Self::Storage),
        dout: &Self::Storage,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, Self::Storage>,
    ) -> Result<()>;
}

/// One head's rows in a buffer: rows of `stride` elements, this head's `d_head` columns from `offset` (the
/// operand's first column; the head's own offset is added here).
#[derive(Clone, Copy)]
struct HeadAt {
    len: usize,
    stride: usize,
    offset: usize,
}

impl HeadAt {
    fn start(&self, t: usize, b: usize, h: usize, d: &AttnDims) -> usize {
        (t * d.batch + b) * self.stride + self.offset + h * d.d_head
    }
}

/// Copies head `(b, h)` into a contiguous `[len, dh]` matrix.
fn gather_head<T: Element>(src: &[T], at: HeadAt, b: usize, h: usize, d: &AttnDims) -> Vec<T> {
    let mut out = Vec::with_capacity(at.len * d.d_head);
    for t in 0..at.len {
        let row = at.start(t, b, h, d);
        out.extend_from_slice(&src[row..row + d.d_head]);
    }
    out
}

/// Writes a contiguous `[len, dh]` matrix back as head `(b, h)`.
fn scatter_head<T: Element>(
    dst: &mut [T],
    head: &[T],
    at: HeadAt,
    b: usize,
    h: usize,
    d: &AttnDims,
) {
    for t in 0..at.len {
        let row = at.start(t, b, h, d);
        dst[row..row + d.d_head].copy_from_slice(&head[t * d.d_head..][..d.d_head]);
    }
}

/// Where each operand's heads are: q, k, v (by `layout`), and out / dout (contiguous).
struct HeadPlaces {
    q: HeadAt,
    k: HeadAt,
    v: HeadAt,
    out: HeadAt,
}

impl HeadPlaces {
    fn new(layout: AttnLayout, d: &AttnDims) -> Self {
        let kv = |offset| HeadAt {
            len: d.kv_len,
            stride: layout.kv_stride,
            offset,
        };
        Self {
            q: HeadAt {
                len: d.q_len,
                stride: layout.q_stride,
                offset: layout.q_offset,
            },
            k: kv(layout.k_offset),
            v: kv(layout.v_offset),
            out: HeadAt {
                len: d.q_len,
                stride: d.heads * d.d_head,
                offset: 0,
            },
        }
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
        kv: &Vec<T>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let at = HeadPlaces::new(layout, &d);
        let per_head: Vec<(Vec<T>, Vec<T>)> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let qh = gather_head(q, at.q, b, h, &d);
                let kh = gather_head(kv, at.k, b, h, &d);
                let vh = gather_head(kv, at.v, b, h, &d);
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
            scatter_head(&mut out, &oh, at.out, bh / d.heads, bh % d.heads, &d);
            lse.extend(l);
        }
        Ok((out, lse))
    }

    fn attention_bwd(
        &self,
        q: &Vec<T>,
        kv: &Vec<T>,
        layout: AttnLayout,
        (out, _lse): (&Vec<T>, &Vec<T>),
        dout: &Vec<T>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, Vec<T>>,
    ) -> Result<()> {
        let (tq, tk, dh) = (d.q_len, d.kv_len, d.d_head);
        let scale = T::from_f64(d.scale());
        let at = HeadPlaces::new(layout, &d);
        let per_head: Vec<_> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let qh = gather_head(q, at.q, b, h, &d);
                let kh = gather_head(kv, at.k, b, h, &d);
                let vh = gather_head(kv, at.v, b, h, &d);
                let oh = gather_head(out, at.out, b, h, &d);
                let doh = gather_head(dout, at.out, b, h, &d);
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
        let mut grads = grads;
        for (bh, (dqh, dkh, dvh)) in per_head.into_iter().enumerate() {
            let (b, h) = (bh / d.heads, bh % d.heads);
            let (dq, dkv) = match &mut grads {
                AttnGrads::Packed(all) => {
                    scatter_head(all, &dqh, at.q, b, h, &d);
                    (None, &mut **all)
                }
                AttnGrads::Split { dq, dkv } => (Some(&mut **dq), &mut **dkv),
            };
            if let Some(dq) = dq {
                scatter_head(dq, &dqh, at.q, b, h, &d);
            }
            scatter_head(dkv, &dkh, at.k, b, h, &d);
            scatter_head(dkv, &dvh, at.v, b, h, &d);
        }
        Ok(())
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
fn attn_params(
    d: &AttnDims,
    layout: AttnLayout,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> AttnParams {
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
        q_stride: layout.q_stride as i32,
        q_off: layout.q_offset as i32,
        kv_stride: layout.kv_stride as i32,
        k_off: layout.k_offset as i32,
        v_off: layout.v_offset as i32,
    }
}

/// `kernels/attention.cu`: flash-style forward (`attention_fwd_d{32,64,128}_f32`), and backward as
/// `attention_bwd_dot_f32` (D = rowsum(dO ∘ O)), `attention_bwd_dkv_d*_f32` (blocks own key tiles) and
/// `attention_bwd_dq_d*_f32` (blocks own query tiles): deterministic, no atomics.
impl AttentionOps for Cuda {
    fn attention_fwd(
        &self,
        q: &CudaSlice<f32>,
        kv: &CudaSlice<f32>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let tiles = CudaTiles::for_dims(&d)?;
        let width = d.heads * d.d_head;
        // SAFETY: the forward kernel's blocks cover every query tile of every (batch, head) and write out and
        // lse for each query.
        let mut out = unsafe { self.alloc_uninit(d.q_len * d.batch * width) }?;
        // SAFETY: as for out.
        let mut lse = unsafe { self.alloc_uninit(d.batch * d.heads * d.q_len) }?;
        let a = attn_params(&d, layout, mask, dropout);
        self.attention_fwd(
            &tiles.instance("fwd"),
            attention_config(d.q_len, tiles.fwd_q, &d),
            q,
            kv,
            &mut out,
            &mut lse,
            a,
        )?;
        Ok((out, lse))
    }

    fn attention_bwd(
        &self,
        q: &CudaSlice<f32>,
        kv: &CudaSlice<f32>,
        layout: AttnLayout,
        (out, lse): (&CudaSlice<f32>, &CudaSlice<f32>),
        dout: &CudaSlice<f32>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, CudaSlice<f32>>,
    ) -> Result<()> {
        let tiles = CudaTiles::for_dims(&d)?;
        let rows = d.batch * d.heads * d.q_len;
        let a = attn_params(&d, layout, mask, dropout);

        // D_i = dO_i · O_i, one warp per row.
        // SAFETY: attention_bwd_dot_f32 writes every row (a warp per row, grid-strided).
        let mut dvec = unsafe { self.alloc_uninit(rows) }?;
        let config = warp_per_row_config(rows);
        self.attention_bwd_dot_f32(
            config, dout, out, &mut dvec, a.batch, a.heads, a.q_len, a.d_head,
        )?;

        // Two launches, one writing dk and dv, one dq: into one buffer when packed.
        let (dq, dkv) = match grads {
            AttnGrads::Packed(all) => (None, all),
            AttnGrads::Split { dq, dkv } => (Some(dq), dkv),
        };
        self.attention_bwd_dkv(
            &tiles.instance("bwd_dkv"),
            attention_config(d.kv_len, tiles.dkv_k, &d),
            q,
            kv,
            dout,
            lse,
            &dvec,
            &mut *dkv,
            a,
        )?;
        self.attention_bwd_dq(
            &tiles.instance("bwd_dq"),
            attention_config(d.q_len, tiles.dq_q, &d),
            q,
            kv,
            dout,
            lse,
            &dvec,
            dq.unwrap_or(dkv),
            a,
        )
    }
}

/// Checks a `[len, batch, width]` input (`what` names it) and returns `(len, batch, width)`.
fn seq_batch_width<B: BackendCore>(what: &str, t: &Tensor<B>) -> Result<(usize, usize, usize)> {
    let [len, batch, width] = *t.shape() else {
        return Err(shape_err!(
            "attention {what} must be [seq, batch, width], got {:?}",
            t.shape()
        ));
    };
    check_nonempty(&format!("attention {what}"), t.shape())?;
    Ok((len, batch, width))
}

/// The head width of `width` columns split over `heads` heads, or an error naming both.
fn d_head(width: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(shape_err!(
            "attention width {width} is not divisible by {heads} heads"
        ));
    }
    Ok(width / heads)
}

/// Checks `qkv[T, B, 3·W]` with `W = heads·d_head` (self-attention) and returns the sizes.
fn packed_dims<B: BackendCore>(qkv: &Tensor<B>, heads: usize) -> Result<AttnDims> {
    let (len, batch, packed) = seq_batch_width("qkv", qkv)?;
    if !packed.is_multiple_of(3) {
        return Err(shape_err!(
            "attention qkv {:?}: the last dimension must hold q, k and v side by side (3·width)",
            qkv.shape()
        ));
    }
    Ok(AttnDims {
        batch,
        heads,
        q_len: len,
        kv_len: len,
        d_head: d_head(packed / 3, heads)?,
    })
}

/// Checks `q[Tq, B, W]` and `kv[Tk, B, 2·W]` with `W = heads·d_head` and returns the sizes.
fn split_dims<B: BackendCore>(q: &Tensor<B>, kv: &Tensor<B>, heads: usize) -> Result<AttnDims> {
    let (q_len, batch, width) = seq_batch_width("query", q)?;
    let (kv_len, ..) = seq_batch_width("key/value", kv)?;
    kv.expect_shape("attention key/value", &[kv_len, batch, 2 * width])?;
    Ok(AttnDims {
        batch,
        heads,
        q_len,
        kv_len,
        d_head: d_head(width, heads)?,
    })
}

/// The output and logsumexp as tensors.
fn saved<B: BackendCore>(
    b: &B,
    d: &AttnDims,
    (out, lse): (B::Storage, B::Storage),
) -> Result<AttnSaved<B>> {
    Ok(AttnSaved {
        out: Tensor::from_storage(b, &[d.q_len, d.batch, d.heads * d.d_head], out)?,
        lse: Tensor::from_storage(b, &[d.batch, d.heads, d.q_len], lse)?,
    })
}

/// Self-attention of `qkv[T, B, 3·H·dh]` (q, k and v side by side, as one projection GEMM leaves them) with
/// `heads` heads; returns the output `[T, B, H·dh]` and what backward needs.
pub fn forward_packed<B: AttentionOps>(
    qkv: &Tensor<B>,
    heads: usize,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> Result<AttnSaved<B>> {
    let d = packed_dims(qkv, heads)?;
    let (b, x) = (qkv.backend(), qkv.storage()?);
    let layout = AttnLayout::packed(d.heads * d.d_head);
    saved(b, &d, b.attention_fwd(x, x, layout, d, mask, dropout)?)
}

/// Gradient of `forward_packed`: `dqkv`, laid out as `qkv`.
pub fn backward_packed<B: AttentionOps>(
    qkv: &Tensor<B>,
    saved: &AttnSaved<B>,
    dout: &Tensor<B>,
    heads: usize,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> Result<Tensor<B>> {
    let d = packed_dims(qkv, heads)?;
    dout.expect_shape("attention output gradient", saved.out.shape())?;
    let (b, x) = (qkv.backend(), qkv.storage()?);
    let mut dqkv = Tensor::zeros(b, qkv.shape())?;
    b.attention_bwd(
        x,
        x,
        AttnLayout::packed(d.heads * d.d_head),
        (saved.out.storage()?, saved.lse.storage()?),
        dout.storage()?,
        d,
        mask,
        dropout,
        AttnGrads::Packed(dqkv.storage_mut()?),
    )?;
    Ok(dqkv)
}

/// Attention of `q[Tq, B, H·dh]` over `kv[Tk, B, 2·H·dh]` (k and v side by side) with `heads` heads; returns
/// the output `[Tq, B, H·dh]` and what backward needs.
pub fn forward<B: AttentionOps>(
    q: &Tensor<B>,
    kv: &Tensor<B>,
    heads: usize,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> Result<AttnSaved<B>> {
    let d = split_dims(q, kv, heads)?;
    let b = q.backend();
    let layout = AttnLayout::split(d.heads * d.d_head);
    saved(
        b,
        &d,
        b.attention_fwd(q.storage()?, kv.storage()?, layout, d, mask, dropout)?,
    )
}

/// Gradient of `forward`: returns `(dq, dkv)`, laid out as `q` and `kv`.
#[allow(clippy::too_many_arguments)]
pub fn backward<B: AttentionOps>(
    q: &Tensor<B>,
    kv: &Tensor<B>,
    saved: &AttnSaved<B>,
    dout: &Tensor<B>,
    heads: usize,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> Result<(Tensor<B>, Tensor<B>)> {
    let d = split_dims(q, kv, heads)?;
    dout.expect_shape("attention output gradient", q.shape())?;
    let b = q.backend();
    let (mut dq, mut dkv) = (Tensor::zeros(b, q.shape())?, Tensor::zeros(b, kv.shape())?);
    b.attention_bwd(
        q.storage()?,
        kv.storage()?,
        AttnLayout::split(d.heads * d.d_head),
        (saved.out.storage()?, saved.lse.storage()?),
        dout.storage()?,
        d,
        mask,
        dropout,
        AttnGrads::Split {
            dq: dq.storage_mut()?,
            dkv: dkv.storage_mut()?,
        },
    )?;
    Ok((dq, dkv))
}
