//! The training loop and sampling on the GPU against the CPU: the same config and data give the same losses
//! (to f32 rounding, step by step; in bf16 against the bf16 CPU reference within bounds calibrated here on
//! the CPU), two GPU runs give identical bits, a resumed GPU run equals an uninterrupted one, and the
//! sampler's logits match.
//!
//! The GPU tests are ignored without a GPU: `cargo test --test gpu_train_loop -- --include-ignored` (prints
//! "skipped" without a device; fails with `HOURGLASS_REQUIRE_GPU=1`).

mod common;

use common::rel_err;
use hourglass::config::Positions;
use hourglass::device::cuda::device_or_skip;
use hourglass::model::{Parameters, Precision};
use hourglass::train::data::Corpus;
use hourglass::train::sample::next_logits;
use hourglass::train::trainer::{Observer, StepLog};
use hourglass::train::{Outcome, Preset, TrainConfig, Trainer};
use hourglass::{Backend, Cpu, HourGlassConfig};
use std::sync::atomic::{AtomicBool, Ordering};

fn corpus() -> Corpus {
    let text = "<page><title>Sand</title><text>An hourglass measures time with falling sand.</text></page>\n"
        .repeat(60);
    Corpus::from_bytes(text.into_bytes()).unwrap()
}

/// Ragged on purpose: seq_len 21 is not a multiple of the factors [2, 3].
fn config(steps: u64) -> TrainConfig {
    let mut model = HourGlassConfig::reference(4, 64, 0.1, 128, &[2, 3]);
    model.positions = Positions::Rotary;
    TrainConfig {
        model,
        tie_embedding: true,
        seq_len: 21,
        batch: 3,
        accum: 2,
        steps,
        lr: 2e-3,
        min_lr: 2e-4,
        warmup_steps: 2,
        seed: 3,
        eval_every: 3,
        eval_batches: 2,
        save_every: 0,
        ..Preset::Cpu.config()
    }
}

fn train<B: Backend>(backend: &B, steps: u64) -> (Vec<f64>, Vec<f64>) {
    train_in(backend, steps, Precision::F32)
}

fn train_in<B: Backend>(backend: &B, steps: u64, precision: Precision) -> (Vec<f64>, Vec<f64>) {
    let config = TrainConfig {
        precision: Some(precision),
        ..config(steps)
    };
    let mut t = Trainer::new(backend, config, &corpus()).unwrap();
    let outcome = t
        .run(&corpus(), None, &AtomicBool::new(false), &mut ())
        .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    let losses = t.history().steps.iter().map(|s| s.bits).collect();
    let mut params = Vec::new();
    t.lm()
        .visit("", &mut |_, p| params.extend(p.value.to_f64_vec().unwrap()));
    (losses, params)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_matches_the_cpu_and_repeats_exactly() {
    let Some(cuda) = device_or_skip("gpu training loop").unwrap() else {
        return;
    };
    let (cpu_losses, cpu_params) = train(&Cpu::<f32>::new(), 6);
    let (gpu_losses, gpu_params) = train(&cuda, 6);
    for (step, (g, c)) in gpu_losses.iter().zip(&cpu_losses).enumerate() {
        assert!(
            ((g - c) / c).abs() < 1e-4,
            "step {}: gpu {g} vs cpu {c}",
            step + 1
        );
    }
    let e = rel_err(&gpu_params, &cpu_params);
    assert!(e < 1e-4, "parameters after 6 steps: relative error {e:e}");
    let (again_losses, again_params) = train(&cuda, 6);
    assert_eq!(again_losses, gpu_losses, "a second GPU run differs");
    assert_eq!(again_params, gpu_params, "a second GPU run differs");
}

/// Largest relative difference of a step's loss, and of the parameters after 6 steps, between the GPU in bf16
/// and the bf16 CPU reference: a fifth of the f32-vs-bf16 floor measured below at most (measured 2026-11-30:
/// losses 1.35e-4, parameters 2.9e-3; a mean loss barely moves when single predictions do).
const BF16_LOSS_BOUND: f64 = 2.5e-5;
const BF16_PARAMS_BOUND: f64 = 5e-4;

/// Relative error of each step's loss (the largest), and of the final parameters.
fn training_errors(a: &(Vec<f64>, Vec<f64>), b: &(Vec<f64>, Vec<f64>)) -> (f64, f64) {
    let loss =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| ((x - y) / y).abs())
            .fold(0.0, f64::max);
    (loss, rel_err(&a.1, &b.1))
}

#[test]
fn bf16_training_bounds_are_a_fifth_of_the_cpu_noise_floor() {
    let f32_run = train_in(&Cpu::<f32>::new(), 6, Precision::F32);
    let bf16_run = train_in(&Cpu::<f32>::new(), 6, Precision::Bf16);
    let (loss, params) = training_errors(&bf16_run, &f32_run);
    println!("f32 vs bf16 on the CPU: losses {loss:.2e}, parameters {params:.2e}");
    assert!(loss >= 5.0 * BF16_LOSS_BOUND, "loss floor {loss:e}");
    assert!(
        params >= 5.0 * BF16_PARAMS_BOUND,
        "parameter floor {params:e}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_bf16_training_matches_the_bf16_cpu_reference() {
    let Some(cuda) = device_or_skip("gpu bf16 training loop").unwrap() else {
        return;
    };
    let cpu = train_in(&Cpu::<f32>::new(), 6, Precision::Bf16);
    let gpu = train_in(&cuda, 6, Precision::Bf16);
    let (loss, params) = training_errors(&gpu, &cpu);
    println!("gpu vs cpu in bf16: losses {loss:.2e}, parameters {params:.2e}");
    assert!(loss < BF16_LOSS_BOUND, "losses differ by {loss:e}");
    assert!(
        params < BF16_PARAMS_BOUND,
        "parameters differ by {params:e}"
    );
    assert_eq!(
        train_in(&cuda, 6, Precision::Bf16),
        gpu,
        "a second GPU run differs"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_resume_equals_an_uninterrupted_run() {
    let Some(cuda) = device_or_skip("gpu resume").unwrap() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hourglass-gpu-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("ckpt.safetensors");
    let (whole, _) = train(&cuda, 5);

    struct Raise<'a>(&'a AtomicBool);
    impl Observer for Raise<'_> {
        fn step(&mut self, log: &StepLog) {
            if log.step == 2 {
                self.0.store(true, Ordering::SeqCst);
            }
        }
    }
    let stop = AtomicBool::new(false);
    let mut first = Trainer::new(&cuda, config(5), &corpus()).unwrap();
    let outcome = first
        .run(&corpus(), Some(&ckpt), &stop, &mut Raise(&stop))
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped { step: 2 });
    let mut resumed = Trainer::resume(&cuda, &ckpt, None, &corpus()).unwrap();
    resumed
        .run(&corpus(), Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    let losses: Vec<f64> = resumed.history().steps.iter().map(|s| s.bits).collect();
    assert_eq!(losses, whole);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_sampling_logits_match_the_cpu() {
    let Some(cuda) = device_or_skip("gpu sampling").unwrap() else {
        return;
    };
    let c = config(1);
    let mut cpu_lm =
        hourglass::model::lm::HourglassLM::build(&Cpu::<f32>::new(), &c.model, 9, true).unwrap();
    let mut gpu_lm = hourglass::model::lm::HourglassLM::build(&cuda, &c.model, 9, true).unwrap();
    let context = b"An hourglass measures";
    for t in [1, 5, 6, 13, context.len()] {
        let a = next_logits(&mut gpu_lm, &context[..t]).unwrap();
        let b = next_logits(&mut cpu_lm, &context[..t]).unwrap();
        let e = rel_err(&a, &b);
        assert!(e < 1e-5, "prefix {t}: relative error {e:e}");
    }
}
