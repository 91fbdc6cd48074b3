//! The CPU half of attention: the reference every CUDA version is held to, one (batch, head) at a time.

use super::{AttentionOps, AttnDims, AttnGrads, AttnLayout, AttnMask, BF16_KEY_TILE};
use crate::device::cpu::{gemm, MatRef};
use crate::device::{BackendCore, Cpu, Element};
use crate::error::Result;
use crate::rng::DropoutMask;
use half::bf16;
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
        Ok(assemble_forward(per_head, &at, &d))
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
        scatter_grads(grads, per_head, &at, &d);
        Ok(())
    }

    fn attention_fwd_bf16(
        &self,
        q: &Vec<bf16>,
        kv: &Vec<bf16>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let at = HeadPlaces::new(layout, &d);
        let (q, kv) = (self.widen_bf16(q)?, self.widen_bf16(kv)?);
        let per_head: Vec<(Vec<T>, Vec<T>)> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let head = Bf16Head::gather(&q, &kv, &at, (b, h), &d, dropout);
                head.forward(&d, mask)
            })
            .collect();
        Ok(assemble_forward(per_head, &at, &d))
    }

    fn attention_bwd_bf16(
        &self,
        q: &Vec<bf16>,
        kv: &Vec<bf16>,
        layout: AttnLayout,
        (out, lse): (&Vec<T>, &Vec<T>),
        dout: &Vec<T>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, Vec<T>>,
    ) -> Result<()> {
        let at = HeadPlaces::new(layout, &d);
        let (q, kv) = (self.widen_bf16(q)?, self.widen_bf16(kv)?);
        let per_head: Vec<_> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / d.heads, bh % d.heads);
                let head = Bf16Head::gather(&q, &kv, &at, (b, h), &d, dropout);
                let lse_h = &lse[bh * d.q_len..][..d.q_len];
                let (oh, doh) = (
                    gather_head(out, at.out, b, h, &d),
                    gather_head(dout, at.out, b, h, &d),
                );
                head.backward(&d, mask, lse_h, &oh, &doh)
            })
            .collect();
        scatter_grads(grads, per_head, &at, &d);
        Ok(())
    }
}

/// Writes each head's `(dq, dk, dv)` into the gradient buffers (one, when packed).
fn scatter_grads<T: Element>(
    grads: AttnGrads<'_, Vec<T>>,
    per_head: Vec<(Vec<T>, Vec<T>, Vec<T>)>,
    at: &HeadPlaces,
    d: &AttnDims,
) {
    let (mut dq, dkv) = grads.into_parts();
    for (bh, (dqh, dkh, dvh)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / d.heads, bh % d.heads);
        scatter_head(dkv, &dkh, at.k, b, h, d);
        scatter_head(dkv, &dvh, at.v, b, h, d);
        scatter_head(dq.as_deref_mut().unwrap_or(&mut *dkv), &dqh, at.q, b, h, d);
    }
}

/// The output `[Tq, B, H·dh]` and the log-sum-exps `[B, H, Tq]` from each head's.
fn assemble_forward<T: Element>(
    per_head: Vec<(Vec<T>, Vec<T>)>,
    at: &HeadPlaces,
    d: &AttnDims,
) -> (Vec<T>, Vec<T>) {
    let mut out = vec![T::zero(); d.q_len * d.batch * d.heads * d.d_head];
    let mut lse = Vec::with_capacity(d.batch * d.heads * d.q_len);
    for (bh, (oh, l)) in per_head.into_iter().enumerate() {
        scatter_head(&mut out, &oh, at.out, bh / d.heads, bh % d.heads, d);
        lse.extend(l);
    }
    (out, lse)
}

/// `x` rounded to bf16 and widened back: a value as a bf16 tensor-core operand sees it.
fn bf16_round<T: Element>(x: T) -> T {
    T::from_bf16(x.to_bf16())
}

fn dot<T: Element>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |s, (&x, &y)| s + x * y)
}

/// One (batch, head) of bf16 attention: q, k, v (bf16 values, widened) as contiguous `[len, dh]` matrices,
/// and the dropout mask with this head's `(b, h)`. Written element by element, in the kernels' order of
/// operations and with their rounding points (see the module), so that the GPU differs only in the order of
/// its f32 sums.
struct Bf16Head<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    drop: Option<(DropoutMask, usize, usize)>,
}

impl<T: Element> Bf16Head<T> {
    /// Head `(b, h)` of the widened q and kv buffers.
    fn gather(
        q: &[T],
        kv: &[T],
        at: &HeadPlaces,
        (b, h): (usize, usize),
        d: &AttnDims,
        dropout: Option<DropoutMask>,
    ) -> Self {
        Self {
            q: gather_head(q, at.q, b, h, d),
            k: gather_head(kv, at.k, b, h, d),
            v: gather_head(kv, at.v, b, h, d),
            drop: dropout.map(|m| (m, b, h)),
        }
    }

    /// The dropout factor of probability `(i, j)` (1 without dropout).
    fn factor(&self, d: &AttnDims, i: usize, j: usize) -> T {
        self.drop.map_or(T::one(), |(m, b, h)| {
            T::from_f64(m.factor(d.dropout_index(b, h, i, j)))
        })
    }

    /// `s·c`, the score of query `i` and key `j` in log2 units (`c = scale·log2(e)`).
    fn score(&self, d: &AttnDims, c: T, i: usize, j: usize) -> T {
        let dh = d.d_head;
        dot(&self.q[i * dh..][..dh], &self.k[j * dh..][..dh]) * c
    }

    /// `(out [tq, dh], lse [tq])`: the online softmax over key tiles of `BF16_KEY_TILE`.
    fn forward(&self, d: &AttnDims, mask: AttnMask) -> (Vec<T>, Vec<T>) {
        let (tq, tk, dh) = (d.q_len, d.kv_len, d.d_head);
        let c = T::from_f64(d.scale() * std::f64::consts::LOG2_E);
        let neg_inf = T::from_f64(f64::NEG_INFINITY);
        let mut out = vec![T::zero(); tq * dh];
        let mut lse = vec![T::zero(); tq];
        for i in 0..tq {
            let (lo, hi) = mask.key_range(i, tk);
            let (mut m, mut l) = (neg_inf, T::zero());
            let o = &mut out[i * dh..][..dh];
            for tile in (lo / BF16_KEY_TILE * BF16_KEY_TILE..hi).step_by(BF16_KEY_TILE) {
                let keys = lo.max(tile)..hi.min(tile + BF16_KEY_TILE);
                let s: Vec<T> = keys.clone().map(|j| self.score(d, c, i, j)).collect();
                let m_new = s.iter().fold(m, |a, &b| a.max(b));
                let alpha = if m == neg_inf {
                    T::one()
                } else {
                    (m - m_new).exp2()
                };
                let mut part = T::zero();
                o.iter_mut().for_each(|x| *x = *x * alpha);
                for (j, &sj) in keys.zip(&s) {
                    let p = (sj - m_new).exp2();
                    part += p;
                    let p_round = bf16_round(p * self.factor(d, i, j));
                    for (x, &vj) in o.iter_mut().zip(&self.v[j * dh..][..dh]) {
                        *x += p_round * vj;
                    }
                }
                l = l * alpha + part;
                m = m_new;
            }
            if l > T::zero() {
                let inv = T::one() / l;
                o.iter_mut().for_each(|x| *x = *x * inv);
                lse[i] = (m + l.log2()) * T::from_f64(std::f64::consts::LN_2);
            }
        }
        (out, lse)
    }

    /// `(dq, dk, dv)` from the saved log-sum-exps `lse`, the output `o` and its gradient `dout`.
    fn backward(
        &self,
        d: &AttnDims,
        mask: AttnMask,
        lse: &[T],
        o: &[T],
        dout: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (tq, tk, dh) = (d.q_len, d.kv_len, d.d_head);
        let c = T::from_f64(d.scale() * std::f64::consts::LOG2_E);
        let log2e = T::from_f64(std::f64::consts::LOG2_E);
        let (mut dq, mut dk, mut dv) = (
            vec![T::zero(); tq * dh],
            vec![T::zero(); tk * dh],
            vec![T::zero(); tk * dh],
        );
        for i in 0..tq {
            let (do_i, o_i) = (&dout[i * dh..][..dh], &o[i * dh..][..dh]);
            let big_d = dot(do_i, o_i);
            let do_round: Vec<T> = do_i.iter().map(|&x| bf16_round(x)).collect();
            let (lo, hi) = mask.key_range(i, tk);
            for j in lo..hi {
                let p = (self.score(d, c, i, j) - lse[i] * log2e).exp2();
                let f = self.factor(d, i, j);
                let p_round = bf16_round(p * f);
                let v_j = &self.v[j * dh..][..dh];
                for (x, &g) in dv[j * dh..][..dh].iter_mut().zip(&do_round) {
                    *x += p_round * g;
                }
                let dp = dot(&do_round, v_j);
                let ds = bf16_round(p * (dp * f - big_d));
                for e in 0..dh {
                    dq[i * dh + e] += ds * self.k[j * dh + e];
                    dk[j * dh + e] += ds * self.q[i * dh + e];
                }
            }
        }
        let scale = T::from_f64(d.scale());
        dq.iter_mut()
            .chain(dk.iter_mut())
            .for_each(|x| *x = *x * scale);
        (dq, dk, dv)
    }
}
