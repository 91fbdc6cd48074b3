//! The hourglass of the reference: `pre` layer → ShiftRight(k-1) → AvgPoolShortening(k) → the valley (one
//! `shortened` layer, or a nested `hour_glass` for the remaining factors) → x + NaiveUpSampling(k) → `post`.

use super::transformer::TransformerLayer;
use super::{impl_parameters, DropoutStream, Param, Parameters};
use crate::config::HourGlassConfig;
use crate::device::Cpu;
use crate::error::{shape_err, Result};
use crate::ops::attention::AttnMask;
use crate::ops::{shorten, upsample, Backend};
use crate::rng::{splitmix64, SeededRng};
use crate::tensor::Tensor;

/// What sits between shortening and upsampling.
pub enum Valley<B: Backend> {
    /// The innermost level: one transformer layer on the shortest sequence.
    Shortened(Box<TransformerLayer<B>>),
    /// A further hourglass for the remaining factors.
    Nested(Box<Level<B>>),
}

/// One level of the hourglass (the reference's `HourGlass` module without the top-level run state).
pub struct Level<B: Backend> {
    pub pre: TransformerLayer<B>,
    pub valley: Valley<B>,
    pub post: TransformerLayer<B>,
    factor: usize,
    input_shape: Option<Vec<usize>>,
}

impl<B: Backend> Level<B> {
    fn new(
        backend: &B,
        c: &HourGlassConfig,
        factors: &[usize],
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let layer = |rng: &mut SeededRng| {
            TransformerLayer::new(backend, c.n_heads, c.d_model, c.d_ff, c.dropout, rng)
        };
        let pre = layer(rng)?;
        let valley = if factors.len() == 1 {
            Valley::Shortened(Box::new(layer(rng)?))
        } else {
            Valley::Nested(Box::new(Level::new(backend, c, &factors[1..], rng)?))
        };
        let post = layer(rng)?;
        Ok(Self {
            pre,
            valley,
            post,
            factor: factors[0],
            input_shape: None,
        })
    }

    fn forward(&mut self, x: Tensor<B>, drop: &mut DropoutStream) -> Result<Tensor<B>> {
        let k = self.factor;
        self.input_shape = Some(x.shape().to_vec());
        let x = self.pre.forward(x, AttnMask::Causal, drop)?;
        let short = shorten::forward(&x, k, k - 1)?;
        let short = match &mut self.valley {
            Valley::Shortened(layer) => layer.forward(short, AttnMask::Causal, drop)?,
            Valley::Nested(level) => level.forward(short, drop)?,
        };
        let x = upsample::forward_add(&x, &short, k)?;
        self.post.forward(x, AttnMask::Causal, drop)
    }

    fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let k = self.factor;
        let shape = self
            .input_shape
            .take()
            .ok_or_else(|| shape_err!("hourglass: backward called before forward"))?;
        let mut dx = self.post.backward(dy)?;
        let dshort = upsample::backward(&dx, k)?;
        let dshort = match &mut self.valley {
            Valley::Shortened(layer) => layer.backward(&dshort)?,
            Valley::Nested(level) => level.backward(&dshort)?,
        };
        dx.add_assign(&shorten::backward(&dshort, &shape, k, k - 1)?)?;
        self.pre.backward(&dx)
    }
}

impl<B: Backend> Parameters<B> for Valley<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        match self {
            Valley::Shortened(layer) => layer.visit(&super::join(prefix, "shortened"), f),
            Valley::Nested(level) => level.visit(&super::join(prefix, "hour_glass"), f),
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        match self {
            Valley::Shortened(layer) => layer.visit_mut(&super::join(prefix, "shortened"), f),
            Valley::Nested(level) => level.visit_mut(&super::join(prefix, "hour_glass"), f),
        }
    }
}

// The valley's own prefix ("shortened" or "hour_glass") is added by `Valley`, so it is visited at "".
impl_parameters!(Level { pre => "pre", valley => "", post => "post" });

/// The hourglass model: `forward(x)` maps `[seq_len, batch, d_model]` to the same shape for any seq_len >= 1;
/// `backward(grad_y)` returns grad_x and accumulates every parameter's gradient.
pub struct HourGlass<B: Backend> {
    pub root: Level<B>,
    config: HourGlassConfig,
    backend: B,
    training: bool,
    seed: u64,
    step: u64,
}

impl HourGlass<Cpu> {
    /// The reference constructor, on the CPU in f32, initialised from seed 0.
    pub fn new(
        n_heads: usize,
        d_model: usize,
        dropout: f64,
        d_ff: usize,
        shortening_factors: &[usize],
    ) -> Result<Self> {
        let config = HourGlassConfig {
            n_heads,
            d_model,
            dropout,
            d_ff,
            shortening_factors: shortening_factors.to_vec(),
        };
        Self::from_config(&Cpu::new(), &config, 0)
    }
}

impl<B: Backend> HourGlass<B> {
    /// Builds and initialises the model on `backend` like PyTorch's defaults, from `seed`.
    pub fn from_config(backend: &B, config: &HourGlassConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = SeededRng::new(seed);
        let root = Level::new(backend, config, &config.shortening_factors, &mut rng)?;
        Ok(Self {
            root,
            config: config.clone(),
            backend: backend.clone(),
            training: true,
            seed,
            step: 0,
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
        let mut drop =
            DropoutStream::new(self.training, splitmix64(self.seed ^ splitmix64(self.step)));
        self.root.forward(x.try_clone()?, &mut drop)
    }

    pub fn backward(&mut self, grad_y: &Tensor<B>) -> Result<Tensor<B>> {
        if let Some(shape) = &self.root.input_shape {
            grad_y.expect_shape("hourglass output gradient", shape)?;
        }
        self.root.backward(grad_y)
    }
}

impl<B: Backend> Parameters<B> for HourGlass<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        self.root.visit(prefix, f)
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        self.root.visit_mut(prefix, f)
    }
}
