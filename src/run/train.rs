//! `hourglass train` and `hourglass sample` as library calls: the run with its progress bar, the final
//! validation against the unigram baseline, a sample, and the outputs (checkpoint, curve PNG, CSV, JSON).
//! A run over images (`TrainConfig::data`) says bits per dimension where a text's says bits per character, and
//! its baseline is the training images' pixel histogram.

use crate::checkpoint::{import_params, TensorFile};
use crate::error::{Error, Result};
use crate::fs::{remove_stale_temporaries, write_atomic, FolderLock};
use crate::model::lm::HourglassLM;
use crate::model::size::{self, Workload};
use crate::model::Parameters;
use crate::ops::Backend;
use crate::train::data::{DataKind, Split};
use crate::train::history::{History, StepLog};
use crate::train::plot::{self, Curves};
use crate::train::sample::{self, padded_len, SampleOptions};
use crate::train::trainer::{checkpoint_config, evaluate_until, Observer};
use crate::train::{Outcome, Preset, StepMode, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Where `hourglass train`'s settings come from, before they are resolved into a [`TrainJob`].
pub struct TrainRequest {
    /// The starting settings; `None`: a resumed run's own, else `gpu` on a GPU and `cpu` elsewhere.
    pub preset: Option<Preset>,
    /// A JSON object of settings laid over the preset.
    pub config_file: Option<PathBuf>,
    /// The settings given as flags, a JSON object like the file's, laid over both.
    pub flags: Value,
    pub resume: Option<PathBuf>,
    /// `None`: `runs/<preset>`, or a resumed checkpoint's folder.
    pub out: Option<PathBuf>,
    /// `None`: the default data of the settings' kind (`DataKind::default_path`).
    pub data: Option<PathBuf>,
    /// Replace a run that `out` already holds.
    pub overwrite: bool,
    pub sample_length: usize,
    pub prompt: String,
    pub progress: bool,
    /// On a backend that captures (CUDA), replay each step as one graph (`StepMode::Graph`, the resolved
    /// step mode there); `false`: issue the same work uncaptured (`StepMode::uncaptured`). The CPU takes the
    /// host path either way.
    pub graph: bool,
}

impl TrainRequest {
    /// The settings in layers (preset or resumed checkpoint, then the file, then the flags), checked, and
    /// the folder the run writes to. `on_gpu` picks the default preset and a preset's settings for the device
    /// (`Preset::for_device`); what the settings leave to the backend (the precision) the trainer resolves
    /// (`TrainConfig::resolve`).
    pub fn resolve(self, on_gpu: bool) -> Result<TrainJob> {
        let (base, label) = match (self.preset, &self.resume) {
            (Some(p), _) => (p.for_device(on_gpu), p.name().to_string()),
            (None, Some(ckpt)) => (
                checkpoint_config(&TensorFile::read(ckpt)?, ckpt)?,
                "resumed".to_string(),
            ),
            (None, None) => {
                let p = if on_gpu { Preset::Gpu } else { Preset::Cpu };
                (p.config(), p.name().to_string())
            }
        };
        let config = match &self.config_file {
            Some(path) => base.overlay_file(path)?,
            None => base,
        };
        let config = config.overlay(&self.flags)?;
        config.validate()?;
        let out = match (self.out, &self.resume) {
            (Some(dir), _) => dir,
            (None, Some(ckpt)) => ckpt
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from),
            (None, None) => PathBuf::from("runs").join(&label),
        };
        Ok(TrainJob {
            resume: self.resume,
            data: self.data.unwrap_or_else(|| config.data.default_path()),
            out,
            overwrite: self.overwrite,
            sample_length: self.sample_length,
            prompt: self.prompt,
            progress: self.progress,
            graph: self.graph,
            config,
        })
    }
}

/// What `hourglass train` was asked to do, with every setting layered and checked. The output folder is
/// created once the data and settings have been checked.
pub struct TrainJob {
    /// The settings; what they leave to the backend, the trainer resolves (`TrainConfig::resolve`).
    pub config: TrainConfig,
    /// Continue this checkpoint (`config` must agree with it; see `Trainer::resume`).
    pub resume: Option<PathBuf>,
    pub data: PathBuf,
    /// Where the checkpoint, curve and logs go.
    pub out: PathBuf,
    /// Replace the run `out` holds; without it, a fresh run into a folder that holds one is refused.
    pub overwrite: bool,
    /// Bytes to sample at the end (0: none), from `prompt`; a run over images draws no text.
    pub sample_length: usize,
    pub prompt: String,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// See `TrainRequest::graph`.
    pub graph: bool,
}

impl TrainJob {
    /// The end-of-run sample's settings: none for a run over images, whose bytes are no text to continue a
    /// prompt with.
    fn sample_options(&self) -> SampleOptions {
        SampleOptions {
            length: match self.config.data {
                DataKind::Bytes => self.sample_length,
                DataKind::Images { .. } => 0,
            },
            temperature: 0.8,
            top_k: 0,
            seed: self.config.seed,
            context: self.config.seq_len,
            num_samples: 1,
            recompute: false,
        }
    }
}

/// The files a run writes into its output folder.
pub struct RunFiles {
    pub config: PathBuf,
    pub checkpoint: PathBuf,
    pub curve: PathBuf,
    pub csv: PathBuf,
    pub json: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join("config.json"),
            checkpoint: dir.join("checkpoint.safetensors"),
            curve: dir.join("curve.png"),
            csv: dir.join("history.csv"),
            json: dir.join("history.json"),
        }
    }

    fn all(&self) -> [&PathBuf; 5] {
        [
            &self.config,
            &self.checkpoint,
            &self.curve,
            &self.csv,
            &self.json,
        ]
    }
}

/// How a training run ended.
pub struct TrainSummary {
    pub outcome: Outcome,
    pub steps: u64,
    /// Bits per character (of images: per dimension) on the whole validation split (a finished run only).
    pub valid_bits: Option<f64>,
    pub unigram_bits: f64,
    pub tokens_per_s: f64,
    pub sample: Option<String>,
    pub files: RunFiles,
}

/// Prints through the bar when it is drawn, to stdout when it is not (so logs keep the evaluations).
struct Display {
    bar: ProgressBar,
    /// "bpc" or "bpd".
    unit: &'static str,
    tokens_per_step: usize,
    started: Instant,
    steps_at_start: u64,
    last_bits: f64,
    last_valid: Option<f64>,
    last_saved: Option<(u64, PathBuf)>,
}

impl Display {
    fn say(&self, line: &str) {
        if self.bar.is_hidden() {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }
    fn tokens_per_s(&self, step: u64) -> f64 {
        let steps = step.saturating_sub(self.steps_at_start) as f64;
        steps * self.tokens_per_step as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

impl Observer for Display {
    fn step(&mut self, log: &StepLog) {
        self.last_bits = log.bits;
        let valid = self
            .last_valid
            .map_or(String::new(), |v| format!(" | valid {v:.3}"));
        self.bar.set_position(log.step);
        self.bar.set_message(format!(
            "loss {:.3} {}{valid} | {:.0} tok/s | lr {:.2e}",
            log.bits,
            self.unit,
            self.tokens_per_s(log.step),
            log.lr
        ));
    }
    fn evaluated(&mut self, step: u64, bits: f64) {
        self.last_valid = Some(bits);
        self.say(&format!(
            "step {step:>6}  train {:.3} {unit}  valid {bits:.3} {unit}  {:.0} tok/s",
            self.last_bits,
            self.tokens_per_s(step),
            unit = self.unit
        ));
    }
    fn saved(&mut self, step: u64, path: &Path) {
        self.last_saved = Some((step, path.to_path_buf()));
    }
}

fn bar(len: u64, progress: bool, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("progress template")
            .progress_chars("=> "),
    );
    bar
}

/// Takes the output folder for this run: creates it, locks it against a second run (released when the
/// returned lock drops or the process ends), and refuses a fresh run into a folder that holds another run's
/// files unless `overwrite` (resuming that folder's own checkpoint is not a fresh run).
fn claim_folder(job: &TrainJob, files: &RunFiles) -> Result<FolderLock> {
    std::fs::create_dir_all(&job.out).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("output folder {}: {e}", job.out.display()),
        ))
    })?;
    let lock = FolderLock::acquire(&job.out).map_err(|e| Error::Training(e.to_string()))?;
    // Left by writes that were killed halfway (only a dead process's: a live one may still be writing).
    for removed in remove_stale_temporaries(&job.out)? {
        eprintln!(
            "removed {}, a temporary file of a write that never finished",
            removed.display()
        );
    }
    let same_file = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let resuming_here = job
        .resume
        .as_deref()
        .is_some_and(|ckpt| same_file(ckpt, &files.checkpoint));
    if !job.overwrite && !resuming_here {
        if let Some(existing) = files.all().into_iter().find(|f| f.exists()) {
            return Err(Error::Training(format!(
                "{} already holds a run ({} exists): continue it with --resume {}, replace it with \
                 --overwrite, or choose another --out",
                job.out.display(),
                existing.display(),
                files.checkpoint.display()
            )));
        }
    }
    Ok(lock)
}

/// Trains (or resumes) on `backend`, stopping early when `stop` is raised; see the module doc. Every
/// setting is checked before the first step; the logs (curve, CSV, JSON) are written whenever steps were
/// taken, a failed run's too, and before the sample.
pub fn train<B: Backend>(
    backend: &B,
    device: &str,
    job: TrainJob,
    stop: &AtomicBool,
) -> Result<TrainSummary> {
    let sample_options = job.sample_options();
    if sample_options.length > 0 {
        let prompt = job.prompt.as_bytes();
        sample_options
            .validate(prompt)
            .and_then(|_| {
                let work = sample_workload(&job.config, prompt, &sample_options)?;
                size::check(
                    backend,
                    "the sample after training",
                    &job.config.model,
                    work,
                )
            })
            .map_err(concerning(format!("--sample-length {}", job.sample_length)))?;
    }
    let corpus = job.config.data.open(&job.data)?;
    let units = job.config.data.units();
    let files = RunFiles::in_dir(&job.out);
    let mut trainer = match &job.resume {
        Some(path) => Trainer::resume(backend, path, Some(job.config.clone()), &corpus)?,
        None => Trainer::new(backend, job.config.clone(), &corpus)?,
    };
    if !job.graph {
        trainer.set_step_mode(trainer.step_mode().uncaptured())?;
    }
    let unigram_bits = corpus.unigram_bits_per_byte(Split::Valid)?;
    let settings = trainer.settings().clone();
    let c = settings.config();
    let _lock = claim_folder(&job, &files)?;
    // The resolved settings, reusable as --config.
    write_atomic(&files.config, (c.to_json() + "\n").as_bytes())?;
    println!(
        "training on {device} in {} ({} steps): {} parameters, {} ({} bytes: {} train / {} valid), seq_len {} x \
         batch {} x accum {} = {} bytes a step, {} steps{}",
        settings.precision(),
        match settings.step_mode() {
            StepMode::Host => "host-issued",
            StepMode::Device => "device-resident",
            StepMode::Graph => "CUDA-graph",
        },
        trainer.lm().param_count(),
        corpus.source(),
        corpus.len(),
        corpus.describe(Split::Train),
        corpus.describe(Split::Valid),
        c.seq_len,
        c.batch,
        c.accum,
        c.tokens_per_step(),
        c.steps,
        match &job.resume {
            Some(p) => format!(", resuming {} at step {}", p.display(), trainer.step_count()),
            None => String::new(),
        }
    );
    println!(
        "{} on the validation split: {unigram_bits:.3} {}",
        units.baseline, units.long
    );
    let start = trainer.step_count();
    let mut display = Display {
        bar: bar(
            c.steps,
            job.progress,
            "{bar:30} {pos}/{len} steps | {msg} | {elapsed_precise} ETA {eta_precise}",
        ),
        unit: units.short,
        tokens_per_step: c.tokens_per_step(),
        started: Instant::now(),
        steps_at_start: start,
        last_bits: f64::NAN,
        last_valid: None,
        last_saved: None,
    };
    display.bar.set_position(start);
    display.bar.reset_eta();
    let outcome = trainer.run(&corpus, Some(&files.checkpoint), stop, &mut display);
    display.bar.finish_and_clear();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            // What was logged up to the failure is worth keeping; a failure to write it is secondary.
            if let Err(log_error) = write_outputs(&files, c, trainer.history(), unigram_bits, None)
            {
                eprintln!("could not write the run's logs: {log_error}");
            }
            let what = match e {
                Error::Training(msg) => msg,
                other => other.to_string(),
            };
            return Err(Error::Training(match &display.last_saved {
                Some((step, path)) => format!(
                    "{what}; the last checkpoint, {} (step {step}), is unchanged",
                    path.display()
                ),
                None => format!("{what}; no checkpoint was written in this run"),
            }));
        }
    };
    let steps = trainer.step_count();
    let tokens_per_s = display.tokens_per_s(steps);

    let valid_bits = match outcome {
        Outcome::Stopped { step } => {
            println!(
                "stopped at step {step}: saved {}; continue with --resume {}",
                files.checkpoint.display(),
                files.checkpoint.display()
            );
            None
        }
        Outcome::Finished => {
            let batches = corpus.eval_batches(Split::Valid, c.seq_len, c.batch)?.len();
            let eval_bar = bar(
                batches as u64,
                job.progress,
                "evaluating {bar:30} {pos}/{len} batches ETA {eta_precise}",
            );
            let bits = trainer.evaluate_until(&corpus, Split::Valid, 0, stop, &mut |done, _| {
                eval_bar.set_position(done as u64)
            })?;
            eval_bar.finish_and_clear();
            if stop.load(Ordering::SeqCst) {
                println!(
                    "stopped before the end of the final validation; {} holds the model after step {steps}",
                    files.checkpoint.display()
                );
                None
            } else {
                Some(bits)
            }
        }
    };
    write_outputs(&files, c, trainer.history(), unigram_bits, valid_bits)?;
    println!(
        "wrote {}, {}, {}, {} and {}",
        files.config.display(),
        files.checkpoint.display(),
        files.curve.display(),
        files.csv.display(),
        files.json.display()
    );
    if let Some(bits) = valid_bits {
        if !bits.is_finite() {
            return Err(Error::Training(format!(
                "the validation loss on the whole split is {bits} after step {steps}; the checkpoint {} \
                 holds that model",
                files.checkpoint.display()
            )));
        }
        println!(
            "validation: {bits:.3} {} on the whole split ({}); {} {unigram_bits:.3}",
            units.long,
            corpus.describe(Split::Valid),
            units.baseline
        );
    }
    let sample = (valid_bits.is_some() && sample_options.length > 0)
        .then(|| {
            println!("sample (temperature 0.8, top-k 0):");
            stream(trainer.lm(), job.prompt.as_bytes(), &sample_options, stop)
        })
        .transpose()?
        .map(|sampled| sampled.text);
    Ok(TrainSummary {
        outcome,
        steps,
        valid_bits,
        unigram_bits,
        tokens_per_s,
        sample,
        files,
    })
}

/// What a sample drew: prompt and continuation as text (several samples: one after another, numbered), and
/// whether every byte asked for was drawn (a stop cuts it short).
pub struct Sampled {
    pub text: String,
    pub complete: bool,
}

/// Prints the prompt, then each generated byte as it comes (several samples: each, numbered, once all are
/// done or stopped); stops drawing once `stop` is raised, saying so on stderr.
fn stream<B: Backend>(
    lm: &mut HourglassLM<B>,
    prompt: &[u8],
    options: &SampleOptions,
    stop: &AtomicBool,
) -> Result<Sampled> {
    let mut out = std::io::stdout().lock();
    let single = options.num_samples == 1;
    if single {
        out.write_all(prompt)?;
        out.flush()?;
    }
    let samples = sample::generate_until(lm, prompt, options, stop, |_, byte| {
        if single {
            out.write_all(&[byte])?;
            out.flush()?;
        }
        Ok(())
    })?;
    let mut all = String::new();
    for (i, generated) in samples.iter().enumerate() {
        let mut text = prompt.to_vec();
        text.extend(generated);
        let text = String::from_utf8_lossy(&text).into_owned();
        if single {
            writeln!(out)?;
            all = text;
            break;
        }
        let block = format!("--- sample {} ---\n{text}\n", i + 1);
        out.write_all(block.as_bytes())?;
        all.push_str(&block);
    }
    let drawn = samples.first().map_or(0, Vec::len);
    let complete = drawn == options.length;
    if !complete {
        eprintln!("sampling stopped after {drawn} of {} bytes", options.length);
    }
    Ok(Sampled {
        text: all,
        complete,
    })
}

/// The curve PNG, every step as CSV, and config + history + results as JSON.
fn write_outputs(
    files: &RunFiles,
    config: &TrainConfig,
    history: &History,
    unigram_bits: f64,
    valid_bits: Option<f64>,
) -> Result<()> {
    let units = config.data.units();
    let train: Vec<(u64, f64)> = history.steps.iter().map(|s| (s.step, s.bits)).collect();
    if !train.is_empty() {
        plot::write_png(
            &files.curve,
            &Curves {
                title: &format!("hourglass: training and validation {}", units.long),
                y_label: units.long,
                train: &train,
                valid: &history.valid,
                baseline: Some((units.baseline, unigram_bits)),
            },
            1200,
            700,
        )?;
    }
    let mut csv = format!(
        "step,train_{key},valid_{key},lr,grad_norm\n",
        key = units.key
    );
    let mut valid = history.valid.iter().peekable();
    for s in &history.steps {
        let v = match valid.peek() {
            Some(&&(step, bits)) if step == s.step => {
                valid.next();
                format!("{bits}")
            }
            _ => String::new(),
        };
        csv.push_str(&format!(
            "{},{},{v},{},{}\n",
            s.step, s.bits, s.lr, s.grad_norm
        ));
    }
    write_atomic(&files.csv, csv.as_bytes())?;
    let json = serde_json::json!({
        "config": config,
        format!("{}_valid_{}", units.baseline_key, units.key): unigram_bits,
        format!("final_valid_{}", units.key): valid_bits,
        "history": history,
    });
    let json = serde_json::to_string_pretty(&json).expect("history serialises");
    Ok(write_atomic(&files.json, json.as_bytes())?)
}

/// What `hourglass sample` was asked to do.
pub struct SampleJob {
    pub checkpoint: PathBuf,
    pub prompt: String,
    pub length: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub seed: u64,
    /// Bytes of context; `None`: the training `seq_len`.
    pub context: Option<usize>,
    /// Sequences drawn as one batch.
    pub num_samples: usize,
    /// Recompute the context for every byte instead of decoding incrementally.
    pub recompute: bool,
}

/// What a job without a training step asks of the LM of `config`: forward passes of `[seq_len, batch]`, and
/// decoding caches for `cached_positions` positions of each sequence.
fn inference_workload(
    config: &TrainConfig,
    [seq_len, batch]: [usize; 2],
    cached_positions: usize,
) -> Workload {
    Workload {
        seq_len,
        batch,
        training: false,
        lm: true,
        tied: config.tie_embedding,
        cached_positions,
    }
}

/// What sampling `options` after `prompt` asks of the LM of `config`: its longest forward pass, padded to
/// the factors' product, and its decoder's caches, full.
fn sample_workload(
    config: &TrainConfig,
    prompt: &[u8],
    options: &SampleOptions,
) -> Result<Workload> {
    let footprint = options.footprint(prompt.len());
    let seq_len = padded_len(&config.model, footprint.longest_pass)?;
    Ok(inference_workload(
        config,
        [seq_len, options.num_samples],
        footprint.cached_positions,
    ))
}

/// An error's message prefixed with what it concerns (a flag, a file), its kind kept.
fn concerning(what: impl std::fmt::Display) -> impl FnOnce(Error) -> Error {
    move |e| match e {
        Error::Shape(m) => Error::Shape(format!("{what}: {m}")),
        Error::Config(m) => Error::Config(format!("{what}: {m}")),
        Error::Checkpoint(m) => Error::Checkpoint(format!("{what}: {m}")),
        Error::Cuda(m) => Error::Cuda(format!("{what}: {m}")),
        Error::Training(m) => Error::Training(format!("{what}: {m}")),
        Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), format!("{what}: {e}"))),
    }
}

/// The LM of a training checkpoint (in the precision it was trained in), and the settings it was trained
/// with, once `fits` has found what the job will ask of them to fit in memory (its error names the job).
fn load_lm<B: Backend>(
    backend: &B,
    path: &Path,
    fits: impl FnOnce(&TrainConfig) -> Result<()>,
) -> Result<(HourglassLM<B>, TrainConfig)> {
    let file = TensorFile::read(path)?;
    let config = checkpoint_config(&file, path)?;
    fits(&config)?;
    let mut lm = config.resolve(backend).build_lm(backend)?;
    import_params(&mut lm, &file)?;
    Ok((lm, config))
}

/// Loads a training checkpoint and streams a sample to stdout, until done or `stop` is raised. Everything
/// the sample will hold (its longest forward pass, the decoder's caches) is checked against memory before
/// the model is built; logits that are not finite are an error naming the checkpoint.
pub fn sample<B: Backend>(backend: &B, job: SampleJob, stop: &AtomicBool) -> Result<Sampled> {
    let prompt = job.prompt.as_bytes();
    let mut options = SampleOptions {
        length: job.length,
        temperature: job.temperature,
        top_k: job.top_k,
        seed: job.seed,
        context: job.context.unwrap_or(1),
        num_samples: job.num_samples,
        recompute: job.recompute,
    };
    options.validate(prompt)?;
    let (mut lm, _) = load_lm(backend, &job.checkpoint, |config| {
        options.context = job.context.unwrap_or(config.seq_len);
        let what = format!(
            "sampling {} bytes with --context {}{}",
            options.length,
            options.context,
            match job.context {
                Some(_) => "",
                None => " (the training seq_len)",
            }
        );
        let work = sample_workload(config, prompt, &options).map_err(concerning(&what))?;
        size::check(backend, &what, &config.model, work).map(|_| ())
    })?;
    stream(&mut lm, prompt, &options, stop).map_err(concerning(job.checkpoint.display()))
}

/// What `hourglass eval` was asked to do.
pub struct EvalJob {
    pub checkpoint: PathBuf,
    /// Any byte file (it need not be the training data), split 90/5/5; for a checkpoint of a run over
    /// images, an image folder (`train::images`). `None`: the default data of the checkpoint's kind
    /// (`DataKind::default_path`).
    pub data: Option<PathBuf>,
    pub split: Split,
    pub progress: bool,
}

/// Bits per character of a checkpoint's model on a whole split (windows of the training `seq_len`), printed
/// next to the unigram baseline of the same split; of a run over images, bits per dimension over every image
/// of the split, next to the training images' pixel histogram. `None` when `stop` was raised first. A loss
/// that is not finite (weights that overflow) is an error naming the checkpoint.
pub fn evaluate<B: Backend>(backend: &B, job: EvalJob, stop: &AtomicBool) -> Result<Option<f64>> {
    let (mut lm, c) = load_lm(backend, &job.checkpoint, |c| {
        let work = inference_workload(c, [c.seq_len, c.batch], 0);
        size::check(backend, "evaluation", &c.model, work).map(|_| ())
    })?;
    let data = job.data.unwrap_or_else(|| c.data.default_path());
    let corpus = c.data.open(&data)?;
    let units = c.data.units();
    let batches = corpus.eval_batches(job.split, c.seq_len, c.batch)?.len();
    let eval_bar = bar(
        batches as u64,
        job.progress,
        "evaluating {bar:30} {pos}/{len} batches ETA {eta_precise}",
    );
    let bits = evaluate_until(
        &mut lm,
        &corpus,
        job.split,
        [c.seq_len, c.batch],
        0,
        stop,
        &mut |done, _| eval_bar.set_position(done as u64),
    )?;
    eval_bar.finish_and_clear();
    if stop.load(Ordering::SeqCst) {
        eprintln!(
            "evaluation stopped before the end of the {} split: no result",
            job.split
        );
        return Ok(None);
    }
    if !bits.is_finite() {
        return Err(Error::Checkpoint(format!(
            "{}: the loss on the {} split of {} is {bits} {}: the model's weights overflow in the forward \
             pass",
            job.checkpoint.display(),
            job.split,
            corpus.source(),
            units.long
        )));
    }
    println!(
        "{} split of {} ({}): {bits:.4} {}; {} {:.4}",
        job.split,
        corpus.source(),
        corpus.describe(job.split),
        units.long,
        units.baseline,
        corpus.unigram_bits_per_byte(job.split)?
    );
    Ok(Some(bits))
}
