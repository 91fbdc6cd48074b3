//! AdamW over every parameter of a model (PyTorch's `torch.optim.AdamW`): one fused multi-tensor update.
//! Weight decay applies to matrices (weights, embedding) only, not to norms and biases.
//!
//! Its state goes into a training checkpoint under PyTorch's names (`optimizer.exp_avg.<param>`,
//! `optimizer.exp_avg_sq.<param>`, and the step count in the metadata), so a resumed run continues exactly.

use crate::checkpoint::{TensorFile, OPTIMIZER_PREFIX};
use crate::error::{Error, Result};
use crate::model::{Param, Parameters};
use crate::ops::adamw::{self, AdamWStep, AdamWTensors};
use crate::ops::Backend;
use crate::tensor::Tensor;

pub struct AdamW<B: Backend> {
    pub(crate) beta1: f64,
    pub(crate) beta2: f64,
    pub(crate) eps: f64,
    pub(crate) weight_decay: f64,
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
    pub(crate) fn steps(&self) -> u64 {
        self.step
    }

    /// One update of every parameter from its accumulated gradient, at learning rate `lr`.
    pub fn step(&mut self, model: &mut impl Parameters<B>, lr: f64) -> Result<()> {
        self.step_scaled(model, lr, 1.0)
    }

    /// `step` on every gradient times `grad_scale` (gradient clipping's factor: see `clip::clip_factor`), all
    /// tensors in one multi-tensor update.
    pub fn step_scaled(
        &mut self,
        model: &mut impl Parameters<B>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.apply(model, lr, grad_scale, None)
    }

    /// One step whose learning rate, bias corrections and gradient scale are read on the device from a
    /// training step's `state` (`ops::adamw::state`), which may also say to skip it: nothing then changes on
    /// the device, though the step is counted here (the caller, which reads the flag later, stops the run).
    pub(crate) fn step_from_state(
        &mut self,
        model: &mut impl Parameters<B>,
        state: &Tensor<B>,
    ) -> Result<()> {
        self.apply(model, 0.0, 1.0, Some(state))
    }

    /// The moments' buffers (`Tensor::buffer_id`).
    pub(crate) fn buffer_ids(&self) -> Vec<usize> {
        self.moments
            .iter()
            .flat_map(|(m, v)| [m.buffer_id(), v.buffer_id()])
            .collect()
    }

    /// Sets the steps taken, for a caller that replays a captured step (which runs no code here).
    pub(crate) fn set_steps(&mut self, steps: u64) {
        self.step = steps;
    }

    fn apply(
        &mut self,
        model: &mut impl Parameters<B>,
        lr: f64,
        grad_scale: f64,
        state: Option<&Tensor<B>>,
    ) -> Result<()> {
        // One update borrows every parameter at once, which `visit_mut`'s one-at-a-time callback cannot lend:
        // take each value (and its bf16 copy, if current) out (a handle on its gradient holds the place; no
        // copy), update them all, put them back in the same order.
        let (mut values, mut grads, mut copies) = (Vec::new(), Vec::new(), Vec::new());
        model.visit_mut("", &mut |_, p| {
            copies.push(p.take_bf16_copy());
            let placeholder = p.grad.share();
            values.push(std::mem::replace(&mut p.value, placeholder));
            grads.push(p.grad.share());
        });
        let result = self.update(&mut values, &grads, &mut copies, lr, grad_scale, state);
        // The gradients' extra handles go first, so that zeroing them later is not a copy-on-write.
        drop(grads);
        let count = values.len();
        let mut back = values.into_iter().zip(copies);
        let mut returned = 0;
        model.visit_mut("", &mut |_, p| {
            if let Some((value, copy)) = back.next() {
                p.value = value;
                // A failed update leaves the copies stale: they are dropped, and remade when next needed.
                if let (Some(copy), true) = (copy, result.is_ok()) {
                    p.restore_bf16_copy(copy);
                }
                returned += 1;
            }
        });
        if returned != count {
            return Err(Error::Checkpoint(format!(
                "AdamW: the model visited {count} parameters, then {returned}"
            )));
        }
        result
    }

    /// The multi-tensor update of `values` from `grads` (the model's parameters in visiting order), rewriting
    /// the bf16 copies there are.
    fn update(
        &mut self,
        values: &mut [Tensor<B>],
        grads: &[Tensor<B>],
        copies: &mut [Option<Tensor<B>>],
        lr: f64,
        grad_scale: f64,
        state: Option<&Tensor<B>>,
    ) -> Result<()> {
        for value in &values[self.moments.len().min(values.len())..] {
            let zeros = || Tensor::zeros(value.backend(), value.shape());
            self.moments.push((zeros()?, zeros()?));
        }
        if self.moments.len() != values.len() {
            return Err(Error::Checkpoint(format!(
                "AdamW holds moments for {} parameters, the model has {}",
                self.moments.len(),
                values.len()
            )));
        }
        self.step += 1;
        let h = AdamWStep {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            step: self.step,
            grad_scale,
        };
        let mut tensors: Vec<AdamWTensors<'_, B>> = values
            .iter_mut()
            .zip(grads)
            .zip(self.moments.iter_mut())
            .zip(copies.iter_mut())
            .map(|(((param, grad), (m, v)), copy)| {
                // Matrices decay; norms and biases do not.
                let weight_decay = if param.shape().len() >= 2 {
                    self.weight_decay
                } else {
                    0.0
                };
                AdamWTensors {
                    param,
                    grad,
                    m,
                    v,
                    param_bf16: copy.as_mut(),
                    weight_decay,
                }
            })
            .collect();
        adamw::step_all(&mut tensors, h, state)
    }
}

/// Where the state lives in a checkpoint: `optimizer.exp_avg.<param>`, `optimizer.exp_avg_sq.<param>`,
/// and the step count in the metadata.
const EXP_AVG: &str = "exp_avg.";
const EXP_AVG_SQ: &str = "exp_avg_sq.";
const STEP_KEY: &str = "optimizer.step";

impl<B: Backend> AdamW<B> {
    /// Writes the step count and both moments of every parameter of `model` into `file`.
    pub(crate) fn save_state(
        &self,
        model: &impl Parameters<B>,
        file: &mut TensorFile,
    ) -> Result<()> {
        file.metadata
            .insert(STEP_KEY.to_string(), self.step.to_string());
        let mut names = Vec::new();
        model.visit("", &mut |name, _: &Param<B>| names.push(name));
        for (name, (m, v)) in names.iter().zip(&self.moments) {
            file.insert(format!("{OPTIMIZER_PREFIX}{EXP_AVG}{name}"), m)?;
            file.insert(format!("{OPTIMIZER_PREFIX}{EXP_AVG_SQ}{name}"), v)?;
        }
        Ok(())
    }

    /// Restores what `save_state` wrote for the same model: the step count, and (after at least one step)
    /// both moments of every parameter, each with the parameter's shape and finite values.
    pub(crate) fn load_state(
        &mut self,
        model: &impl Parameters<B>,
        file: &TensorFile,
    ) -> Result<()> {
        let step = file
            .metadata
            .get(STEP_KEY)
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "no {STEP_KEY} in the metadata: not a training checkpoint"
                ))
            })?
            .parse::<u64>()
            .map_err(|e| Error::Checkpoint(format!("{STEP_KEY} is not a step count: {e}")))?;
        let mut moments = Vec::new();
        if step > 0 {
            let mut result: Result<()> = Ok(());
            model.visit("", &mut |name, p: &Param<B>| {
                if result.is_ok() {
                    result = (|| {
                        let load = |prefix: &str| {
                            file.get_checked(
                                &format!("{OPTIMIZER_PREFIX}{prefix}{name}"),
                                p.value.shape(),
                            )?
                            .to_tensor(p.value.backend())
                        };
                        moments.push((load(EXP_AVG)?, load(EXP_AVG_SQ)?));
                        Ok(())
                    })();
                }
            });
            result?;
        }
        self.step = step;
        self.moments = moments;
        Ok(())
    }
}
