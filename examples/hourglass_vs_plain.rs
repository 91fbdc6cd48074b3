//! The paper's claim on this crate: an hourglass reaches a given bits-per-character with less compute than a
//! plain transformer. At each context length, a plain transformer of `--layers` layers and an hourglass with
//! the same layers arranged `[1, layers-2, 1]` around a shortening by `--factor` (so the same parameters) train
//! for the same wall-clock budget on the same batches; validation bits per character is logged against the
//! seconds of training and the training FLOPs spent (`model::size::flops_per_token`, x3 for a step).
//!
//! The models take their steps in turn (one step of each, then again), so a machine that gets slower or faster
//! during the run slows both alike. Seconds count training steps only, not the evaluations.
//!
//! cargo run --release --example hourglass_vs_plain -- [--contexts 1024,2048] [--seconds 240] [--out docs]
//!
//! Writes `<out>/hourglass-vs-plain.png` (bits per character against seconds and against FLOPs, one panel
//! each, a row per context length) and `<out>/hourglass-vs-plain.json` (every point), and prints the table the
//! README shows: at equal time (each model's last evaluation) and at equal FLOPs (each curve read, by linear
//! interpolation, at the smaller of the two models' total FLOPs).

use clap::Parser;
use hourglass::config::{Depth, HourGlassConfig, Positions};
use hourglass::model::size;
use hourglass::model::Parameters;
use hourglass::train::data::{default_corpus_path, Corpus, Split};
use hourglass::train::plot::{self, Panel, Series};
use hourglass::train::{Preset, TrainConfig, Trainer};
use hourglass::{Backend, Cpu, Cuda, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;

mod common;

#[derive(Parser)]
struct Args {
    /// Context lengths (bytes per training sequence), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 2048])]
    contexts: Vec<usize>,
    /// Training seconds per model and context.
    #[arg(long, default_value_t = 240.0)]
    seconds: f64,
    /// Validate every this many seconds of a model's training.
    #[arg(long, default_value_t = 30.0)]
    eval_seconds: f64,
    /// Validation batches per evaluation (the same ones each time, from the split's start).
    #[arg(long, default_value_t = 4)]
    eval_batches: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 256)]
    d_ff: usize,
    /// Layers of each model.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// The hourglass's shortening factor.
    #[arg(long, default_value_t = 4)]
    factor: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Corpus [default: the default corpus, fetched by tools/fetch-corpus.sh].
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// One evaluation of one model.
#[derive(Clone, Copy, Serialize)]
struct Point {
    step: u64,
    seconds: f64,
    flops: f64,
    bits: f64,
}

#[derive(Serialize)]
struct Run {
    context: usize,
    model: String,
    params: usize,
    flops_per_step: f64,
    points: Vec<Point>,
}

impl Run {
    fn last(&self) -> Point {
        *self.points.last().expect("evaluated at least once")
    }
    /// Validation bits per character after `flops` of training, by linear interpolation between evaluations.
    fn bits_at_flops(&self, flops: f64) -> f64 {
        let p = &self.points;
        let i = p.partition_point(|q| q.flops < flops).clamp(1, p.len() - 1);
        let (a, b) = (p[i - 1], p[i]);
        a.bits + (b.bits - a.bits) * (flops - a.flops) / (b.flops - a.flops)
    }
}

fn settings(args: &Args, context: usize, model: HourGlassConfig) -> TrainConfig {
    TrainConfig {
        model: HourGlassConfig {
            positions: Positions::Rotary,
            ..model
        },
        seq_len: context,
        batch: args.batch,
        accum: 1,
        // A time budget, not a step count: warm-up, then a constant learning rate.
        steps: 1_000_000,
        lr: args.lr,
        min_lr: args.lr,
        warmup_steps: 20,
        eval_every: u64::MAX,
        eval_batches: args.eval_batches,
        ..Preset::Cpu.config()
    }
}

/// Trains every model of one context length in turn until each has trained `args.seconds`.
fn race<B: Backend>(
    backend: &B,
    args: &Args,
    corpus: &Corpus,
    context: usize,
    bar: &ProgressBar,
) -> Result<Vec<Run>> {
    let (d, heads, ff, n) = (args.d_model, args.heads, args.d_ff, args.layers);
    let models = [
        (
            format!("plain, {n} layers"),
            HourGlassConfig::plain(heads, d, 0.0, ff, n),
        ),
        (
            format!("hourglass [1, {}, 1] at factor {}", n - 2, args.factor),
            HourGlassConfig {
                depth: Some(Depth::triple(1, n - 2, 1)),
                ..HourGlassConfig::reference(heads, d, 0.0, ff, &[args.factor])
            },
        ),
    ];
    let mut models_runs = Vec::new();
    for (name, model) in models {
        let config = settings(args, context, model);
        let tokens = config.tokens_per_step() as f64;
        let flops = 3.0 * size::flops_per_token(&config.model, context, true)? * tokens;
        let mut trainer = Trainer::new(backend, config, corpus)?;
        let run = Run {
            context,
            params: trainer.lm().param_count(),
            model: name,
            flops_per_step: flops,
            points: Vec::new(),
        };
        models_runs.push((trainer, run));
    }
    let evaluate = |trainer: &mut Trainer<B>, run: &mut Run, seconds: f64| -> Result<()> {
        let bits = trainer.evaluate(corpus, Split::Valid, args.eval_batches, &mut |_, _| {})?;
        let step = trainer.step_count();
        run.points.push(Point {
            step,
            seconds,
            flops: step as f64 * run.flops_per_step,
            bits,
        });
        Ok(())
    };
    let start = bar.position();
    common::train_in_turns(
        backend,
        corpus,
        &mut models_runs,
        (args.seconds, args.eval_seconds),
        evaluate,
        |done, models| {
            bar.set_position(start + done as u64);
            bar.set_message(format!(
                "context {context}: {}",
                models
                    .iter()
                    .map(|(_, r)| format!("{:.3}", r.last().bits))
                    .collect::<Vec<_>>()
                    .join(" vs ")
            ));
        },
    )?;
    Ok(models_runs.into_iter().map(|(_, run)| run).collect())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let data = args.data.clone().unwrap_or_else(default_corpus_path);
    let corpus = Corpus::load(&data)?;
    let budget = args.seconds * 2.0 * args.contexts.len() as f64;
    let bar = ProgressBar::new(budget as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} training seconds | {msg} | {elapsed_precise} ETA {eta_precise}",
        )
        .expect("template"),
    );
    let mut runs = Vec::new();
    for &context in &args.contexts {
        let done = bar.position();
        let mut race_runs = match args.device.as_str() {
            "cuda" => race(&Cuda::new(0)?, &args, &corpus, context, &bar)?,
            _ => race(&Cpu::<f32>::new(), &args, &corpus, context, &bar)?,
        };
        bar.set_position(done + (2.0 * args.seconds) as u64);
        runs.append(&mut race_runs);
    }
    bar.finish_and_clear();

    println!(
        "| context | model | parameters | training bytes/s | steps | training FLOPs | bpc at {:.0} s | bpc at equal FLOPs |",
        args.seconds
    );
    println!("|---|---|---|---|---|---|---|---|");
    for pair in runs.chunks(2) {
        let equal = pair
            .iter()
            .map(|r| r.last().flops)
            .fold(f64::INFINITY, f64::min);
        for r in pair {
            let last = r.last();
            println!(
                "| {} | {} | {} | {:.0} | {} | {:.2e} | {:.3} | {:.3} (at {:.2e}) |",
                r.context,
                r.model,
                r.params,
                last.step as f64 * (r.context * args.batch) as f64 / last.seconds,
                last.step,
                last.flops,
                last.bits,
                r.bits_at_flops(equal),
                equal
            );
        }
    }

    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::to_string_pretty(&runs).expect("runs serialise");
    hourglass::fs::write_atomic(&args.out.join("hourglass-vs-plain.json"), json.as_bytes())?;
    let panels: Vec<Panel> = args
        .contexts
        .iter()
        .flat_map(|&context| {
            let of = |x: fn(&Point) -> f64| -> Vec<Series> {
                runs.iter()
                    .filter(|r| r.context == context)
                    .map(|r| Series {
                        name: r.model.clone(),
                        points: r.points.iter().map(|p| (x(p), p.bits)).collect(),
                    })
                    .collect()
            };
            [
                Panel {
                    title: format!("context {context}: against time"),
                    x_label: "training seconds".into(),
                    y_label: "validation bits per character".into(),
                    series: of(|p| p.seconds),
                },
                Panel {
                    title: format!("context {context}: against compute"),
                    x_label: "training TFLOPs".into(),
                    y_label: "validation bits per character".into(),
                    series: of(|p| p.flops / 1e12),
                },
            ]
        })
        .collect();
    let png = args.out.join("hourglass-vs-plain.png");
    plot::write_panels_png(&png, &panels, 2, 1400, 520 * args.contexts.len() as u32)?;
    println!(
        "wrote {} and {}",
        png.display(),
        args.out.join("hourglass-vs-plain.json").display()
    );
    Ok(())
}
