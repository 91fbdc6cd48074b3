//! Trains a small byte-level hourglass LM once per (shortening, upsampling) pair on the same data, same
//! batches and same seed, and prints each pair's training loss and held-out bits per byte — so the paper's
//! finding (Nawrot et al. 2021's ablation of shortening and upsampling methods) can be checked.
//!
//! cargo run --release --example compare_resampling -- [--steps 200] [--data FILE] [--device cpu|cuda]
//!
//! Without `--data` the corpus is this crate's own documentation (English prose and formulas, ~25 KB); any
//! text or byte file works (e.g. enwik8). 90% trains, the last 10% is held out.

use clap::Parser;
use hourglass::config::{PerLevel, ShorteningKind, UpsamplingKind};
use hourglass::model::lm::HourglassLM;
use hourglass::rng::SeededRng;
use hourglass::train::AdamW;
use hourglass::{Backend, Cpu, Cuda, HourGlassConfig, Parameters, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Optimiser steps per pair.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Corpus (any file, read as bytes); default: the crate's documentation.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 96)]
    seq: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
}

const BUILT_IN: &[&str] = &[
    include_str!("../README.md"),
    include_str!("../docs/architecture.md"),
    include_str!("../docs/components.md"),
    include_str!("../docs/gpu-validation.md"),
];

/// `batch` windows of `seq + 1` bytes at seeded offsets, as `[seq, batch]` inputs and next-byte targets.
fn batch_at(data: &[u8], seq: usize, batch: usize, rng: &mut SeededRng) -> (Vec<u32>, Vec<u32>) {
    let (mut x, mut y) = (vec![0; seq * batch], vec![0; seq * batch]);
    for b in 0..batch {
        let start = (rng.next_u64() as usize) % (data.len() - seq - 1);
        for t in 0..seq {
            x[t * batch + b] = data[start + t] as u32;
            y[t * batch + b] = data[start + t + 1] as u32;
        }
    }
    (x, y)
}

/// Trains one pair; returns (mean training loss of the last 10% of steps, held-out bits per byte).
fn run_pair<B: Backend>(
    backend: &B,
    config: &HourGlassConfig,
    args: &Args,
    train: &[u8],
    valid: &[u8],
    bar: &ProgressBar,
) -> Result<(f64, f64)> {
    let mut lm = HourglassLM::new(backend, config, 7)?;
    let mut opt = AdamW::new(0.9, 0.98, 1e-8, 0.01);
    let mut rng = SeededRng::new(42); // the same batches for every pair
    let mut recent = Vec::new();
    for step in 0..args.steps {
        let (x, y) = batch_at(train, args.seq, args.batch, &mut rng);
        lm.zero_grad()?;
        let loss = lm.loss(&x, &y, args.seq, args.batch, true)?;
        let warmup = (step + 1) as f64 / (args.steps as f64 * 0.1).max(1.0);
        opt.step(&mut lm, args.lr * warmup.min(1.0))?;
        if step >= args.steps - args.steps.div_ceil(10) {
            recent.push(loss);
        }
        bar.set_message(format!("loss {loss:.3}"));
        bar.inc(1);
    }
    lm.train(false);
    let mut eval_rng = SeededRng::new(7);
    let mut nats = 0.0;
    for _ in 0..8 {
        let (x, y) = batch_at(valid, args.seq, args.batch, &mut eval_rng);
        nats += lm.loss(&x, &y, args.seq, args.batch, false)?;
    }
    Ok((
        recent.iter().sum::<f64>() / recent.len() as f64,
        nats / 8.0 / std::f64::consts::LN_2,
    ))
}

fn compare<B: Backend>(backend: &B, args: &Args, data: &[u8]) -> Result<()> {
    let split = data.len() * 9 / 10;
    let (train, valid) = (&data[..split], &data[split..]);
    if valid.len() <= args.seq + 1 {
        return Err(hourglass::Error::Config(format!(
            "corpus of {} bytes is too small for seq {}",
            data.len(),
            args.seq
        )));
    }
    let shortenings = [
        ShorteningKind::Avg,
        ShorteningKind::Linear,
        ShorteningKind::Attention,
    ];
    let upsamplings = [
        UpsamplingKind::Naive,
        UpsamplingKind::Linear,
        UpsamplingKind::Attention,
    ];
    let bar = ProgressBar::new((args.steps * 9) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {per_sec}  ETA {eta}  {prefix} {msg}",
        )
        .expect("progress template"),
    );
    let mut rows = Vec::new();
    for s in shortenings {
        for u in upsamplings {
            let mut config = HourGlassConfig::reference(4, 64, 0.1, 256, &[3]);
            config.shortening = PerLevel::All(s);
            config.upsampling = PerLevel::All(u);
            bar.set_prefix(format!("{s:?}/{u:?}"));
            let start = Instant::now();
            let (train_loss, bpb) = run_pair(backend, &config, args, train, valid, &bar)?;
            rows.push((s, u, train_loss, bpb, start.elapsed().as_secs_f64()));
        }
    }
    bar.finish_and_clear();
    println!("corpus {} bytes ({} train / {} held out); {} steps of [{}, {}] per pair; d_model 64, factor 3",
        data.len(), train.len(), valid.len(), args.steps, args.seq, args.batch);
    println!(
        "{:<12} {:<12} {:>12} {:>16} {:>8}",
        "shortening", "upsampling", "train loss", "held-out bpb", "secs"
    );
    for (s, u, l, b, t) in &rows {
        println!(
            "{:<12} {:<12} {l:>12.4} {b:>16.4} {t:>8.1}",
            format!("{s:?}"),
            format!("{u:?}")
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let data = match &args.data {
        Some(path) => std::fs::read(path).map_err(hourglass::Error::from),
        None => Ok(BUILT_IN.concat().into_bytes()),
    };
    let result = data.and_then(|data| match args.device.as_str() {
        "cpu" => compare(&Cpu::<f32>::new(), &args, &data),
        "cuda" => Cuda::new(0).and_then(|cuda| compare(&cuda, &args, &data)),
        other => Err(hourglass::Error::Config(format!(
            "unknown device {other:?}: expected cpu or cuda"
        ))),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
