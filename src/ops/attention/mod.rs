//! Multi-head scaled dot-product attention with a mask and dropout on the probabilities, fused: the CUDA
//! kernel (`kernels/attention.cu`, launched from `cuda.rs`) is flash-style (tiles, online softmax, no Tq x Tk
//! matrix in memory) and keeps the row logsumexp for backward; the CPU half (`cpu.rs`) computes the same
//! function one (batch, head) at a time.
//!
//! Layout: sequence first, as the reference: `out[Tq, B, H·dh]`, `lse[B, H, Tq]`. The inputs come as a
//! projection GEMM leaves them, side by side in one buffer, without copies ([`AttnLayout`]): self-attention
//! takes `qkv[T, B, 3·H·dh]` (`forward_packed`), cross-attention `q[Tq, B, H·dh]` and `kv[Tk, B, 2·H·dh]`
//! (`forward`); backward writes the gradients in the same places of buffers of the same shapes.
//!
//! **bf16** (q, k and v given as bf16 tensors; on the GPU the tensor cores, `kernels/attention_mma.cu`): the
//! products q·k, P·V, dO·V, dS·K and dS·Q take bf16 operands and accumulate in f32; the softmax, its
//! log-sum-exp, D = rowsum(dO ∘ O) and every output and gradient are f32. The rounding points, which the CPU
//! reference (`cpu.rs`) reproduces: the forward runs an online softmax over tiles of [`BF16_KEY_TILE`] keys
//! (aligned at key 0), and rounds each tile's `exp2(s·c − m)` (times its dropout factor) to bf16 before the
//! product with V, where `m` is the running maximum after that tile and `c = scale·log2(e)`; backward
//! recomputes `P = exp2(s·c − lse·log2(e))` and rounds `dO` (for dV and dP), `P ∘ drop` (for dV) and `dS`
//! (for dQ and dK) to bf16.

mod cpu;
mod cuda;

use crate::device::cuda::kernels::{
    ATT_MASK_CAUSAL, ATT_MASK_FULL, ATT_MASK_FUNNEL, ATT_MASK_UP_CAUSAL, ATT_MASK_UP_WINDOW,
    ATT_MASK_WINDOW, MMA_KEY_TILE,
};
use crate::device::BackendCore;
use crate::error::{shape_err, Result};
use crate::ops::Operands;
use crate::rng::DropoutMask;
use crate::tensor::{check_nonempty, Tensor};

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
    /// `(kind, parameter)` as the CUDA kernels read it (see `mask_range` in `kernels/attention_common.cuh`).
    pub fn code(self) -> (i32, i32) {
        match self {
            AttnMask::Causal => (ATT_MASK_CAUSAL, 0),
            AttnMask::Full => (ATT_MASK_FULL, 0),
            AttnMask::Funnel(k) => (ATT_MASK_FUNNEL, k as i32),
            AttnMask::Window(k) => (ATT_MASK_WINDOW, k as i32),
            AttnMask::UpCausal(k) => (ATT_MASK_UP_CAUSAL, k as i32),
            AttnMask::UpWindow(k) => (ATT_MASK_UP_WINDOW, k as i32),
        }
    }
}

/// Sizes of one attention op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) q_len: usize,
    pub(crate) kv_len: usize,
    pub(crate) d_head: usize,
}

impl AttnDims {
    pub(crate) fn scale(&self) -> f64 {
        1.0 / (self.d_head as f64).sqrt()
    }
    /// Index of probability `(b, h, i, j)` in the dropout stream: the same on every backend.
    pub(crate) fn dropout_index(&self, b: usize, h: usize, i: usize, j: usize) -> u64 {
        (((b * self.heads + h) * self.q_len + i) as u64) * self.kv_len as u64 + j as u64
    }
}

/// Keys per tile of the bf16 forward's online softmax: its probabilities are rounded to bf16 tile by tile
/// (see the module), so every bf16 version and the CPU reference walk the same tiles (`MMA_KEY_TILE` in
/// kernels/attention_mma.cu).
pub const BF16_KEY_TILE: usize = MMA_KEY_TILE;

/// Where q, k and v sit in their buffers, in elements: q in rows of `q_stride` from column `q_offset`; k and v
/// in one buffer, rows of `kv_stride`, from columns `k_offset` and `v_offset`. Each is `heads·d_head` wide;
/// row `t·B + b` holds position `t` of batch entry `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnLayout {
    pub(crate) q_stride: usize,
    pub(crate) q_offset: usize,
    pub(crate) kv_stride: usize,
    pub(crate) k_offset: usize,
    pub(crate) v_offset: usize,
}

impl AttnLayout {
    /// q, k and v side by side in one `[T, B, 3·width]` buffer (self-attention's projections from one GEMM).
    pub(crate) fn packed(width: usize) -> Self {
        Self {
            q_stride: 3 * width,
            q_offset: 0,
            kv_stride: 3 * width,
            k_offset: width,
            v_offset: 2 * width,
        }
    }
    /// q in its own `[Tq, B, width]` buffer; k and v side by side in a `[Tk, B, 2·width]` one.
    pub(crate) fn split(width: usize) -> Self {
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

impl<'a, S> AttnGrads<'a, S> {
    /// `(dq's own buffer, if it has one; the buffer of dk and dv)`: a writer of dq uses the second when the
    /// first is `None`.
    pub(crate) fn into_parts(self) -> (Option<&'a mut S>, &'a mut S) {
        match self {
            AttnGrads::Packed(all) => (None, all),
            AttnGrads::Split { dq, dkv } => (Some(dq), dkv),
        }
    }
}

/// What attention's backward needs besides its inputs: the output and each row's logsumexp.
pub struct AttnSaved<B: BackendCore> {
    pub out: Tensor<B>,
    pub lse: Tensor<B>,
}

pub trait AttentionOps: BackendCore {
    /// Returns `(out[Tq,B,H·dh], lse[B,H,Tq])` from `qkv`: q in the first buffer, k and v in the second (the same
    /// buffer when packed), placed as `layout` says, all in the element type or all bf16 (the rounding points
    /// of bf16 are in the module's documentation); the outputs are in the element type.
    fn attention_fwd(
        &self,
        qkv: Operands<'_, Self>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// Writes dq, dk and dv into `grads`, in the places `layout` gives q, k and v; `dout`, the saved output and
    /// the gradients are in the element type whatever the dtype of q, k and v.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        qkv: Operands<'_, Self>,
        layout: AttnLayout,
        saved: (&Self::Storage, &Self::Storage),
        dout: &Self::Storage,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, Self::Storage>,
    ) -> Result<()>;
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

/// The buffers of `q` and `kv`, both bf16 or both the element type (a mix is an error naming them).
fn operands<'a, B: BackendCore>(q: &'a Tensor<B>, kv: &'a Tensor<B>) -> Result<Operands<'a, B>> {
    Operands::of("attention", ("query", q), ("key/value", kv))
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
    let b = qkv.backend();
    let layout = AttnLayout::packed(d.heads * d.d_head);
    let result = b.attention_fwd(operands(qkv, qkv)?, layout, d, mask, dropout)?;
    saved(b, &d, result)
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
    let b = qkv.backend();
    let mut dqkv = Tensor::zeros(b, qkv.shape())?;
    let (layout, kept) = (
        AttnLayout::packed(d.heads * d.d_head),
        (saved.out.storage()?, saved.lse.storage()?),
    );
    let (dout, grads) = (dout.storage()?, AttnGrads::Packed(dqkv.storage_mut()?));
    let qkv = operands(qkv, qkv)?;
    b.attention_bwd(qkv, layout, kept, dout, d, mask, dropout, grads)?;
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
    let result = b.attention_fwd(operands(q, kv)?, layout, d, mask, dropout)?;
    saved(b, &d, result)
}

/// Attention of one new position over a self-attention cache (incremental decoding, no dropout): the query is
/// the q of `qkv_new[1, B, 3·W]`, the keys and values the k and v of rows `0..len` of `cache[capacity, B, 3·W]`
/// (the new position's own row among them, laid out as `forward_packed`'s input). The query sees every key it
/// is given, as causal attention over the whole sequence lets its last position. Returns `[1, B, W]`.
pub(crate) fn forward_cached<B: AttentionOps>(
    qkv_new: &Tensor<B>,
    cache: &Tensor<B>,
    len: usize,
    heads: usize,
) -> Result<Tensor<B>> {
    let d = packed_dims(qkv_new, heads)?;
    let capacity = cache.shape().first().copied().unwrap_or(0);
    let (q_len, batch, packed) = (d.q_len, d.batch, 3 * d.heads * d.d_head);
    if q_len != 1 || len == 0 || len > capacity || cache.shape()[1..] != [batch, packed] {
        return Err(shape_err!(
            "attention over a cache: {q_len} new positions {:?} against {len} rows of a cache {:?} (one new \
             position, 1 to capacity rows, the same batch and width)",
            qkv_new.shape(),
            cache.shape()
        ));
    }
    let d = AttnDims { kv_len: len, ..d };
    let (b, layout) = (qkv_new.backend(), AttnLayout::packed(d.heads * d.d_head));
    let qkv = operands(qkv_new, cache)?;
    let result = b.attention_fwd(qkv, layout, d, AttnMask::Full, None)?;
    Ok(saved(b, &d, result)?.out)
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
    let (layout, kept) = (
        AttnLayout::split(d.heads * d.d_head),
        (saved.out.storage()?, saved.lse.storage()?),
    );
    let dout = dout.storage()?;
    let grads = AttnGrads::Split {
        dq: dq.storage_mut()?,
        dkv: dkv.storage_mut()?,
    };
    b.attention_bwd(
        operands(q, kv)?,
        layout,
        kept,
        dout,
        d,
        mask,
        dropout,
        grads,
    )?;
    Ok((dq, dkv))
}
