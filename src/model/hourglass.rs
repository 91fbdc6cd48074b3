//! The hourglass: each level is `pre` layers → shortening → the valley (`shortened` layers, or a nested
//! `hour_glass` for the remaining factors) → upsampling (with the residual skip) → `post` layers. Without
//! shortening factors, a plain transformer (`Body::Plain`), the baseline. The reference
//! is one layer per stack, ShiftRight(k-1) + AvgPoolShortening(k), x + NaiveUpSampling(k), causal; the other
//! components are in `shortening.rs` and `upsampling.rs` (see `docs/components.md`).

use super::shortening::Shortening;
use super::size::{self, Workload};
use super::transformer::TransformerLayer;
use super::upsampling::Upsampling;
use super::{impl_parameters, join, Param, Parameters, Pass, Precision};
use crate::config::{HourGlassConfig, LevelSpec, Positions};
use crate::device::Cpu;
use crate::error::{shape_err, Result};
use crate::ops::attention::AttnMask;
use crate::ops::Backend;
use crate::rng::{splitmix64, SeededRng};
use crate::tensor::Tensor;

/// A stack of transformer layers (`depth`'s pre, valley or post count; may be empty). One layer keeps the
/// reference's names (`pre.norm_ff.weight`); more are numbered like `nn.Sequential` (`pre.0.norm_ff.weight`).
/// With `"positions": "rotary"` every layer's self-attention rotates q and k by the positions `0..len` of the
/// stack's own level (at a level shortened k times in all, one position step is k characters).
pub(crate) struct Stack<B: Backend> {
    pub(crate) layers: Vec<TransformerLayer<B>>,
    mask: AttnMask,
}

impl<B: Backend> Stack<B> {
    fn new(backend: &B, c: &HourGlassConfig, n: usize, rng: &mut SeededRng) -> Result<Self> {
        let rotary = c.positions == Positions::Rotary;
        let layers = (0..n)
            .map(|_| {
                TransformerLayer::new(backend, c.n_heads, c.d_model, c.d_ff, c.dropout, rng)
                    .map(|layer| layer.with_rotary(rotary))
            })
            .collect::<Result<_>>()?;
        let mask = if c.causal {
            AttnMask::Causal
        } else {
            AttnMask::Full
        };
        Ok(Self { layers, mask })
    }

    fn forward(&mut self, x: Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        self.layers
            .iter_mut()
            .try_fold(x, |x, layer| layer.forward(x, self.mask, pass))
    }

    fn backward(&mut self, dy: Tensor<B>) -> Result<Tensor<B>> {
        self.layers
            .iter_mut()
            .rev()
            .try_fold(dy, |dy, layer| layer.backward(&dy))
    }
}

impl<B: Backend> Parameters<B> for Stack<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        match self.layers.as_slice() {
            [layer] => layer.visit(prefix, f),
            layers => {
                for (i, layer) in layers.iter().enumerate() {
                    layer.visit(&join(prefix, &i.to_string()), f);
                }
            }
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        match self.layers.as_mut_slice() {
            [layer] => layer.visit_mut(prefix, f),
            layers => {
                for (i, layer) in layers.iter_mut().enumerate() {
                    layer.visit_mut(&join(prefix, &i.to_string()), f);
                }
            }
        }
    }
}

/// What sits between shortening and upsampling.
pub(crate) enum Valley<B: Backend> {
    /// The innermost level: transformer layers on the shortest sequence.
    Shortened(Stack<B>),
    /// A further hourglass for the remaining factors.
    Nested(Box<Level<B>>),
}

/// One level of the hourglass (the reference's `HourGlass` module without the top-level run state).
pub(crate) struct Level<B: Backend> {
    pub(crate) pre: Stack<B>,
    pub(crate) shortening: Shortening<B>,
    pub(crate) valley: Valley<B>,
    pub(crate) up_sampling: Upsampling<B>,
    pub(crate) post: Stack<B>,
    input_shape: Option<Vec<usize>>,
    /// With `keep_outputs` (`HourGlass::set_keep_outputs`): the last forward pass's `pre` output and valley
    /// output, from which incremental decoding fills its caches.
    keep_outputs: bool,
    kept: Option<LevelOutputs<B>>,
}

/// A level's `pre` stack output `[T, B, D]` and valley output `[ceil(T/k), B, D]` of one forward pass.
pub(crate) struct LevelOutputs<B: Backend> {
    pub(crate) pre: Tensor<B>,
    pub(crate) valley: Tensor<B>,
}

impl<B: Backend> Level<B> {
    /// The level `levels[0]` with the ones below it nested; `valley` layers at the innermost.
    fn new(
        backend: &B,
        c: &HourGlassConfig,
        levels: &[LevelSpec],
        valley: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let spec = levels[0];
        // Initialised in the order of the forward pass (the reference draws only pre, valley, post).
        let pre = Stack::new(backend, c, spec.pre, rng)?;
        let shortening = Shortening::new(backend, c, spec.shortening, spec.factor, rng)?;
        let valley = if levels.len() == 1 {
            Valley::Shortened(Stack::new(backend, c, valley, rng)?)
        } else {
            Valley::Nested(Box::new(Level::new(backend, c, &levels[1..], valley, rng)?))
        };
        let up_sampling = Upsampling::new(backend, c, spec.upsampling, spec.factor, rng)?;
        let post = Stack::new(backend, c, spec.post, rng)?;
        Ok(Self {
            pre,
            shortening,
            valley,
            up_sampling,
            post,
            input_shape: None,
            keep_outputs: false,
            kept: None,
        })
    }

    fn forward(&mut self, x: Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        self.input_shape = Some(x.shape().to_vec());
        let x = self.pre.forward(x, pass)?;
        let short = self.shortening.forward(&x, pass)?;
        let short = match &mut self.valley {
            Valley::Shortened(layers) => layers.forward(short, pass)?,
            Valley::Nested(level) => level.forward(short, pass)?,
        };
        if self.keep_outputs {
            self.kept = Some(LevelOutputs {
                pre: x.share(),
                valley: short.share(),
            });
        }
        let x = self.up_sampling.forward(&x, short, pass)?;
        self.post.forward(x, pass)
    }

    /// The outputs the last forward pass kept (`HourGlass::set_keep_outputs`), taken.
    pub(crate) fn take_outputs(&mut self) -> Option<LevelOutputs<B>> {
        self.kept.take()
    }

    fn set_keep_outputs(&mut self, keep: bool) {
        self.keep_outputs = keep;
        self.kept = None;
        if let Valley::Nested(level) = &mut self.valley {
            level.set_keep_outputs(keep);
        }
    }

    fn backward(&mut self, dy: Tensor<B>) -> Result<Tensor<B>> {
        self.input_shape
            .take()
            .ok_or_else(|| shape_err!("hourglass: backward called before forward"))?;
        let dx = self.post.backward(dy)?;
        let (mut dx, dshort) = self.up_sampling.backward(dx)?;
        let dshort = match &mut self.valley {
            Valley::Shortened(layers) => layers.backward(dshort)?,
            Valley::Nested(level) => level.backward(dshort)?,
        };
        dx.add_assign(&self.shortening.backward(&dshort)?)?;
        self.pre.backward(dx)
    }
}

impl<B: Backend> Parameters<B> for Valley<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        match self {
            Valley::Shortened(layers) => layers.visit(&join(prefix, "shortened"), f),
            Valley::Nested(level) => level.visit(&join(prefix, "hour_glass"), f),
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        match self {
            Valley::Shortened(layers) => layers.visit_mut(&join(prefix, "shortened"), f),
            Valley::Nested(level) => level.visit_mut(&join(prefix, "hour_glass"), f),
        }
    }
}

// The valley's own prefix ("shortened" or "hour_glass") is added by `Valley`, so it is visited at "".
impl_parameters!(Level {
    pre => "pre",
    shortening => "shortening",
    valley => "",
    up_sampling => "up_sampling",
    post => "post",
});

/// What a model is made of: an hourglass (its outermost level, the others nested in it), or, with no
/// shortening factors, a plain stack of transformer layers at full length (`layers.*`): the baseline the
/// paper measures the hourglass against.
pub(crate) enum Body<B: Backend> {
    Hourglass(Box<Level<B>>),
    Plain(Stack<B>),
}

impl<B: Backend> Body<B> {
    fn forward(&mut self, x: Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        match self {
            Body::Hourglass(level) => level.forward(x, pass),
            Body::Plain(layers) => layers.forward(x, pass),
        }
    }
    fn backward(&mut self, dy: Tensor<B>) -> Result<Tensor<B>> {
        match self {
            Body::Hourglass(level) => level.backward(dy),
            Body::Plain(layers) => layers.backward(dy),
        }
    }
}

impl<B: Backend> Parameters<B> for Body<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        match self {
            Body::Hourglass(level) => level.visit(prefix, f),
            Body::Plain(layers) => layers.visit(&join(prefix, "layers"), f),
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        match self {
            Body::Hourglass(level) => level.visit_mut(prefix, f),
            Body::Plain(layers) => layers.visit_mut(&join(prefix, "layers"), f),
        }
    }
}

/// The hourglass model: `forward(x)` maps `[seq_len, batch, d_model]` to the same shape for any seq_len >= 1;
/// `backward(grad_y)` returns grad_x and accumulates every parameter's gradient.
pub struct HourGlass<B: Backend> {
    pub(crate) body: Body<B>,
    config: HourGlassConfig,
    /// The shape of the last forward pass's input (and output), which backward's gradient must have.
    shape: Option<Vec<usize>>,
    backend: B,
    training: bool,
    seed: u64,
    step: u64,
    precision: Precision,
    /// The next pass's masks name this micro-batch's staged seed slots (`set_staged_seeds`).
    staged_micro: Option<usize>,
    /// Dropout sites the last training pass visited.
    sites: u64,
}

impl HourGlass<Cpu> {
    /// The reference constructor, on the CPU in f32, initialised from seed 0: average pooling, naive
    /// upsampling, one layer per stack, causal (`HourGlassConfig::reference`).
    pub fn new(
        n_heads: usize,
        d_model: usize,
        dropout: f64,
        d_ff: usize,
        shortening_factors: &[usize],
    ) -> Result<Self> {
        let config =
            HourGlassConfig::reference(n_heads, d_model, dropout, d_ff, shortening_factors);
        Self::from_config(&Cpu::new(), &config, 0)
    }
}

impl<B: Backend> HourGlass<B> {
    /// Builds and initialises the model on `backend` like PyTorch's defaults, from `seed`. A model whose
    /// parameters alone would not fit in the device's memory is an error (`size::check`), not an abort.
    pub fn from_config(backend: &B, config: &HourGlassConfig, seed: u64) -> Result<Self> {
        let (levels, valley) = config.levels()?;
        size::check(
            backend,
            "the model",
            config,
            Workload::parameters(false, false),
        )?;
        let mut rng = SeededRng::new(seed);
        let body = if levels.is_empty() {
            Body::Plain(Stack::new(backend, config, valley, &mut rng)?)
        } else {
            Body::Hourglass(Box::new(Level::new(
                backend, config, &levels, valley, &mut rng,
            )?))
        };
        Ok(Self {
            body,
            config: config.clone(),
            shape: None,
            backend: backend.clone(),
            training: true,
            seed,
            step: 0,
            precision: Precision::Element,
            staged_micro: None,
            sites: 0,
        })
    }

    pub fn config(&self) -> &HourGlassConfig {
        &self.config
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// Training mode applies dropout (a fresh mask every forward call); evaluation mode does not.
    pub fn train(&mut self, training: bool) {
        self.training = training;
    }
    pub fn is_training(&self) -> bool {
        self.training
    }
    /// The precision of every GEMM (the element type by default; see [`Precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }
    /// Gives the next forward pass the dropout masks of pass number `pass` (from 0): a training loop sets it
    /// per micro-batch, so the masks follow the step and not how many passes (evaluations, an earlier
    /// process) came before.
    pub(crate) fn set_dropout_pass(&mut self, pass: u64) {
        self.step = pass;
    }
    /// Whether forward passes keep every level's `pre` and valley outputs (`Level::take_outputs`), for
    /// incremental decoding to fill its caches from one pass over a prompt. Off by default: training frees them
    /// with the rest of the step.
    pub(crate) fn set_keep_outputs(&mut self, keep: bool) {
        if let Body::Hourglass(level) = &mut self.body {
            level.set_keep_outputs(keep);
        }
    }
    /// Whether the next passes' masks name micro-batch `micro`'s staged seed slots on the device (a training
    /// step with no host round trip stages them: `dropout_seeds`) rather than carrying their seeds to the
    /// launch; the CPU reads the seeds either way.
    pub(crate) fn set_staged_seeds(&mut self, micro: Option<usize>) {
        self.staged_micro = micro;
    }
    /// The seeds of the first `sites` dropout sites of pass number `pass` (`set_dropout_pass`), in site order:
    /// what a step stages for the masks of that pass.
    pub(crate) fn dropout_seeds(&self, pass: u64, sites: u64) -> Vec<u64> {
        let pass_seed = self.pass_seed(pass + 1);
        (1..=sites)
            .map(|site| Pass::site_seed(pass_seed, site))
            .collect()
    }
    /// Dropout sites the last training pass visited (what `dropout_seeds` needs to cover).
    pub(crate) fn dropout_sites(&self) -> u64 {
        self.sites
    }
    fn pass_seed(&self, step: u64) -> u64 {
        splitmix64(self.seed ^ splitmix64(step))
    }

    pub fn forward(&mut self, x: &Tensor<B>) -> Result<Tensor<B>> {
        let [seq, batch, width] = *x.shape() else {
            return Err(shape_err!(
                "hourglass input must be [seq_len, batch, d_model], got {:?}",
                x.shape()
            ));
        };
        if width != self.config.d_model {
            return Err(shape_err!(
                "hourglass input {:?} has width {width}, expected d_model {}",
                x.shape(),
                self.config.d_model
            ));
        }
        if seq == 0 || batch == 0 {
            return Err(shape_err!(
                "hourglass input {:?} is empty: seq_len and batch must be at least 1",
                x.shape()
            ));
        }
        self.step += 1;
        let mut pass = Pass::new(self.training, self.pass_seed(self.step))
            .with_precision(self.precision)
            .with_staged_seeds(self.staged_micro);
        self.shape = Some(x.shape().to_vec());
        let y = self.body.forward(x.share(), &mut pass)?;
        if self.training {
            self.sites = pass.sites();
        }
        Ok(y)
    }

    pub fn backward(&mut self, grad_y: &Tensor<B>) -> Result<Tensor<B>> {
        if let Some(shape) = &self.shape {
            grad_y.expect_shape("hourglass output gradient", shape)?;
        }
        self.body.backward(grad_y.share())
    }
}

impl<B: Backend> Parameters<B> for HourGlass<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        self.body.visit(prefix, f)
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        self.body.visit_mut(prefix, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Depth, ShorteningKind, UpsamplingKind};

    /// Rotary positions rotate q and k of self-attention only: the resamplers' cross-attention keeps none.
    #[test]
    fn rotary_only_in_self_attention() {
        let config = |positions| HourGlassConfig {
            shortening: ShorteningKind::Attention.into(),
            upsampling: UpsamplingKind::Attention.into(),
            depth: Some(Depth::triple(2, Depth::triple(1, 2, 0), 1)),
            positions,
            ..HourGlassConfig::reference(2, 8, 0.1, 16, &[2, 2])
        };
        for positions in [Positions::Rotary, Positions::None] {
            let model = HourGlass::from_config(&Cpu::<f64>::new(), &config(positions), 3).unwrap();
            let Body::Hourglass(root) = &model.body else {
                panic!("an hourglass expected")
            };
            for layer in &root.pre.layers {
                assert_eq!(layer.self_attn.rotary(), positions == Positions::Rotary);
            }
            let Shortening::Attention(s) = &root.shortening else {
                panic!("attention shortening expected")
            };
            assert!(!s.block.attention.rotary());
            let Upsampling::Attention(u) = &root.up_sampling else {
                panic!("attention upsampling expected")
            };
            assert!(!u.block.attention.rotary());
        }
    }
}
