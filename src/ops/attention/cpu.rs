//! The CPU half of attention: the reference every CUDA version is held to, one (batch, head) at a time.

use super::{AttentionOps, AttnDims, AttnGrads, AttnLayout, AttnMask, BF16_KEY_TILE};
use crate::device::cpu::{gemm, MatRef};
use crate::device::{Cpu, Element};
use crate::error::Result;
use crate::ops::Operands;
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

// q, k and v in the element type run `Head::forward` / `backward` (exact softmax, products in the element
// type); in bf16, widened once here, `Head::forward_bf16` / `backward_bf16` (the kernels' rounding points).
impl<T: Element> AttentionOps for Cpu<T> {
    fn attention_fwd(
        &self,
        qkv: Operands<'_, Self>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let (at, bf16) = (HeadPlaces::new(layout, &d), qkv.is_bf16());
        let [q, kv] = qkv.widened(self)?;
        let per_head: Vec<(Vec<T>, Vec<T>)> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let head = Head::gather(&q, &kv, &at, bh, &d, dropout);
                if bf16 {
                    head.forward_bf16(&d, mask)
                } else {
                    head.forward(&d, mask)
                }
            })
            .collect();
        Ok(assemble_forward(per_head, &at, &d))
    }

    fn attention_bwd(
        &self,
        qkv: Operands<'_, Self>,
        layout: AttnLayout,
        (out, lse): (&Vec<T>, &Vec<T>),
        dout: &Vec<T>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, Vec<T>>,
    ) -> Result<()> {
        let (at, bf16) = (HeadPlaces::new(layout, &d), qkv.is_bf16());
        let [q, kv] = qkv.widened(self)?;
        let per_head: Vec<_> = (0..d.batch * d.heads)
            .into_par_iter()
            .map(|bh| {
                let head = Head::gather(&q, &kv, &at, bh, &d, dropout);
                let (oh, doh) = (
                    gather_head(out, at.out, head.b, head.h, &d),
                    gather_head(dout, at.out, head.b, head.h, &d),
                );
                if bf16 {
                    let lse_h = &lse[bh * d.q_len..][..d.q_len];
                    head.backward_bf16(&d, mask, lse_h, &oh, &doh)
                } else {
                    head.backward(&d, mask, &oh, &doh)
                }
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

/// One (batch, head) of attention: q, k, v as contiguous `[len, dh]` matrices (bf16 values widened, for bf16
/// attention), and the dropout mask. The element type's forward and backward are written with whole-head
/// GEMMs; bf16's element by element, in the kernels' order of operations and with their rounding points (see
/// the module), so that the GPU differs only in the order of its f32 sums.
struct Head<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    b: usize,
    h: usize,
    drop: Option<DropoutMask>,
}

impl<T: Element> Head<T> {
    /// Head `bh = b·H + h` of the q and kv buffers.
    fn gather(
        q: &[T],
        kv: &[T],
        at: &HeadPlaces,
        bh: usize,
        d: &AttnDims,
        drop: Option<DropoutMask>,
    ) -> Self {
        let (b, h) = (bh / d.heads, bh % d.heads);
        Self {
            q: gather_head(q, at.q, b, h, d),
            k: gather_head(kv, at.k, b, h, d),
            v: gather_head(kv, at.v, b, h, d),
            b,
            h,
            drop,
        }
    }

    /// The dropout factor of probability `(i, j)` (0 or 1/(1-p); 1 without dropout).
    fn factor(&self, d: &AttnDims, i: usize, j: usize) -> T {
        self.drop.map_or(T::one(), |m| {
            T::from_f64(m.factor(d.dropout_index(self.b, self.h, i, j)))
        })
    }

    /// Multiplies probabilities `p[tq, tk]` by their dropout factors in place.
    fn apply_dropout(&self, p: &mut [T], d: &AttnDims) {
        if self.drop.is_none() {
            return;
        }
        for (i, row) in p.chunks_mut(d.kv_len).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = *v * self.factor(d, i, j);
            }
        }
    }

    /// `(out [tq, dh], lse [tq])` in the element type: the exact softmax, then `(P ∘ drop) · V`.
    fn forward(&self, d: &AttnDims, mask: AttnMask) -> (Vec<T>, Vec<T>) {
        let mut p = vec![T::zero(); d.q_len * d.kv_len];
        let lse = probabilities(&self.q, &self.k, d, mask, &mut p);
        self.apply_dropout(&mut p, d);
        let mut oh = vec![T::zero(); d.q_len * d.d_head];
        gemm(
            mat(&p, d.q_len, d.kv_len),
            mat(&self.v, d.kv_len, d.d_head),
            &mut oh,
            T::zero(),
        );
        (oh, lse)
    }

    /// `(dq, dk, dv)` in the element type from the output `o` and its gradient `dout`.
    fn backward(
        &self,
        d: &AttnDims,
        mask: AttnMask,
        o: &[T],
        dout: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (tq, tk, dh) = (d.q_len, d.kv_len, d.d_head);
        let scale = T::from_f64(d.scale());
        // The CPU recomputes P exactly instead of from the saved logsumexp: same values, simpler.
        let mut p = vec![T::zero(); tq * tk];
        probabilities(&self.q, &self.k, d, mask, &mut p);
        let mut p_drop = p.clone();
        self.apply_dropout(&mut p_drop, d);
        // dV = P_dropᵀ · dO
        let mut dv = vec![T::zero(); tk * dh];
        gemm(
            MatRef {
                transposed: true,
                ..mat(&p_drop, tq, tk)
            },
            mat(dout, tq, dh),
            &mut dv,
            T::zero(),
        );
        // dP = (dO · Vᵀ) ∘ mask; dS = P ∘ (dP − rowsum(dO ∘ O))
        let mut ds = vec![T::zero(); tq * tk];
        gemm(
            mat(dout, tq, dh),
            MatRef {
                transposed: true,
                ..mat(&self.v, tk, dh)
            },
            &mut ds,
            T::zero(),
        );
        self.apply_dropout(&mut ds, d);
        for i in 0..tq {
            let di = (0..dh).fold(T::zero(), |s, e| s + dout[i * dh + e] * o[i * dh + e]);
            for j in 0..tk {
                ds[i * tk + j] = p[i * tk + j] * (ds[i * tk + j] - di) * scale;
            }
        }
        let mut dq = vec![T::zero(); tq * dh];
        gemm(mat(&ds, tq, tk), mat(&self.k, tk, dh), &mut dq, T::zero());
        let mut dk = vec![T::zero(); tk * dh];
        gemm(
            MatRef {
                transposed: true,
                ..mat(&ds, tq, tk)
            },
            mat(&self.q, tq, dh),
            &mut dk,
            T::zero(),
        );
        (dq, dk, dv)
    }

    /// `s·c`, the score of query `i` and key `j` in log2 units (`c = scale·log2(e)`).
    fn score(&self, d: &AttnDims, c: T, i: usize, j: usize) -> T {
        let dh = d.d_head;
        dot(&self.q[i * dh..][..dh], &self.k[j * dh..][..dh]) * c
    }

    /// `(out [tq, dh], lse [tq])` of bf16 attention: the online softmax over key tiles of `BF16_KEY_TILE`.
    fn forward_bf16(&self, d: &AttnDims, mask: AttnMask) -> (Vec<T>, Vec<T>) {
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

    /// `(dq, dk, dv)` of bf16 attention from the saved log-sum-exps `lse`, the output `o` and its gradient
    /// `dout`.
    fn backward_bf16(
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
