//! Sampling text from a trained `HourglassLM`, one byte at a time, for one or several sequences at once.
//!
//! Each byte is drawn from the logits of the position after the context: the prompt and everything generated
//! so far, at most `context` bytes of it. By default they come from incremental decoding (`model::decode`):
//! per-level caches, so a new byte costs a few layer steps. `recompute` runs a forward pass over the whole
//! context instead, padded at the end with zeros to a multiple of the product of the shortening factors; the
//! two agree (`tests/suite/decode.rs`), and they give the same bytes for the same seed.
//!
//! The context window: it holds at most `context` bytes; when a new byte would make it longer, it drops to its
//! last `⌈context / 2⌉` bytes and grows from there (the decoder reads those bytes again, once). Positions are
//! the window's own, from 0.
//!
//! Why recomputation's padding is exact (`tests/suite/sample.rs` checks it): the model is causal at every level
//! (ShiftRight(k−1) before shortening, causal masks, upsampling that gives position `t` only shortened vectors
//! built from inputs `<= t`), so the padding cannot reach the last real position; and with the length a
//! multiple of every factor no pooling window is partial (without the padding, the last shortened vector would
//! average only the part of its window inside the sequence, AvgPool's `ceil_mode`, a value training never
//! showed the model for that position). At a level that shortens by `k`, input `t` enters shortened vector
//! `j = ⌈t/k⌉`, whose window is inputs `jk−k+1 ..= jk`; upsampling hands vector `j` to positions
//! `jk .. jk+k−1`. A nested level applies the same rule to the shortened sequence.

use crate::error::{Error, Result};
pub use crate::model::decode::padded_len;
use crate::model::decode::Decoder;
use crate::model::lm::{HourglassLM, VOCAB};
use crate::ops::Backend;
use crate::rng::{splitmix64, SeededRng};
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// The model sees at most this many of the latest bytes (the training `seq_len` is a good choice; see the
    /// module for how the window slides).
    pub context: usize,
    /// Sequences drawn at once, as one batch: the same prompt, each its own draws.
    pub num_samples: usize,
    /// A forward pass over the whole context for every byte instead of incremental decoding (same bytes).
    pub recompute: bool,
}

impl SampleOptions {
    /// Errors, naming the setting, for anything `generate` would refuse (so a caller can check before
    /// spending time on training or loading).
    pub(crate) fn validate(&self, prompt: &[u8]) -> Result<()> {
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
        if self.num_samples == 0 {
            return Err(Error::Config("num_samples must be at least 1".into()));
        }
        Ok(())
    }

    /// The most a run of these options after a prompt of `prompt_len` bytes asks of the model (see the
    /// module for the window): what memory must hold before the first byte is drawn.
    pub fn footprint(&self, prompt_len: usize) -> SampleFootprint {
        if self.length == 0 {
            return SampleFootprint::default();
        }
        // The window before the last draw, at most `context`.
        let widest = self.context.min(prompt_len.saturating_add(self.length - 1));
        if self.recompute {
            return SampleFootprint {
                longest_pass: widest,
                cached_positions: 0,
            };
        }
        // A decoder reads the prompt's window, and after each slide the last ⌈context/2⌉ bytes, in one pass.
        let first = prompt_len.min(self.context);
        let slides = first.saturating_add(self.length - 1) > self.context;
        SampleFootprint {
            longest_pass: if slides {
                first.max(self.context.div_ceil(2))
            } else {
                first
            },
            cached_positions: widest,
        }
    }
}

/// What a sampling run holds at most, per sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleFootprint {
    /// Bytes of its longest forward pass, before padding to the factors' product.
    pub longest_pass: usize,
    /// Positions incremental decoding's caches hold (0 with `recompute`).
    pub cached_positions: usize,
}

/// Generates `options.length` bytes after `prompt` (which must not be empty) for the first sequence (see
/// `generate_all`), calling `emit` with each as soon as it is drawn (for streaming); returns them.
pub fn generate<B: Backend>(
    lm: &mut HourglassLM<B>,
    prompt: &[u8],
    options: &SampleOptions,
    mut emit: impl FnMut(u8) -> Result<()>,
) -> Result<Vec<u8>> {
    let mut all = generate_all(lm, prompt, options, |sample, byte| match sample {
        0 => emit(byte),
        _ => Ok(()),
    })?;
    Ok(all.swap_remove(0))
}

/// Generates `options.length` bytes after `prompt` for each of `options.num_samples` sequences (one batch;
/// sequence `i` draws from its own stream, the first from `options.seed` itself), calling `emit(i, byte)` as
/// each byte is drawn; returns every sequence's bytes. The model is put in evaluation mode. Logits that are
/// not finite (weights that overflow) are an error naming the byte.
pub fn generate_all<B: Backend>(
    lm: &mut HourglassLM<B>,
    prompt: &[u8],
    options: &SampleOptions,
    emit: impl FnMut(usize, u8) -> Result<()>,
) -> Result<Vec<Vec<u8>>> {
    generate_until(lm, prompt, options, &AtomicBool::new(false), emit)
}

/// [`generate_all`] that stops once `stop` is raised (Ctrl-C, SIGTERM; read before each byte), returning the
/// bytes drawn until then: fewer than `options.length`.
pub fn generate_until<B: Backend>(
    lm: &mut HourglassLM<B>,
    prompt: &[u8],
    options: &SampleOptions,
    stop: &AtomicBool,
    emit: impl FnMut(usize, u8) -> Result<()>,
) -> Result<Vec<Vec<u8>>> {
    options.validate(prompt)?;
    generate_after_each(lm, &vec![prompt; options.num_samples], options, stop, emit)
}

/// [`generate_until`] with a prompt of its own for each sequence (`prompts[i]` for sequence `i`; as many as
/// `options.num_samples`, all of one length, which the window is measured from): the loop both text and
/// images (`train::image_sample`) are drawn by.
pub(crate) fn generate_after_each<B: Backend>(
    lm: &mut HourglassLM<B>,
    prompts: &[&[u8]],
    options: &SampleOptions,
    stop: &AtomicBool,
    mut emit: impl FnMut(usize, u8) -> Result<()>,
) -> Result<Vec<Vec<u8>>> {
    let prompt_len = prompts.first().map_or(0, |p| p.len());
    options.validate(prompts.first().copied().unwrap_or_default())?;
    if prompts.len() != options.num_samples || prompts.iter().any(|p| p.len() != prompt_len) {
        return Err(Error::Config(format!(
            "sampling needs num_samples = {} prompts of one length, got {} of lengths {:?}",
            options.num_samples,
            prompts.len(),
            prompts.iter().map(|p| p.len()).collect::<Vec<_>>()
        )));
    }
    lm.train(false);
    let n = options.num_samples;
    let mut rngs: Vec<SeededRng> = (0..n as u64)
        .map(|i| match i {
            0 => SeededRng::new(options.seed),
            i => SeededRng::new(splitmix64(options.seed ^ splitmix64(i))),
        })
        .collect();
    let mut texts: Vec<Vec<u8>> = prompts.iter().map(|p| p.to_vec()).collect();
    // The window is texts[_][start..]; the decoder has read `read` bytes of it.
    let mut start = prompt_len.saturating_sub(options.context);
    let (mut decoder, mut read): (Option<Decoder<B>>, usize) = (None, 0);
    let capacity = options.footprint(prompt_len).cached_positions;
    // Grown as bytes come: `length` may be far more than will ever be generated (the stream is stopped).
    let mut out = vec![Vec::new(); n];
    for drawn in 0..options.length {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let len = texts[0].len();
        let logits = if options.recompute {
            let windows: Vec<&[u8]> = texts.iter().map(|t| &t[start..]).collect();
            next_logits_batch(lm, &windows)?
        } else {
            let decoder = match &mut decoder {
                Some(decoder) => decoder,
                empty => {
                    read = 0;
                    empty.insert(Decoder::new(lm, capacity, n)?)
                }
            };
            let logits = if read == 0 {
                // A fresh decoder reads the whole window in one pass.
                let windows: Vec<&[u8]> = texts.iter().map(|t| &t[start..]).collect();
                read = len - start;
                decoder.prefill(lm, &windows)?
            } else {
                let column: Vec<u8> = texts.iter().map(|t| t[start + read]).collect();
                read += 1;
                decoder.step(lm, &column)?
            };
            let flat = logits.to_f64_vec()?;
            flat.chunks(VOCAB).map(<[f64]>::to_vec).collect()
        };
        check_finite(&logits, drawn)?;
        for (i, ((text, rng), logits)) in texts.iter_mut().zip(&mut rngs).zip(&logits).enumerate() {
            let byte = pick(logits, options.temperature, options.top_k, rng);
            emit(i, byte)?;
            text.push(byte);
            out[i].push(byte);
        }
        if texts[0].len() - start > options.context {
            start = texts[0].len() - options.context.div_ceil(2);
            decoder = None;
        }
    }
    Ok(out)
}

/// Errors, naming the sample, the byte and the value, unless every logit is finite (NaN logits would be
/// drawn from as if they were numbers).
fn check_finite(logits: &[Vec<f64>], byte: usize) -> Result<()> {
    let bad = logits.iter().enumerate().find_map(|(sample, row)| {
        let value = row.iter().find(|v| !v.is_finite())?;
        Some((sample, *value))
    });
    match bad {
        Some((sample, value)) => Err(Error::Checkpoint(format!(
            "the logits of generated byte {} of sample {} hold {value}: the model's weights overflow in \
             the forward pass, and nothing can be drawn from them",
            byte + 1,
            sample + 1
        ))),
        None => Ok(()),
    }
}

/// The logits for the byte after each of `contexts` (all of one length): one forward pass over them as a
/// batch, padded with zeros to a multiple of the product of the shortening factors, read at the last real
/// position.
pub(crate) fn next_logits_batch<B: Backend>(
    lm: &mut HourglassLM<B>,
    contexts: &[&[u8]],
) -> Result<Vec<Vec<f64>>> {
    let real = contexts.first().map_or(0, |c| c.len());
    if real == 0 || contexts.iter().any(|c| c.len() != real) {
        return Err(Error::Config(
            "cannot predict from empty contexts or contexts of different lengths".into(),
        ));
    }
    let (len, batch) = (padded_len(lm.hourglass.config(), real)?, contexts.len());
    // Row-major [len, batch]: position t of sequence b at t·batch + b.
    let mut ids = vec![0u32; len * batch];
    for (b, context) in contexts.iter().enumerate() {
        for (t, &byte) in context.iter().enumerate() {
            ids[t * batch + b] = byte as u32;
        }
    }
    let logits = lm.forward(&ids, len, batch)?.to_f64_vec()?;
    let last = (real - 1) * batch;
    Ok((0..batch)
        .map(|b| logits[(last + b) * VOCAB..(last + b + 1) * VOCAB].to_vec())
        .collect())
}

/// The logits for the byte after `context`: a forward pass over `context` padded with zeros to a multiple of
/// the product of the shortening factors, read at the last real position.
pub fn next_logits<B: Backend>(lm: &mut HourglassLM<B>, context: &[u8]) -> Result<Vec<f64>> {
    if context.is_empty() {
        return Err(Error::Config("cannot predict from an empty context".into()));
    }
    Ok(next_logits_batch(lm, &[context])?.swap_remove(0))
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
