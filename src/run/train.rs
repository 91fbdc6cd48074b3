//! `hourglass train` and `hourglass sample` as library calls: the run with its progress bar, the final
//! validation against the unigram baseline, a sample, and the outputs (checkpoint, curve PNG, CSV, JSON).
//! A run over images (`TrainConfig::data`) says bits per dimension where a text's says bits per character, its
//! baseline is the training images' pixel histogram, and its sample is a grid of whole images drawn by the
//! model (`train::image_sample`) written as a PNG (`train::image_grid`) instead of text.

use crate::checkpoint::{import_params, TensorFile};
use crate::error::{Error, Result};
use crate::fs::{remove_stale_temporaries, write_atomic, FolderLock};
use crate::model::lm::HourglassLM;
use crate::model::size::{self, Workload};
use crate::model::Parameters;
use crate::ops::Backend;
use crate::train::data::{DataKind, Split, START};
use crate::train::history::{History, StepLog};
use crate::train::image_grid::{write_image_grid, GridSpec};
use crate::train::image_sample::{sample_images_until, ImageSampling};
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
    /// Bytes to sample at the end (0: none), from `prompt`; a run over images draws `GRID_IMAGES` (16) images
    /// instead (`RunFiles::samples`), unless it is 0.
    pub sample_length: usize,
    pub prompt: String,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// See `TrainRequest::graph`.
    pub graph: bool,
}

/// Images drawn as one grid unless told: at the end of a run over images (from nothing, seeded by the run's
/// seed), and by `hourglass sample` of such a run without `--num-samples`.
pub(crate) const GRID_IMAGES: usize = 16;
/// The softmax temperature of the sample at the end of a run, text or images.
const END_TEMPERATURE: f64 = 0.8;

/// What a run draws at the end.
enum EndSample {
    None,
    /// Text after the prompt.
    Text(SampleOptions),
    /// [`GRID_IMAGES`] whole images of `size` (rows, columns).
    Images {
        sampling: ImageSampling,
        size: (usize, usize),
    },
}

impl TrainJob {
    /// The end-of-run sample: text after the prompt, or of a run over images (whose bytes are no text to
    /// continue a prompt with), a grid of images drawn from nothing; none when `sample_length` is 0.
    fn end_sample(&self) -> EndSample {
        if self.sample_length == 0 {
            return EndSample::None;
        }
        match self.config.data {
            DataKind::Bytes => EndSample::Text(SampleOptions {
                length: self.sample_length,
                temperature: END_TEMPERATURE,
                top_k: 0,
                seed: self.config.seed,
                context: self.config.seq_len,
                num_samples: 1,
                recompute: false,
            }),
            DataKind::Images { rows, cols } => EndSample::Images {
                sampling: ImageSampling {
                    temperature: END_TEMPERATURE,
                    top_k: 0,
                    seed: self.config.seed,
                    context: self.config.seq_len,
                    recompute: false,
                },
                size: (rows, cols),
            },
        }
    }

    /// Errors unless the end-of-run sample can be drawn and fits in memory, naming the flag that asks for it:
    /// checked before the first step, so that a run never trains only to fail at its end.
    fn check_end_sample<B: Backend>(&self, backend: &B, end: &EndSample) -> Result<()> {
        match end {
            EndSample::None => Ok(()),
            EndSample::Text(options) => {
                let prompt = self.prompt.as_bytes();
                options
                    .validate(prompt)
                    .and_then(|_| {
                        let work = sample_workload(&self.config, prompt.len(), options)?;
                        size::check(
                            backend,
                            "the sample after training",
                            &self.config.model,
                            work,
                        )
                    })
                    .map(|_| ())
                    .map_err(concerning(format!(
                        "--sample-length {}",
                        self.sample_length
                    )))
            }
            EndSample::Images { sampling, size } => {
                let what = format!(
                    "the {GRID_IMAGES} images drawn after training (--sample-length {}; 0: none)",
                    self.sample_length
                );
                image_workload(&self.config, sampling, *size, 0, GRID_IMAGES)
                    .and_then(|work| size::check(backend, &what, &self.config.model, work))
                    .map(|_| ())
                    .map_err(concerning(&what))
            }
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
    /// The grid of images drawn at the end of a run over images (none of a text run).
    pub samples: PathBuf,
}

impl RunFiles {
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join("config.json"),
            checkpoint: dir.join("checkpoint.safetensors"),
            curve: dir.join("curve.png"),
            csv: dir.join("history.csv"),
            json: dir.join("history.json"),
            samples: dir.join("samples.png"),
        }
    }

    fn all(&self) -> [&PathBuf; 6] {
        [
            &self.config,
            &self.checkpoint,
            &self.curve,
            &self.csv,
            &self.json,
            &self.samples,
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
    /// The grid of images a finished run over images drew (`files.samples`), unless stopped first.
    pub grid: Option<PathBuf>,
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
    if job.overwrite && !resuming_here {
        // Every other file of the replaced run is rewritten, but a run that draws no grid (text, or stopped
        // first) would leave the old one beside a checkpoint it does not show.
        match std::fs::remove_file(&files.samples) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot remove the replaced run's {}: {e}",
                        files.samples.display()
                    ),
                )))
            }
            _ => {}
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
    let end = job.end_sample();
    job.check_end_sample(backend, &end)?;
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
    let (mut sample, mut grid) = (None, None);
    match &end {
        _ if valid_bits.is_none() => {}
        EndSample::None => {}
        EndSample::Text(options) => {
            println!("sample (temperature {END_TEMPERATURE}, top-k 0):");
            sample = Some(stream(trainer.lm(), job.prompt.as_bytes(), options, stop)?.text);
        }
        EndSample::Images { sampling, size } => {
            let image_grid = ImageGrid {
                size: *size,
                sampling: *sampling,
                prompts: vec![Vec::new(); GRID_IMAGES],
                prompt_rows: 0,
                png: files.samples.clone(),
                shows: format!(
                    "{GRID_IMAGES} images of {}x{} (temperature {END_TEMPERATURE}, top-k 0, seed {})",
                    size.0, size.1, sampling.seed
                ),
            };
            if draw_grid(trainer.lm(), &image_grid, job.progress, stop)? {
                grid = Some(files.samples.clone());
            }
        }
    }
    Ok(TrainSummary {
        outcome,
        steps,
        valid_bits,
        unigram_bits,
        tokens_per_s,
        sample,
        grid,
        files,
    })
}

/// What a sample drew: prompt and continuation as text (several samples: one after another, numbered), and
/// whether every byte asked for was drawn (a stop cuts it short).
pub struct Sampled {
    pub(crate) text: String,
    pub(crate) complete: bool,
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

/// A grid of images to draw: at the end of a run, or by `hourglass sample` (checked and sized before the
/// model is built).
struct ImageGrid {
    /// Rows and columns of each image.
    size: (usize, usize),
    sampling: ImageSampling,
    /// One per image: its first `prompt_rows` rows (all alike in length), or nothing.
    prompts: Vec<Vec<u8>>,
    prompt_rows: usize,
    png: PathBuf,
    /// What the grid will show, said before drawing starts (which takes a while).
    shows: String,
}

/// Draws one image after each of the grid's prompts with a progress bar, and writes them as one grid at its
/// `png` (`GridSpec::new`: the prompt marker between given and drawn rows), saying so on stdout. `false`
/// when `stop` was raised first, saying so on stderr: nothing is written.
fn draw_grid<B: Backend>(
    lm: &mut HourglassLM<B>,
    grid: &ImageGrid,
    progress: bool,
    stop: &AtomicBool,
) -> Result<bool> {
    let ((rows, cols), prompt_rows, png) = (grid.size, grid.prompt_rows, &grid.png);
    println!("drawing {}", grid.shows);
    let todo = rows.saturating_sub(prompt_rows) * cols;
    let bar = bar(
        todo as u64,
        progress,
        "drawing {bar:30} {pos}/{len} pixels of each image ETA {eta_precise}",
    );
    let images = sample_images_until(
        lm,
        START,
        grid.size,
        &grid.prompts,
        &grid.sampling,
        stop,
        |n| bar.set_position(n as u64),
    )?;
    bar.finish_and_clear();
    let drawn = images
        .first()
        .map_or(0, Vec::len)
        .saturating_sub(prompt_rows * cols);
    if drawn < todo {
        eprintln!(
            "sampling stopped after {drawn} of {todo} pixels of each image: {} not written",
            png.display()
        );
        return Ok(false);
    }
    write_image_grid(png, &images, &GridSpec::new(rows, cols, prompt_rows))?;
    println!("wrote {}", png.display());
    Ok(true)
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

/// The text `hourglass sample` continues unless told.
pub(crate) const DEFAULT_PROMPT: &str = "The ";
/// The bytes `hourglass sample` draws after it unless told.
pub(crate) const DEFAULT_LENGTH: usize = 500;

/// What `hourglass sample` was asked to do. Of a checkpoint of text, bytes after a prompt, streamed to stdout;
/// of one of images (`TrainConfig::data`), whole images written as one PNG grid, drawn from nothing or
/// completing the first rows of test images. A setting only the other kind takes is an error naming its flag.
pub struct SampleJob {
    pub checkpoint: PathBuf,
    /// The text to continue; `None`: `DEFAULT_PROMPT` ("The "). Text only.
    pub prompt: Option<String>,
    /// Bytes to generate; `None`: `DEFAULT_LENGTH` (500). Text only: an image is drawn to its last pixel.
    pub length: Option<usize>,
    pub temperature: f64,
    pub top_k: usize,
    pub seed: u64,
    /// Bytes of context; `None`: the training `seq_len`. Text only: an image is drawn with all of its pixels
    /// as context.
    pub context: Option<usize>,
    /// Sequences (images) drawn as one batch; `None`: 1 of text, `GRID_IMAGES` (16) of images.
    pub num_samples: Option<usize>,
    /// Recompute the context for every byte instead of decoding incrementally.
    pub recompute: bool,
    /// Where the grid of images goes (`GridSpec::new`'s scale). Images only, and required there: images are
    /// no text to print.
    pub png: Option<PathBuf>,
    /// Complete the first `k` rows of the first `num_samples` test images of `data` instead of drawing whole
    /// images; the grid shows the completions, the given rows above the prompt marker. Images only.
    pub prompt_rows: Option<usize>,
    /// The image folder whose test images `prompt_rows` takes; `None`: the default of the checkpoint's kind
    /// (`DataKind::default_path`). Only with `prompt_rows`.
    pub data: Option<PathBuf>,
    /// Draw a progress bar while drawing images (on stderr).
    pub progress: bool,
}

impl SampleJob {
    /// The command line's defaults for sampling from `checkpoint`: temperature 0.8, every byte, seed 0.
    pub fn new(checkpoint: impl Into<PathBuf>) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            prompt: None,
            length: None,
            temperature: 0.8,
            top_k: 0,
            seed: 0,
            context: None,
            num_samples: None,
            recompute: false,
            png: None,
            prompt_rows: None,
            data: None,
            progress: false,
        }
    }

    /// Errors naming the first flag for a model of images that was given for `config`'s model of text.
    fn refuse_image_flags(&self, config: &TrainConfig) -> Result<()> {
        let given = (self.png.as_ref().map(|p| format!("--png {}", p.display())))
            .or_else(|| self.prompt_rows.map(|k| format!("--prompt-rows {k}")))
            .or_else(|| {
                self.data
                    .as_ref()
                    .map(|d| format!("--data {}", d.display()))
            });
        match given {
            Some(flag) => Err(Error::Config(format!(
                "{flag}: {} is a model of {}, whose samples print as text; --png, --prompt-rows and --data \
                 are for a model of images",
                self.checkpoint.display(),
                config.data
            ))),
            None => Ok(()),
        }
    }

    /// Errors naming the first flag for a model of text that was given for `config`'s model of images.
    fn refuse_text_flags(&self, config: &TrainConfig) -> Result<()> {
        let given = (self.prompt.as_ref())
            .map(|p| {
                (
                    format!("--prompt {p:?}"),
                    "drawn from nothing or from --prompt-rows K of test images",
                )
            })
            .or_else(|| {
                let why = "drawn to their last pixel";
                self.length.map(|n| (format!("--length {n}"), why))
            })
            .or_else(|| {
                let why = "drawn with all of their pixels as context";
                self.context.map(|n| (format!("--context {n}"), why))
            });
        match given {
            Some((given, why)) => Err(Error::Config(format!(
                "{given}: {} is a model of {}, whose images are {why}; {} is for a model of text",
                self.checkpoint.display(),
                config.data,
                given.split(' ').next().unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }
}

/// What `hourglass sample` produced.
pub enum SampleOutput {
    /// Text, printed as it came.
    Text(Sampled),
    /// A grid of images at `png`; `written` is false when a stop came before the last pixel (nothing written).
    Images { png: PathBuf, written: bool },
}

impl SampleOutput {
    /// Whether everything asked for was drawn (a stop cuts it short).
    pub fn complete(&self) -> bool {
        match self {
            SampleOutput::Text(sampled) => sampled.complete,
            SampleOutput::Images { written, .. } => *written,
        }
    }
}

/// What `hourglass sample` will draw, once the checkpoint's kind is known.
enum SamplePlan {
    Text(SampleOptions),
    Images(ImageGrid),
}

/// The sample of images `job` asks of `config`'s model of `rows × cols` images: its flags checked, its
/// memory checked against `backend`, and with `--prompt-rows`, its prompts read from the test images.
fn image_plan<B: Backend>(
    backend: &B,
    job: &SampleJob,
    config: &TrainConfig,
    (rows, cols): (usize, usize),
) -> Result<ImageGrid> {
    job.refuse_text_flags(config)?;
    let kind = config.data;
    let png = job.png.clone().ok_or_else(|| {
        Error::Config(format!(
            "{} is a model of {kind}: give --png FILE to write the images it draws as one PNG grid (they are \
             no text to print)",
            job.checkpoint.display()
        ))
    })?;
    check_png_path(&png)?;
    let prompt_rows = match (job.prompt_rows, &job.data) {
        (Some(k), _) if k == 0 || k >= rows => {
            return Err(Error::Config(format!(
                "--prompt-rows {k}: the images of {} have {rows} rows; give at least 1 and fewer than {rows}, \
                 so that the rows after them are drawn (leave the flag out to draw whole images)",
                job.checkpoint.display()
            )))
        }
        (Some(k), _) => k,
        (None, Some(data)) => {
            return Err(Error::Config(format!(
                "--data {}: read only with --prompt-rows K, whose prompts are the first K rows of its test images",
                data.display()
            )))
        }
        (None, None) => 0,
    };
    let count = job.num_samples.unwrap_or(GRID_IMAGES);
    let sampling = ImageSampling {
        temperature: job.temperature,
        top_k: job.top_k,
        seed: job.seed,
        context: config.seq_len,
        recompute: job.recompute,
    };
    let what = format!("drawing {count} images of {rows}x{cols} (--num-samples {count})");
    let work = image_workload(config, &sampling, (rows, cols), prompt_rows * cols, count)
        .map_err(concerning(&what))?;
    size::check(backend, &what, &config.model, work)?;
    let settings = format!(
        "temperature {}, top-k {}, seed {}",
        job.temperature, job.top_k, job.seed
    );
    let (prompts, shows) = if prompt_rows == 0 {
        (
            vec![Vec::new(); count],
            format!("{count} images of {rows}x{cols} ({settings})"),
        )
    } else {
        let data = job.data.clone().unwrap_or_else(|| kind.default_path());
        let corpus = kind.open(&data)?;
        let pixels = rows * cols;
        let test = corpus.split(Split::Test);
        if count > test.len() / pixels {
            return Err(Error::Config(format!(
                "--num-samples {count} with --prompt-rows {prompt_rows}: the test split of {} holds {} images \
                 to complete",
                corpus.source(),
                test.len() / pixels
            )));
        }
        let prompts = test
            .chunks(pixels)
            .take(count)
            .map(|image| image[..prompt_rows * cols].to_vec())
            .collect();
        let shows = format!(
            "{count} images of {rows}x{cols} ({settings}) after the first {prompt_rows} rows of test images 1 \
             to {count} of {} (an orange line under the given rows)",
            corpus.source()
        );
        (prompts, shows)
    };
    Ok(ImageGrid {
        size: (rows, cols),
        sampling,
        prompts,
        prompt_rows,
        png,
        shows,
    })
}

/// Errors naming `--png` when its folder does not exist or it is a folder itself: found before the images
/// are drawn, not after.
fn check_png_path(png: &Path) -> Result<()> {
    let folder = png
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fault = if png.is_dir() {
        format!("{} is a folder", png.display())
    } else if !folder.is_dir() {
        format!("the folder {} does not exist", folder.display())
    } else {
        return Ok(());
    };
    Err(Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("--png {}: {fault}", png.display()),
    )))
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

/// What sampling `options` after a prompt of `prompt_len` bytes asks of the LM of `config`: its longest
/// forward pass, padded to the factors' product, and its decoder's caches, full.
fn sample_workload(
    config: &TrainConfig,
    prompt_len: usize,
    options: &SampleOptions,
) -> Result<Workload> {
    let footprint = options.footprint(prompt_len);
    let seq_len = padded_len(&config.model, footprint.longest_pass)?;
    Ok(inference_workload(
        config,
        [seq_len, options.num_samples],
        footprint.cached_positions,
    ))
}

/// What drawing `count` images of `size` after prompts of `given` pixels asks of the LM of `config` (the text
/// sampler's workload for the same sequences: the start byte, the prompt, the pixels drawn).
fn image_workload(
    config: &TrainConfig,
    sampling: &ImageSampling,
    size: (usize, usize),
    given: usize,
    count: usize,
) -> Result<Workload> {
    let options = sampling.text_options(size, given, count)?;
    sample_workload(config, 1 + given, &options)
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

/// The LM of a training checkpoint (in the precision it was trained in), the settings it was trained with,
/// and what `plan` made of them once it found what the job will ask of them to fit in memory (its error
/// names the job): all before the model is built.
fn load_lm<B: Backend, T>(
    backend: &B,
    path: &Path,
    plan: impl FnOnce(&TrainConfig) -> Result<T>,
) -> Result<(HourglassLM<B>, TrainConfig, T)> {
    let file = TensorFile::read(path)?;
    let config = checkpoint_config(&file, path)?;
    let planned = plan(&config)?;
    let mut lm = config.resolve(backend).build_lm(backend)?;
    import_params(&mut lm, &file)?;
    Ok((lm, config, planned))
}

/// Loads a training checkpoint and samples from it until done or `stop` is raised: of text, streamed to
/// stdout; of images, drawn as one batch and written as a PNG grid (see [`SampleJob`]). Everything the sample
/// will hold (its longest forward pass, the decoder's caches) is checked against memory before the model is
/// built; logits that are not finite are an error naming the checkpoint.
pub fn sample<B: Backend>(backend: &B, job: SampleJob, stop: &AtomicBool) -> Result<SampleOutput> {
    let prompt = job.prompt.as_deref().unwrap_or(DEFAULT_PROMPT).as_bytes();
    // The settings either kind takes, checked before the checkpoint is read.
    let mut options = SampleOptions {
        length: job.length.unwrap_or(DEFAULT_LENGTH),
        temperature: job.temperature,
        top_k: job.top_k,
        seed: job.seed,
        context: job.context.unwrap_or(1),
        num_samples: job.num_samples.unwrap_or(1),
        recompute: job.recompute,
    };
    options.validate(prompt)?;
    let (mut lm, _, plan) = load_lm(backend, &job.checkpoint, |config| {
        if let DataKind::Images { rows, cols } = config.data {
            return image_plan(backend, &job, config, (rows, cols)).map(SamplePlan::Images);
        }
        job.refuse_image_flags(config)?;
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
        let work = sample_workload(config, prompt.len(), &options).map_err(concerning(&what))?;
        size::check(backend, &what, &config.model, work)?;
        Ok(SamplePlan::Text(options))
    })?;
    let at_checkpoint = concerning(job.checkpoint.display());
    match plan {
        SamplePlan::Text(options) => stream(&mut lm, prompt, &options, stop)
            .map(SampleOutput::Text)
            .map_err(at_checkpoint),
        SamplePlan::Images(grid) => {
            let written = draw_grid(&mut lm, &grid, job.progress, stop).map_err(at_checkpoint)?;
            Ok(SampleOutput::Images {
                png: grid.png,
                written,
            })
        }
    }
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
    let (mut lm, c, ()) = load_lm(backend, &job.checkpoint, |c| {
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
