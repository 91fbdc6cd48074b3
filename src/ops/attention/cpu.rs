//! The CPU half of attention: the reference every CUDA version is held to, one (batch, head) at a time.

use super::{AttentionOps, AttnDims, AttnGrads, AttnLayout, AttnMask};
use crate::device::cpu::{gemm, MatRef};
use crate::device::{Cpu, Element};
use crate::error::Result;
use crate::rng::DropoutMask;
use rayon::prelude::*;

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
