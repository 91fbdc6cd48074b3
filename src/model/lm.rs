//! A byte-level language model around the hourglass: token embedding (256 bytes) → HourGlass → LayerNorm →
//! linear head → softmax cross-entropy. Inputs are `[seq, batch]` byte ids, flattened row-major (t·batch + b),
//! the layout of the hourglass's `[seq, batch, d_model]` activations.
//!
//! Positions: the LM uses whatever `positions` its config has. With the default (`"none"`) none are added:
//! causal attention and the shift before shortening already tell positions apart for a causal model. With
//! `"rotary"` every transformer layer's self-attention rotates q and k by their positions (`ops::rotary`),
//! relative like the paper's relative attention; the training presets use rotary.

use super::layers::{LayerNorm, Linear};
use super::{impl_parameters, HourGlass, Param};
use crate::config::HourGlassConfig;
use crate::error::{shape_err, Result};
use crate::ops::{embedding, loss, Backend};
use crate::rng::SeededRng;
use crate::tensor::Tensor;

/// Bytes.
pub const VOCAB: usize = 256;

pub struct HourglassLM<B: Backend> {
    pub embedding: Param<B>,
    pub hourglass: HourGlass<B>,
    pub norm: LayerNorm<B>,
    pub head: Linear<B>,
    input: Option<(Vec<u32>, [usize; 2])>,
}

impl<B: Backend> HourglassLM<B> {
    /// Embedding N(0, 1) like PyTorch's `nn.Embedding`; the rest as `HourGlass::from_config`.
    pub fn new(backend: &B, config: &HourGlassConfig, seed: u64) -> Result<Self> {
        let hourglass = HourGlass::from_config(backend, config, seed)?;
        let d = config.d_model;
        let mut rng = SeededRng::new(seed ^ 0x1A7E_57ED);
        let table: Vec<f64> = (0..VOCAB * d).map(|_| rng.normal()).collect();
        Ok(Self {
            embedding: Param::new(Tensor::from_f64(backend, &[VOCAB, d], &table)?)?,
            hourglass,
            norm: LayerNorm::new(backend, d)?,
            head: Linear::new(backend, d, VOCAB, &mut rng)?,
            input: None,
        })
    }

    /// Training mode applies dropout; evaluation mode does not.
    pub fn train(&mut self, training: bool) {
        self.hourglass.train(training);
    }

    /// See [`HourGlass::set_dropout_pass`].
    pub fn set_dropout_pass(&mut self, pass: u64) {
        self.hourglass.set_dropout_pass(pass);
    }

    /// Logits `[seq·batch, 256]` for byte ids `[seq, batch]` (row-major).
    pub fn forward(&mut self, ids: &[u32], seq: usize, batch: usize) -> Result<Tensor<B>> {
        if ids.len() != seq * batch || ids.is_empty() {
            return Err(shape_err!(
                "{} token ids for a [seq {seq}, batch {batch}] input",
                ids.len()
            ));
        }
        let d = self.hourglass.config().d_model;
        let x = embedding::forward(&self.embedding.value, ids)?.reshape(&[seq, batch, d])?;
        let h = self.hourglass.forward(&x)?;
        let h = self.norm.forward(h.reshape(&[seq * batch, d])?)?;
        self.input = Some((ids.to_vec(), [seq, batch]));
        self.head.forward(h)
    }

    /// Mean cross-entropy (nats per byte) of predicting `targets` from `ids`; with `backward`, also accumulates
    /// every parameter's gradient of that mean.
    pub fn loss(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        seq: usize,
        batch: usize,
        backward: bool,
    ) -> Result<f64> {
        self.loss_scaled(ids, targets, seq, batch, backward.then_some(1.0))
    }

    /// One micro-batch of a step that averages over `accum` micro-batches of the same size: returns this
    /// micro-batch's mean loss and accumulates the gradient of that mean divided by `accum`. After all `accum`
    /// micro-batches the gradients are those of the mean loss over the whole (`accum` times larger) batch, as
    /// one `loss(.., true)` on it would give (in evaluation mode; dropout masks depend on the batch layout).
    pub fn accumulate(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        seq: usize,
        batch: usize,
        accum: usize,
    ) -> Result<f64> {
        if accum == 0 {
            return Err(shape_err!("lm: gradient accumulation over 0 micro-batches"));
        }
        self.loss_scaled(ids, targets, seq, batch, Some(1.0 / accum as f64))
    }

    /// Mean loss; with `grad_scale = Some(s)`, also accumulates the gradient of `s · mean loss`.
    fn loss_scaled(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        seq: usize,
        batch: usize,
        grad_scale: Option<f64>,
    ) -> Result<f64> {
        let logits = self.forward(ids, seq, batch)?;
        let mean = 1.0 / targets.len().max(1) as f64;
        let scale = mean * grad_scale.unwrap_or(1.0);
        let (losses, dlogits) = loss::softmax_cross_entropy(&logits, targets, scale)?;
        if grad_scale.is_some() {
            self.backward(&dlogits)?;
        }
        Ok(losses.to_f64_vec()?.iter().sum::<f64>() * mean)
    }

    /// Backward from the gradient of the logits.
    pub fn backward(&mut self, dlogits: &Tensor<B>) -> Result<()> {
        let (ids, [seq, batch]) = self
            .input
            .take()
            .ok_or_else(|| shape_err!("lm: backward called before forward"))?;
        let d = self.hourglass.config().d_model;
        let dh = self.norm.backward(&self.head.backward(dlogits)?)?;
        let dx = self.hourglass.backward(&dh.reshape(&[seq, batch, d])?)?;
        embedding::backward(
            &dx.reshape(&[seq * batch, d])?,
            &ids,
            &mut self.embedding.grad,
        )
    }
}

impl_parameters!(HourglassLM { embedding => "embedding.weight", hourglass => "hourglass", norm => "norm", head => "head" });
