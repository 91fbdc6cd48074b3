//! Trains a small byte-level hourglass LM once per (shortening, upsampling) pair with the same settings, seed
//! and batches (the crate's `Trainer`), and prints each pair's final training loss and validation bits per
//! character — so the paper's ablation of shortening and upsampling methods (Nawrot et al. 2021) can be
//! checked.
//!
//! cargo run --release --example compare_resampling -- [--steps 300] [--data FILE] [--device cpu|cuda]
//!
//! Default data: the default corpus (`tools/fetch-corpus.sh`) when it is there, else this crate's own
//! documentation (~30 KB). Any text or byte file works, split 90/5/5; the validation split is scored whole.

use clap::Parser;
use hourglass::config::{Depth, PerLevel, Positions, ShorteningKind, UpsamplingKind};
use hourglass::train::data::{default_corpus_path, Corpus, Split};
use hourglass::train::history::StepLog;
use hourglass::train::trainer::Observer;
use hourglass::train::{Preset, TrainConfig, Trainer};
use hourglass::{Backend, Cpu, Cuda, HourGlassConfig, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Optimiser steps per pair.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Corpus (any file, read as bytes).
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

/// The settings every pair shares: d_model 64, 4 heads, factor 3, one layer per stack, rotary positions.
fn settings(args: &Args, s: ShorteningKind, u: UpsamplingKind) -> TrainConfig {
    let model = HourGlassConfig {
        shortening: PerLevel::All(s),
        upsampling: PerLevel::All(u),
        depth: Some(Depth::triple(1, 1, 1)),
        positions: Positions::Rotary,
        ..HourGlassConfig::reference(4, 64, 0.1, 256, &[3])
    };
    TrainConfig {
        model,
        seq_len: args.seq,
        batch: args.batch,
        steps: args.steps,
        lr: args.lr,
        min_lr: args.lr / 10.0,
        warmup_steps: args.steps / 10,
        eval_every: args.steps,
        seed: 7,
        ..Preset::Cpu.config()
    }
}

struct Bar<'a>(&'a ProgressBar);

impl Observer for Bar<'_> {
    fn step(&mut self, log: &StepLog) {
        self.0.set_message(format!("loss {:.3} bpc", log.bits));
        self.0.inc(1);
    }
}

fn compare<B: Backend>(backend: &B, args: &Args, corpus: &Corpus) -> Result<()> {
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
    let bar = ProgressBar::new(args.steps * 9);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {per_sec}  ETA {eta}  {prefix} {msg}",
        )
        .expect("progress template"),
    );
    let mut rows = Vec::new();
    for s in shortenings {
        for u in upsamplings {
            bar.set_prefix(format!("{s:?}/{u:?}"));
            let start = Instant::now();
            let mut trainer = Trainer::new(backend, settings(args, s, u), corpus)?;
            trainer.run(corpus, None, &AtomicBool::new(false), &mut Bar(&bar))?;
            // The mean training loss of the last 10% of steps, and the whole validation split.
            let logs = &trainer.history().steps;
            let tail = &logs[logs.len() - logs.len().div_ceil(10)..];
            let train = tail.iter().map(|l| l.bits).sum::<f64>() / tail.len() as f64;
            let valid = trainer.evaluate(corpus, Split::Valid, 0, &mut |_, _| {})?;
            rows.push((s, u, train, valid, start.elapsed().as_secs_f64()));
        }
    }
    bar.finish_and_clear();
    println!(
        "{} ({} bytes: {} train / {} valid); {} steps of [{}, {}] per pair; d_model 64, factor 3, rotary",
        corpus.source(),
        corpus.len(),
        corpus.split(Split::Train).len(),
        corpus.split(Split::Valid).len(),
        args.steps,
        args.seq,
        args.batch
    );
    println!(
        "{:<12} {:<12} {:>14} {:>14} {:>8}",
        "shortening", "upsampling", "train bpc", "valid bpc", "secs"
    );
    for (s, u, train, valid, secs) in &rows {
        println!(
            "{:<12} {:<12} {train:>14.4} {valid:>14.4} {secs:>8.1}",
            format!("{s:?}"),
            format!("{u:?}")
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let corpus = match &args.data {
        Some(path) => Corpus::load(path),
        None if default_corpus_path().exists() => Corpus::load(default_corpus_path()),
        None => Corpus::from_bytes(BUILT_IN.concat().into_bytes()),
    };
    let result = corpus.and_then(|corpus| match args.device.as_str() {
        "cpu" => compare(&Cpu::<f32>::new(), &args, &corpus),
        "cuda" => Cuda::new(0).and_then(|cuda| compare(&cuda, &args, &corpus)),
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
