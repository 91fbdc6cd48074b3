//! The `hourglass` command line.
//!
//! ```text
//! hourglass forward --config C.json --weights W.safetensors --input I.safetensors --output O.safetensors [--device cpu|cuda]
//! hourglass demo [--device cpu|cuda] [--seed N] [--runs N]
//! ```
//!
//! Errors print as `error: <message>` on stderr and exit with status 2.

use clap::{Parser, Subcommand, ValueEnum};
use hourglass::checkpoint::TensorFile;
use hourglass::ops::Backend;
use hourglass::{run, Cpu, HourGlassConfig, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hourglass",
    version,
    about = "The Hourglass hierarchical transformer: check against PyTorch, or run the seed's example"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the model (evaluation mode, f32) on an input file and writes y (and, with gy, gx and every
    /// parameter's gradient as grad.<name>) to the output file.
    Forward {
        /// Model configuration JSON: n_heads, d_model, dropout, d_ff, shortening_factors, and optionally the
        /// component keys (shortening, upsampling, attention_pooling, attention_upsampling,
        /// attention_resampling_mask, depth, causal; see the README).
        #[arg(long, value_name = "C.json")]
        config: PathBuf,
        /// Parameters, as safetensors with the PyTorch reference's state_dict names.
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
    },
    /// The seed's example: HourGlass(4, 512, 0.1, 2048, [2, 3]) on x [10, 32, 512], forward and backward;
    /// prints shapes, timings (forward ms, forward+backward ms, tokens/s) and a checksum.
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    Cpu,
    Cuda,
}

/// A job that runs on whichever backend `--device` picks.
trait Job {
    type Output;
    fn run<B: Backend>(self, backend: &B, device: &str) -> Result<Self::Output>;
}

// ============================================================================================================
// BACKEND SELECTION: the one place that maps `--device` to a backend. Every subcommand goes through here.
// ============================================================================================================
fn with_backend<J: Job>(device: Device, job: J) -> Result<J::Output> {
    match device {
        Device::Cpu => job.run(&Cpu::<f32>::new(), "cpu (f32)"),
        Device::Cuda => {
            // Errors (never panics) without nvcc at build time, a driver or a GPU.
            let cuda = hourglass::device::Cuda::new(0)?;
            let name = format!("cuda:0 ({})", cuda.name()?);
            job.run(&cuda, &name)
        }
    }
}
// ============================================================================================================

struct ForwardJob {
    config: HourGlassConfig,
    weights: TensorFile,
    input: TensorFile,
}

impl Job for ForwardJob {
    type Output = TensorFile;
    fn run<B: Backend>(self, backend: &B, _device: &str) -> Result<TensorFile> {
        run::forward_files(backend, &self.config, &self.weights, &self.input)
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

fn main_result(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Forward {
            config,
            weights,
            input,
            output,
            device,
        } => {
            let job = ForwardJob {
                config: HourGlassConfig::from_file(&config)?,
                weights: TensorFile::read(&weights)?,
                input: TensorFile::read(&input)?,
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
        Command::Demo { device, seed, runs } => {
            let report = with_backend(device, DemoJob { seed, runs })?;
            println!("{report}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match main_result(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
