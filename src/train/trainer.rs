//! The training loop: batches → `HourglassLM` (gradient accumulation) → global-norm clipping (folded into) AdamW at the
//! scheduled learning rate; periodic validation; atomic checkpoints that resume exactly.
//!
//! Reproducibility: nothing depends on the history of the process. Step `s` draws its batches from
//! `seed ⊕ s` and its dropout masks from the model seed and the micro-batch's index (`s · accum + m`), so a
//! run resumed from a checkpoint (parameters, AdamW moments and step count, all in f32 as trained) takes the
//! same steps, bit for bit, as one that never stopped.
//!
//! A training checkpoint is one safetensors file: the model's parameters under their usual names (it loads
//! wherever a weights file does), `optimizer.exp_avg.*` / `optimizer.exp_avg_sq.*`, and metadata: the
//! `TrainConfig` as JSON (as resolved: its precision set), the loss history, and a fingerprint of the data
//! it was trained on.

use super::clip::{clip_factor, grad_norm};
use super::data::{Corpus, Split};
use super::device_step::DeviceStep;
use super::history::{History, StepLog};
use super::optim::AdamW;
use super::recipe::{ResolvedConfig, StepMode, TrainConfig};
use super::schedule::LrSchedule;
use crate::checkpoint::{export_params, import_params, TensorFile};
use crate::error::{Error, Result};
use crate::model::lm::HourglassLM;
use crate::model::size::{self, Workload};
use crate::model::Parameters;
use crate::ops::Backend;
use crate::rng::SeededRng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The metadata key that marks a training checkpoint (and its layout's version).
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "hourglass-train/1";

/// What a run ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step of the config was taken.
    Finished,
    /// The stop flag was raised (Ctrl-C); the state after this many steps was saved.
    Stopped { step: u64 },
}

/// Hooks for the progress display; every method has a do-nothing default.
pub trait Observer {
    fn step(&mut self, _log: &StepLog) {}
    fn evaluated(&mut self, _step: u64, _bits: f64) {}
    fn saved(&mut self, _step: u64, _path: &Path) {}
}

/// The observer that watches nothing.
impl Observer for () {}

/// Which bytes a model was trained on: their source, count and FNV-1a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DataFingerprint {
    pub(crate) source: String,
    pub(crate) bytes: usize,
    pub(crate) fnv1a: String,
}

impl DataFingerprint {
    pub(crate) fn of(corpus: &Corpus) -> Self {
        let hash = corpus
            .bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
            });
        Self {
            source: corpus.source().to_string(),
            bytes: corpus.len(),
            fnv1a: format!("{hash:016x}"),
        }
    }
}

pub struct Trainer<B: Backend> {
    settings: ResolvedConfig,
    schedule: LrSchedule,
    lm: HourglassLM<B>,
    opt: AdamW<B>,
    history: History,
    data: DataFingerprint,
    /// The device-side state of `Device` and `Graph` steps, made at the first such step.
    device: Option<DeviceStep<B>>,
}

impl<B: Backend> Trainer<B> {
    /// A fresh run of `config` as resolved on `backend` (`TrainConfig::resolve`, as `hourglass train` does:
    /// on CUDA, bf16 unless the config says otherwise, and one CUDA graph a step); the model initialised from
    /// `config.seed`. Fails (naming the sizes) when `corpus` is too small for `config.seq_len`.
    pub fn new(backend: &B, config: TrainConfig, corpus: &Corpus) -> Result<Self> {
        config.validate()?;
        check_fits(backend, &config, corpus)?;
        Self::start(
            backend,
            config.resolve(backend),
            DataFingerprint::of(corpus),
        )
    }

    /// Continues the run saved in `path`. With `requested`, that config must match the checkpoint's in every
    /// setting but the run's length and bookkeeping (`steps`, `eval_every`, `eval_batches`, `save_every`,
    /// which it then replaces; an unset precision is the checkpoint's); otherwise it is "a checkpoint from
    /// another config" and an error listing the differences. The data must be the bytes the checkpoint was
    /// trained on. Steps are issued as `TrainConfig::resolve` says for `backend`.
    pub fn resume(
        backend: &B,
        path: &Path,
        requested: Option<TrainConfig>,
        corpus: &Corpus,
    ) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let saved = checkpoint_config(&file, path)?;
        let config = match requested {
            None => saved,
            Some(requested) => {
                let conflicts = requested.resume_conflicts(&saved);
                if !conflicts.is_empty() {
                    return Err(Error::Training(format!(
                        "checkpoint {} is from another configuration; these settings differ \
                         (checkpoint -> this run): {}",
                        path.display(),
                        conflicts.join("; ")
                    )));
                }
                requested.resuming(&saved)
            }
        };
        config.validate()?;
        let data: DataFingerprint = metadata_json(&file, "data", path)?;
        let here = DataFingerprint::of(corpus);
        // The bytes must agree; the path they were read from may differ.
        if (data.bytes, &data.fnv1a) != (here.bytes, &here.fnv1a) {
            return Err(Error::Training(format!(
                "checkpoint {} was trained on {} ({} bytes, fnv1a {}), but this run reads {} ({} bytes, \
                 fnv1a {}): resume with the same --data",
                path.display(),
                data.source,
                data.bytes,
                data.fnv1a,
                here.source,
                here.bytes,
                here.fnv1a
            )));
        }
        check_fits(backend, &config, corpus)?;
        let mut trainer = Self::start(backend, config.resolve(backend), data)?;
        import_params(&mut trainer.lm, &file)?;
        trainer.opt.load_state(&trainer.lm, &file)?;
        trainer.history = metadata_json(&file, "history", path)?;
        Ok(trainer)
    }

    /// A run of `settings` on `backend` over the bytes of `data`: the model and optimiser freshly
    /// initialised, nothing logged.
    fn start(backend: &B, settings: ResolvedConfig, data: DataFingerprint) -> Result<Self> {
        let c = settings.config();
        Ok(Self {
            schedule: c.schedule()?,
            opt: AdamW::new(c.beta1, c.beta2, c.eps, c.weight_decay),
            lm: settings.build_lm(backend)?,
            history: History::default(),
            data,
            settings,
            device: None,
        })
    }

    /// The run's settings as resolved: what it trains with, and what its checkpoints record.
    pub fn config(&self) -> &TrainConfig {
        self.settings.config()
    }
    /// The run's settings with what they left to the backend: the precision, how steps are issued.
    pub fn settings(&self) -> &ResolvedConfig {
        &self.settings
    }
    pub fn history(&self) -> &History {
        &self.history
    }
    pub fn lm(&mut self) -> &mut HourglassLM<B> {
        &mut self.lm
    }
    /// Optimiser steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.opt.steps()
    }

    /// Issues steps in `mode` instead of the resolved one (`TrainConfig::resolve`). `Graph` needs a backend
    /// that captures (CUDA). Only between steps: nothing may be queued.
    pub fn set_step_mode(&mut self, mode: StepMode) -> Result<()> {
        if mode == StepMode::Graph && !self.lm.hourglass.backend().can_capture() {
            return Err(Error::Training(
                "a training step captured into a graph needs the CUDA backend".into(),
            ));
        }
        self.expect_nothing_queued("changing the step mode")?;
        self.settings.set_step_mode(mode);
        self.device = None;
        Ok(())
    }
    pub fn step_mode(&self) -> StepMode {
        self.settings.step_mode()
    }

    /// Queues one optimiser step. Returns the logs of the steps whose results are in (the host path: this
    /// one; `Device` and `Graph`: the one before, if any, with this one in flight), also added to the history.
    /// A non-finite loss or gradient norm stops with an error naming its step, before the parameters are
    /// touched (on the device: the update is skipped there, and so is every later one).
    pub fn queue_step(&mut self, corpus: &Corpus) -> Result<Vec<StepLog>> {
        let logs = match self.settings.step_mode() {
            StepMode::Host => vec![self.host_step(corpus)?],
            StepMode::Device | StepMode::Graph => {
                let lr = self.schedule.lr(self.opt.steps());
                let backend = self.lm.hourglass.backend().clone();
                let device = match &mut self.device {
                    Some(device) => device,
                    empty => empty.insert(DeviceStep::new(&backend, &self.settings)?),
                };
                let config = self.settings.config();
                let queued = device.queue(&mut self.lm, &mut self.opt, config, corpus, lr);
                self.after_device(queued)?
            }
        };
        self.history.steps.extend(&logs);
        Ok(logs)
    }

    /// Waits for every queued step and returns their logs (also added to the history).
    pub fn finish_steps(&mut self) -> Result<Vec<StepLog>> {
        let logs = match &mut self.device {
            Some(device) => {
                let finished = device.finish(&self.lm, self.settings.config());
                self.after_device(finished)?
            }
            None => Vec::new(),
        };
        self.history.steps.extend(&logs);
        Ok(logs)
    }

    /// One optimiser step over `accum` micro-batches, waited for: its log. A non-finite loss or gradient norm
    /// stops with an error naming the step, before the parameters are touched.
    pub fn train_step(&mut self, corpus: &Corpus) -> Result<StepLog> {
        let mut logs = self.queue_step(corpus)?;
        logs.extend(self.finish_steps()?);
        logs.pop()
            .ok_or_else(|| Error::Training("a step queued returned no log".into()))
    }

    /// Errors, naming `what`, while queued steps have not been finished (`finish_steps`): their logs would
    /// be missing from what `what` sees.
    fn expect_nothing_queued(&self, what: &str) -> Result<()> {
        if self.device.as_ref().is_some_and(DeviceStep::has_pending) {
            return Err(Error::Training(format!(
                "{what} with steps still queued: finish_steps first"
            )));
        }
        Ok(())
    }

    /// A device step's result; after a step stopped the run, the step count goes back to the last step that
    /// took effect (the device skipped the update of that step and of every one queued after it).
    fn after_device(&mut self, result: Result<Vec<StepLog>>) -> Result<Vec<StepLog>> {
        if result.is_err() {
            if let Some(step) = self.device.as_ref().and_then(DeviceStep::failed_step) {
                self.opt.set_steps(step - 1);
            }
        }
        result
    }

    /// The host path's step.
    fn host_step(&mut self, corpus: &Corpus) -> Result<StepLog> {
        let c = self.settings.config();
        let index = self.opt.steps();
        let step = index + 1;
        let lr = self.schedule.lr(index);
        let mut rng = c.batch_rng(index);
        self.lm.train(true);
        self.lm.zero_grad()?;
        let mut nats = 0.0;
        for micro in 0..c.accum {
            let (inputs, targets) = corpus.batch(Split::Train, c.seq_len, c.batch, &mut rng)?;
            self.lm
                .set_dropout_pass(index * c.accum as u64 + micro as u64);
            let loss = self
                .lm
                .accumulate(&inputs, &targets, c.seq_len, c.batch, c.accum)?;
            if !loss.is_finite() {
                return Err(Error::Training(format!(
                    "the training loss is {loss} at step {step} (micro-batch {micro}); stopping"
                )));
            }
            nats += loss;
        }
        let norm = grad_norm(&self.lm)?;
        if !norm.is_finite() {
            return Err(Error::Training(format!(
                "the gradient norm is {norm} at step {step}; stopping"
            )));
        }
        // Clipping is folded into the update: AdamW scales each gradient as it reads it.
        let grad_scale = if c.clip > 0.0 {
            clip_factor(norm, c.clip)?
        } else {
            1.0
        };
        self.opt.step_scaled(&mut self.lm, lr, grad_scale)?;
        let log = StepLog {
            step,
            bits: nats / c.accum as f64 / std::f64::consts::LN_2,
            lr,
            grad_norm: norm,
        };
        Ok(log)
    }

    /// Mean bits per character (of images: per dimension) on `split` (see [`evaluate`]) with the run's
    /// `seq_len` and `batch`; the model is back in training mode afterwards.
    pub fn evaluate(
        &mut self,
        corpus: &Corpus,
        split: Split,
        max_batches: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<f64> {
        self.evaluate_until(
            corpus,
            split,
            max_batches,
            &AtomicBool::new(false),
            progress,
        )
    }

    /// [`Trainer::evaluate`] that stops early once `stop` is raised (see [`evaluate_until`]).
    pub(crate) fn evaluate_until(
        &mut self,
        corpus: &Corpus,
        split: Split,
        max_batches: usize,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<f64> {
        self.expect_nothing_queued("evaluating")?;
        let c = self.settings.config();
        let bits = evaluate_until(
            &mut self.lm,
            corpus,
            split,
            [c.seq_len, c.batch],
            max_batches,
            stop,
            progress,
        );
        self.lm.train(true);
        bits
    }

    /// Runs until `config.steps` steps are done or `stop` is raised (checked between steps and between
    /// validation batches; the state is then saved, and a validation cut short is not logged). Validates every
    /// `eval_every` steps and at the end; with `checkpoint`, saves every `save_every` steps and at the end.
    /// An error (a NaN loss, say) leaves the last checkpoint as it was.
    pub fn run(
        &mut self,
        corpus: &Corpus,
        checkpoint: Option<&Path>,
        stop: &AtomicBool,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        // A validation a stop cut short is run when the run goes on, so that the history is the one an
        // uninterrupted run writes.
        let step = self.step_count();
        let logged = self.history.valid.last().is_some_and(|&(s, _)| s == step);
        let c = self.settings.config();
        let due = step.is_multiple_of(c.eval_every) || step == c.steps;
        if step > 0 && due && !logged {
            self.validate(step, corpus, stop, observer)?;
        }
        while self.step_count() < self.settings.config().steps {
            if stop.load(Ordering::SeqCst) {
                for log in self.finish_steps()? {
                    observer.step(&log);
                }
                let step = self.step_count();
                if let Some(path) = checkpoint {
                    self.save(path)?;
                    observer.saved(step, path);
                }
                return Ok(Outcome::Stopped { step });
            }
            let (step, c) = (self.step_count() + 1, self.settings.config());
            let last = step == c.steps;
            let evaluate = step.is_multiple_of(c.eval_every) || last;
            let save = checkpoint.is_some()
                && (last || (c.save_every > 0 && step.is_multiple_of(c.save_every)));
            let mut logs = self.queue_step(corpus)?;
            // Evaluation and checkpoints see the state after this step: wait for it.
            if evaluate || save {
                logs.extend(self.finish_steps()?);
            }
            for log in &logs {
                observer.step(log);
            }
            if evaluate {
                self.validate(step, corpus, stop, observer)?;
            }
            if let (true, Some(path)) = (save, checkpoint) {
                self.save(path)?;
                observer.saved(step, path);
            }
        }
        for log in self.finish_steps()? {
            observer.step(&log);
        }
        Ok(Outcome::Finished)
    }

    /// Step `step`'s validation, logged unless `stop` cut it short (the save, if due, and the stop follow; a
    /// resumed run does it first). A validation loss that is not finite ends the run.
    fn validate(
        &mut self,
        step: u64,
        corpus: &Corpus,
        stop: &AtomicBool,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let max_batches = self.settings.config().eval_batches;
        let bits = self.evaluate_until(corpus, Split::Valid, max_batches, stop, &mut |_, _| {})?;
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.history.valid.push((step, bits));
        observer.evaluated(step, bits);
        if !bits.is_finite() {
            return Err(Error::Training(format!(
                "the validation loss is {bits} at step {step}; stopping"
            )));
        }
        Ok(())
    }

    /// Writes the checkpoint atomically (a temporary file, then a rename). Refuses, naming the tensor, when a
    /// parameter or optimiser moment is not finite (an update that overflowed): such a file could not be
    /// loaded, and the last checkpoint is worth more than it.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.expect_nothing_queued("saving a checkpoint")?;
        let mut file = export_params(&self.lm, false)?;
        self.opt.save_state(&self.lm, &mut file)?;
        if let Some((name, i, v)) = file.first_non_finite() {
            return Err(Error::Training(format!(
                "after step {} the tensor {name} holds {v} at index {i} (the optimiser update \
                 overflowed); not writing a checkpoint that could not be loaded",
                self.step_count()
            )));
        }
        file.metadata.insert(FORMAT_KEY.into(), FORMAT.into());
        file.metadata
            .insert("train_config".into(), self.settings.config().to_json());
        file.metadata
            .insert("history".into(), to_json(&self.history));
        file.metadata.insert("data".into(), to_json(&self.data));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Checkpoint(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        file.write(path)
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata serialises")
}

/// Mean bits per character of `lm` (in evaluation mode) on `split`, over its first `max_batches` evaluation
/// batches of `[seq, batch]` (`0`: all of it, every byte but the first predicted once; of images, every pixel
/// of every image, so bits per dimension). `progress(done, total)` after each batch.
pub fn evaluate<B: Backend>(
    lm: &mut HourglassLM<B>,
    corpus: &Corpus,
    split: Split,
    shape: [usize; 2],
    max_batches: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<f64> {
    let never = AtomicBool::new(false);
    evaluate_until(lm, corpus, split, shape, max_batches, &never, progress)
}

/// [`evaluate`] that stops before the next batch once `stop` is raised (Ctrl-C, SIGTERM); the mean is then
/// over the batches read (NaN for none), which the caller, who raised the flag, knows not to take as the
/// split's. A batch whose loss is not finite ends it too: no later batch can make the mean finite again.
pub(crate) fn evaluate_until<B: Backend>(
    lm: &mut HourglassLM<B>,
    corpus: &Corpus,
    split: Split,
    [seq, batch]: [usize; 2],
    max_batches: usize,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<f64> {
    let batches = corpus.eval_batches(split, seq, batch)?;
    let total = match max_batches {
        0 => batches.len(),
        n => n.min(batches.len()),
    };
    lm.train(false);
    let (mut nats, mut count) = (0.0, 0usize);
    for (i, b) in batches.take(total).enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let loss = lm.loss(&b.inputs, &b.targets, b.seq, b.batch, false)?;
        nats += loss * b.targets.len() as f64;
        count += b.targets.len();
        progress(i + 1, total);
        if !loss.is_finite() {
            break;
        }
    }
    Ok(nats / count as f64 / std::f64::consts::LN_2)
}

/// Whether `file` was written by `Trainer::save`.
pub(crate) fn is_training_checkpoint(file: &TensorFile) -> bool {
    file.metadata.get(FORMAT_KEY).map(String::as_str) == Some(FORMAT)
}

/// The `TrainConfig` a training checkpoint was written with, its precision set (`TrainConfig::checkpointed`;
/// errors for a weights-only file).
pub(crate) fn checkpoint_config(file: &TensorFile, path: &Path) -> Result<TrainConfig> {
    if !is_training_checkpoint(file) {
        return Err(Error::Checkpoint(format!(
            "{} is not a training checkpoint of this version (metadata {FORMAT_KEY} is {:?}, expected \
             {FORMAT:?}); `hourglass train` writes them",
            path.display(),
            file.metadata.get(FORMAT_KEY)
        )));
    }
    let text = file.metadata.get("train_config").ok_or_else(|| {
        Error::Checkpoint(format!(
            "{}: no train_config in the metadata",
            path.display()
        ))
    })?;
    TrainConfig::from_json(text)
        .map(TrainConfig::checkpointed)
        .map_err(|e| Error::Checkpoint(format!("{}: train_config: {e}", path.display())))
}

fn metadata_json<T: serde::de::DeserializeOwned>(
    file: &TensorFile,
    key: &str,
    path: &Path,
) -> Result<T> {
    let text = file.metadata.get(key).ok_or_else(|| {
        Error::Checkpoint(format!("{}: no {key} in the metadata", path.display()))
    })?;
    serde_json::from_str(text)
        .map_err(|e| Error::Checkpoint(format!("{}: metadata {key}: {e}", path.display())))
}

/// The run must fit in the device's memory, and the corpus must be of the config's kind and hold a training
/// window and something to validate on.
fn check_fits<B: Backend>(backend: &B, config: &TrainConfig, corpus: &Corpus) -> Result<()> {
    if config.data != corpus.kind() {
        return Err(Error::Config(format!(
            "the run's settings say data {}, but {} holds {}",
            config.data,
            corpus.source(),
            corpus.kind()
        )));
    }
    size::check(
        backend,
        "training",
        &config.model,
        Workload {
            seq_len: config.seq_len,
            batch: config.batch,
            training: true,
            lm: true,
            tied: config.tie_embedding,
            cached_positions: 0,
        },
    )?;
    let mut probe = SeededRng::new(0);
    corpus.batch(Split::Train, config.seq_len, 1, &mut probe)?;
    corpus.eval_batches(Split::Valid, config.seq_len, config.batch)?;
    Ok(())
}
