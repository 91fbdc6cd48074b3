//! Training throughput: whole optimiser steps (batches, forward, backward, clipping, AdamW) of the default
//! configurations, in tokens (bytes) per second, median of several steps after warm-up. The CPU preset runs
//! here; the GPU preset runs when a GPU is present (otherwise it says so). The data is the default corpus
//! when `tools/fetch-corpus.sh` has fetched it, else seeded random text of the same kind (throughput does not
//! depend on the bytes).
//!
//! Next to each, the same training step in PyTorch (`tools/bench_torch_train.py`: the same LM, rotary
//! positions included, AdamW, clipping; run with `$HOURGLASS_PYTHON`, default `python3`) and the ratio, when
//! that Python has torch; otherwise it says so.
//!
//! On a GPU it times the `gpu` and `enwik8` presets (the paper's model, seq 2048 x batch 8) in f32 and in bf16
//! (`--precision`; the speed-up is printed), with the memory pool's high-water mark; `tools/bench_torch_step.py` times the same step in every PyTorch mode. With
//! `HOURGLASS_BENCH_JSON=FILE` each step's result is appended to FILE as a JSON line (`docs/perf.md`).
//!
//! `cargo bench --bench train`  (`-- cpu` or `-- gpu` for one of them)

mod common;

use common::Report;
use hourglass::device::cuda::device_or_skip;
use hourglass::model::{size, Precision};
use hourglass::rng::SeededRng;
use hourglass::train::data::{default_corpus_path, Corpus};
use hourglass::train::{Preset, Trainer};
use hourglass::{Backend, Cpu, Result};
use serde_json::json;
use std::time::Instant;

fn corpus() -> Result<Corpus> {
    let path = default_corpus_path();
    if path.exists() {
        return Corpus::load(path);
    }
    let words = [
        "the ",
        "hourglass ",
        "of ",
        "[[",
        "]] ",
        "model ",
        "and ",
        "\n",
        "a ",
        "==",
    ];
    let mut rng = SeededRng::new(1);
    let text: String = (0..200_000)
        .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
        .collect();
    Corpus::from_bytes(text.into_bytes())
}

/// Tokens/s of the same preset's training step in PyTorch, or why there is none.
fn torch_tokens_per_s(device: &str) -> std::result::Result<f64, String> {
    let python = std::env::var("HOURGLASS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/bench_torch_train.py");
    let out = std::process::Command::new(&python)
        .args([script, "--device", device])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{python} {script} failed: {}",
            err.lines().last().unwrap_or("")
        ));
    }
    println!("{}", text.trim());
    text.split_whitespace()
        .rev()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("unreadable output: {text}"))
}

/// The median step of `preset` in `precision` on `backend`, in seconds.
fn bench<B: Backend>(
    backend: &B,
    device: &str,
    preset: Preset,
    precision: Precision,
    corpus: &Corpus,
) -> Result<f64> {
    let mut config = preset.config();
    config.precision = Some(precision);
    let (warmup, runs) = (2, 7);
    config.steps = (warmup + runs) as u64;
    config.warmup_steps = 1;
    let tokens = config.tokens_per_step();
    let mut trainer = Trainer::new(backend, config.clone(), corpus)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        backend.synchronize()?;
        let t = Instant::now();
        trainer.train_step(corpus)?;
        backend.synchronize()?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[runs / 2];
    let m = &config.model;
    println!(
        "{:<8} {precision:<4} {device:<28} d_model {:>4} heads {:>2} d_ff {:>5} factors {:?} depth {} | seq {:>5} \
         x batch {:>3} | {:>9.1} ms/step {:>10.0} tokens/s",
        preset.name(),
        m.d_model,
        m.n_heads,
        m.d_ff,
        m.shortening_factors,
        serde_json::to_string(&m.depth).expect("depth"),
        config.seq_len,
        config.batch,
        median * 1e3,
        tokens as f64 / median
    );
    Ok(median)
}

/// The step's JSON line for `tools/perf_report.py`: time, throughput, training FLOPs per byte (3x the forward
/// count of `model::size::flops_per_token`), achieved TFLOP/s, and the peak memory when known.
fn step_result(
    preset: Preset,
    precision: Precision,
    seconds: f64,
    peak_mem_bytes: Option<u64>,
) -> Result<serde_json::Value> {
    let c = preset.config();
    let flops = 3.0 * size::flops_per_token(&c.model, c.seq_len, true)?;
    let tokens_per_s = c.tokens_per_step() as f64 / seconds;
    Ok(json!({
        "kind": "step", "mode": precision.to_string(), "config": preset.name(), "seq_len": c.seq_len, "batch": c.batch,
        "ms": seconds * 1e3, "tokens_per_s": tokens_per_s, "flops_per_token": flops,
        "tflops": flops * tokens_per_s / 1e12, "mfu": null, "peak_mem_bytes": peak_mem_bytes,
        "compile_s": null, "status": "ok",
    }))
}

fn compare(ours: f64, device: &str) {
    match torch_tokens_per_s(device) {
        Ok(torch) => println!("ratio to PyTorch: {:.2}x", ours / torch),
        Err(why) => println!("PyTorch: not measured ({why})"),
    }
}

fn main() -> Result<()> {
    let only: Option<String> = std::env::args().skip(1).find(|a| a == "cpu" || a == "gpu");
    let corpus = corpus()?;
    println!(
        "training throughput on {} (median of 7 steps after 2 warm-up steps)",
        corpus.source()
    );
    if only.as_deref() != Some("gpu") {
        let device = format!("cpu ({} threads)", rayon::current_num_threads());
        let seconds = bench(
            &Cpu::<f32>::new(),
            &device,
            Preset::Cpu,
            Precision::F32,
            &corpus,
        )?;
        Report::from_env(&device).write(step_result(Preset::Cpu, Precision::F32, seconds, None)?);
        compare(
            Preset::Cpu.config().tokens_per_step() as f64 / seconds,
            "cpu",
        );
    }
    if only.as_deref() != Some("cpu") {
        if let Some(cuda) = device_or_skip("bench train (gpu and enwik8 presets)")? {
            let name = cuda.name()?;
            let device = format!("cuda:0 ({name})");
            let report = Report::from_env(&name);
            for preset in [Preset::Gpu, Preset::Enwik8] {
                let mut f32_seconds = None;
                for precision in [Precision::F32, Precision::Bf16] {
                    cuda.reset_memory_high_water()?;
                    let seconds = bench(&cuda, &device, preset, precision, &corpus)?;
                    let peak = cuda.memory_high_water()?;
                    report.write(step_result(preset, precision, seconds, peak)?);
                    match f32_seconds {
                        None => f32_seconds = Some(seconds),
                        Some(f32_s) => println!("bf16 speed-up over f32: {:.2}x", f32_s / seconds),
                    }
                    // Under tools/gpu-validate.sh (results as JSON), tools/bench_torch_step.py times PyTorch.
                    if preset == Preset::Gpu && std::env::var_os("HOURGLASS_BENCH_JSON").is_none() {
                        compare(preset.config().tokens_per_step() as f64 / seconds, "cuda");
                    }
                }
            }
        }
    }
    Ok(())
}
