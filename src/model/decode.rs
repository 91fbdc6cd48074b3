//! Incremental decoding: the logits of one new byte from per-level caches, instead of a forward pass over the
//! whole context (`docs/decoding.md`).
//!
//! Every self-attention layer keeps its packed q, k, v rows (`TransformerLayer::step`); a new position costs one
//! step of each full-length layer. A level that shortens by `k` also keeps its `pre` stack's outputs and its
//! valley's outputs. At a full-length position `t`:
//! - when `t` is a multiple of `k` (`t = j·k`), shortened vector `j` is complete (its window is inputs
//!   `j·k − k + 1 ..= j·k`, after ShiftRight(k − 1)): the shortening runs on just the rows that make it
//!   (`shortening_input`), and the valley takes one step at its own position `j` — a stack step, or the same
//!   rule one level down;
//! - upsampling gives `t` vector `⌊t/k⌋`, the newest one, with the residual of position `t`
//!   (`upsampling_step`); then the `post` stack steps.
//!
//! The rows each resampler sees are the ones the full forward pass gives the same output from, so the logits
//! equal it to rounding (`tests/suite/decode.rs`). Only causal models decode; evaluation mode, no dropout.

use super::hourglass::{Body, Level, Stack, Valley};
use super::lm::{HourglassLM, VOCAB};
use super::shortening::Shortening;
use super::transformer::AttnCache;
use super::upsampling::Upsampling;
use super::Pass;
use crate::config::HourGlassConfig;
use crate::error::{shape_err, Result};
use crate::ops::attention::AttnMask;
use crate::tensor::{Tensor, Tokens};
use crate::{ops::Backend, Error};

/// Rows written by position (`[positions, ...]`) into a buffer that starts at the rows first written and
/// doubles as positions come, up to `capacity`: memory follows the positions a run reaches, not the most it
/// may reach (an endless sample with a long context allocates nothing for positions it never gets to). While
/// it grows, the old buffer and the new one are both held, one buffer at a time.
pub(crate) struct CachedRows<B: Backend> {
    rows: Option<Tensor<B>>,
    capacity: usize,
}

/// The fewest rows a cache starts with (fewer would regrow at almost every step).
const MIN_CACHED_ROWS: usize = 64;

impl<B: Backend> CachedRows<B> {
    /// Nothing allocated yet; room for up to `capacity` positions.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            rows: None,
            capacity,
        }
    }

    /// Writes `src`'s rows at positions `first..`, growing the buffer when they reach past it; returns the
    /// buffer (its rows past the last written are zeros).
    pub(crate) fn write(&mut self, first: usize, src: &Tensor<B>) -> Result<&Tensor<B>> {
        let count = src.shape().first().copied().unwrap_or(0);
        let needed = first
            .checked_add(count)
            .filter(|&end| end <= self.capacity)
            .ok_or_else(|| {
                shape_err!(
                    "decoding: {count} rows at position {first} of caches for {} positions",
                    self.capacity
                )
            })?;
        let rows = match self.rows.take() {
            Some(rows) if rows.shape()[0] >= needed => rows,
            old => {
                let held = old.as_ref().map_or(0, |rows| rows.shape()[0]);
                let grown = needed.max(2 * held).max(MIN_CACHED_ROWS).min(self.capacity);
                let mut rows = src.zeros_with_rows(grown)?;
                if let Some(old) = old {
                    rows.write_rows(0, &old)?;
                }
                rows
            }
        };
        let rows = self.rows.insert(rows);
        rows.write_rows(first, src)?;
        Ok(rows)
    }

    /// Every row written so far and the zeros after them; `None` before the first write.
    pub(crate) fn get(&self) -> Option<&Tensor<B>> {
        self.rows.as_ref()
    }
}

/// One stack's caches: each layer's q, k, v rows (`[positions, B, 3·D]`).
struct StackCache<B: Backend> {
    layers: Vec<AttnCache<B>>,
    capacity: usize,
}

impl<B: Backend> StackCache<B> {
    /// Empty caches for `capacity` positions (nothing is allocated before the first row comes).
    fn new(stack: &Stack<B>, capacity: usize) -> Self {
        Self {
            layers: (0..stack.layers.len())
                .map(|_| AttnCache::new(capacity))
                .collect(),
            capacity,
        }
    }

    /// The stack on the new row `x[1, B, D]` at `position`.
    fn step(
        &mut self,
        stack: &mut Stack<B>,
        mut x: Tensor<B>,
        position: usize,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        for (layer, cache) in stack.layers.iter_mut().zip(&mut self.layers) {
            x = layer.step(x, cache, position, pass)?;
        }
        Ok(x)
    }

    /// Each layer's cache from the rows `0..n` of the q, k, v its last forward pass attended over.
    fn fill(&mut self, stack: &Stack<B>, n: usize) -> Result<()> {
        for (layer, cache) in stack.layers.iter().zip(&mut self.layers) {
            let qkv = layer.self_attn.last_qkv().ok_or_else(|| {
                shape_err!("decoding: a layer kept no q, k, v to fill its cache from")
            })?;
            *cache = AttnCache::new(self.capacity);
            cache.write(0, &qkv.rows(0, n)?)?;
        }
        Ok(())
    }
}

/// A level's caches: its stacks', its `pre` outputs and its valley's outputs (shortened positions).
struct LevelCache<B: Backend> {
    pre: StackCache<B>,
    pre_out: CachedRows<B>,
    valley: ValleyCache<B>,
    short_out: CachedRows<B>,
    post: StackCache<B>,
    factor: usize,
}

enum ValleyCache<B: Backend> {
    Shortened(StackCache<B>),
    Nested(Box<LevelCache<B>>),
}

impl<B: Backend> LevelCache<B> {
    /// Empty caches for `capacity` positions of this level (`⌈capacity/k⌉` of the valley).
    fn new(level: &Level<B>, factors: &[usize], capacity: usize) -> Self {
        let k = factors[0];
        let short_capacity = capacity.div_ceil(k);
        let valley = match &level.valley {
            Valley::Shortened(stack) => {
                ValleyCache::Shortened(StackCache::new(stack, short_capacity))
            }
            Valley::Nested(nested) => ValleyCache::Nested(Box::new(LevelCache::new(
                nested,
                &factors[1..],
                short_capacity,
            ))),
        };
        Self {
            pre: StackCache::new(&level.pre, capacity),
            pre_out: CachedRows::new(capacity),
            valley,
            short_out: CachedRows::new(short_capacity),
            post: StackCache::new(&level.post, capacity),
            factor: k,
        }
    }

    /// The caches after a forward pass over positions `0..n` that kept its outputs: the layers' rows, the
    /// `pre` outputs `0..n` and the first `⌈n/k⌉` valley outputs (the vectors whose windows end by `n − 1`).
    fn fill(&mut self, level: &mut Level<B>, n: usize) -> Result<()> {
        let m = n.div_ceil(self.factor);
        let kept = level.take_outputs().ok_or_else(|| {
            shape_err!("decoding: a level kept no outputs to fill its caches from")
        })?;
        self.pre_out.write(0, &kept.pre.rows(0, n)?)?;
        self.short_out.write(0, &kept.valley.rows(0, m)?)?;
        self.pre.fill(&level.pre, n)?;
        self.post.fill(&level.post, n)?;
        match (&mut level.valley, &mut self.valley) {
            (Valley::Shortened(stack), ValleyCache::Shortened(cache)) => cache.fill(stack, m),
            (Valley::Nested(nested), ValleyCache::Nested(cache)) => cache.fill(nested, m),
            _ => Err(shape_err!("decoding: the caches do not match the model")),
        }
    }

    /// The level on the new row `x[1, B, D]` at position `t`.
    fn step(
        &mut self,
        level: &mut Level<B>,
        x: Tensor<B>,
        t: usize,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let k = self.factor;
        let h = self.pre.step(&mut level.pre, x, t, pass)?;
        let pre_out = self.pre_out.write(t, &h)?;
        if t.is_multiple_of(k) {
            let j = t / k;
            let input = shortening_input(&level.shortening, pre_out, j, k)?;
            let vector = last_shortened(&mut level.shortening, &input, pass)?;
            let s = match (&mut level.valley, &mut self.valley) {
                (Valley::Shortened(stack), ValleyCache::Shortened(cache)) => {
                    cache.step(stack, vector, j, pass)?
                }
                (Valley::Nested(nested), ValleyCache::Nested(cache)) => {
                    cache.step(nested, vector, j, pass)?
                }
                _ => return Err(shape_err!("decoding: the caches do not match the model")),
            };
            self.short_out.write(j, &s)?;
        }
        let short_out = self
            .short_out
            .get()
            .ok_or_else(|| shape_err!("decoding: upsampling before the first shortened vector"))?;
        let up = upsampling_step(&mut level.up_sampling, pre_out, short_out, t, k, pass)?;
        self.post.step(&mut level.post, up, t, pass)
    }
}

/// The rows the shortening makes vector `j` from, as a sequence it takes whole: inputs `j·k − k ..= j·k`
/// (zeros before position 0) and `k − 1` zero rows after them, whose second vector is vector `j` (the
/// ShiftRight inside drops the padding; a window-local shortening needs nothing else); with attention
/// shortening under the funnel mask, whose query `j` sees every earlier input, inputs `0 ..= j·k` and the
/// padding, whose last vector is vector `j`.
fn shortening_input<B: Backend>(
    shortening: &Shortening<B>,
    pre_out: &Tensor<B>,
    j: usize,
    k: usize,
) -> Result<Tensor<B>> {
    let funnel = matches!(shortening, Shortening::Attention(s) if s.mask() == AttnMask::Funnel(k));
    let end = j * k; // the last input of vector j
    let (first, len) = if funnel {
        (0, end + k)
    } else {
        (end as isize - k as isize, 2 * k)
    };
    let [_, batch, d] = *pre_out.shape() else {
        return Err(shape_err!(
            "decoding: pre outputs of shape {:?}",
            pre_out.shape()
        ));
    };
    let mut input = Tensor::zeros(pre_out.backend(), &[len, batch, d])?;
    let from = first.max(0) as usize;
    let rows = pre_out.rows(from, end + 1 - from)?;
    input.write_rows((from as isize - first) as usize, &rows)?;
    Ok(input)
}

/// The last vector the shortening makes of `input` (`[1, B, D]`).
fn last_shortened<B: Backend>(
    shortening: &mut Shortening<B>,
    input: &Tensor<B>,
    pass: &mut Pass,
) -> Result<Tensor<B>> {
    match shortening {
        Shortening::Attention(s) => s.forward_last(input, pass),
        other => {
            let all = other.forward(input, pass)?;
            let n = all.shape()[0];
            all.rows(n - 1, 1)
        }
    }
}

/// Upsampling's output at position `t` (`[1, B, D]`): the residual rows `j·k ..= t` of the current window
/// with vector `j = ⌊t/k⌋` (naive and linear: what the full pass gives those positions; attention: the query of
/// `t` over the shortened vectors its mask lets it see, all of them here).
fn upsampling_step<B: Backend>(
    up: &mut Upsampling<B>,
    pre_out: &Tensor<B>,
    short_out: &Tensor<B>,
    t: usize,
    k: usize,
    pass: &mut Pass,
) -> Result<Tensor<B>> {
    let j = t / k;
    let window = pre_out.rows(j * k, t - j * k + 1)?;
    let vector = short_out.rows(j, 1)?;
    let out = match up {
        Upsampling::Attention(u) => {
            let keys = match u.mask() {
                AttnMask::UpWindow(_) => vector.share(),
                _ => short_out.rows(0, j + 1)?,
            };
            return u.forward_last(&window, vector, keys, pass);
        }
        other => other.forward(&window, vector, pass)?,
    };
    out.rows(t - j * k, 1)
}

/// `len` rounded up to a multiple of the product of the shortening factors: the length of the forward pass
/// that predicts the byte after `len` bytes of context (no pooling window partial; see `train::sample`).
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

/// The state of incremental decoding for one `HourglassLM` and batch size: every cache, and how many
/// positions it holds.
pub struct Decoder<B: Backend> {
    body: BodyCache<B>,
    batch: usize,
    capacity: usize,
    len: usize,
}

enum BodyCache<B: Backend> {
    Plain(StackCache<B>),
    Hourglass(Box<LevelCache<B>>),
}

impl<B: Backend> Decoder<B> {
    /// Empty caches for up to `capacity` positions of `batch` sequences of `lm`, allocated as positions come
    /// (`CachedRows`; `model::size` counts them at full capacity). A model that is not causal cannot decode
    /// incrementally (its positions see later ones): an error says so.
    pub fn new(lm: &HourglassLM<B>, capacity: usize, batch: usize) -> Result<Self> {
        let config = lm.hourglass.config();
        if !config.causal {
            return Err(Error::Config(
                "incremental decoding needs a causal model (its positions must not see later ones)"
                    .into(),
            ));
        }
        if capacity == 0 || batch == 0 {
            return Err(Error::Config(format!(
                "decoding needs a capacity and a batch of at least 1, got {capacity} and {batch}"
            )));
        }
        let body = match &lm.hourglass.body {
            Body::Plain(stack) => BodyCache::Plain(StackCache::new(stack, capacity)),
            Body::Hourglass(level) => BodyCache::Hourglass(Box::new(LevelCache::new(
                level,
                &config.shortening_factors,
                capacity,
            ))),
        };
        Ok(Self {
            body,
            batch,
            capacity,
            len: 0,
        })
    }

    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reads the first positions of every sequence at once (`sequences[b]`, all of one length `n`, at most the
    /// capacity) into an empty decoder: one forward pass over them, padded as `padded_len` says, whose q, k, v
    /// rows and level outputs fill the caches (positions past `n` and the shortened vectors they reach are left
    /// out). Returns the logits of the byte after position `n − 1`, `[batch, 256]`; stepping goes on from
    /// there as if every byte had been stepped.
    pub fn prefill(&mut self, lm: &mut HourglassLM<B>, sequences: &[&[u8]]) -> Result<Tensor<B>> {
        let n = sequences.first().map_or(0, |s| s.len());
        if !self.is_empty()
            || sequences.len() != self.batch
            || n == 0
            || n > self.capacity
            || sequences.iter().any(|s| s.len() != n)
        {
            return Err(shape_err!(
                "decoding: a prefill of {} sequences of {n} bytes into a decoder of batch {} holding {} of {} \
                 positions (an empty one, sequences of one length up to the capacity)",
                sequences.len(),
                self.batch,
                self.len,
                self.capacity
            ));
        }
        lm.train(false);
        let len = padded_len(lm.hourglass.config(), n)?;
        let mut ids = vec![0u32; len * self.batch];
        for (b, sequence) in sequences.iter().enumerate() {
            for (t, &byte) in sequence.iter().enumerate() {
                ids[t * self.batch + b] = byte as u32;
            }
        }
        lm.hourglass.set_keep_outputs(true);
        let filled = lm.forward(&ids, len, self.batch).and_then(|logits| {
            match (&mut self.body, &mut lm.hourglass.body) {
                (BodyCache::Plain(cache), Body::Plain(stack)) => cache.fill(stack, n)?,
                (BodyCache::Hourglass(cache), Body::Hourglass(level)) => cache.fill(level, n)?,
                _ => return Err(shape_err!("decoding: the caches do not match the model")),
            }
            Ok(logits)
        });
        lm.hourglass.set_keep_outputs(false);
        let logits = filled?;
        self.len = n;
        logits.rows((n - 1) * self.batch, self.batch)
    }

    /// Feeds one byte per sequence (`bytes[b]` for sequence `b`) at the next position; returns the logits of
    /// the byte after it, `[batch, 256]`. Errors once `capacity` positions are in.
    ///
    /// The step runs on one thread of its own: a step's ops work on one row a sequence, too little for the
    /// CPU backend's parallel loops, whose hand-offs between threads then cost more than the work.
    pub fn step(&mut self, lm: &mut HourglassLM<B>, bytes: &[u8]) -> Result<Tensor<B>> {
        static ONE_THREAD: std::sync::OnceLock<Option<rayon::ThreadPool>> =
            std::sync::OnceLock::new();
        let pool =
            ONE_THREAD.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(1).build().ok());
        match pool {
            Some(pool) => pool.install(|| self.step_here(lm, bytes)),
            None => self.step_here(lm, bytes),
        }
    }

    fn step_here(&mut self, lm: &mut HourglassLM<B>, bytes: &[u8]) -> Result<Tensor<B>> {
        if bytes.len() != self.batch {
            return Err(shape_err!(
                "decoding: {} bytes for a batch of {}",
                bytes.len(),
                self.batch
            ));
        }
        if self.len == self.capacity {
            return Err(shape_err!(
                "decoding: the caches hold {} positions, all used (slide the context and start again)",
                self.capacity
            ));
        }
        lm.train(false);
        // One pass for the whole step, as a forward pass has: no dropout, the model's precision.
        let mut pass = Pass::eval().with_precision(lm.hourglass.precision());
        let d = lm.hourglass.config().d_model;
        let ids: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
        let ids = Tokens::upload(lm.hourglass.backend(), &ids, VOCAB)?;
        let x = crate::ops::embedding::forward(&lm.embedding.value, &ids)?
            .reshape(&[1, self.batch, d])?;
        let t = self.len;
        let h = match (&mut self.body, &mut lm.hourglass.body) {
            (BodyCache::Plain(cache), Body::Plain(stack)) => cache.step(stack, x, t, &mut pass)?,
            (BodyCache::Hourglass(cache), Body::Hourglass(level)) => {
                cache.step(level, x, t, &mut pass)?
            }
            _ => return Err(shape_err!("decoding: the caches do not match the model")),
        };
        self.len += 1;
        lm.head_logits(h.reshape(&[self.batch, d])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Cpu;

    #[test]
    fn a_decoder_s_caches_grow_as_positions_come_up_to_their_capacity() {
        let backend = Cpu::<f32>::new();
        let row = |v: f64| Tensor::from_f64(&backend, &[1, 1, 2], &[v, -v]).unwrap();
        let mut cache = CachedRows::new(200);
        assert!(
            cache.get().is_none(),
            "nothing is allocated before a row comes"
        );
        let held = |cache: &CachedRows<Cpu>| cache.get().unwrap().shape()[0];
        cache.write(0, &row(1.0)).unwrap();
        assert_eq!(held(&cache), 64);
        cache.write(100, &row(2.0)).unwrap();
        assert_eq!(held(&cache), 128);
        let all = cache.write(150, &row(3.0)).unwrap();
        assert_eq!(all.shape(), &[200, 1, 2], "capped at the capacity");
        let values = all.to_f64_vec().unwrap();
        for (position, v) in [(0, 1.0), (100, 2.0), (150, 3.0)] {
            assert_eq!(values[2 * position..2 * position + 2], [v, -v]);
        }
        let err = cache.write(200, &row(4.0)).unwrap_err().to_string();
        assert!(
            err.contains("position 200") && err.contains("200 positions"),
            "{err}"
        );
    }
}
