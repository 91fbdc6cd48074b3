//! Shortening `[T, B, D]` → `[ceil(T/k), B, D]`, the kinds of `docs/components.md` (config key
//! `"shortening"`). Causal levels shift right by k−1 first, so shortened vector i holds nothing after
//! position i·k; non-causal levels do not shift.
//!
//! - `avg`: `AvgPool(k)(ShiftRight(x, k−1))` (the reference; a partial last window averages the rows present).
//! - `linear`: `Linear(k·D, D)(fold(ShiftRight(x, k−1)))`, the last partial window zero-padded.
//! - `attention`: `h = LN_in(ShiftRight(x, k−1))`, `q = LN_q(S(h))` with S avg or linear pooling (no further
//!   shift), then the shared `CrossAttentionBlock` of q over h under the funnel (or per-window) mask.

use super::layers::{LayerNorm, Linear};
use super::transformer::CrossAttentionBlock;
use super::{impl_parameters, join, Param, Parameters, Pass};
use crate::config::{AttentionPooling, HourGlassConfig, ResamplingMask, ShorteningKind};
use crate::error::{shape_err, Result};
use crate::ops::attention::AttnMask;
use crate::ops::{shorten, window, Backend};
use crate::rng::SeededRng;
use crate::tensor::Tensor;

fn input_shape(saved: &mut Option<Vec<usize>>, what: &str) -> Result<Vec<usize>> {
    saved
        .take()
        .ok_or_else(|| shape_err!("{what}: backward called before forward"))
}

/// `AvgPool(k, ceil_mode)(ShiftRight(x, shift))`, no parameters (`ops::shorten`).
pub struct AvgPooling {
    factor: usize,
    shift: usize,
    input_shape: Option<Vec<usize>>,
}

impl AvgPooling {
    pub(crate) fn new(factor: usize, shift: usize) -> Self {
        Self {
            factor,
            shift,
            input_shape: None,
        }
    }
    pub(crate) fn forward<B: Backend>(&mut self, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.input_shape = Some(x.shape().to_vec());
        shorten::forward(x, self.factor, self.shift)
    }
    pub(crate) fn backward<B: Backend>(&mut self, ds: &Tensor<B>) -> Result<Tensor<B>> {
        let shape = input_shape(&mut self.input_shape, "average pooling")?;
        shorten::backward(ds, &shape, self.factor, self.shift)
    }
}

/// `Linear(k·D, D)(fold(x, k, shift))`: each window's k (shifted) vectors concatenated in order, the last
/// partial window zero-padded. Its weight and bias are named `<name>.weight`, `<name>.bias`: `linear` as a
/// shortening of its own, `pool` as S inside attention shortening.
pub struct LinearPooling<B: Backend> {
    pub(crate) linear: Linear<B>,
    name: &'static str,
    factor: usize,
    shift: usize,
    input_shape: Option<Vec<usize>>,
}

impl<B: Backend> LinearPooling<B> {
    pub(crate) fn new(
        backend: &B,
        name: &'static str,
        d_model: usize,
        factor: usize,
        shift: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        Ok(Self {
            linear: Linear::new(backend, factor * d_model, d_model, rng)?,
            name,
            factor,
            shift,
            input_shape: None,
        })
    }
    pub(crate) fn forward(&mut self, x: &Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        self.input_shape = Some(x.shape().to_vec());
        self.linear
            .forward(window::fold(x, self.factor, self.shift)?, pass.precision())
    }
    pub(crate) fn backward(&mut self, ds: &Tensor<B>) -> Result<Tensor<B>> {
        let shape = input_shape(&mut self.input_shape, "linear pooling")?;
        window::unfold(&self.linear.backward(ds)?, self.factor, self.shift, &shape)
    }
}

impl<B: Backend> Parameters<B> for LinearPooling<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        self.linear.visit(&join(prefix, self.name), f)
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        self.linear.visit_mut(&join(prefix, self.name), f)
    }
}

/// The paper's attention-based shortening (trax `AttentionResampling`): `h = LN_in(ShiftRight(x, shift))`,
/// `q = LN_q(S(h))`, `y = q + Dropout(MHA(q, h, h))`, `y = y + Dropout(FFN(LN_ff(y)))`.
pub struct AttentionShortening<B: Backend> {
    pub(crate) norm_input: LayerNorm<B>,
    /// S: average or linear (`pool.*`) pooling of h by k, without a further shift.
    pub(crate) pool: Shortening<B>,
    pub(crate) norm_query: LayerNorm<B>,
    /// `attention.*`, `norm_ff`, `feed_forward.*`.
    pub(crate) block: CrossAttentionBlock<B>,
    shift: usize,
    mask: AttnMask,
    input_shape: Option<Vec<usize>>,
}

impl<B: Backend> AttentionShortening<B> {
    pub(crate) fn forward(&mut self, x: &Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        self.input_shape = Some(x.shape().to_vec());
        // ShiftRight alone is the shortening op with factor 1.
        let h = self
            .norm_input
            .forward(shorten::forward(x, 1, self.shift)?)?;
        let q = self.norm_query.forward(self.pool.forward(&h, pass)?)?;
        self.block.forward(q, h, self.mask, pass)
    }
    /// The last shortened vector of `x` (`[1, B, D]`), its query attending to every key of `x` its mask lets
    /// the last query see (the last window's, or all of them): `forward`'s last row for incremental decoding
    /// (`model::decode`), with one query instead of all. Nothing is kept for backward.
    pub(crate) fn forward_last(&mut self, x: &Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        let h = self
            .norm_input
            .forward(shorten::forward(x, 1, self.shift)?)?;
        let queries = self.norm_query.forward(self.pool.forward(&h, pass)?)?;
        let q = queries.rows(queries.shape()[0] - 1, 1)?;
        let keys = match self.mask {
            AttnMask::Window(k) => h.rows(h.shape()[0] - k, k)?,
            _ => h,
        };
        self.block.forward(q, keys, AttnMask::Full, pass)
    }
    /// The attention mask of its queries over the (shifted) inputs.
    pub(crate) fn mask(&self) -> AttnMask {
        self.mask
    }
    pub(crate) fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let shape = input_shape(&mut self.input_shape, "attention shortening")?;
        let (dq, mut dh) = self.block.backward(dy)?;
        dh.add_assign(&self.pool.backward(&self.norm_query.backward(&dq)?)?)?;
        shorten::backward(&self.norm_input.backward(&dh)?, &shape, 1, self.shift)
    }
}

// The pool adds its own name (`pool`) and the block its sub-modules' names, so both are visited at "".
impl_parameters!(AttentionShortening {
    norm_input => "norm_input",
    pool => "",
    norm_query => "norm_query",
    block => "",
});

/// One level's shortening (`"shortening"`: `avg`, `linear`, `attention`); parameters under `shortening.`.
pub enum Shortening<B: Backend> {
    Avg(AvgPooling),
    Linear(Box<LinearPooling<B>>),
    Attention(Box<AttentionShortening<B>>),
}

impl<B: Backend> Shortening<B> {
    /// The shortening of `kind` by `factor`, with the width, heads, dropout, causality, attention pooling and
    /// resampling mask of `c`.
    pub fn new(
        backend: &B,
        c: &HourGlassConfig,
        kind: ShorteningKind,
        factor: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let shift = if c.causal {
            factor.saturating_sub(1)
        } else {
            0
        };
        Ok(match kind {
            ShorteningKind::Avg => Shortening::Avg(AvgPooling::new(factor, shift)),
            ShorteningKind::Linear => Shortening::Linear(Box::new(LinearPooling::new(
                backend, "linear", c.d_model, factor, shift, rng,
            )?)),
            ShorteningKind::Attention => {
                let pool = match c.attention_pooling {
                    AttentionPooling::Avg => Shortening::Avg(AvgPooling::new(factor, 0)),
                    AttentionPooling::Linear => Shortening::Linear(Box::new(LinearPooling::new(
                        backend, "pool", c.d_model, factor, 0, rng,
                    )?)),
                };
                let mask = match (c.attention_resampling_mask, c.causal) {
                    (ResamplingMask::Window, _) => AttnMask::Window(factor),
                    (ResamplingMask::Funnel, true) => AttnMask::Funnel(factor),
                    (ResamplingMask::Funnel, false) => AttnMask::Full,
                };
                Shortening::Attention(Box::new(AttentionShortening {
                    norm_input: LayerNorm::new(backend, c.d_model)?,
                    pool,
                    norm_query: LayerNorm::new(backend, c.d_model)?,
                    block: CrossAttentionBlock::new(
                        backend, c.n_heads, c.d_model, c.d_ff, c.dropout, rng,
                    )?,
                    shift,
                    mask,
                    input_shape: None,
                }))
            }
        })
    }

    /// `[T, B, D]` → `[ceil(T/k), B, D]`.
    pub fn forward(&mut self, x: &Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        match self {
            Shortening::Avg(s) => s.forward(x),
            Shortening::Linear(s) => s.forward(x, pass),
            Shortening::Attention(s) => s.forward(x, pass),
        }
    }

    /// The gradient with respect to `x`, accumulating parameter gradients.
    pub fn backward(&mut self, ds: &Tensor<B>) -> Result<Tensor<B>> {
        match self {
            Shortening::Avg(s) => s.backward(ds),
            Shortening::Linear(s) => s.backward(ds),
            Shortening::Attention(s) => s.backward(ds),
        }
    }
}

impl<B: Backend> Parameters<B> for Shortening<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        match self {
            Shortening::Avg(_) => {}
            Shortening::Linear(s) => s.visit(prefix, f),
            Shortening::Attention(s) => s.visit(prefix, f),
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        match self {
            Shortening::Avg(_) => {}
            Shortening::Linear(s) => s.visit_mut(prefix, f),
            Shortening::Attention(s) => s.visit_mut(prefix, f),
        }
    }
}
