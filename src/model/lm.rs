//! A byte-level language model around the hourglass: token embedding (256 bytes) → HourGlass → LayerNorm →
//! linear head (its own weight, or tied to the embedding) → softmax cross-entropy. Inputs are `[seq, batch]` byte ids, flattened row-major (t·batch + b),
//! the layout of the hourglass's `[seq, batch, d_model]` activations.
//!
//! Positions: the LM uses whatever `positions` its config has. With the default (`"none"`) none are added:
//! causal attention and the shift before shortening already tell positions apart for a causal model. With
//! `"rotary"` every transformer layer's self-attention rotates q and k by their positions (`ops::rotary`),
//! relative like the paper's relative attention; the training presets use rotary.

use super::layers::{LayerNorm, Linear, LinearSaved};
use super::{join, HourGlass, Param, Parameters, Precision};
use crate::config::HourGlassConfig;
use crate::error::{shape_err, Result};
use crate::ops::{embedding, loss, reduce, Backend};
use crate::rng::SeededRng;
use crate::tensor::{Tensor, Tokens};

/// Bytes.
pub const VOCAB: usize = 256;
/// Where an LM keeps its hourglass: its parameters are `hourglass.<name>` in a training checkpoint.
pub(crate) const LM_HOURGLASS: &str = "hourglass";

pub struct HourglassLM<B: Backend> {
    pub embedding: Param<B>,
    pub hourglass: HourGlass<B>,
    pub(crate) norm: LayerNorm<B>,
    pub head: Head<B>,
    input: Option<(Tokens<B>, [usize; 2])>,
}

/// The output projection to 256 logits.
pub enum Head<B: Backend> {
    /// Its own `Linear(d_model, 256)`: `head.weight`, `head.bias`.
    Untied(Linear<B>),
    /// Tied to the embedding (Press & Wolf 2017): logits `h·Eᵀ + head.bias`, so `embedding.weight` gets the
    /// gradients of both uses.
    Tied {
        bias: Param<B>,
        saved: Option<LinearSaved<B>>,
    },
}

impl<B: Backend> Head<B> {
    fn forward(
        &mut self,
        h: Tensor<B>,
        embedding: &mut Param<B>,
        precision: Precision,
    ) -> Result<Tensor<B>> {
        match self {
            Head::Untied(linear) => linear.forward(h, precision),
            Head::Tied { bias, saved } => {
                let (y, kept) = LinearSaved::forward(h, embedding, Some(&bias.value), precision)?;
                *saved = Some(kept);
                Ok(y)
            }
        }
    }
    fn backward(&mut self, dy: &Tensor<B>, embedding: &mut Param<B>) -> Result<Tensor<B>> {
        match self {
            Head::Untied(linear) => linear.backward(dy),
            Head::Tied { bias, saved } => {
                let saved = saved
                    .take()
                    .ok_or_else(|| shape_err!("lm head: backward called before forward"))?;
                saved.backward(dy, &mut embedding.grad, Some(&mut bias.grad))
            }
        }
    }
}

impl<B: Backend> HourglassLM<B> {
    /// An untied head; see [`HourglassLM::build`].
    pub fn new(backend: &B, config: &HourGlassConfig, seed: u64) -> Result<Self> {
        Self::build(backend, config, seed, false)
    }

    /// The embedding N(0, 1) like PyTorch's `nn.Embedding` — N(0, 1/d_model) when `tied`, so that the initial
    /// logits (LayerNorm output · embedding rows) have unit scale; the head like `nn.Linear`; the hourglass as
    /// `HourGlass::from_config`.
    pub fn build(backend: &B, config: &HourGlassConfig, seed: u64, tied: bool) -> Result<Self> {
        let hourglass = HourGlass::from_config(backend, config, seed)?;
        let d = config.d_model;
        let mut rng = SeededRng::new(seed ^ 0x1A7E_57ED);
        let std = if tied { 1.0 / (d as f64).sqrt() } else { 1.0 };
        let table: Vec<f64> = (0..VOCAB * d).map(|_| std * rng.normal()).collect();
        let linear = Linear::new(backend, d, VOCAB, &mut rng)?;
        let head = if tied {
            Head::Tied {
                bias: linear.bias,
                saved: None,
            }
        } else {
            Head::Untied(linear)
        };
        Ok(Self {
            embedding: Param::new(Tensor::from_f64(backend, &[VOCAB, d], &table)?)?,
            hourglass,
            norm: LayerNorm::new(backend, d)?,
            head,
            input: None,
        })
    }

    pub fn is_tied(&self) -> bool {
        matches!(self.head, Head::Tied { .. })
    }

    /// Training mode applies dropout; evaluation mode does not.
    pub fn train(&mut self, training: bool) {
        self.hourglass.train(training);
    }

    /// The precision of every GEMM, the head's included (see [`Precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        self.hourglass.set_precision(precision);
    }

    /// See [`HourGlass::set_dropout_pass`].
    pub(crate) fn set_dropout_pass(&mut self, pass: u64) {
        self.hourglass.set_dropout_pass(pass);
    }

    /// See [`HourGlass::set_staged_seeds`].
    pub(crate) fn set_staged_seeds(&mut self, micro: Option<usize>) {
        self.hourglass.set_staged_seeds(micro);
    }

    /// Logits `[seq·batch, 256]` for byte ids `[seq, batch]` (row-major).
    pub fn forward(&mut self, ids: &[u32], seq: usize, batch: usize) -> Result<Tensor<B>> {
        let ids = self.upload(ids, seq, batch)?;
        self.forward_tokens(&ids, seq, batch)
    }

    /// `forward` on ids already in the backend's memory.
    pub(crate) fn forward_tokens(
        &mut self,
        ids: &Tokens<B>,
        seq: usize,
        batch: usize,
    ) -> Result<Tensor<B>> {
        if ids.len() != seq * batch {
            return Err(shape_err!(
                "{} token ids for a [seq {seq}, batch {batch}] input",
                ids.len()
            ));
        }
        let d = self.hourglass.config().d_model;
        let x = embedding::forward(&self.embedding.value, ids)?.reshape(&[seq, batch, d])?;
        let h = self.hourglass.forward(&x)?;
        self.input = Some((ids.share(), [seq, batch]));
        self.head_logits(h.reshape(&[seq * batch, d])?)
    }

    /// The final LayerNorm and the head on the hourglass's output rows `h[N, D]`: logits `[N, 256]`.
    pub(crate) fn head_logits(&mut self, h: Tensor<B>) -> Result<Tensor<B>> {
        // The final LayerNorm feeds only the head's GEMM: in bf16 it writes bf16 for it.
        let precision = self.hourglass.precision();
        let h = self.norm.forward_in(h, precision)?;
        self.head.forward(h, &mut self.embedding, precision)
    }

    /// Byte ids `[seq, batch]` checked and copied to the backend.
    fn upload(&self, ids: &[u32], seq: usize, batch: usize) -> Result<Tokens<B>> {
        if ids.len() != seq * batch || ids.is_empty() {
            return Err(shape_err!(
                "{} token ids for a [seq {seq}, batch {batch}] input",
                ids.len()
            ));
        }
        Tokens::upload(self.hourglass.backend(), ids, VOCAB)
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

    /// `accumulate` with everything on the device: the ids and targets already there, and the mean loss
    /// stored in `out[index]` (a training step's state) instead of coming back to the host.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn accumulate_into(
        &mut self,
        ids: &Tokens<B>,
        targets: &Tokens<B>,
        [seq, batch]: [usize; 2],
        accum: usize,
        out: &mut Tensor<B>,
        index: usize,
    ) -> Result<()> {
        if accum == 0 {
            return Err(shape_err!("lm: gradient accumulation over 0 micro-batches"));
        }
        let losses = self.losses(ids, targets, seq, batch, Some(1.0 / accum as f64))?;
        reduce::mean_into(&losses, out, index)
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
        let ids = self.upload(ids, seq, batch)?;
        let targets = self.upload(targets, seq, batch)?;
        let losses = self.losses(&ids, &targets, seq, batch, grad_scale)?;
        let mean = 1.0 / targets.len() as f64;
        Ok(losses.to_f64_vec()?.iter().sum::<f64>() * mean)
    }

    /// Each position's loss; with `grad_scale = Some(s)`, also accumulates the gradient of `s · mean loss`.
    fn losses(
        &mut self,
        ids: &Tokens<B>,
        targets: &Tokens<B>,
        seq: usize,
        batch: usize,
        grad_scale: Option<f64>,
    ) -> Result<Tensor<B>> {
        let logits = self.forward_tokens(ids, seq, batch)?;
        let scale = grad_scale.unwrap_or(1.0) / targets.len().max(1) as f64;
        let (losses, dlogits) = loss::softmax_cross_entropy(&logits, targets, scale)?;
        drop(logits);
        if grad_scale.is_some() {
            self.backward(&dlogits)?;
        }
        Ok(losses)
    }

    /// Backward from the gradient of the logits.
    pub(crate) fn backward(&mut self, dlogits: &Tensor<B>) -> Result<()> {
        let (ids, [seq, batch]) = self
            .input
            .take()
            .ok_or_else(|| shape_err!("lm: backward called before forward"))?;
        let d = self.hourglass.config().d_model;
        let dh = self
            .norm
            .backward(&self.head.backward(dlogits, &mut self.embedding)?)?;
        let dx = self.hourglass.backward(&dh.reshape(&[seq, batch, d])?)?;
        embedding::backward(
            &dx.reshape(&[seq * batch, d])?,
            &ids,
            &mut self.embedding.grad,
        )
    }
}

impl<B: Backend> Parameters<B> for HourglassLM<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        f(join(prefix, "embedding.weight"), &self.embedding);
        self.hourglass.visit(&join(prefix, LM_HOURGLASS), f);
        self.norm.visit(&join(prefix, "norm"), f);
        match &self.head {
            Head::Untied(linear) => linear.visit(&join(prefix, "head"), f),
            Head::Tied { bias, .. } => f(join(prefix, "head.bias"), bias),
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        f(join(prefix, "embedding.weight"), &mut self.embedding);
        self.hourglass.visit_mut(&join(prefix, LM_HOURGLASS), f);
        self.norm.visit_mut(&join(prefix, "norm"), f);
        match &mut self.head {
            Head::Untied(linear) => linear.visit_mut(&join(prefix, "head"), f),
            Head::Tied { bias, .. } => f(join(prefix, "head.bias"), bias),
        }
    }
}
