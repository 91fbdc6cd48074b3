//! Does the hourglass pay on images? Fashion-MNIST's 28x28 images as byte sequences of 784 pixels
//! (`train::data::DataKind::Images`), scored in bits per dimension. Three models of the same layers train for the
//! same wall-clock time on the same batches: the `fashion-mnist` preset's hourglass (factors [4, 7], linear
//! shortening and upsampling), the same hourglass with the reference's average pooling and naive (repeat)
//! upsampling, and a plain transformer with all of those layers at full length. Same d_model, heads, d_ff, batch,
//! learning rate and seed; rotary positions throughout.
//!
//! The models take their steps in turn (one step of each, then again), so a machine that gets slower or faster
//! during the run slows them alike. Seconds count training steps only, not the evaluations. With a time budget
//! instead of a step count, the learning rate warms up as the preset's does and then stays at its peak (a cosine
//! decay would need to know each model's number of steps in advance).
//!
//! cargo run --release --example fashion_mnist -- [--seconds 400] [--eval-seconds 40] [--test-images N]
//!     [--out docs] [--data data/fashion-mnist]
//!
//! Every `--eval-seconds` of a model's training, it is validated on the same first batches of the validation
//! images; at the end each is evaluated on the test images (all 10,000 unless `--test-images N`, which takes the
//! first N, rounded up to whole batches: quicker, and noisier), beside the training images' pixel histogram.
//! Writes `<out>/fashion-mnist.json` (every point, the final numbers, the settings), `<out>/fashion-mnist.png`
//! (validation bits per dimension against training seconds) and `<out>/fashion-mnist-samples.png` (16 images
//! drawn, seeded, by the model with the best test score), and prints the table the README shows.

use clap::Parser;
use hourglass::config::{Depth, HourGlassConfig, ShorteningKind, UpsamplingKind};
use hourglass::model::Parameters;
use hourglass::train::data::{Corpus, Split, START};
use hourglass::train::image_grid::{write_image_grid, GridSpec};
use hourglass::train::image_sample::{sample_images, ImageSampling};
use hourglass::train::images::{default_image_folder, load_image_folder};
use hourglass::train::plot::{self, Panel, Series};
use hourglass::train::{Preset, TrainConfig, Trainer};
use hourglass::{Backend, Cpu, Cuda, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

mod common;

#[derive(Parser)]
struct Args {
    /// Training seconds per model.
    #[arg(long, default_value_t = 400.0)]
    seconds: f64,
    /// Validate every this many seconds of a model's training.
    #[arg(long, default_value_t = 40.0)]
    eval_seconds: f64,
    /// Validation batches per evaluation (the same ones each time, from the split's start).
    #[arg(long, default_value_t = 4)]
    eval_batches: usize,
    /// Test images each model is scored on at the end: the first N, rounded up to whole batches [default: all].
    #[arg(long)]
    test_images: Option<usize>,
    /// Seeds the sample images.
    #[arg(long, default_value_t = 0)]
    sample_seed: u64,
    /// The Fashion-MNIST folder [default: data/fashion-mnist, fetched by tools/fetch-images.sh].
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// `cpu` (the preset's CPU model) or `cuda` (its GPU model).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The images drawn for the samples grid.
const SAMPLES: usize = 16;
const SAMPLE_TEMPERATURE: f64 = 1.0;

/// One validation of one model.
#[derive(Clone, Copy, Serialize)]
struct Point {
    step: u64,
    seconds: f64,
    bits_per_dim: f64,
}

#[derive(Serialize)]
struct Run {
    model: String,
    config: HourGlassConfig,
    params: usize,
    points: Vec<Point>,
    /// Training pixels per second of training.
    pixels_per_second: f64,
    test_bits_per_dim: f64,
    /// Wall-clock seconds the test evaluation took.
    test_seconds: f64,
}

impl Run {
    fn last(&self) -> Point {
        *self.points.last().expect("validated at least once")
    }
}

#[derive(Serialize)]
struct Report<'a> {
    device: &'a str,
    seconds: f64,
    eval_seconds: f64,
    eval_batches: usize,
    batch: usize,
    lr: f64,
    warmup_steps: u64,
    seed: u64,
    test_images: usize,
    /// The training images' pixel histogram, scored on the validation and the test images.
    pixel_histogram_valid_bits_per_dim: f64,
    pixel_histogram_test_bits_per_dim: f64,
    runs: &'a [Run],
    samples: Samples<'a>,
}

#[derive(Serialize)]
struct Samples<'a> {
    model: &'a str,
    images: usize,
    seed: u64,
    temperature: f64,
    file: String,
}

/// Transformer layers in a depth tree.
fn layers(depth: &Depth) -> usize {
    match depth {
        Depth::Layers(n) => *n,
        Depth::Triple(t) => t.iter().map(layers).sum(),
    }
}

/// The three models of the comparison, named, from the preset's settings.
fn models(preset: &TrainConfig) -> Result<[(String, HourGlassConfig); 3]> {
    let linear = preset.model.clone();
    let depth = linear
        .depth
        .clone()
        .ok_or_else(|| Error::Config("the fashion-mnist preset gives no depth".into()))?;
    let n = layers(&depth);
    let factors = format!("{:?}", linear.shortening_factors);
    let reference = HourGlassConfig {
        shortening: ShorteningKind::Avg.into(),
        upsampling: UpsamplingKind::Naive.into(),
        ..linear.clone()
    };
    let plain = HourGlassConfig {
        positions: linear.positions,
        ..HourGlassConfig::plain(
            linear.n_heads,
            linear.d_model,
            linear.dropout,
            linear.d_ff,
            n,
        )
    };
    Ok([
        (
            format!("hourglass {factors} {depth}, linear resampling"),
            linear,
        ),
        (
            format!("hourglass {factors} {depth}, avg pool + repeat"),
            reference,
        ),
        (format!("plain, {n} layers"), plain),
    ])
}

/// The preset with a time budget instead of a step count: its warm-up, then its peak learning rate.
fn settings(preset: &TrainConfig, model: HourGlassConfig, eval_batches: usize) -> TrainConfig {
    TrainConfig {
        model,
        steps: 1_000_000,
        min_lr: preset.lr,
        eval_every: u64::MAX,
        eval_batches,
        ..preset.clone()
    }
}

fn bar(len: usize, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
    bar
}

/// Trains the three models in turn until each has trained `args.seconds`, validating on the way, then scores
/// each on the test images and draws the samples with the best. Returns the runs and which drew the samples.
fn compare<B: Backend>(
    backend: &B,
    preset: &TrainConfig,
    args: &Args,
    corpus: &Corpus,
    test_batches: usize,
) -> Result<(Vec<Run>, usize)> {
    let mut models_runs = Vec::new();
    for (name, model) in models(preset)? {
        let mut trainer = Trainer::new(
            backend,
            settings(preset, model.clone(), args.eval_batches),
            corpus,
        )?;
        let run = Run {
            params: trainer.lm().param_count(),
            model: name,
            config: model,
            points: Vec::new(),
            pixels_per_second: 0.0,
            test_bits_per_dim: f64::NAN,
            test_seconds: 0.0,
        };
        models_runs.push((trainer, run));
    }
    let validate = |trainer: &mut Trainer<B>, run: &mut Run, seconds: f64| -> Result<()> {
        let bits_per_dim =
            trainer.evaluate(corpus, Split::Valid, args.eval_batches, &mut |_, _| {})?;
        run.points.push(Point {
            step: trainer.step_count(),
            seconds,
            bits_per_dim,
        });
        Ok(())
    };
    let training = bar(
        (args.seconds * models_runs.len() as f64) as usize,
        "{bar:30} {pos}/{len} training seconds | valid bpd {msg} | {elapsed_precise} ETA {eta_precise}",
    );
    let trained = common::train_in_turns(
        backend,
        corpus,
        &mut models_runs,
        (args.seconds, args.eval_seconds),
        validate,
        |done, models| {
            training.set_position(done as u64);
            training.set_message(
                models
                    .iter()
                    .map(|(_, r)| format!("{:.3}", r.last().bits_per_dim))
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
        },
    )?;
    training.finish_and_clear();

    let pixels = preset.tokens_per_step() as f64;
    for ((trainer, run), seconds) in models_runs.iter_mut().zip(&trained) {
        run.pixels_per_second = trainer.step_count() as f64 * pixels / seconds;
        let testing = bar(
            test_batches,
            &format!(
                "{{bar:30}} {{pos}}/{{len}} test batches | {} | {{elapsed_precise}} ETA {{eta_precise}}",
                run.model
            ),
        );
        let t = Instant::now();
        run.test_bits_per_dim =
            trainer.evaluate(corpus, Split::Test, test_batches, &mut |done, _| {
                testing.set_position(done as u64)
            })?;
        run.test_seconds = t.elapsed().as_secs_f64();
        testing.finish_and_clear();
        eprintln!(
            "{}: {:.4} test bpd ({:.0} s)",
            run.model, run.test_bits_per_dim, run.test_seconds
        );
    }

    let (mut trainers, runs): (Vec<_>, Vec<_>) = models_runs.into_iter().unzip();
    let best = (0..runs.len())
        .min_by(|&a, &b| {
            runs[a]
                .test_bits_per_dim
                .total_cmp(&runs[b].test_bits_per_dim)
        })
        .expect("three runs");
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "drawing {SAMPLES} images with {}",
        runs[best].model
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let side = 28;
    let images = sample_images(
        trainers[best].lm(),
        START,
        (side, side),
        &[[0u8; 0]; SAMPLES],
        &ImageSampling {
            temperature: SAMPLE_TEMPERATURE,
            top_k: 0,
            seed: args.sample_seed,
            context: preset.seq_len,
            recompute: false,
        },
    )?;
    spinner.finish_and_clear();
    let spec = GridSpec {
        rows: side,
        cols: side,
        scale: 4,
        gap: 6,
        prompt_rows: 0,
    };
    write_image_grid(&args.out.join("fashion-mnist-samples.png"), &images, &spec)?;
    Ok((runs, best))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let positive = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "--{name} {v}: must be a positive number of seconds"
            )))
        }
    };
    positive("seconds", args.seconds)?;
    positive("eval-seconds", args.eval_seconds)?;
    if args.eval_batches == 0 {
        return Err(Error::Config(
            "--eval-batches 0: validate on at least one batch".into(),
        ));
    }
    let on_gpu = match args.device.as_str() {
        "cpu" => false,
        "cuda" => true,
        other => {
            return Err(Error::Config(format!(
                "--device {other}: expected cpu or cuda"
            )))
        }
    };
    let preset = Preset::FashionMnist.for_device(on_gpu);
    let data = args.data.clone().unwrap_or_else(default_image_folder);
    let corpus = load_image_folder(&data)?;
    if corpus.kind() != preset.data {
        return Err(Error::Config(format!(
            "{} holds {}, but the fashion-mnist preset reads {}",
            corpus.source(),
            corpus.kind(),
            preset.data
        )));
    }
    let all = corpus.split(Split::Test).len() / preset.seq_len;
    let test_images = match args.test_images {
        None => all,
        Some(n) if n == 0 || n > all => {
            return Err(Error::Config(format!(
                "--test-images {n}: must be between 1 and the {all} test images"
            )))
        }
        Some(n) => (n.div_ceil(preset.batch) * preset.batch).min(all),
    };
    let test_batches = test_images.div_ceil(preset.batch);
    std::fs::create_dir_all(&args.out)?;

    let (runs, best) = if on_gpu {
        compare(&Cuda::new(0)?, &preset, &args, &corpus, test_batches)?
    } else {
        compare(&Cpu::<f32>::new(), &preset, &args, &corpus, test_batches)?
    };
    let histogram_valid = corpus.unigram_bits_per_byte(Split::Valid)?;
    let histogram_test = corpus.unigram_bits_per_byte(Split::Test)?;

    println!(
        "| model | parameters | training pixels/s | steps in {s:.0} s | valid bpd at {s:.0} s | test bpd |",
        s = args.seconds
    );
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        let last = r.last();
        println!(
            "| {} | {} | {:.0} | {} | {:.3} | {:.3} |",
            r.model,
            r.params,
            r.pixels_per_second,
            last.step,
            last.bits_per_dim,
            r.test_bits_per_dim
        );
    }
    println!("| training-set pixel histogram | | | | {histogram_valid:.3} | {histogram_test:.3} |");
    if test_images < all {
        println!("(test bpd on the first {test_images} of the {all} test images)");
    }

    let samples = args.out.join("fashion-mnist-samples.png");
    let report = Report {
        device: &args.device,
        seconds: args.seconds,
        eval_seconds: args.eval_seconds,
        eval_batches: args.eval_batches,
        batch: preset.batch,
        lr: preset.lr,
        warmup_steps: preset.warmup_steps,
        seed: preset.seed,
        test_images,
        pixel_histogram_valid_bits_per_dim: histogram_valid,
        pixel_histogram_test_bits_per_dim: histogram_test,
        runs: &runs,
        samples: Samples {
            model: &runs[best].model,
            images: SAMPLES,
            seed: args.sample_seed,
            temperature: SAMPLE_TEMPERATURE,
            file: samples.display().to_string(),
        },
    };
    let json_path = args.out.join("fashion-mnist.json");
    let json = serde_json::to_string_pretty(&report).expect("the report serialises");
    hourglass::fs::write_atomic(&json_path, json.as_bytes())?;
    let panel = Panel {
        title: format!(
            "Fashion-MNIST: validation bits per dimension, {} images",
            args.eval_batches * preset.batch
        ),
        x_label: "training seconds".into(),
        y_label: "validation bits per dimension".into(),
        series: runs
            .iter()
            .map(|r| Series {
                name: r.model.clone(),
                points: r
                    .points
                    .iter()
                    .map(|p| (p.seconds, p.bits_per_dim))
                    .collect(),
            })
            .collect(),
    };
    let png = args.out.join("fashion-mnist.png");
    plot::write_panels_png(&png, &[panel], 1, 900, 520)?;
    println!(
        "wrote {}, {} and {}",
        png.display(),
        json_path.display(),
        samples.display()
    );
    Ok(())
}
