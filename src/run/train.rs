//! `hourglass train` and `hourglass sample` as library calls: the run with its progress bar, the final
//! validation against the unigram baseline, a sample, and the outputs (checkpoint, curve PNG, CSV, JSON).

use crate::checkpoint::{import_params, TensorFile};
use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::model::lm::HourglassLM;
use crate::model::Parameters;
use crate::ops::Backend;
use crate::train::data::{Corpus, Split};
use crate::train::plot::{self, Curves};
use crate::train::sample::{self, SampleOptions};
use crate::train::trainer::{self, checkpoint_config, History, Observer, StepLog};
use crate::train::{Outcome, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// What `hourglass train` was asked to do, with every setting already resolved. The output folder is
/// created once the data and settings have been checked.
pub struct TrainJob {
    pub config: TrainConfig,
    /// Continue this checkpoint (`config` must agree with it; see `Trainer::resume`).
    pub resume: Option<PathBuf>,
    pub data: PathBuf,
    /// Where the checkpoint, curve and logs go.
    pub out: PathBuf,
    /// Bytes to sample at the end (0: none), from `prompt`.
    pub sample_length: usize,
    pub prompt: String,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
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
}

/// How a training run ended.
pub struct TrainSummary {
    pub outcome: Outcome,
    pub steps: u64,
    /// Bits per character on the whole validation split (a finished run only).
    pub valid_bits: Option<f64>,
    pub unigram_bits: f64,
    pub tokens_per_s: f64,
    pub sample: Option<String>,
    pub files: RunFiles,
}

/// Prints through the bar when it is drawn, to stdout when it is not (so logs keep the evaluations).
struct Display {
    bar: ProgressBar,
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
            "loss {:.3} bpc{valid} | {:.0} tok/s | lr {:.2e}",
            log.bits,
            self.tokens_per_s(log.step),
            log.lr
        ));
    }
    fn evaluated(&mut self, step: u64, bits: f64) {
        self.last_valid = Some(bits);
        self.say(&format!(
            "step {step:>6}  train {:.3} bpc  valid {bits:.3} bpc  {:.0} tok/s",
            self.last_bits,
            self.tokens_per_s(step)
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

/// Trains (or resumes) on `backend`, stopping early when `stop` is raised; see the module doc.
pub fn train<B: Backend>(
    backend: &B,
    device: &str,
    job: TrainJob,
    stop: &AtomicBool,
) -> Result<TrainSummary> {
    let corpus = Corpus::load(&job.data)?;
    let files = RunFiles::in_dir(&job.out);
    let mut trainer = match &job.resume {
        Some(path) => Trainer::resume(backend, path, Some(job.config.clone()), &corpus)?,
        None => Trainer::new(backend, job.config.clone(), &corpus)?,
    };
    let unigram_bits = corpus.unigram_bits_per_byte(Split::Valid)?;
    let c = trainer.config().clone();
    std::fs::create_dir_all(&job.out).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("output folder {}: {e}", job.out.display()),
        ))
    })?;
    // The resolved settings, reusable as --config.
    write_atomic(&files.config, (c.to_json() + "\n").as_bytes())?;
    println!(
        "training on {device}: {} parameters, {} ({} bytes: {} train / {} valid), seq_len {} x batch {} x \
         accum {} = {} bytes a step, {} steps{}",
        trainer.lm().param_count(),
        corpus.source(),
        corpus.len(),
        corpus.split(Split::Train).len(),
        corpus.split(Split::Valid).len(),
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
    println!("unigram baseline on the validation split: {unigram_bits:.3} bits per character");
    let start = trainer.step_count();
    let mut display = Display {
        bar: bar(
            c.steps,
            job.progress,
            "{bar:30} {pos}/{len} steps | {msg} | {elapsed_precise} ETA {eta_precise}",
        ),
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
    let outcome = outcome.map_err(|e| {
        let what = match e {
            Error::Training(msg) => msg,
            other => other.to_string(),
        };
        Error::Training(match &display.last_saved {
            Some((step, path)) => format!(
                "{what}; the last checkpoint, {} (step {step}), is unchanged",
                path.display()
            ),
            None => format!("{what}; no checkpoint was written in this run"),
        })
    })?;
    let steps = trainer.step_count();
    let tokens_per_s = display.tokens_per_s(steps);

    let (valid_bits, sample) = match outcome {
        Outcome::Stopped { step } => {
            println!(
                "stopped at step {step}: saved {}; continue with --resume {}",
                files.checkpoint.display(),
                files.checkpoint.display()
            );
            (None, None)
        }
        Outcome::Finished => {
            let batches = corpus.eval_batches(Split::Valid, c.seq_len, c.batch)?.len();
            let eval_bar = bar(
                batches as u64,
                job.progress,
                "evaluating {bar:30} {pos}/{len} batches ETA {eta_precise}",
            );
            let bits = trainer.evaluate(&corpus, Split::Valid, 0, &mut |done, _| {
                eval_bar.set_position(done as u64)
            })?;
            eval_bar.finish_and_clear();
            println!(
                "validation: {bits:.3} bits per character on the whole split ({} bytes); unigram baseline \
                 {unigram_bits:.3}",
                corpus.split(Split::Valid).len()
            );
            let sample = (job.sample_length > 0)
                .then(|| {
                    println!("sample (temperature 0.8, top-k 0):");
                    let options = SampleOptions {
                        length: job.sample_length,
                        temperature: 0.8,
                        top_k: 0,
                        seed: c.seed,
                        context: c.seq_len,
                    };
                    let text = stream(trainer.lm(), job.prompt.as_bytes(), &options)?;
                    Ok::<_, Error>(text)
                })
                .transpose()?;
            (Some(bits), sample)
        }
    };
    write_outputs(&files, &c, trainer.history(), unigram_bits, valid_bits)?;
    println!(
        "wrote {}, {}, {}, {} and {}",
        files.config.display(),
        files.checkpoint.display(),
        files.curve.display(),
        files.csv.display(),
        files.json.display()
    );
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

/// Prints the prompt, then each generated byte as it comes; returns prompt and continuation as text.
fn stream<B: Backend>(
    lm: &mut HourglassLM<B>,
    prompt: &[u8],
    options: &SampleOptions,
) -> Result<String> {
    let mut out = std::io::stdout().lock();
    out.write_all(prompt)?;
    out.flush()?;
    let generated = sample::generate(lm, prompt, options, |byte| {
        out.write_all(&[byte])?;
        out.flush()?;
        Ok(())
    })?;
    writeln!(out)?;
    let mut text = prompt.to_vec();
    text.extend(generated);
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The curve PNG, every step as CSV, and config + history + results as JSON.
fn write_outputs(
    files: &RunFiles,
    config: &TrainConfig,
    history: &History,
    unigram_bits: f64,
    valid_bits: Option<f64>,
) -> Result<()> {
    let train: Vec<(u64, f64)> = history.steps.iter().map(|s| (s.step, s.bits)).collect();
    if !train.is_empty() {
        plot::write_png(
            &files.curve,
            &Curves {
                title: "hourglass: training and validation bits per character",
                train: &train,
                valid: &history.valid,
                baseline: Some(("unigram baseline", unigram_bits)),
            },
            1200,
            700,
        )?;
    }
    let mut csv = String::from("step,train_bits_per_char,valid_bits_per_char,lr,grad_norm\n");
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
        "unigram_valid_bits_per_char": unigram_bits,
        "final_valid_bits_per_char": valid_bits,
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
}

/// The LM of a training checkpoint, and the settings it was trained with.
fn load_lm<B: Backend>(backend: &B, path: &Path) -> Result<(HourglassLM<B>, TrainConfig)> {
    let file = TensorFile::read(path)?;
    let config = checkpoint_config(&file, path)?;
    let mut lm = HourglassLM::build(backend, &config.model, config.seed, config.tie_embedding)?;
    import_params(&mut lm, &file)?;
    Ok((lm, config))
}

/// Loads a training checkpoint and streams a sample to stdout; returns prompt and continuation.
pub fn sample<B: Backend>(backend: &B, job: SampleJob) -> Result<String> {
    let (mut lm, config) = load_lm(backend, &job.checkpoint)?;
    let options = SampleOptions {
        length: job.length,
        temperature: job.temperature,
        top_k: job.top_k,
        seed: job.seed,
        context: job.context.unwrap_or(config.seq_len),
    };
    stream(&mut lm, job.prompt.as_bytes(), &options)
}

/// What `hourglass eval` was asked to do.
pub struct EvalJob {
    pub checkpoint: PathBuf,
    /// Any byte file (it need not be the training data), split 90/5/5.
    pub data: PathBuf,
    pub split: Split,
    pub progress: bool,
}

/// Bits per character of a checkpoint's model on a whole split (windows of the training `seq_len`), printed
/// next to the unigram baseline of the same split.
pub fn evaluate<B: Backend>(backend: &B, job: EvalJob) -> Result<f64> {
    let corpus = Corpus::load(&job.data)?;
    let (mut lm, c) = load_lm(backend, &job.checkpoint)?;
    let batches = corpus.eval_batches(job.split, c.seq_len, c.batch)?.len();
    let eval_bar = bar(
        batches as u64,
        job.progress,
        "evaluating {bar:30} {pos}/{len} batches ETA {eta_precise}",
    );
    let bits = trainer::evaluate(
        &mut lm,
        &corpus,
        job.split,
        [c.seq_len, c.batch],
        0,
        &mut |done, _| eval_bar.set_position(done as u64),
    )?;
    eval_bar.finish_and_clear();
    println!(
        "{} split of {} ({} bytes): {bits:.4} bits per character; unigram baseline {:.4}",
        job.split,
        corpus.source(),
        corpus.split(job.split).len(),
        corpus.unigram_bits_per_byte(job.split)?
    );
    Ok(bits)
}
