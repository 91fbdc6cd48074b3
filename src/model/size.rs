//! What a model will take in memory, counted from its config before anything is allocated, and the check of
//! that estimate against what the device has: a setting typed with one zero too many is an error naming it,
//! not an abort minutes later.
//!
//! Counts are `f64`, so no config overflows them; the parameter count is exact below 2^53 (`tests/suite/hardening.rs`
//! holds it to built models), far beyond any model that fits; activations are an estimate of what the forward pass keeps for the backward pass,
//! plus the CPU attention's score matrices (the CUDA kernels never hold one).

use super::lm::VOCAB;
use crate::config::{AttentionPooling, AttentionUpsampling, HourGlassConfig};
use crate::config::{ShorteningKind, UpsamplingKind};
use crate::device::{BackendCore, DeviceKind};
use crate::error::{Error, Result};

/// Overrides the memory a device reports as available (bytes, or with a K/M/G/T suffix: `64G`).
pub(crate) const LIMIT_VAR: &str = "HOURGLASS_MEMORY_LIMIT";

fn linear(d_in: f64, d_out: f64) -> f64 {
    d_in * d_out + d_out
}

fn layer_norm(d: f64) -> f64 {
    2.0 * d
}

/// Attention (q, k, v, output projections) and the pre-norm feed-forward sublayer.
fn attention_and_ff(d: f64, f: f64) -> f64 {
    4.0 * linear(d, d) + layer_norm(d) + linear(d, f) + linear(f, d)
}

fn transformer_layer(d: f64, f: f64) -> f64 {
    layer_norm(d) + attention_and_ff(d, f)
}

/// Parameters of the hourglass `c` describes (valid or not: sizes are taken as they are).
pub fn hourglass_params(c: &HourGlassConfig) -> Result<f64> {
    let (levels, valley) = c.levels()?;
    let (d, f) = (c.d_model as f64, c.d_ff as f64);
    let mut n = valley as f64 * transformer_layer(d, f);
    for spec in &levels {
        let k = spec.factor as f64;
        n += (spec.pre as f64 + spec.post as f64) * transformer_layer(d, f);
        n += match spec.shortening {
            ShorteningKind::Avg => 0.0,
            ShorteningKind::Linear => linear(k * d, d),
            ShorteningKind::Attention => {
                2.0 * layer_norm(d)
                    + attention_and_ff(d, f)
                    + match c.attention_pooling {
                        AttentionPooling::Avg => 0.0,
                        AttentionPooling::Linear => linear(k * d, d),
                    }
            }
        };
        n += match spec.upsampling {
            UpsamplingKind::Naive => 0.0,
            UpsamplingKind::Linear => linear(d, k * d),
            UpsamplingKind::Attention => {
                3.0 * layer_norm(d)
                    + attention_and_ff(d, f)
                    + match c.attention_upsampling {
                        AttentionUpsampling::Naive => 0.0,
                        AttentionUpsampling::Linear => linear(d, k * d),
                    }
            }
        };
    }
    Ok(n)
}

/// Parameters of the byte-level LM around that hourglass: embedding, final norm, head (tied: a bias only).
pub fn lm_params(c: &HourGlassConfig, tied: bool) -> Result<f64> {
    let (d, v) = (c.d_model as f64, VOCAB as f64);
    let head = if tied { v } else { linear(d, v) };
    Ok(v * d + hourglass_params(c)? + layer_norm(d) + head)
}

/// Model FLOPs of the forward pass per byte of a `seq_len`-byte sequence, counted from the config as
/// `docs/perf.md` states: matrix products only (2 per multiply-add); a transformer layer at a level of length
/// `L` costs, per position of that level, `2·(4·d² + 2·d·d_ff)` for its projections and feed-forward and
/// `2·L·d` for causal attention (`QKᵀ` and `PV`, `2·2·L·d`, at half for the mask; `4·L·d` when not causal);
/// linear resamplers `2·k·d²` per shortened position; an attention resampler a layer's projections and
/// feed-forward at the short length, `k`, `v` at the long one, and its attention as the mask allows; average
/// pooling, naive upsampling, LayerNorm, softmax and elementwise ops count 0; with `lm`, the head's `2·d·256`
/// per byte. A training step is 3x this (the backward pass costs twice the forward).
pub fn flops_per_token(c: &HourGlassConfig, seq_len: usize, lm: bool) -> Result<f64> {
    let (levels, valley) = c.levels()?;
    let (d, f) = (c.d_model as f64, c.d_ff as f64);
    let attention = |q_len: f64, kv_len: f64, half: bool| {
        let full = 2.0 * 2.0 * q_len * kv_len * d;
        if half {
            full / 2.0
        } else {
            full
        }
    };
    let layer = |len: f64| len * 2.0 * (4.0 * d * d + 2.0 * d * f) + attention(len, len, c.causal);
    // Cross-attention of `q_len` queries over `kv_len` keys (each query over `window` keys when windowed): q,
    // the output projection and the feed-forward per query; k and v per key.
    let resampler = |q_len: f64, kv_len: f64, window: f64, windowed: bool| {
        let projections = q_len * 2.0 * (2.0 * d * d + 2.0 * d * f) + kv_len * 2.0 * 2.0 * d * d;
        let keys = if windowed { window } else { kv_len };
        projections + attention(q_len, keys, c.causal && !windowed)
    };
    let windowed = c.attention_resampling_mask == crate::config::ResamplingMask::Window;
    let (mut total, mut len) = (0.0, seq_len as f64);
    for spec in &levels {
        let (k, short) = (spec.factor as f64, (len / spec.factor as f64).ceil());
        total += (spec.pre + spec.post) as f64 * layer(len);
        total += match spec.shortening {
            ShorteningKind::Avg => 0.0,
            ShorteningKind::Linear => short * 2.0 * k * d * d,
            ShorteningKind::Attention => {
                let pool = match c.attention_pooling {
                    AttentionPooling::Avg => 0.0,
                    AttentionPooling::Linear => short * 2.0 * k * d * d,
                };
                pool + resampler(short, len, k, windowed)
            }
        };
        total += match spec.upsampling {
            UpsamplingKind::Naive => 0.0,
            UpsamplingKind::Linear => short * 2.0 * k * d * d,
            UpsamplingKind::Attention => {
                let up = match c.attention_upsampling {
                    AttentionUpsampling::Naive => 0.0,
                    AttentionUpsampling::Linear => short * 2.0 * k * d * d,
                };
                // Full-length queries over the short sequence.
                up + resampler(len, short, 1.0, windowed)
            }
        };
        len = short;
    }
    total += valley as f64 * layer(len);
    let head = if lm { 2.0 * d * VOCAB as f64 } else { 0.0 };
    Ok(total / seq_len as f64 + head)
}

/// What a model will be asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub seq_len: usize,
    pub batch: usize,
    /// Training keeps gradients and AdamW's two moments beside each parameter.
    pub training: bool,
    /// An LM (embedding, head, logits over 256 bytes) rather than the bare hourglass.
    pub lm: bool,
    pub tied: bool,
    /// Positions of each sequence that incremental decoding's caches hold (`model::decode`; 0: none).
    pub cached_positions: usize,
}

impl Workload {
    /// The parameters alone (and their gradients), before any input is seen.
    pub(crate) fn parameters(lm: bool, tied: bool) -> Self {
        Self {
            seq_len: 0,
            batch: 0,
            training: false,
            lm,
            tied,
            cached_positions: 0,
        }
    }
}

/// An estimate, in bytes, by where the memory goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub params: f64,
    pub activations: f64,
    /// The CPU attention's score matrices (0 on the GPU).
    pub attention: f64,
    /// Incremental decoding's caches, full (0 without a decoder).
    pub caches: f64,
}

impl Estimate {
    pub fn total(&self) -> f64 {
        self.params + self.activations + self.attention + self.caches
    }
}

/// Values incremental decoding keeps for `positions` positions of one sequence (`model::decode`): each
/// self-attention layer's q, k, v (`3·d_model` a position of its level), and each shortening level's `pre`
/// outputs (`d_model` a position) and valley outputs (`d_model` a shortened position).
fn decoding_cache_values(c: &HourGlassConfig, positions: usize) -> Result<f64> {
    let (levels, valley) = c.levels()?;
    let d = c.d_model as f64;
    let (mut values, mut len) = (0.0, positions as f64);
    for spec in &levels {
        let short = (len / spec.factor as f64).ceil();
        values += (spec.pre + spec.post) as f64 * len * 3.0 * d + (len + short) * d;
        len = short;
    }
    Ok(values + valley as f64 * len * 3.0 * d)
}

/// The memory `c` will take for `work` on `device`, with `elem` bytes per value.
pub fn estimate(
    c: &HourGlassConfig,
    work: Workload,
    device: DeviceKind,
    elem: usize,
) -> Result<Estimate> {
    let elem = elem as f64;
    let count = if work.lm {
        lm_params(c, work.tied)?
    } else {
        hourglass_params(c)?
    };
    // Value and gradient always; AdamW's moments when training.
    let copies = if work.training { 4.0 } else { 2.0 };
    let (levels, valley) = c.levels()?;
    let (d, f, batch) = (c.d_model as f64, c.d_ff as f64, work.batch as f64);
    // What one transformer layer keeps per token for its backward pass (inputs of both norms, q, k, v, the
    // attention output, the residual, both feed-forward activations), with room for the backward's own.
    let per_token_layer = 12.0 * d + 3.0 * f;
    let (mut activations, mut longest) = (0.0, 0.0f64);
    let mut len = work.seq_len as f64;
    for spec in &levels {
        // The resamplers count as a layer each.
        let layers = spec.pre as f64 + spec.post as f64 + 2.0;
        activations += layers * len * batch * per_token_layer;
        longest = longest.max(len);
        len = (len / spec.factor as f64).ceil();
    }
    // The innermost valley, or a plain transformer's layers.
    activations += valley as f64 * len * batch * per_token_layer;
    longest = longest.max(len);
    if work.lm {
        // Token ids, embeddings, the final norm, logits and their gradient.
        let tokens = work.seq_len as f64 * batch;
        activations += tokens * (4.0 * d + 3.0 * VOCAB as f64 + 2.0);
    }
    // The CPU attention holds, per worker thread, a [q_len, kv_len] probability matrix (and its gradient
    // in the backward pass), the longest at full length.
    let attention = match device {
        DeviceKind::Cpu => {
            let threads = (rayon::current_num_threads() as f64).min(batch * c.n_heads as f64);
            let matrices = if work.training { 3.0 } else { 1.0 };
            threads * matrices * longest * longest
        }
        DeviceKind::Cuda(_) => 0.0,
    };
    let caches = decoding_cache_values(c, work.cached_positions)? * batch;
    Ok(Estimate {
        params: count * copies * elem,
        activations: activations * elem,
        attention: attention * elem,
        caches: caches * elem,
    })
}

/// `bytes` as `12.3 GB`.
pub(crate) fn human(bytes: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < units.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else if unit + 1 == units.len() && v >= 1000.0 {
        format!("{bytes:.1e} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

/// The memory available on `backend`: the `HOURGLASS_MEMORY_LIMIT` override when set, else what the device
/// reports (`None`: it cannot tell, and nothing is refused).
pub(crate) fn available<B: BackendCore>(backend: &B) -> Result<Option<f64>> {
    match std::env::var(LIMIT_VAR) {
        Ok(text) => parse_size(&text).map(Some).ok_or_else(|| {
            Error::Config(format!(
                "{LIMIT_VAR}={text:?} is not a size (bytes, or a number with K, M, G or T: 64G)"
            ))
        }),
        Err(_) => Ok(backend.available_memory().map(|b| b as f64)),
    }
}

fn parse_size(text: &str) -> Option<f64> {
    let t = text.trim();
    let (digits, scale) = match t.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let power = "KMGT".find(c.to_ascii_uppercase())? as u32 + 1;
            (&t[..i], 1024u128.pow(power))
        }
        _ => (t, 1),
    };
    Some(digits.trim().parse::<u64>().ok()? as f64 * scale as f64)
}

/// The settings that decide a model's size, as messages name them: `d_model 16, d_ff 32, n_heads 2,
/// shortening_factors [2], depth [1, 1, 1]`.
pub(crate) fn model_settings(c: &HourGlassConfig) -> String {
    format!(
        "d_model {}, d_ff {}, n_heads {}, shortening_factors {:?}, depth {}",
        c.d_model,
        c.d_ff,
        c.n_heads,
        c.shortening_factors,
        c.depth
            .as_ref()
            .map_or_else(|| "1 everywhere".to_string(), ToString::to_string)
    )
}

/// Errors, naming `what` is being built and the settings that decide its size, when the estimate is more
/// than `backend` has.
pub fn check<B: BackendCore>(
    backend: &B,
    what: &str,
    c: &HourGlassConfig,
    work: Workload,
) -> Result<Estimate> {
    let est = estimate(c, work, backend.kind(), std::mem::size_of::<B::Elem>())?;
    let Some(limit) = available(backend)? else {
        return Ok(est);
    };
    if est.total() > limit {
        let device = match backend.kind() {
            DeviceKind::Cpu => "the CPU".to_string(),
            DeviceKind::Cuda(i) => format!("cuda:{i}"),
        };
        let caches = if est.caches > 0.0 {
            format!(
                ", decoding caches {} for {} positions",
                human(est.caches),
                work.cached_positions
            )
        } else {
            String::new()
        };
        // Every step mode holds one step's activations at a time: a CUDA graph's replace the uncaptured first
        // step's, which the capture releases (`Cuda::begin_capture`).
        let budgeted = if work.training {
            "one training step at a time, in any step mode (host, device or CUDA graph)"
        } else {
            "one forward pass"
        };
        return Err(Error::Config(format!(
            "{what} would need about {} (parameters {}, activations {} for {budgeted}, attention matrices \
             {}{caches}), more than the {} available on {device}: {}, seq_len {} and batch {} decide it. Lower \
             one of them, or set {LIMIT_VAR} (bytes, e.g. 64G) if the estimate is wrong for this machine",
            human(est.total()),
            human(est.params),
            human(est.activations),
            human(est.attention),
            human(limit),
            model_settings(c),
            work.seq_len,
            work.batch,
        )));
    }
    Ok(est)
}
