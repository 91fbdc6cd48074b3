//! AdamW over every parameter of a model (PyTorch's `torch.optim.AdamW`), one fused kernel per tensor.
//! Weight decay applies to matrices (weights, embedding) only, not to norms and biases.

use crate::error::Result;
use crate::model::Parameters;
use crate::ops::adamw::{self, AdamWStep};
use crate::ops::Backend;
use crate::tensor::Tensor;

pub struct AdamW<B: Backend> {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    step: u64,
    /// First and second moments, in the model's visiting order.
    moments: Vec<(Tensor<B>, Tensor<B>)>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            moments: Vec::new(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of every parameter from its accumulated gradient, at learning rate `lr`.
    pub fn step(&mut self, model: &mut impl Parameters<B>, lr: f64) -> Result<()> {
        self.step += 1;
        let mut index = 0;
        let mut result = Ok(());
        model.visit_mut("", &mut |_, p| {
            if result.is_err() {
                return;
            }
            result = (|| {
                if self.moments.len() == index {
                    let zeros = || Tensor::zeros(p.value.backend(), p.value.shape());
                    self.moments.push((zeros()?, zeros()?));
                }
                let (m, v) = &mut self.moments[index];
                let decay = if p.value.shape().len() >= 2 {
                    self.weight_decay
                } else {
                    0.0
                };
                let h = AdamWStep {
                    lr,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    weight_decay: decay,
                    step: self.step,
                };
                index += 1;
                adamw::step(&mut p.value, &p.grad, m, v, h)
            })();
        });
        result
    }
}
