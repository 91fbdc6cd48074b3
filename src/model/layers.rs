//! The two parameterised building blocks: Linear and LayerNorm modules (parameters plus saved inputs).

use super::{impl_parameters, Param, Precision};
use crate::device::DType;
use crate::error::{Error, Result};
use crate::ops::{layernorm, linear, Backend};
use crate::rng::{DropoutMask, SeededRng};
use crate::tensor::Tensor;

fn not_run(what: &str) -> Error {
    Error::Shape(format!("{what}: backward called before forward"))
}

/// `x` as a GEMM in `precision` takes it: rounded to bf16 in bf16 (unless it already is), else unchanged.
pub(crate) fn gemm_input<B: Backend>(x: Tensor<B>, precision: Precision) -> Result<Tensor<B>> {
    match precision {
        Precision::Bf16 if x.dtype() != DType::Bf16 => x.to_bf16(),
        _ => Ok(x),
    }
}

/// What a linear map's forward keeps for backward: the input and the weight it multiplied (in bf16, the
/// rounded ones).
pub struct LinearSaved<B: Backend> {
    x: Tensor<B>,
    w: Tensor<B>,
}

impl<B: Backend> LinearSaved<B> {
    /// `x·Wᵀ + b` in `precision`: with bf16, `x` is rounded (unless it already is) and the weight's bf16 copy
    /// used (`Param::gemm_value`); backward uses the same operands. The output is in the element type either
    /// way.
    pub(crate) fn forward(
        x: Tensor<B>,
        weight: &mut Param<B>,
        b: Option<&Tensor<B>>,
        precision: Precision,
    ) -> Result<(Tensor<B>, Self)> {
        let w = weight.gemm_value(precision)?;
        Self::forward_with(x, w, b, precision)
    }

    /// `forward` with the weight (in the GEMM's dtype) given.
    pub(crate) fn forward_with(
        x: Tensor<B>,
        w: Tensor<B>,
        b: Option<&Tensor<B>>,
        precision: Precision,
    ) -> Result<(Tensor<B>, Self)> {
        let x = gemm_input(x, precision)?;
        let y = linear::forward(&x, &w, b)?;
        Ok((y, Self { x, w }))
    }

    /// Returns `dx` and accumulates `dw` (and `db`), with the operands forward used.
    pub(crate) fn backward(
        self,
        dy: &Tensor<B>,
        dw: &mut Tensor<B>,
        db: Option<&mut Tensor<B>>,
    ) -> Result<Tensor<B>> {
        linear::backward(&self.x, &self.w, dy, dw, db)
    }
}

/// Linear maps of one input as one GEMM: their weights stacked and their biases concatenated, so that the
/// output `[.., Σ d_out]` holds the maps' outputs side by side (q, k and v of self-attention; k and v of
/// cross-attention). Each map keeps its own parameters (the checkpoint's names); backward adds to each its
/// rows of the stacked gradients. What forward keeps for backward.
pub(crate) struct StackedLinear<B: Backend> {
    saved: LinearSaved<B>,
}

impl<B: Backend> StackedLinear<B> {
    /// `[x·W₁ᵀ + b₁, x·W₂ᵀ + b₂, ..]` in `precision` (the maps' weights in bf16 are their bf16 copies).
    pub(crate) fn forward(
        x: Tensor<B>,
        maps: &mut [&mut Linear<B>],
        precision: Precision,
    ) -> Result<(Tensor<B>, Self)> {
        let (w, b) = Self::stack(maps, precision)?;
        let (y, saved) = LinearSaved::forward_with(x, w, Some(&b), precision)?;
        Ok((y, Self { saved }))
    }

    /// The maps' weights (in `precision`: bf16 copies in bf16) stacked, and their biases concatenated: what
    /// `forward` multiplies by, for a caller that keeps them (incremental decoding, whose weights do not move).
    pub(crate) fn stack(
        maps: &mut [&mut Linear<B>],
        precision: Precision,
    ) -> Result<(Tensor<B>, Tensor<B>)> {
        let weights = maps
            .iter_mut()
            .map(|m| m.weight.gemm_value(precision))
            .collect::<Result<Vec<_>>>()?;
        let w = Tensor::concat(&weights.iter().collect::<Vec<_>>())?;
        let b = Tensor::concat(&maps.iter().map(|m| &m.bias.value).collect::<Vec<_>>())?;
        Ok((w, b))
    }

    /// Returns `dx` from the stacked output gradient `dy`, and accumulates each map's weight and bias
    /// gradients (`maps` as in forward).
    pub(crate) fn backward(self, maps: &mut [&mut Linear<B>], dy: &Tensor<B>) -> Result<Tensor<B>> {
        let backend = dy.backend();
        let mut dw = Tensor::zeros(backend, self.saved.w.shape())?;
        let mut db = Tensor::zeros(backend, &[self.saved.w.shape()[0]])?;
        let dx = self.saved.backward(dy, &mut dw, Some(&mut db))?;
        let mut first = 0;
        for m in maps.iter_mut() {
            m.weight.grad.add_assign_rows(&dw, first)?;
            m.bias.grad.add_assign_rows(&db, first)?;
            first += m.weight.value.shape()[0];
        }
        Ok(dx)
    }
}

/// `y = x·Wᵀ + b`, PyTorch names `weight` `[out, in]` and `bias` `[out]`.
pub struct Linear<B: Backend> {
    pub weight: Param<B>,
    pub bias: Param<B>,
    saved: Option<LinearSaved<B>>,
}

impl<B: Backend> Linear<B> {
    pub(crate) fn new(backend: &B, d_in: usize, d_out: usize, rng: &mut SeededRng) -> Result<Self> {
        let bound = 1.0 / (d_in as f64).sqrt();
        Ok(Self {
            weight: Param::uniform(backend, &[d_out, d_in], bound, rng)?,
            bias: Param::uniform(backend, &[d_out], bound, rng)?,
            saved: None,
        })
    }
    pub(crate) fn forward(&mut self, x: Tensor<B>, precision: Precision) -> Result<Tensor<B>> {
        let (y, saved) =
            LinearSaved::forward(x, &mut self.weight, Some(&self.bias.value), precision)?;
        self.saved = Some(saved);
        Ok(y)
    }
    pub(crate) fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let saved = self.saved.take().ok_or_else(|| not_run("linear"))?;
        saved.backward(dy, &mut self.weight.grad, Some(&mut self.bias.grad))
    }
}

impl_parameters!(Linear { weight => "weight", bias => "bias" });

/// LayerNorm over the model width, weight ones and bias zeros at initialisation.
pub(crate) struct LayerNorm<B: Backend> {
    pub(crate) weight: Param<B>,
    pub(crate) bias: Param<B>,
    saved: Option<(Tensor<B>, layernorm::LayerNormSaved<B>)>,
}

impl<B: Backend> LayerNorm<B> {
    pub(crate) fn new(backend: &B, d: usize) -> Result<Self> {
        Ok(Self {
            weight: Param::filled(backend, &[d], 1.0)?,
            bias: Param::filled(backend, &[d], 0.0)?,
            saved: None,
        })
    }
    pub(crate) fn forward(&mut self, x: Tensor<B>) -> Result<Tensor<B>> {
        self.forward_in(x, Precision::Element)
    }
    /// For a LayerNorm whose output only feeds GEMMs: in bf16, y comes out rounded to bf16 (one pass, not a
    /// LayerNorm and then a rounding).
    pub(crate) fn forward_in(&mut self, x: Tensor<B>, precision: Precision) -> Result<Tensor<B>> {
        let (gamma, beta) = (&self.weight.value, &self.bias.value);
        let bf16 = precision == Precision::Bf16;
        let (y, saved) = layernorm::forward_as(&x, gamma, beta, bf16)?;
        self.saved = Some((x, saved));
        Ok(y)
    }
    /// `s = x + dropout(branch)` and `y = LayerNorm(s)` in one op (`layernorm::forward_residual`): the residual
    /// add before a pre-norm sublayer whose GEMMs take y (bf16 in a bf16 pass). Returns `(s, y)`.
    pub(crate) fn forward_residual(
        &mut self,
        x: &Tensor<B>,
        branch: &Tensor<B>,
        mask: Option<DropoutMask>,
        precision: Precision,
    ) -> Result<(Tensor<B>, Tensor<B>)> {
        let (gamma, beta) = (&self.weight.value, &self.bias.value);
        let bf16 = precision == Precision::Bf16;
        let (s, y, saved) = layernorm::forward_residual(x, branch, mask, gamma, beta, bf16)?;
        self.saved = Some((s.share(), saved));
        Ok((s, y))
    }
    pub(crate) fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        self.backward_residual(dy, None)
    }
    /// The gradient of the input (plus `dres`, the gradient that went around the sublayer, in the same pass).
    pub(crate) fn backward_residual(
        &mut self,
        dy: &Tensor<B>,
        dres: Option<&Tensor<B>>,
    ) -> Result<Tensor<B>> {
        let (x, saved) = self.saved.take().ok_or_else(|| not_run("layernorm"))?;
        layernorm::backward_residual(
            &x,
            &self.weight.value,
            &saved,
            dy,
            dres,
            &mut self.weight.grad,
            &mut self.bias.grad,
        )
    }
}

impl_parameters!(LayerNorm { weight => "weight", bias => "bias" });
