//! A training run's settings (`TrainConfig`: the model, the batches, the optimiser, the schedule, the
//! bookkeeping), the named presets, how a JSON config file and command-line flags override them, and the
//! settings resolved against the backend a run trains on (`ResolvedConfig`: the precision, how steps are
//! issued), which the trainer, the CLI and a checkpoint all read.
//!
//! Presets:
//! - `cpu`: the default without a GPU, a small model that learns visibly in a few minutes on two cores;
//! - `gpu`: the default with a GPU, a larger model and longer sequences;
//! - `enwik8`: the paper's enwik8 recipe (Nawrot et al. 2021, their best enwik8 model): d_model 512, 8 heads,
//!   d_ff 2048, 5 layers at full length, 24 shortened by 3, 5 at full length, dropout 0.2, seq_len 2048,
//!   batch 8, Adam β (0.9, 0.98), lr 4.1e-4, 4k warm-up steps, cosine decay;
//! - `fashion-mnist`: Fashion-MNIST's 28x28 images pixel by pixel (`data::DataKind::Images`), in bits per
//!   dimension; a small model on the CPU, a larger one on a GPU (`Preset::for_device`).
//!
//! Every preset uses rotary positions on q/k (see `docs/components.md`).

use super::data::DataKind;
use super::schedule::LrSchedule;
use crate::config::{Depth, HourGlassConfig, Positions, ShorteningKind, UpsamplingKind};
use crate::device::{BackendCore, DeviceKind};
use crate::error::{Error, Result};
use crate::model::lm::HourglassLM;
use crate::model::Precision;
use crate::ops::Backend;
use crate::rng::{splitmix64, SeededRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Everything that decides a training run's numbers. Two runs with the same `TrainConfig`, data and device
/// give the same losses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: HourGlassConfig,
    /// Tie the LM head to the byte embedding (logits `h·Eᵀ + b`).
    #[serde(default)]
    pub tie_embedding: bool,
    /// Characters (bytes) per training sequence; of images, one image's pixels.
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation): a step sees `batch · accum` sequences.
    pub accum: usize,
    /// Optimiser steps in the whole run (the cosine decay ends here).
    pub steps: u64,
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    /// The learning rate the cosine decays to.
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW), on matrices only.
    pub weight_decay: f64,
    /// Clip gradients to this global norm; 0 turns clipping off.
    pub clip: f64,
    /// Seeds the initial parameters, the batches and the dropout masks.
    pub seed: u64,
    /// Evaluate on the validation split every this many steps (and at the end).
    pub eval_every: u64,
    /// Batches of the validation split per periodic evaluation (always the same ones, from its start; 0 = all).
    /// The final evaluation covers the whole split.
    pub eval_batches: usize,
    /// Write a checkpoint every this many steps (0 = only at the end or on Ctrl-C).
    pub save_every: u64,
    /// The GEMMs' precision (`f32` or `bf16`; see `model::Precision`). Unset in the presets: `resolve`
    /// decides it for the backend, and a run writes the one it used into its config and checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// What the run reads: bytes (text; the default, left out of the JSON) or whole images, which `eval` and
    /// `sample` on its checkpoint then read too.
    #[serde(default, skip_serializing_if = "is_bytes")]
    pub data: DataKind,
}

fn is_bytes(data: &DataKind) -> bool {
    *data == DataKind::Bytes
}

/// Keeps the batch stream independent of the other seeded streams.
const BATCH_STREAM: u64 = 0xBA7C_4E5D;

/// How a training step is issued (`train::device_step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepMode {
    /// Losses and the gradient norm read back before the update (the CPU's way).
    Host,
    /// Everything on the device, results read one step later; no graph.
    Device,
    /// `Device`, captured once into a graph and replayed (CUDA).
    Graph,
}

impl StepMode {
    /// This mode with nothing captured (`--no-graph`): a `Graph` step's work issued from the host as it is
    /// (`Device`, the same results bit for bit).
    pub(crate) fn uncaptured(self) -> Self {
        match self {
            StepMode::Graph => StepMode::Device,
            other => other,
        }
    }
}

/// A `TrainConfig` resolved against the backend a run trains on (`TrainConfig::resolve`): nothing is left
/// for the trainer, the CLI or a checkpoint to decide.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedConfig {
    /// The settings with their precision set to `precision`: what config.json and a checkpoint record.
    config: TrainConfig,
    precision: Precision,
    step_mode: StepMode,
}

impl ResolvedConfig {
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    pub fn step_mode(&self) -> StepMode {
        self.step_mode
    }
    /// Issues steps in `mode` instead (`Trainer::set_step_mode` checks that the backend can).
    pub(crate) fn set_step_mode(&mut self, mode: StepMode) {
        self.step_mode = mode;
    }

    /// The language model these settings describe, initialised from `seed`, computing in `precision`.
    pub fn build_lm<B: Backend>(&self, backend: &B) -> Result<HourglassLM<B>> {
        let c = &self.config;
        let mut lm = HourglassLM::build(backend, &c.model, c.seed, c.tie_embedding)?;
        lm.set_precision(self.precision);
        Ok(lm)
    }
}

/// The named starting points of `hourglass train --preset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Small: learns visibly in a few minutes on a 2-core CPU (the default without a GPU).
    Cpu,
    /// Larger, for one GPU (the default with a GPU).
    Gpu,
    /// The paper's enwik8 model and recipe.
    Enwik8,
    /// Fashion-MNIST pixel by pixel, in bits per dimension (a larger model on a GPU).
    FashionMnist,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Cpu => "cpu",
            Preset::Gpu => "gpu",
            Preset::Enwik8 => "enwik8",
            Preset::FashionMnist => "fashion-mnist",
        }
    }

    /// The preset's settings for a run on the CPU; see [`Preset::for_device`].
    pub fn config(self) -> TrainConfig {
        self.for_device(false)
    }

    /// The preset's settings for a run on a GPU (`on_gpu`) or the CPU. Only `fashion-mnist` tells them apart:
    /// the text presets are each for one kind of device already (`cpu`, `gpu`), but one image preset serves
    /// both, with a model sized for each.
    pub fn for_device(self, on_gpu: bool) -> TrainConfig {
        let model = |heads, d, dropout, d_ff, factors: &[usize], depth: Depth| {
            let mut m = HourGlassConfig::reference(heads, d, dropout, d_ff, factors);
            m.depth = Some(depth);
            m.positions = Positions::Rotary;
            m
        };
        match self {
            Preset::Cpu => TrainConfig {
                model: model(4, 128, 0.0, 512, &[3], Depth::triple(1, 3, 1)),
                tie_embedding: false,
                seq_len: 192,
                batch: 8,
                accum: 1,
                steps: 800,
                lr: 3e-3,
                min_lr: 3e-4,
                warmup_steps: 80,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                weight_decay: 0.01,
                clip: 1.0,
                seed: 0,
                eval_every: 100,
                eval_batches: 8,
                save_every: 200,
                precision: None,
                data: DataKind::Bytes,
            },
            // About 19M parameters and 33M bytes (6 passes over the default corpus's 5.5 MB of training
            // text); much larger or longer would likely memorise this corpus (an estimate). Not yet run on a GPU.
            Preset::Gpu => TrainConfig {
                model: model(8, 512, 0.2, 2048, &[3], Depth::triple(1, 4, 1)),
                tie_embedding: false,
                seq_len: 1024,
                batch: 16,
                accum: 1,
                steps: 2000,
                lr: 6e-4,
                min_lr: 6e-5,
                warmup_steps: 200,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                weight_decay: 0.01,
                clip: 1.0,
                seed: 0,
                eval_every: 200,
                eval_batches: 16,
                save_every: 500,
                precision: None,
                data: DataKind::Bytes,
            },
            Preset::Enwik8 => TrainConfig {
                model: model(8, 512, 0.2, 2048, &[3], Depth::triple(5, 24, 5)),
                tie_embedding: false,
                seq_len: 2048,
                batch: 8,
                accum: 1,
                // The paper's table gives no step count; cosine decay needs one. Override with --steps.
                steps: 200_000,
                lr: 4.1e-4,
                min_lr: 0.0,
                warmup_steps: 4000,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                // Adam, as in the paper: no weight decay.
                weight_decay: 0.0,
                clip: 1.0,
                seed: 0,
                eval_every: 1000,
                eval_batches: 32,
                save_every: 1000,
                precision: None,
                data: DataKind::Bytes,
            },
            Preset::FashionMnist => fashion_mnist(on_gpu),
        }
    }
}

/// The `fashion-mnist` preset: an hourglass over the 784 pixels of a 28x28 image shortened by 4, then by 7
/// (196 positions, then 28: one per row), with linear shortening and upsampling, which learn how to pool and
/// spread the pixels of a window instead of averaging and repeating them. On the CPU, [4, 7] with one layer
/// a stack scored 3.31 bits per dimension after 400 steps, [28] with four layers in the valley 3.35 in 7% less
/// time: about even per second, a little better per step. A batch holds whole images; an epoch is 58,000 of
/// them.
fn fashion_mnist(on_gpu: bool) -> TrainConfig {
    let model = |heads, d, dropout, d_ff, depth| {
        let mut m = HourGlassConfig::reference(heads, d, dropout, d_ff, &[4, 7]);
        m.shortening = ShorteningKind::Linear.into();
        m.upsampling = UpsamplingKind::Linear.into();
        m.depth = Some(depth);
        m.positions = Positions::Rotary;
        m
    };
    // The `cpu` preset's optimiser and bookkeeping, over whole images.
    let cpu = TrainConfig {
        // Learns visibly in a few minutes on two cores: 500 steps of 8 images, a fourteenth of an epoch.
        model: model(4, 64, 0.0, 256, Depth::triple(1, Depth::triple(1, 2, 1), 1)),
        seq_len: 28 * 28,
        steps: 500,
        warmup_steps: 50,
        eval_batches: 4,
        data: DataKind::Images { rows: 28, cols: 28 },
        ..Preset::Cpu.config()
    };
    if !on_gpu {
        return cpu;
    }
    // 28M parameters; 10,000 steps of 32 images are five and a half epochs, with dropout against memorising
    // them. Sized by estimate: not yet run on a GPU.
    TrainConfig {
        model: model(
            8,
            512,
            0.1,
            2048,
            Depth::triple(1, Depth::triple(1, 4, 1), 1),
        ),
        batch: 32,
        steps: 10_000,
        lr: 6e-4,
        min_lr: 6e-5,
        warmup_steps: 500,
        eval_every: 500,
        eval_batches: 16,
        save_every: 1000,
        ..cpu
    }
}

impl TrainConfig {
    /// These settings on `backend`, the one place that decides what they leave to it: an unset precision is
    /// bf16 on a GPU (tensor cores) and the element type elsewhere; steps are captured into one graph and
    /// replayed where the backend can (CUDA), and issued from the host elsewhere.
    pub fn resolve<B: BackendCore>(&self, backend: &B) -> ResolvedConfig {
        let precision = self.precision.unwrap_or(match backend.kind() {
            DeviceKind::Cuda(_) => Precision::Bf16,
            DeviceKind::Cpu => Precision::Element,
        });
        let step_mode = match backend.can_capture() {
            true => StepMode::Graph,
            false => StepMode::Host,
        };
        ResolvedConfig {
            config: TrainConfig {
                precision: Some(precision),
                ..self.clone()
            },
            precision,
            step_mode,
        }
    }

    /// The precision of the run that wrote a checkpoint with these settings: unset only in checkpoints from
    /// before the setting, whose runs all trained in the element type.
    fn trained_precision(&self) -> Precision {
        self.precision.unwrap_or(Precision::Element)
    }

    /// These settings as read from a checkpoint: its run's precision always set.
    pub(crate) fn checkpointed(self) -> Self {
        TrainConfig {
            precision: Some(self.trained_precision()),
            ..self
        }
    }

    /// These settings continuing the run of `checkpoint` (its config): an unset precision is the
    /// checkpoint's.
    pub(crate) fn resuming(&self, checkpoint: &TrainConfig) -> Self {
        TrainConfig {
            precision: Some(self.precision.unwrap_or(checkpoint.trained_precision())),
            ..self.clone()
        }
    }

    /// The batch stream of step `index` (from 0): every micro-batch of the step draws from it in turn.
    pub(crate) fn batch_rng(&self, index: u64) -> SeededRng {
        SeededRng::new(splitmix64(self.seed ^ BATCH_STREAM) ^ splitmix64(index))
    }

    /// Checks every setting (the model's own checks included); messages name the key and the value.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let bad = |msg: String| Err(Error::Config(msg));
        if let DataKind::Images { rows, cols } = self.data {
            if rows.checked_mul(cols) != Some(self.seq_len) {
                return bad(format!(
                    "seq_len {} does not fit data {}: a run over images reads one whole image a sequence, so \
                     seq_len must be rows·cols = {rows}·{cols}",
                    self.seq_len, self.data
                ));
            }
        }
        for (key, value) in [
            ("seq_len", self.seq_len as u64),
            ("batch", self.batch as u64),
            ("accum", self.accum as u64),
            ("steps", self.steps),
            ("eval_every", self.eval_every),
        ] {
            if value == 0 {
                return bad(format!("{key} must be at least 1, got 0"));
            }
        }
        if self
            .seq_len
            .checked_mul(self.batch)
            .and_then(|n| n.checked_mul(self.accum))
            .is_none()
        {
            return bad(format!(
                "seq_len {} x batch {} x accum {} bytes a step is more than can be counted",
                self.seq_len, self.batch, self.accum
            ));
        }
        self.schedule()?;
        if !(self.beta1 >= 0.0 && self.beta1 < 1.0 && self.beta2 >= 0.0 && self.beta2 < 1.0) {
            return bad(format!(
                "beta1 ({}) and beta2 ({}) must be in [0, 1)",
                self.beta1, self.beta2
            ));
        }
        for (key, value) in [
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("clip", self.clip),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return bad(format!("{key} must be finite and >= 0, got {value}"));
            }
        }
        if self.eps == 0.0 {
            return bad("eps must be positive, got 0".into());
        }
        Ok(())
    }

    pub(crate) fn schedule(&self) -> Result<LrSchedule> {
        LrSchedule::new(self.lr, self.warmup_steps, self.steps, self.min_lr)
    }

    /// Bytes the model reads per optimiser step.
    pub fn tokens_per_step(&self) -> usize {
        self.seq_len * self.batch * self.accum
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("train config serialises")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("training config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// This config with the keys of a JSON object laid over it: `{"lr": 1e-3, "model": {"d_model": 64}}`
    /// changes those and keeps the rest. Unknown keys are errors.
    pub fn overlay(&self, patch: &Value) -> Result<Self> {
        let mut base = serde_json::to_value(self).expect("train config serialises");
        merge(&mut base, patch);
        let config: Self = serde_json::from_value(base)
            .map_err(|e| Error::Config(format!("training config: {e}")))?;
        Ok(config)
    }

    /// `overlay` with the JSON object in `path`.
    pub fn overlay_file(&self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let patch: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?;
        if !patch.is_object() {
            return Err(Error::Config(format!(
                "config file {} must hold a JSON object of settings",
                path.display()
            )));
        }
        self.overlay(&patch)
            .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))
    }

    /// The settings whose change would make a resumed run (`resuming`) differ from the one that wrote the
    /// checkpoint (all but the run's length and bookkeeping), as `key: checkpoint value -> this value` lines;
    /// empty when the two agree.
    pub fn resume_conflicts(&self, checkpoint: &TrainConfig) -> Vec<String> {
        let ours = numbers_that_matter(&self.resuming(checkpoint));
        let theirs = numbers_that_matter(&checkpoint.clone().checkpointed());
        let mut diffs = Vec::new();
        diff_values("", &theirs, &ours, &mut diffs);
        diffs
    }
}

/// The config as JSON without the keys a resumed run may change: `steps`, `eval_every`, `eval_batches`,
/// `save_every`.
fn numbers_that_matter(config: &TrainConfig) -> Value {
    let mut v = serde_json::to_value(config).expect("train config serialises");
    let obj = v.as_object_mut().expect("an object");
    for key in ["steps", "eval_every", "eval_batches", "save_every"] {
        obj.remove(key);
    }
    v
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = crate::model::join(path, k);
                let null = Value::Null;
                diff_values(
                    &p,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}

/// Lays `patch` over `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}
