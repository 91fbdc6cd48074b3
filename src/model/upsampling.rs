//! Upsampling back to full length, including the level's residual skip: `(x[T, B, D], short[ceil(T/k), B, D])`
//! → `[T, B, D]`, the kinds of `docs/components.md` (config key `"upsampling"`).
//!
//! - `naive`: `x + repeat_k(short)[:T]` (the reference).
//! - `linear`: `x + unfold(Linear(D, k·D)(short))[:T]`.
//! - `attention`: `h = LN_in(short)`, `q = LN_q(U(h)) + x` with U naive or linear, then the shared
//!   `CrossAttentionBlock` of q over h under the mask "query i sees key j iff j <= i / k" (or only key
//!   `i / k`; every key when non-causal), and the output `x + LN_out(y)`.

use super::layers::{LayerNorm, Linear};
use super::transformer::CrossAttentionBlock;
use super::{impl_parameters, Param, Parameters, Pass};
use crate::config::{AttentionUpsampling, HourGlassConfig, ResamplingMask, UpsamplingKind};
use crate::error::Result;
use crate::ops::attention::AttnMask;
use crate::ops::{upsample, window, Backend};
use crate::rng::SeededRng;
use crate::tensor::Tensor;

/// `x + repeat_k(short)[:T]`, no parameters (`ops::upsample`).
pub struct NaiveUpSampling {
    factor: usize,
}

impl NaiveUpSampling {
    pub(crate) fn new(factor: usize) -> Self {
        Self { factor }
    }
    pub(crate) fn forward<B: Backend>(
        &mut self,
        x: &Tensor<B>,
        short: Tensor<B>,
    ) -> Result<Tensor<B>> {
        upsample::forward_add(x, &short, self.factor)
    }
    /// `(grad x, grad short)`.
    pub(crate) fn backward<B: Backend>(&mut self, dy: Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        let dshort = upsample::backward(&dy, self.factor)?;
        Ok((dy, dshort))
    }
}

/// `x + unfold(Linear(D, k·D)(short))[:T]`: output features r·D.. of shortened vector s become position
/// s·k + r. Parameters `linear.weight [k·D, D]`, `linear.bias [k·D]`.
pub struct LinearUpSampling<B: Backend> {
    pub(crate) linear: Linear<B>,
    factor: usize,
}

impl<B: Backend> LinearUpSampling<B> {
    pub(crate) fn new(
        backend: &B,
        d_model: usize,
        factor: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        Ok(Self {
            linear: Linear::new(backend, d_model, factor * d_model, rng)?,
            factor,
        })
    }
    pub(crate) fn forward(
        &mut self,
        x: &Tensor<B>,
        short: Tensor<B>,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let up = self.linear.forward(short, pass.precision())?;
        let up = window::unfold(&up, self.factor, 0, x.shape())?;
        x.add(&up)
    }
    /// `(grad x, grad short)`.
    pub(crate) fn backward(&mut self, dy: Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        let dshort = self.linear.backward(&window::fold(&dy, self.factor, 0)?)?;
        Ok((dy, dshort))
    }
}

impl_parameters!(LinearUpSampling { linear => "linear" });

/// The paper's attention-based upsampling (trax `AttentionResampling`): `h = LN_in(short)`,
/// `q = LN_q(U(h)) + x`, `y = q + Dropout(MHA(q, h, h))`, `y = y + Dropout(FFN(LN_ff(y)))`, output
/// `x + LN_out(y)`.
pub struct AttentionUpSampling<B: Backend> {
    pub(crate) norm_input: LayerNorm<B>,
    /// U: naive or linear (`linear.*`) upsampling of h, applied to a zero residual.
    pub(crate) up: Upsampling<B>,
    pub(crate) norm_query: LayerNorm<B>,
    /// `attention.*`, `norm_ff`, `feed_forward.*`.
    pub(crate) block: CrossAttentionBlock<B>,
    pub(crate) norm_output: LayerNorm<B>,
    mask: AttnMask,
}

impl<B: Backend> AttentionUpSampling<B> {
    pub(crate) fn forward(
        &mut self,
        x: &Tensor<B>,
        short: Tensor<B>,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let h = self.norm_input.forward(short)?;
        let zero = Tensor::zeros(x.backend(), x.shape())?;
        let u = self.up.forward(&zero, h.share(), pass)?;
        let q = self.norm_query.forward(u)?.add(x)?;
        let y = self.block.forward(q, h, self.mask, pass)?;
        x.add(&self.norm_output.forward(y)?)
    }
    /// `forward`'s output at the last row of `x` (`[1, B, D]`) for incremental decoding (`model::decode`):
    /// `x` holds the positions of the current window up to it, `short` the window's shortened vector, and
    /// `keys` every shortened vector the last position's query sees, which it attends to all of. Nothing is
    /// kept for backward.
    pub(crate) fn forward_last(
        &mut self,
        x: &Tensor<B>,
        short: Tensor<B>,
        keys: Tensor<B>,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let h = self.norm_input.forward(short)?;
        let zero = Tensor::zeros(x.backend(), x.shape())?;
        let u = self.up.forward(&zero, h, pass)?;
        let queries = self.norm_query.forward(u)?.add(x)?;
        let last = queries.shape()[0] - 1;
        let h_keys = self.norm_input.forward(keys)?;
        let y = self
            .block
            .forward(queries.rows(last, 1)?, h_keys, AttnMask::Full, pass)?;
        x.rows(last, 1)?.add(&self.norm_output.forward(y)?)
    }
    /// The attention mask of its full-length queries over the shortened keys.
    pub(crate) fn mask(&self) -> AttnMask {
        self.mask
    }
    /// `(grad x, grad short)`.
    pub(crate) fn backward(&mut self, dout: Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        let (dq, mut dh) = self.block.backward(&self.norm_output.backward(&dout)?)?;
        let (_, dh_up) = self.up.backward(self.norm_query.backward(&dq)?)?;
        dh.add_assign(&dh_up)?;
        let dshort = self.norm_input.backward(&dh)?;
        let mut dx = dout;
        dx.add_assign(&dq)?;
        Ok((dx, dshort))
    }
}

// U adds its own name (`linear`) and the block its sub-modules' names, so both are visited at "".
impl_parameters!(AttentionUpSampling {
    norm_input => "norm_input",
    up => "",
    norm_query => "norm_query",
    block => "",
    norm_output => "norm_output",
});

/// One level's upsampling (`"upsampling"`: `naive`, `linear`, `attention`); parameters under `up_sampling.`.
pub enum Upsampling<B: Backend> {
    Naive(NaiveUpSampling),
    Linear(Box<LinearUpSampling<B>>),
    Attention(Box<AttentionUpSampling<B>>),
}

impl<B: Backend> Upsampling<B> {
    /// The upsampling of `kind` by `factor`, with the width, heads, dropout, causality, attention upsampling
    /// and resampling mask of `c`.
    pub fn new(
        backend: &B,
        c: &HourGlassConfig,
        kind: UpsamplingKind,
        factor: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        Ok(match kind {
            UpsamplingKind::Naive => Upsampling::Naive(NaiveUpSampling::new(factor)),
            UpsamplingKind::Linear => Upsampling::Linear(Box::new(LinearUpSampling::new(
                backend, c.d_model, factor, rng,
            )?)),
            UpsamplingKind::Attention => {
                let norm_input = LayerNorm::new(backend, c.d_model)?;
                let up = match c.attention_upsampling {
                    AttentionUpsampling::Naive => Upsampling::Naive(NaiveUpSampling::new(factor)),
                    AttentionUpsampling::Linear => Upsampling::Linear(Box::new(
                        LinearUpSampling::new(backend, c.d_model, factor, rng)?,
                    )),
                };
                let mask = match (c.attention_resampling_mask, c.causal) {
                    (ResamplingMask::Window, _) => AttnMask::UpWindow(factor),
                    (ResamplingMask::Funnel, true) => AttnMask::UpCausal(factor),
                    (ResamplingMask::Funnel, false) => AttnMask::Full,
                };
                Upsampling::Attention(Box::new(AttentionUpSampling {
                    norm_input,
                    up,
                    norm_query: LayerNorm::new(backend, c.d_model)?,
                    block: CrossAttentionBlock::new(
                        backend, c.n_heads, c.d_model, c.d_ff, c.dropout, rng,
                    )?,
                    norm_output: LayerNorm::new(backend, c.d_model)?,
                    mask,
                }))
            }
        })
    }

    /// `x[T, B, D]` plus the upsampled `short[ceil(T/k), B, D]` (each kind's op checks the shapes).
    pub fn forward(
        &mut self,
        x: &Tensor<B>,
        short: Tensor<B>,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        match self {
            Upsampling::Naive(u) => u.forward(x, short),
            Upsampling::Linear(u) => u.forward(x, short, pass),
            Upsampling::Attention(u) => u.forward(x, short, pass),
        }
    }

    /// `(grad x, grad short)` from the output gradient, accumulating parameter gradients.
    pub fn backward(&mut self, dy: Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        match self {
            Upsampling::Naive(u) => u.backward(dy),
            Upsampling::Linear(u) => u.backward(dy),
            Upsampling::Attention(u) => u.backward(dy),
        }
    }
}

impl<B: Backend> Parameters<B> for Upsampling<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        match self {
            Upsampling::Naive(_) => {}
            Upsampling::Linear(u) => u.visit(prefix, f),
            Upsampling::Attention(u) => u.visit(prefix, f),
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        match self {
            Upsampling::Naive(_) => {}
            Upsampling::Linear(u) => u.visit_mut(prefix, f),
            Upsampling::Attention(u) => u.visit_mut(prefix, f),
        }
    }
}
