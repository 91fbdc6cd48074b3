//! The `hourglass` command line.
//!
//! ```text
//! hourglass forward [--config C.json] --weights W.safetensors --input I.safetensors --output O.safetensors [--device cpu|cuda]
//! hourglass demo [--device cpu|cuda] [--seed N] [--runs N]
//! hourglass train [--preset cpu|gpu|enwik8|fashion-mnist] [--config T.json] [--data PATH] [--out DIR]
//!                 [--resume CKPT] [--device auto|cpu|cuda] [any setting: --d-model 256 --lr 1e-3 ...]
//! hourglass sample --checkpoint CKPT [--prompt TEXT] [--length N] [--temperature T] [--top-k K]
//! hourglass sample --checkpoint CKPT --png FILE [--prompt-rows K] [--data PATH] [--num-samples N]   # images
//! hourglass eval --checkpoint CKPT [--split valid|test|train] [--data PATH]
//! ```
//!
//! Errors print as `error: <message>` on stderr and exit with status 2. Ctrl-C or SIGTERM stops a command at
//! the next step, batch or byte (`train` saves first, and exits 0); a `sample` or `eval` stopped before its end
//! exits with status 130, and so does a second signal, which quits at once.

use clap::{Args, Parser, Subcommand, ValueEnum};
use hourglass::checkpoint::TensorFile;
use hourglass::model::Precision;
use hourglass::ops::Backend;
use hourglass::run::train::{EvalJob, SampleJob, TrainRequest};
use hourglass::train::data::Split;
use hourglass::train::Preset;
use hourglass::{run, Cpu, Error, HourGlassConfig, Result};
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "hourglass",
    version,
    about = "The Hourglass hierarchical transformer: train and sample byte-level language models, check \
             against PyTorch, time the seed's example"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the model (evaluation mode; f32, or bf16 operands with --precision bf16) on an input file and
    /// writes y (and, with gy, gx and every parameter's gradient as grad.<name>) to the output file.
    Forward {
        /// Model configuration JSON: n_heads, d_model, dropout, d_ff, shortening_factors, and optionally the
        /// component keys (shortening, upsampling, attention_pooling, attention_upsampling,
        /// attention_resampling_mask, depth, causal, positions; see the README). Optional with a training
        /// checkpoint, which holds its model's settings.
        #[arg(long, value_name = "C.json")]
        config: Option<PathBuf>,
        /// Parameters, as safetensors with the PyTorch reference's state_dict names; or a training
        /// checkpoint, whose hourglass (the hourglass.* tensors) is run.
        #[arg(long, value_name = "W.safetensors")]
        weights: PathBuf,
        /// Input: x [seq_len, batch, d_model] and optionally gy (the gradient with respect to y).
        #[arg(long, value_name = "I.safetensors")]
        input: PathBuf,
        /// Where to write y (and gx, grad.<name> when the input holds gy); written atomically.
        #[arg(long, value_name = "O.safetensors")]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
        /// The GEMMs' precision: f32 (checks against the reference) or bf16 (the GPU's training precision).
        #[arg(long, value_enum, default_value_t = Precision::Element)]
        precision: Precision,
    },
    /// Registers, static shared memory, stack and spills of every CUDA kernel on sm_90, as ptxas reported
    /// them when this binary was built (kernel versions side by side, e.g. attention's). With --device cuda,
    /// first opens the GPU and says what its kernels were loaded from (the embedded cubin for its
    /// architecture, or the PTX JIT-compiled by the driver) and how long that took.
    Kernels {
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
    },
    /// The seed's example: HourGlass(4, 512, 0.1, 2048, [2, 3]) on x [10, 32, 512], forward and backward;
    /// prints shapes, timings (forward ms, forward+backward ms, tokens/s) and a checksum.
    #[command(allow_negative_numbers = true)]
    Demo {
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
        /// Seeds the parameters, x and the dropout masks.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Timed runs (the median is reported), after one warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Trains a byte-level language model (on the GPU when there is one): progress bar, validation bits per
    /// character every --eval-every steps, atomic checkpoints, then the whole validation split against the
    /// unigram baseline, a sample, and the curve as PNG (numbers as CSV and JSON) in --out. With --preset
    /// fashion-mnist, a model of Fashion-MNIST's images pixel by pixel, in bits per dimension against the
    /// training images' pixel histogram, and 16 images drawn by the model as --out/samples.png instead of a
    /// text sample. Settings come from the preset, then the --config file, then the flags. Ctrl-C or SIGTERM saves a checkpoint and exits. One run per --out folder: a live
    /// run's folder is refused, a finished run's needs --resume or --overwrite.
    #[command(allow_negative_numbers = true)]
    Train(Box<TrainArgs>),
    /// Bits per character of a training checkpoint's model on a whole split of a corpus (the test split of
    /// the default corpus unless told otherwise), next to that split's unigram baseline; of an image model,
    /// bits per dimension (on the 10,000 test images of Fashion-MNIST by default), next to the training
    /// images' pixel histogram.
    Eval {
        #[arg(long, value_name = "CKPT")]
        checkpoint: PathBuf,
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// Any text or byte file, split 90/5/5; for an image model, a folder of IDX image files
        /// [default: data/enwik-excerpt.xml; for an image model, data/fashion-mnist].
        #[arg(long, value_name = "PATH")]
        data: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Streams text sampled from a training checkpoint. Of a model of images (--preset fashion-mnist), draws
    /// whole images and writes them as one PNG grid (--png, required): from nothing, or completing the first
    /// --prompt-rows rows of the first --num-samples test images, the grid then showing each completion with
    /// an orange line under its given rows. The text-only flags (--prompt, --length, --context) are refused
    /// for images, the image-only ones (--png, --prompt-rows, --data) for text.
    #[command(allow_negative_numbers = true)]
    Sample {
        #[arg(long, value_name = "CKPT")]
        checkpoint: PathBuf,
        /// Text: the text to continue [default: "The "].
        #[arg(long)]
        prompt: Option<String>,
        /// Text: bytes to generate [default: 500].
        #[arg(long)]
        length: Option<usize>,
        /// Softmax temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.8, value_parser = finite)]
        temperature: f64,
        /// Sample among the k most likely bytes only; 0 = all.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Text: bytes of context the model sees (default: the training seq_len); when full, it drops to its
        /// last half and grows again.
        #[arg(long)]
        context: Option<usize>,
        /// Sequences to draw at once, as one batch (each its own draws; printed one after another when done)
        /// [default: 1; images: 16].
        #[arg(long)]
        num_samples: Option<usize>,
        /// Recompute the whole context for every byte instead of decoding incrementally from per-level
        /// caches (the same bytes, much slower: a check, or a comparison).
        #[arg(long)]
        recompute: bool,
        /// Images: write them as one PNG grid here (each pixel 4 × 4; ⌈√N⌉ images a row). Required for a model
        /// of images, whose bytes are no text to print.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// Images: complete the first K rows of the first N test images of --data (N = --num-samples) instead
        /// of drawing whole images; the grid shows the completions, an orange line under the given rows.
        #[arg(long, value_name = "K")]
        prompt_rows: Option<usize>,
        /// Images, with --prompt-rows: the folder of IDX image files whose test images are completed
        /// [default: data/fashion-mnist].
        #[arg(long, value_name = "PATH")]
        data: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Starting settings [default: gpu with a GPU, cpu otherwise; a resumed run: the checkpoint's].
    /// fashion-mnist has a larger model on a GPU than on the CPU.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// A JSON object of settings laid over the preset, e.g. {"lr": 1e-3, "model": {"d_model": 256}} (the
    /// keys of the config.json a run writes).
    #[arg(long, value_name = "T.json")]
    config: Option<PathBuf>,
    /// Training data: any text or byte file, split 90/5/5 [default: data/enwik-excerpt.xml, fetched by
    /// tools/fetch-corpus.sh]; for images (--preset fashion-mnist), a folder holding train-images-idx3-ubyte
    /// and t10k-images-idx3-ubyte [default: data/fashion-mnist, fetched by tools/fetch-images.sh].
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Output folder: checkpoint.safetensors, curve.png, history.csv, history.json, and of a run over images
    /// samples.png [default: runs/<preset>, or the resumed checkpoint's folder].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace the run the output folder already holds (without it, a run there is refused unless it resumes
    /// that folder's own checkpoint).
    #[arg(long)]
    overwrite: bool,
    /// Continue from this checkpoint, exactly where it stopped. Settings other than --steps, --eval-every,
    /// --eval-batches, --save-every must match it.
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Bytes to sample at the end (0: none). A run over images draws 16 whole images instead, written to
    /// samples.png in --out (0: none).
    #[arg(long, default_value_t = 300)]
    sample_length: usize,
    /// The sample's prompt.
    #[arg(long, default_value = "The ")]
    prompt: String,
    /// No progress bar (one line per evaluation instead).
    #[arg(long)]
    no_progress: bool,
    /// On CUDA, issue every step's work from the host instead of replaying the step captured once as a CUDA
    /// graph (the same work and results, uncaptured: a check on the graph, or a way around a capture that
    /// fails).
    #[arg(long)]
    no_graph: bool,

    // The model.
    /// Attention heads (d_model must be divisible by them).
    #[arg(long, help_heading = "Model")]
    heads: Option<usize>,
    /// Model width.
    #[arg(long, help_heading = "Model")]
    d_model: Option<usize>,
    /// Feed-forward width.
    #[arg(long, help_heading = "Model")]
    d_ff: Option<usize>,
    /// Dropout probability in [0, 1) (attention, residuals, feed-forward).
    #[arg(long, value_parser = finite, help_heading = "Model")]
    dropout: Option<f64>,
    /// Shortening factors, comma-separated, each relative to the level above: 3 or 2,3; `none` for a plain
    /// transformer (with --depth its number of layers).
    #[arg(long, value_name = "K,K|none", value_parser = factor_list, help_heading = "Model")]
    factors: Option<Factors>,
    /// Layers as JSON: (pre, valley, post) per level, e.g. [5,24,5] or [2,[1,4,1],2].
    #[arg(long, value_name = "JSON", help_heading = "Model")]
    depth: Option<String>,
    /// How every level shortens (per-level lists: --config).
    #[arg(long, value_enum, help_heading = "Model")]
    shortening: Option<ShorteningArg>,
    /// How every level upsamples (per-level lists: --config).
    #[arg(long, value_enum, help_heading = "Model")]
    upsampling: Option<UpsamplingArg>,
    /// Rotary positions on q/k of self-attention, or none.
    #[arg(long, value_enum, help_heading = "Model")]
    positions: Option<PositionsArg>,
    /// Tie the LM head to the byte embedding (--tie-embedding or --tie-embedding=false).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Model")]
    tie_embedding: Option<bool>,

    // The optimisation.
    /// Bytes per training sequence (of images: rows·cols).
    #[arg(long, help_heading = "Training")]
    seq_len: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long, help_heading = "Training")]
    batch: Option<usize>,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, help_heading = "Training")]
    accum: Option<usize>,
    /// Optimiser steps in the run (the cosine decay ends here).
    #[arg(long, help_heading = "Training")]
    steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long, value_parser = finite, help_heading = "Training")]
    lr: Option<f64>,
    /// Learning rate at the end of the cosine decay.
    #[arg(long, value_parser = finite, help_heading = "Training")]
    min_lr: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long, help_heading = "Training")]
    warmup_steps: Option<u64>,
    /// AdamW beta1.
    #[arg(long, value_parser = finite, help_heading = "Training")]
    beta1: Option<f64>,
    /// AdamW beta2.
    #[arg(long, value_parser = finite, help_heading = "Training")]
    beta2: Option<f64>,
    /// AdamW epsilon.
    #[arg(long, value_parser = finite, help_heading = "Training")]
    eps: Option<f64>,
    /// Decoupled weight decay (matrices only, not norms and biases).
    #[arg(long, value_parser = finite, help_heading = "Training")]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0: off).
    #[arg(long, value_parser = finite, help_heading = "Training")]
    clip: Option<f64>,
    /// Seeds the parameters, the batches and the dropout masks.
    #[arg(long, help_heading = "Training")]
    seed: Option<u64>,
    /// Validate every N steps.
    #[arg(long, help_heading = "Training")]
    eval_every: Option<u64>,
    /// Validation batches per periodic evaluation (0: the whole split).
    #[arg(long, help_heading = "Training")]
    eval_batches: Option<usize>,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, help_heading = "Training")]
    save_every: Option<u64>,
    /// The GEMMs' precision [default: bf16 on a GPU, f32 on the CPU; a resumed run: the checkpoint's].
    #[arg(long, value_enum, help_heading = "Training")]
    precision: Option<Precision>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ShorteningArg {
    Avg,
    Linear,
    Attention,
}

#[derive(Clone, Copy, ValueEnum)]
enum UpsamplingArg {
    Naive,
    Linear,
    Attention,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Valid,
    Test,
}

#[derive(Clone, Copy, ValueEnum)]
enum PositionsArg {
    None,
    Rotary,
}

impl TrainArgs {
    /// The flags that were given, as a JSON object to lay over the preset and config file.
    fn patch(&self) -> Result<Value> {
        /// Inserts `"key": value` for each flag that was given (the key is the flag's field name).
        macro_rules! given {
            ($map:ident: $($field:ident $(as $key:literal)? $(=> $f:expr)?),* $(,)?) => {$(
                if let Some(v) = &self.$field {
                    let key = given!(@key $field $($key)?);
                    $map.insert(key.into(), given!(@value v $($f)?));
                }
            )*};
            (@key $field:ident) => { stringify!($field) };
            (@key $field:ident $key:literal) => { $key };
            (@value $v:ident) => { json!($v) };
            (@value $v:ident $f:expr) => { $f($v) };
        }
        let mut model = Map::new();
        given!(model: heads as "n_heads", d_model, d_ff, dropout, factors as "shortening_factors" => |f: &Factors| json!(f.0),
               shortening => value_name, upsampling => value_name, positions => value_name);
        if let Some(d) = &self.depth {
            let depth = serde_json::from_str::<Value>(d)
                .map_err(|e| Error::Config(format!("--depth {d:?} is not JSON: {e}")))?;
            model.insert("depth".into(), depth);
        }
        let mut top = Map::new();
        if !model.is_empty() {
            top.insert("model".into(), Value::Object(model));
        }
        given!(top: tie_embedding, seq_len, batch, accum, steps, lr, min_lr, warmup_steps, beta1, beta2, eps, weight_decay,
               clip, seed, eval_every, eval_batches, save_every, precision => value_name);
        Ok(Value::Object(top))
    }
}

/// A flag's number, which must be finite (NaN and infinities have no JSON form, and no setting takes them).
fn finite(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number")),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

/// `--factors`' value: the shortening factors, empty for a plain transformer.
#[derive(Clone)]
struct Factors(Vec<usize>);

/// `--factors`: comma-separated factors, or `none` (a plain transformer).
fn factor_list(text: &str) -> std::result::Result<Factors, String> {
    if text.trim() == "none" {
        return Ok(Factors(Vec::new()));
    }
    text.split(',')
        .map(|k| {
            k.trim()
                .parse::<usize>()
                .map_err(|e| format!("{k:?} is not a factor ({e}); give K,K,... or none"))
        })
        .collect::<std::result::Result<_, _>>()
        .map(Factors)
}

/// A kind's name as the config JSON spells it (lowercase, like the flag).
fn value_name<T: ValueEnum>(v: &T) -> Value {
    json!(v
        .to_possible_value()
        .expect("no kind is skipped")
        .get_name())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    /// The GPU when one can be used, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// A job that runs on whichever backend `--device` picks.
trait Job {
    type Output;
    fn run<B: Backend>(self, backend: &B, device: &str) -> Result<Self::Output>;
}

// ============================================================================================================
// BACKEND SELECTION: the one place that maps `--device` to a backend. Every subcommand that runs a model goes
// through here (`kernels --device` only opens the GPU to report its kernels).
// ============================================================================================================
fn with_backend<J: Job>(device: Device, job: J) -> Result<J::Output> {
    match device {
        Device::Cpu => job.run(&Cpu::<f32>::new(), "cpu"),
        Device::Cuda => {
            // Errors (never panics) without nvcc at build time, a driver or a GPU.
            let cuda = hourglass::device::Cuda::new(0)?;
            let name = format!("cuda:0 ({})", cuda.name()?);
            job.run(&cuda, &name)
        }
        Device::Auto => match hourglass::device::Cuda::new(0) {
            Ok(cuda) => {
                let name = format!("cuda:0 ({})", cuda.name()?);
                job.run(&cuda, &name)
            }
            Err(e) => {
                eprintln!("no usable GPU ({e}); running on the CPU");
                job.run(&Cpu::<f32>::new(), "cpu")
            }
        },
    }
}
// ============================================================================================================

struct ForwardJob {
    config: HourGlassConfig,
    weights: TensorFile,
    input: TensorFile,
    precision: Precision,
}

impl Job for ForwardJob {
    type Output = TensorFile;
    fn run<B: Backend>(self, backend: &B, _device: &str) -> Result<TensorFile> {
        run::forward_files_in(
            backend,
            &self.config,
            &self.weights,
            &self.input,
            self.precision,
        )
    }
}

struct DemoJob {
    seed: u64,
    runs: usize,
}

impl Job for DemoJob {
    type Output = run::DemoReport;
    fn run<B: Backend>(self, backend: &B, device: &str) -> Result<run::DemoReport> {
        run::demo(backend, device, self.seed, self.runs)
    }
}

/// Raised by Ctrl-C or SIGTERM: every long loop (training steps, evaluation, sampling) stops at it; training
/// saves a checkpoint first.
static STOP: AtomicBool = AtomicBool::new(false);

/// The exit status of a command a signal stopped before its work was done (128 + SIGINT, as shells use).
const INTERRUPTED: u8 = 130;

/// Signals closer together than this are one request to stop: GNU `timeout` sends SIGTERM to the command and
/// then to its process group, so the command gets it twice within a moment. Two deliberate Ctrl-C's are
/// further apart.
const ONE_REQUEST: Duration = Duration::from_millis(500);

/// Makes Ctrl-C and SIGTERM raise `STOP`, saying what happens then (`stopping`); another one after
/// `ONE_REQUEST` exits at once, saying what is lost (`lost`).
fn stop_on_signals(stopping: &'static str, lost: &'static str) -> Result<()> {
    let mut first: Option<Instant> = None;
    ctrlc::set_handler(move || match first {
        None => {
            first = Some(Instant::now());
            STOP.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: {stopping} (Ctrl-C again to quit now)");
        }
        Some(at) if at.elapsed() < ONE_REQUEST => {}
        Some(_) => {
            eprintln!("\ninterrupted twice: exiting now{lost}");
            std::process::exit(INTERRUPTED.into());
        }
    })
    .map_err(|e| Error::Training(format!("cannot install the Ctrl-C handler: {e}")))
}

struct TrainCmd(Box<TrainArgs>);

impl Job for TrainCmd {
    type Output = run::train::TrainSummary;
    fn run<B: Backend>(self, backend: &B, device: &str) -> Result<Self::Output> {
        let args = self.0;
        let request = TrainRequest {
            preset: args.preset,
            config_file: args.config.clone(),
            flags: args.patch()?,
            resume: args.resume.clone(),
            out: args.out.clone(),
            data: args.data.clone(),
            overwrite: args.overwrite,
            sample_length: args.sample_length,
            prompt: args.prompt.clone(),
            progress: !args.no_progress && std::io::stderr().is_terminal(),
            graph: !args.no_graph,
        };
        let on_gpu = matches!(backend.kind(), hourglass::DeviceKind::Cuda(_));
        run::train::train(backend, device, request.resolve(on_gpu)?, &STOP)
    }
}

struct EvalCmd(EvalJob);

impl Job for EvalCmd {
    type Output = Option<f64>;
    fn run<B: Backend>(self, backend: &B, _device: &str) -> Result<Option<f64>> {
        run::train::evaluate(backend, self.0, &STOP)
    }
}

struct SampleCmd(SampleJob);

impl Job for SampleCmd {
    type Output = run::train::SampleOutput;
    fn run<B: Backend>(self, backend: &B, _device: &str) -> Result<Self::Output> {
        run::train::sample(backend, self.0, &STOP)
    }
}

fn main_result(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Forward {
            config,
            weights,
            input,
            output,
            device,
            precision,
        } => {
            let weights_file = TensorFile::read(&weights)?;
            let job = ForwardJob {
                config: run::forward_config(config.as_deref(), &weights_file, &weights)?,
                weights: weights_file,
                input: TensorFile::read(&input)?,
                precision,
            };
            let out = with_backend(device, job)?;
            out.write(&output)?;
            let names: Vec<&str> = out.tensors.keys().map(String::as_str).collect();
            let y = out.get("y")?;
            println!(
                "wrote {} tensors to {} (y {:?}{})",
                names.len(),
                output.display(),
                y.shape,
                if out.tensors.contains_key("gx") {
                    ", gx and every parameter's gradient"
                } else {
                    ""
                }
            );
        }
        Command::Kernels { device } => {
            if device != Device::Cpu {
                match hourglass::device::Cuda::new(0) {
                    Ok(cuda) => println!(
                        "cuda:0 ({}): kernels from {}",
                        cuda.name()?,
                        cuda.kernel_images()
                    ),
                    Err(e) if device == Device::Cuda => return Err(e),
                    Err(e) => println!("no usable GPU ({e})"),
                }
            }
            let kernels = hourglass::device::cuda::ptxas::kernel_resources();
            if kernels.is_empty() {
                println!("this build has no CUDA kernels: nvcc was not found at build time");
            }
            println!(
                "{:<16} {:<40} {:>9} {:>12} {:>7} {:>13}",
                "module", "kernel (sm_90)", "registers", "shared bytes", "stack", "spilled bytes"
            );
            for k in kernels {
                println!(
                    "{:<16} {:<40} {:>9} {:>12} {:>7} {:>13}",
                    k.module,
                    k.kernel,
                    k.registers,
                    k.shared_bytes,
                    k.stack_bytes,
                    k.spill_store_bytes + k.spill_load_bytes
                );
            }
        }
        Command::Demo { device, seed, runs } => {
            let report = with_backend(device, DemoJob { seed, runs })?;
            println!("{report}");
        }
        Command::Train(args) => {
            stop_on_signals(
                "stopping, with a checkpoint of the last step taken",
                " without saving",
            )?;
            let device = args.device;
            with_backend(device, TrainCmd(args))?;
        }
        Command::Eval {
            checkpoint,
            split,
            data,
            device,
            no_progress,
        } => {
            let job = EvalJob {
                checkpoint,
                data,
                split: match split {
                    SplitArg::Train => Split::Train,
                    SplitArg::Valid => Split::Valid,
                    SplitArg::Test => Split::Test,
                },
                progress: !no_progress && std::io::stderr().is_terminal(),
            };
            stop_on_signals("stopping the evaluation", "")?;
            if with_backend(device, EvalCmd(job))?.is_none() {
                return Ok(ExitCode::from(INTERRUPTED));
            }
        }
        Command::Sample {
            checkpoint,
            prompt,
            length,
            temperature,
            top_k,
            seed,
            context,
            num_samples,
            recompute,
            png,
            prompt_rows,
            data,
            device,
        } => {
            let job = SampleJob {
                checkpoint,
                prompt,
                length,
                temperature,
                top_k,
                seed,
                context,
                num_samples,
                recompute,
                png,
                prompt_rows,
                data,
                progress: std::io::stderr().is_terminal(),
            };
            stop_on_signals("stopping the sample", "")?;
            if !with_backend(device, SampleCmd(job))?.complete() {
                return Ok(ExitCode::from(INTERRUPTED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match main_result(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
