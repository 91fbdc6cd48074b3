//! Rotary position embeddings (RoPE; Su et al., *RoFormer*, 2021) on the queries or keys of attention,
//! forward and backward.
//!
//! Layout: `x[T, B, H·dh]`, of which the first `R ≤ H` heads of every row are rotated, in place: all of q or
//! k alone, or the q and k heads of a packed `qkv[T, B, 3·H·dh]` (see `ops::attention`; v is left as it is);
//! `dh` must be even. Pairing is
//! the half-split of GPT-NeoX / LLaMA: in every head, pair `i < dh/2` is `(x[i], x[i + dh/2])`, with inverse
//! frequency `θ_i = 10000^(−2i/dh)`. At position `p` (the row's index `0..T` along the sequence) the pair
//! `(a, b)` becomes `(a·cos(pθ_i) − b·sin(pθ_i), a·sin(pθ_i) + b·cos(pθ_i))`. So `⟨R_p q, R_{p'} k⟩` depends
//! on the positions only through `p' − p`: attention scores see relative positions, with no parameters and no
//! length limit. Position 0 is the identity.
//!
//! The map is a rotation, so its backward is the rotation by the opposite angle (the transpose): one kernel
//! (`rotary_f32`, `kernels/rotary.cu`) with a sign serves both. On every backend the angle `p·θ_i` and its
//! cosine and sine are computed in f64 and then rounded to the element type, once per (position, pair) into a
//! table that every head and batch row reads, so `Cpu<f32>` and CUDA agree to rounding (~1e-7) and `Cpu<f64>`
//! is exact enough for finite-difference checks.

use crate::device::cuda::{pointwise_config, rows_config};
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor};
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

/// The base of the inverse frequencies, `θ_i = BASE^(−2i/dh)` (RoFormer's and LLaMA's).
pub(crate) const BASE: f64 = 10000.0;

/// Sizes of one rotary op on `x[seq, batch, heads·d_head]`, rotating heads `0..rotated` of each row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotaryDims {
    pub(crate) seq: usize,
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) rotated: usize,
    /// Even.
    pub(crate) d_head: usize,
    /// The position of the first row (0 but in incremental decoding, which rotates one new row at a time).
    pub(crate) first: usize,
}

impl RotaryDims {
    /// Elements per position: `batch · heads · d_head`.
    pub(crate) fn row(&self) -> usize {
        self.batch * self.heads * self.d_head
    }
}

/// The inverse frequency of pair `i` of a head of size `d_head`, `BASE^(−2i/d_head)`, in f64 (the CUDA
/// kernel evaluates the same expression in double).
pub(crate) fn inv_freq(i: usize, d_head: usize) -> f64 {
    BASE.powf(-((2 * i) as f64) / d_head as f64)
}

/// `(cos, sin)` of the angle `p·θ_i` of position `p`, pair `i`, computed in f64.
pub(crate) fn angle_cos_sin(p: usize, i: usize, d_head: usize) -> (f64, f64) {
    let (s, c) = (p as f64 * inv_freq(i, d_head)).sin_cos();
    (c, s)
}

pub trait RotaryOps: BackendCore {
    /// Rotates every pair of the rotated heads, in place, by `p·θ_i` (`inverse` false: forward) or by `−p·θ_i`
    /// (`inverse` true: backward).
    fn rotary(&self, x: &mut Self::Storage, d: RotaryDims, inverse: bool) -> Result<()>;
}

impl<T: Element> RotaryOps for Cpu<T> {
    fn rotary(&self, x: &mut Vec<T>, d: RotaryDims, inverse: bool) -> Result<()> {
        let (row, dh, half) = (d.row(), d.d_head, d.d_head / 2);
        let sign = if inverse { -1.0 } else { 1.0 };
        x.par_chunks_mut(row).enumerate().for_each(|(p, x_row)| {
            // cos and sin of this position's angles, rounded to T once (as the kernel does).
            let table: Vec<(T, T)> = (0..half)
                .map(|i| {
                    let (c, s) = angle_cos_sin(d.first + p, i, dh);
                    (T::from_f64(c), T::from_f64(sign * s))
                })
                .collect();
            for batch_row in x_row.chunks_exact_mut(d.heads * dh) {
                for head in batch_row[..d.rotated * dh].chunks_exact_mut(dh) {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (c, s) = table[i];
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * c - b * s;
                        hi[i] = a * s + b * c;
                    }
                }
            }
        });
        Ok(())
    }
}

// CUDA half: `kernels/rotary.cu`, a 2-D grid over (position, pair of the `batch · heads · d_head` row).
impl RotaryOps for Cuda {
    fn rotary(&self, x: &mut CudaSlice<f32>, d: RotaryDims, inverse: bool) -> Result<()> {
        if d.d_head > i32::MAX as usize {
            return Err(shape_err!(
                "rotary on CUDA: head size {} too large",
                d.d_head
            ));
        }
        let row_pairs = d.batch * d.rotated * d.d_head / 2;
        if row_pairs == 0 {
            return Ok(());
        }
        let (seq, batch, d_head) = (d.seq as i64, d.batch as i64, d.d_head as i32);
        let sign: f64 = if inverse { -1.0 } else { 1.0 };
        // The cosines and sines once per (position, pair), for every head and batch row to read.
        let entries = d.seq * (d.d_head / 2);
        // SAFETY: rotary_table_f32 writes both values of every (position, pair) entry.
        let mut table = unsafe { self.alloc_uninit(2 * entries) }?;
        let first = d.first as i64;
        self.rotary_table_f32(
            pointwise_config(entries),
            &mut table,
            seq,
            first,
            d_head,
            sign,
        )?;
        self.rotary_f32(
            rows_config(d.seq, row_pairs),
            x,
            &table,
            seq,
            batch,
            d.heads as i32,
            d.rotated as i32,
            d_head,
        )
    }
}

/// Checks `x[T, B, H·dh]` for `n_heads` heads of even size, the first `rotated` of them rotated; errors name
/// the shape and the values.
fn dims(what: &str, shape: &[usize], n_heads: usize, rotated: usize) -> Result<RotaryDims> {
    let [seq, batch, width] = *shape else {
        return Err(shape_err!(
            "rotary {what} must be [seq, batch, heads·d_head] (3-D), got shape {shape:?}"
        ));
    };
    check_nonempty(&format!("rotary {what}"), shape)?;
    if n_heads == 0 || !width.is_multiple_of(n_heads) {
        return Err(shape_err!(
            "rotary {what} of shape {shape:?}: last dimension {width} is not n_heads ({n_heads}) · d_head"
        ));
    }
    let d_head = width / n_heads;
    if !d_head.is_multiple_of(2) {
        return Err(shape_err!(
            "rotary {what} of shape {shape:?} with {n_heads} heads: d_head {d_head} is odd; rotary pairs \
             (i, i + d_head/2) need an even d_head"
        ));
    }
    if rotated > n_heads {
        return Err(shape_err!(
            "rotary {what} of shape {shape:?}: {rotated} heads to rotate out of {n_heads}"
        ));
    }
    Ok(RotaryDims {
        seq,
        batch,
        heads: n_heads,
        rotated,
        d_head,
        first: 0,
    })
}

/// Rotates, in place, heads `0..rotated` of every row of `x[T, B, heads·dh]` by their positions `0..T`
/// (`inverse`: by the opposite angles, which is the gradient of the rotation). The q and k of a packed
/// `qkv[T, B, 3·H·dh]` are heads `0..2H` of `3H`.
pub(crate) fn rotate<B: RotaryOps>(
    x: &mut Tensor<B>,
    heads: usize,
    rotated: usize,
    inverse: bool,
) -> Result<()> {
    rotate_named("input", x, heads, rotated, inverse)
}

/// `rotate` (forward) of rows that sit at positions `first..first + T`: the new rows of incremental decoding.
pub(crate) fn rotate_from<B: RotaryOps>(
    x: &mut Tensor<B>,
    heads: usize,
    rotated: usize,
    first: usize,
) -> Result<()> {
    let d = RotaryDims {
        first,
        ..dims("input", x.shape(), heads, rotated)?
    };
    let backend = x.backend().clone();
    backend.rotary(x.storage_mut()?, d, false)
}

/// `rotate`, with `what` naming `x` in errors.
fn rotate_named<B: RotaryOps>(
    what: &str,
    x: &mut Tensor<B>,
    heads: usize,
    rotated: usize,
    inverse: bool,
) -> Result<()> {
    let d = dims(what, x.shape(), heads, rotated)?;
    let backend = x.backend().clone();
    backend.rotary(x.storage_mut()?, d, inverse)
}

/// Rotates the queries or keys `x[T, B, H·dh]` (`n_heads` heads, `dh` even) by their positions `0..T`.
pub fn forward<B: RotaryOps>(x: &Tensor<B>, n_heads: usize) -> Result<Tensor<B>> {
    let mut y = x.try_clone()?;
    rotate_named("input", &mut y, n_heads, n_heads, false)?;
    Ok(y)
}

/// The gradient with respect to `forward`'s input from that of its output: the inverse rotation.
pub fn backward<B: RotaryOps>(dy: &Tensor<B>, n_heads: usize) -> Result<Tensor<B>> {
    let mut dx = dy.try_clone()?;
    rotate_named("output gradient", &mut dx, n_heads, n_heads, true)?;
    Ok(dx)
}
