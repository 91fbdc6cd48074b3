//! The two parameterised building blocks: Linear and LayerNorm modules (parameters plus saved inputs).

use super::{impl_parameters, Param};
use crate::error::{Error, Result};
use crate::ops::{layernorm, linear, Backend};
use crate::rng::SeededRng;
use crate::tensor::Tensor;

fn not_run(what: &str) -> Error {
    Error::Shape(format!("{what}: backward called before forward"))
}

/// `y = x·Wᵀ + b`, PyTorch names `weight` `[out, in]` and `bias` `[out]`.
pub struct Linear<B: Backend> {
    pub weight: Param<B>,
    pub bias: Param<B>,
    input: Option<Tensor<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn new(backend: &B, d_in: usize, d_out: usize, rng: &mut SeededRng) -> Result<Self> {
        let bound = 1.0 / (d_in as f64).sqrt();
        Ok(Self {
            weight: Param::uniform(backend, &[d_out, d_in], bound, rng)?,
            bias: Param::uniform(backend, &[d_out], bound, rng)?,
            input: None,
        })
    }
    pub fn forward(&mut self, x: Tensor<B>) -> Result<Tensor<B>> {
        let y = linear::forward(&x, &self.weight.value, Some(&self.bias.value))?;
        self.input = Some(x);
        Ok(y)
    }
    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let x = self.input.take().ok_or_else(|| not_run("linear"))?;
        linear::backward(
            &x,
            &self.weight.value,
            dy,
            &mut self.weight.grad,
            Some(&mut self.bias.grad),
        )
    }
}

impl_parameters!(Linear { weight => "weight", bias => "bias" });

/// LayerNorm over the model width, weight ones and bias zeros at initialisation.
pub struct LayerNorm<B: Backend> {
    pub weight: Param<B>,
    pub bias: Param<B>,
    saved: Option<(Tensor<B>, layernorm::LayerNormSaved<B>)>,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(backend: &B, d: usize) -> Result<Self> {
        Ok(Self {
            weight: Param::filled(backend, &[d], 1.0)?,
            bias: Param::filled(backend, &[d], 0.0)?,
            saved: None,
        })
    }
    pub fn forward(&mut self, x: Tensor<B>) -> Result<Tensor<B>> {
        let (y, saved) = layernorm::forward(&x, &self.weight.value, &self.bias.value)?;
        self.saved = Some((x, saved));
        Ok(y)
    }
    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let (x, saved) = self.saved.take().ok_or_else(|| not_run("layernorm"))?;
        layernorm::backward(
            &x,
            &self.weight.value,
            &saved,
            dy,
            &mut self.weight.grad,
            &mut self.bias.grad,
        )
    }
}

impl_parameters!(LayerNorm { weight => "weight", bias => "bias" });
