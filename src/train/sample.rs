//! Sampling text from a trained `HourglassLM`, one byte at a time.
//!
//! How a new character reaches the shortened levels: each byte is drawn from the logits at the last position
//! of a forward pass over the whole context (the prompt and everything generated so far, cropped to the last
//! `context` bytes). Before that pass the context is padded at the end, with zeros, to a multiple of the
//! product of the shortening factors. Two facts make the result exactly what the model computes for that
//! position inside any longer sequence (`tests/sample.rs` checks it):
//! - the model is causal at every level (ShiftRight(k−1) before shortening, causal masks, upsampling that
//!   gives position `t` only shortened vectors built from inputs `<= t`), so the padding cannot reach the
//!   last real position;
//! - with the length a multiple of every factor, no pooling window is partial. Without the padding, the
//!   last shortened vector would average only the part of its window inside the sequence (AvgPool's
//!   `ceil_mode`), a different value than training ever showed the model for that position.
//!
//! So at a level that shortens its input by `k`, input position `t` enters the shortened vector `j = ⌈t/k⌉`,
//! whose window is inputs `jk−k+1 ..= jk` (ShiftRight(k−1), then AvgPool(k)); upsampling hands vector `j` to
//! positions `jk .. jk+k−1`, so every position from `jk` on (the first multiple of `k` at or after `t`) sees
//! it through that level. A nested level applies the same rule to the shortened sequence. Each new
//! character costs a full forward pass over the context (there is no key/value cache).

use crate::config::HourGlassConfig;
use crate::error::{Error, Result};
use crate::model::lm::{HourglassLM, VOCAB};
use crate::ops::Backend;
use crate::rng::SeededRng;

/// How to draw each byte.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// Bytes to generate.
    pub length: usize,
    /// Softmax temperature; 0 picks the most likely byte every time (greedy).
    pub temperature: f64,
    /// Draw only among the `top_k` most likely bytes; 0 = all 256.
    pub top_k: usize,
    /// Seeds the draws.
    pub seed: u64,
    /// The model sees at most this many of the latest bytes (the training `seq_len` is a good choice).
    pub context: usize,
}

impl SampleOptions {
    /// Errors, naming the setting, for anything `generate` would refuse (so a caller can check before
    /// spending time on training or loading).
    pub fn validate(&self, prompt: &[u8]) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::Config(
                "the prompt is empty: give at least one byte to start from".into(),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Config(format!(
                "temperature must be finite and >= 0, got {}",
                self.temperature
            )));
        }
        if self.top_k > VOCAB {
            return Err(Error::Config(format!(
                "top_k {} is larger than the vocabulary of {VOCAB} bytes",
                self.top_k
            )));
        }
        if self.context == 0 {
            return Err(Error::Config("context must be at least 1 byte".into()));
        }
        Ok(())
    }
}

/// Generates `options.length` bytes after `prompt` (which must not be empty), calling `emit` with each as
/// soon as it is drawn (for streaming); returns them. The model is put in evaluation mode.
pub fn generate<B: Backend>(
    lm: &mut HourglassLM<B>,
    prompt: &[u8],
    options: &SampleOptions,
    mut emit: impl FnMut(u8) -> Result<()>,
) -> Result<Vec<u8>> {
    options.validate(prompt)?;
    lm.train(false);
    let mut rng = SeededRng::new(options.seed);
    let mut text = prompt.to_vec();
    // Grown as bytes come: `length` may be far more than will ever be generated (the stream is stopped).
    let mut out = Vec::new();
    for _ in 0..options.length {
        let context = &text[text.len().saturating_sub(options.context)..];
        let logits = next_logits(lm, context)?;
        let byte = pick(&logits, options.temperature, options.top_k, &mut rng);
        emit(byte)?;
        text.push(byte);
        out.push(byte);
    }
    Ok(out)
}

/// The logits for the byte after `context`: a forward pass over `context` padded with zeros to a multiple of
/// the product of the shortening factors, read at the last real position.
pub fn next_logits<B: Backend>(lm: &mut HourglassLM<B>, context: &[u8]) -> Result<Vec<f64>> {
    if context.is_empty() {
        return Err(Error::Config("cannot predict from an empty context".into()));
    }
    let len = padded_len(lm.hourglass.config(), context.len())?;
    let mut ids: Vec<u32> = context.iter().map(|&b| b as u32).collect();
    ids.resize(len, 0);
    let logits = lm.forward(&ids, len, 1)?.to_f64_vec()?;
    let last = context.len() - 1;
    Ok(logits[last * VOCAB..(last + 1) * VOCAB].to_vec())
}

/// `len` rounded up to a multiple of the product of the shortening factors: the length of the forward pass
/// that predicts the byte after `len` bytes of context.
pub fn padded_len(config: &HourGlassConfig, len: usize) -> Result<usize> {
    let product = config
        .shortening_factors
        .iter()
        .try_fold(1usize, |p, &k| p.checked_mul(k.max(1)));
    product
        .and_then(|p| len.div_ceil(p).checked_mul(p))
        .ok_or_else(|| {
            Error::Config(format!(
                "a context of {len} bytes padded to a multiple of the product of shortening_factors {:?} \
                 is more than can be counted",
                config.shortening_factors
            ))
        })
}

/// Draws a byte from `softmax(logits / temperature)` restricted to the `top_k` largest logits (ties broken by
/// the lower byte); temperature 0 is the arg-max.
pub fn pick(logits: &[f64], temperature: f64, top_k: usize, rng: &mut SeededRng) -> u8 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature == 0.0 {
        return order[0] as u8;
    }
    if top_k > 0 {
        order.truncate(top_k);
    }
    let top = logits[order[0]];
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] - top) / temperature).exp())
        .collect();
    let mut u = rng.uniform() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u8;
        }
        u -= w;
    }
    *order.last().expect("at least one candidate") as u8
}
