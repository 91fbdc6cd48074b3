//! One AdamW step, as PyTorch's `torch.optim.AdamW`: `p ← p·(1 − lr·wd)`, then
//! `p ← p − lr · m̂ / (sqrt(v̂) + eps)` with `m̂ = m / (1 − β1^t)`, `v̂ = v / (1 − β2^t)` (moments updated first),
//! on the gradient times `grad_scale` (gradient clipping's factor, folded in: no pass of its own over the
//! gradients; the same f32 product the separate scaling computed). `step_all` updates every tensor of a
//! model in one launch (`kernels/adamw.cu`: `adamw_multi_f32`; one tensor is a table of one), and rewrites the
//! bf16 copy of each parameter that has one (the GEMMs' operand in a bf16 pass) in the same pass.
//!
//! A training step with no host round trip (`train::device_step`) keeps its scalars in a small tensor on the
//! device, its `state`: the learning rate and bias corrections the host queued, the losses and gradient norm
//! the step computed, and what `guard` makes of them (the clipping factor; a skip flag when anything is not
//! finite, which makes the update leave every parameter as it was). `step_all` then reads them there
//! (`StepScalars::Device`).

use crate::device::cuda::cuda_err;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;
use rayon::prelude::*;

/// Hyper-parameters of one step, the same for every tensor (each has its own weight decay: `AdamWTensors`);
/// `step` counts from 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: u64,
    /// Multiplies the gradient first (1 = as it is; `max_norm / norm` when clipping).
    pub grad_scale: f64,
}

impl AdamWStep {
    /// `(1 − β1^t, 1 − β2^t)`.
    fn bias_corrections(&self) -> (f64, f64) {
        bias_corrections(self.beta1, self.beta2, self.step)
    }
}

/// `(1 − β1^t, 1 − β2^t)` at step `t` (from 1).
pub(crate) fn bias_corrections(beta1: f64, beta2: f64, step: u64) -> (f64, f64) {
    (1.0 - beta1.powi(step as i32), 1.0 - beta2.powi(step as i32))
}

/// The slots of a training step's state (`kernels/adamw.cu`: `STATE_*`): the host writes the first four
/// before each step; the step writes the rest.
pub(crate) mod state {
    pub(crate) const LR: usize = 0;
    pub(crate) const BIAS1: usize = 1;
    pub(crate) const BIAS2: usize = 2;
    /// The clipping threshold; 0: no clipping.
    pub(crate) const MAX_NORM: usize = 3;
    /// Set by `guard`: what AdamW multiplies the gradients by.
    pub(crate) const GRAD_SCALE: usize = 4;
    /// Set by `guard` to 1 when a loss or the norm is not finite: AdamW then changes nothing, in this step and
    /// in every later one until the host lowers the flag again (`INPUTS_AND_GUARD`).
    pub(crate) const SKIP: usize = 5;
    /// The sum of squared gradients (`reduce::sum_squares_all_into`).
    pub(crate) const SUM_SQUARES: usize = 6;
    /// Micro-batch m's mean loss in nats is at `LOSSES + m`.
    pub(crate) const LOSSES: usize = 7;
    /// The host's part, written before each step.
    pub(crate) const INPUTS: usize = 4;
    /// The host's part and the guard's (scale 1, skip flag down): what the host writes before a step once it
    /// has read every earlier one, and before a host-path update.
    pub(crate) const INPUTS_AND_GUARD: usize = 6;

    /// The state's length for `micro_batches` losses.
    pub(crate) fn len(micro_batches: usize) -> usize {
        LOSSES + micro_batches
    }
}

/// Where a multi-tensor step's learning rate, bias corrections and gradient scale come from.
pub enum StepScalars<'a, B: BackendCore> {
    /// From the `AdamWStep`.
    Host,
    /// From a training step's state (`state`), skip flag included; the `AdamWStep` gives the rest.
    Device(&'a B::Storage),
}

/// One tensor's buffers in a multi-tensor step, and its weight decay.
pub struct AdamWBuffers<'a, B: BackendCore> {
    pub(crate) p: &'a mut B::Storage,
    pub(crate) g: &'a B::Storage,
    pub(crate) m: &'a mut B::Storage,
    pub(crate) v: &'a mut B::Storage,
    /// Receives the updated `p` rounded to bf16.
    pub(crate) p_bf16: Option<&'a mut B::Bf16Storage>,
    pub(crate) weight_decay: f64,
}

pub trait AdamWOps: BackendCore {
    /// `adamw` on every entry (each with its own weight decay), writing `p_bf16` where there is one: one launch
    /// on the GPU.
    fn adamw_multi(
        &self,
        tensors: &mut [AdamWBuffers<'_, Self>],
        h: AdamWStep,
        scalars: StepScalars<'_, Self>,
    ) -> Result<()>;
    /// `guard` on a step's state with `losses` micro-batch losses.
    fn step_guard(&self, state: &mut Self::Storage, losses: usize) -> Result<()>;
}

impl<T: Element> AdamWOps for Cpu<T> {
    fn adamw_multi(
        &self,
        tensors: &mut [AdamWBuffers<'_, Self>],
        h: AdamWStep,
        scalars: StepScalars<'_, Self>,
    ) -> Result<()> {
        let values = match scalars {
            StepScalars::Host => ElementValues::of(&h),
            StepScalars::Device(st) if st[state::SKIP] != T::zero() => return Ok(()),
            StepScalars::Device(st) => {
                let f = |i: usize| st[i].to_f64();
                ElementValues {
                    lr: f(state::LR),
                    bias: (f(state::BIAS1), f(state::BIAS2)),
                    grad_scale: f(state::GRAD_SCALE),
                    ..ElementValues::of(&h)
                }
            }
        };
        tensors.iter_mut().for_each(|t| {
            update(t.p, t.g, t.m, t.v, values, t.weight_decay);
            if let Some(p_bf16) = t.p_bf16.as_deref_mut() {
                p_bf16
                    .par_iter_mut()
                    .zip(t.p.par_iter())
                    .for_each(|(r, &p)| *r = p.to_bf16());
            }
        });
        Ok(())
    }

    fn step_guard(&self, st: &mut Vec<T>, losses: usize) -> Result<()> {
        let norm = st[state::SUM_SQUARES].to_f64().sqrt();
        let finite = norm.is_finite()
            && st[state::LOSSES..][..losses]
                .iter()
                .all(|l| l.to_f64().is_finite());
        if !finite {
            st[state::SKIP] = T::one();
        }
        let max_norm = st[state::MAX_NORM].to_f64();
        st[state::GRAD_SCALE] = if max_norm > 0.0 && finite && norm > max_norm {
            T::from_f64(max_norm / norm)
        } else {
            T::one()
        };
        Ok(())
    }
}

/// The scalars of a step's update, in f64 (each rounded to the element type once, as the kernel takes them in
/// f32).
#[derive(Clone, Copy)]
struct ElementValues {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bias: (f64, f64),
    grad_scale: f64,
}

impl ElementValues {
    fn of(h: &AdamWStep) -> Self {
        Self {
            lr: h.lr,
            beta1: h.beta1,
            beta2: h.beta2,
            eps: h.eps,
            bias: h.bias_corrections(),
            grad_scale: h.grad_scale,
        }
    }
}

/// The CPU half's update of one tensor.
fn update<T: Element>(
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    h: ElementValues,
    weight_decay: f64,
) {
    let f = T::from_f64;
    let (lr, beta1, beta2, eps, decay) = (
        f(h.lr),
        f(h.beta1),
        f(h.beta2),
        f(h.eps),
        f(1.0 - h.lr * weight_decay),
    );
    let (b1, b2, scale) = (f(h.bias.0), f(h.bias.1), f(h.grad_scale));
    p.par_iter_mut()
        .zip(g.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .for_each(|((p, &g), (m, v))| {
            let g = g * scale;
            *m = beta1 * *m + (T::one() - beta1) * g;
            *v = beta2 * *v + (T::one() - beta2) * g * g;
            *p = *p * decay - lr * (*m / b1) / ((*v / b2).sqrt() + eps);
        });
}

/// Elements per block-sized chunk of `adamw_multi_f32`, and words per tensor in its table (`ADAMW_CHUNK`,
/// `ADAMW_WORDS` in kernels/adamw.cu).
const ADAMW_CHUNK: usize = 4096;
const ADAMW_WORDS: usize = 7;

impl AdamWOps for Cuda {
    fn adamw_multi(
        &self,
        tensors: &mut [AdamWBuffers<'_, Self>],
        h: AdamWStep,
        scalars: StepScalars<'_, Self>,
    ) -> Result<()> {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        if tensors.is_empty() {
            return Ok(());
        }
        let stream = self.stream().clone();
        // Each tensor's addresses, length and weight decay (ADAMW_WORDS words), and where its chunks start.
        let mut words = Vec::with_capacity(ADAMW_WORDS * tensors.len());
        let mut chunk_starts = Vec::with_capacity(tensors.len() + 1);
        let mut chunks = 0i64;
        for t in tensors.iter_mut() {
            let n = t.p.len();
            let bf16_len = t.p_bf16.as_ref().map_or(n, |b| b.len());
            if t.g.len() != n || t.m.len() != n || t.v.len() != n || bf16_len != n {
                return Err(shape_err!(
                    "AdamW: a tensor of {n} elements with buffers of other lengths"
                ));
            }
            // Event tracking is off (one stream), so these guards record nothing; the buffers stay borrowed
            // (and so alive and unaliased) until this function returns, after the launch is queued.
            let (p, _) = t.p.device_ptr_mut(&stream);
            let (g, _) = t.g.device_ptr(&stream);
            let (m, _) = t.m.device_ptr_mut(&stream);
            let (v, _) = t.v.device_ptr_mut(&stream);
            // 0: no bf16 copy to write.
            let p_bf16 = t
                .p_bf16
                .as_deref_mut()
                .map_or(0, |b| b.device_ptr_mut(&stream).0);
            let decay = (t.weight_decay as f32).to_bits() as u64;
            words.extend([p, g, m, v, p_bf16, n as u64, decay]);
            chunk_starts.push(chunks);
            chunks += n.div_ceil(ADAMW_CHUNK) as i64;
        }
        chunk_starts.push(chunks);
        if chunks == 0 {
            return Ok(());
        }
        let count = tensors.len() as i32;
        let table = self.tensor_table("AdamW", words, chunk_starts)?;
        let config = cudarc::driver::LaunchConfig {
            grid_dim: (chunks.min(65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (beta1, beta2, eps) = (h.beta1 as f32, h.beta2 as f32, h.eps as f32);
        let (dev_words, dev_starts) = (&table.words, &table.starts);
        match scalars {
            StepScalars::Device(st) => {
                self.adamw_multi_f32(config, dev_words, dev_starts, count, st, beta1, beta2, eps)
            }
            StepScalars::Host => {
                self.refuse_while_capturing("an AdamW step with the host's learning rate")?;
                let (b1, b2) = h.bias_corrections();
                let mut host = vec![0f32; state::INPUTS_AND_GUARD];
                host[state::LR] = h.lr as f32;
                host[state::BIAS1] = b1 as f32;
                host[state::BIAS2] = b2 as f32;
                host[state::GRAD_SCALE] = h.grad_scale as f32;
                let st = stream.clone_htod(&host).map_err(cuda_err)?;
                self.adamw_multi_f32(config, dev_words, dev_starts, count, &st, beta1, beta2, eps)
            }
        }
    }

    fn step_guard(&self, st: &mut CudaSlice<f32>, losses: usize) -> Result<()> {
        let config = cudarc::driver::LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        self.step_guard_f32(config, st, losses as i32)
    }
}

/// One tensor of a multi-tensor step: the parameter, its gradient, its moments, its weight decay, and a bf16
/// tensor of the same shape to receive the updated parameter rounded, if it has one.
pub struct AdamWTensors<'a, B: BackendCore> {
    pub param: &'a mut Tensor<B>,
    pub grad: &'a Tensor<B>,
    pub m: &'a mut Tensor<B>,
    pub v: &'a mut Tensor<B>,
    pub param_bf16: Option<&'a mut Tensor<B>>,
    pub weight_decay: f64,
}

/// One AdamW step on every entry, each with its own weight decay: one launch on the GPU. With `state`, the
/// learning rate, bias corrections and gradient scale are read from that training step's state on the device
/// instead of `h` (which gives the betas and eps), and nothing changes when its skip flag is up.
pub fn step_all<B: AdamWOps>(
    tensors: &mut [AdamWTensors<'_, B>],
    h: AdamWStep,
    state: Option<&Tensor<B>>,
) -> Result<()> {
    let Some(first) = tensors.first() else {
        return Ok(());
    };
    let scalars = match state {
        None => StepScalars::Host,
        Some(st) => {
            check_state(st, 0)?;
            StepScalars::Device(st.storage()?)
        }
    };
    let backend = first.param.backend().clone();
    let mut buffers = Vec::with_capacity(tensors.len());
    for t in tensors.iter_mut() {
        check(t.param, t.grad, t.m, t.v, h)?;
        let p_bf16 = match t.param_bf16.as_deref_mut() {
            Some(copy) => {
                copy.expect_shape("AdamW: the parameter's bf16 copy", t.param.shape())?;
                Some(copy.bf16_storage_mut()?)
            }
            None => None,
        };
        buffers.push(AdamWBuffers {
            p: t.param.storage_mut()?,
            g: t.grad.storage()?,
            m: t.m.storage_mut()?,
            v: t.v.storage_mut()?,
            p_bf16,
            weight_decay: t.weight_decay,
        });
    }
    backend.adamw_multi(&mut buffers, h, scalars)
}

/// After a step's losses (`losses` of them) and sum of squared gradients are in its `state`: the clipping
/// factor, and the skip flag raised when any of them is not finite (`state::SKIP`).
pub(crate) fn guard<B: AdamWOps>(state: &mut Tensor<B>, losses: usize) -> Result<()> {
    check_state(state, losses)?;
    let backend = state.backend().clone();
    backend.step_guard(state.storage_mut()?, losses)
}

fn check_state<B: BackendCore>(st: &Tensor<B>, losses: usize) -> Result<()> {
    if st.shape().len() != 1 || st.len() < state::len(losses.max(1)) {
        return Err(shape_err!(
            "a training step's state of shape {:?} for {losses} losses: expected [{}] at least",
            st.shape(),
            state::len(losses.max(1))
        ));
    }
    Ok(())
}

/// Shapes that agree, a step that counts from 1, a positive finite gradient scale.
fn check<B: BackendCore>(
    param: &Tensor<B>,
    grad: &Tensor<B>,
    m: &Tensor<B>,
    v: &Tensor<B>,
    h: AdamWStep,
) -> Result<()> {
    for (what, t) in [
        ("gradient", grad.shape()),
        ("first moment", m.shape()),
        ("second moment", v.shape()),
    ] {
        if t != param.shape() {
            return Err(shape_err!(
                "AdamW: {what} has shape {t:?}, the parameter {:?}",
                param.shape()
            ));
        }
    }
    if h.step == 0 {
        return Err(shape_err!("AdamW step counts from 1, got 0"));
    }
    if !(h.grad_scale.is_finite() && h.grad_scale > 0.0) {
        return Err(shape_err!(
            "AdamW: the gradient scale must be positive and finite, got {}",
            h.grad_scale
        ));
    }
    Ok(())
}
