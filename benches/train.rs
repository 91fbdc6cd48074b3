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
//! (`--precision`; the speed-up is printed), with the memory pool's high-water mark (plus the graph's pool in
//! graph mode); bf16 in each way a step can be issued (`StepMode`: host round trips, device-resident, one CUDA
//! graph), with the operations the host issues a step; and the kernels and GEMMs one transformer layer's
//! forward and backward issue. `tools/bench_torch_step.py` times the same step in every PyTorch mode
//! (torch.compile's reduce-overhead among them). With `HOURGLASS_BENCH_JSON=FILE` each step's result is
//! appended to FILE as a JSON line (`docs/perf.md`).
//!
//! `cargo bench --bench train`  (`-- cpu` or `-- gpu` for one of them)

mod common;

use common::Report;
use hourglass::config::Depth;
use hourglass::device::cuda::bench_device_or_skip;
use hourglass::model::{size, Precision};
use hourglass::rng::SeededRng;
use hourglass::train::data::{default_corpus_path, Corpus};
use hourglass::train::{Preset, StepMode, Trainer};
use hourglass::{Backend, Cpu, Cuda, HourGlass, Result, Tensor};
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

/// The mean step of `preset` in `precision` on `backend`, issued in `mode`, in seconds: `runs` steps queued one
/// after another and waited for at the end (the device-resident modes keep one step in flight, so a step's own
/// time is not observable), after two warm-up steps (the graph's capture among them). `launches` counts the
/// operations the host issues (0 where it cannot tell); their number a step is printed.
fn bench<B: Backend>(
    backend: &B,
    device: &str,
    preset: Preset,
    precision: Precision,
    mode: StepMode,
    corpus: &Corpus,
    launches: &dyn Fn() -> u64,
) -> Result<f64> {
    let mut config = preset.config();
    config.precision = Some(precision);
    let (warmup, runs) = (2, 7);
    config.steps = (warmup + runs) as u64;
    config.warmup_steps = 1;
    let tokens = config.tokens_per_step();
    let mut trainer = Trainer::new(backend, config.clone(), corpus)?;
    trainer.set_step_mode(mode)?;
    for _ in 0..warmup {
        trainer.queue_step(corpus)?;
    }
    trainer.finish_steps()?;
    backend.synchronize()?;
    let (t, issued) = (Instant::now(), launches());
    for _ in 0..runs {
        trainer.queue_step(corpus)?;
    }
    trainer.finish_steps()?;
    backend.synchronize()?;
    let mean = t.elapsed().as_secs_f64() / runs as f64;
    let per_step = (launches() - issued) as f64 / runs as f64;
    let m = &config.model;
    println!(
        "{:<8} {precision:<4} {:<6} {device:<28} d_model {:>4} heads {:>2} d_ff {:>5} factors {:?} depth {} | seq \
         {:>5} x batch {:>3} | {:>9.1} ms/step {:>10.0} tokens/s | {per_step:.0} launches/step",
        preset.name(),
        format!("{mode:?}").to_lowercase(),
        m.d_model,
        m.n_heads,
        m.d_ff,
        m.shortening_factors,
        serde_json::to_string(&m.depth).expect("depth"),
        config.seq_len,
        config.batch,
        mean * 1e3,
        tokens as f64 / mean
    );
    Ok(mean)
}

/// Kernels and GEMMs the host issues for one transformer layer's forward and for its backward, in bf16 at the
/// enwik8 preset's shapes (dropout on): a plain stack of two layers minus one of one.
fn launches_per_layer(cuda: &Cuda) -> Result<(u64, u64)> {
    let preset = Preset::Enwik8.config();
    let count = |layers: usize| -> Result<(u64, u64)> {
        let mut model = preset.model.clone();
        model.shortening_factors = Vec::new();
        model.depth = Some(Depth::Layers(layers));
        let mut hourglass = HourGlass::from_config(cuda, &model, 1)?;
        hourglass.set_precision(Precision::Bf16);
        let shape = [preset.seq_len, preset.batch, model.d_model];
        let x = Tensor::from_f64(cuda, &shape, &vec![0.01; shape.iter().product()])?;
        let y = hourglass.forward(&x)?;
        hourglass.backward(&y)?;
        let start = cuda.launches();
        let y = hourglass.forward(&x)?;
        let forward = cuda.launches() - start;
        hourglass.backward(&y)?;
        Ok((forward, cuda.launches() - start - forward))
    };
    let ((f1, b1), (f2, b2)) = (count(1)?, count(2)?);
    Ok((f2 - f1, b2 - b1))
}

/// The step's JSON line for `tools/perf_report.py`: time, throughput, training FLOPs per byte (3x the forward
/// count of `model::size::flops_per_token`), achieved TFLOP/s, and the peak memory when known.
fn step_result(
    preset: Preset,
    precision: Precision,
    mode: StepMode,
    seconds: f64,
    peak_mem_bytes: Option<u64>,
) -> Result<serde_json::Value> {
    let c = preset.config();
    let flops = 3.0 * size::flops_per_token(&c.model, c.seq_len, true)?;
    let tokens_per_s = c.tokens_per_step() as f64 / seconds;
    Ok(json!({
        "kind": "step", "mode": step_mode_name(precision, mode), "config": preset.name(), "seq_len": c.seq_len, "batch": c.batch,
        "ms": seconds * 1e3, "tokens_per_s": tokens_per_s, "flops_per_token": flops,
        "tflops": flops * tokens_per_s / 1e12, "mfu": null, "peak_mem_bytes": peak_mem_bytes,
        "compile_s": null, "status": "ok",
    }))
}

/// The step table's mode (`tools/perf_report.py`: MODE_ORDER): the precision, and how the step is issued
/// unless by the host.
fn step_mode_name(precision: Precision, mode: StepMode) -> String {
    match mode {
        StepMode::Host => precision.to_string(),
        StepMode::Device => format!("{precision}-device"),
        StepMode::Graph => format!("{precision}-graph"),
    }
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
        "training throughput on {} (mean of 7 steps queued after 2 warm-up steps)",
        corpus.source()
    );
    if only.as_deref() != Some("gpu") {
        let device = format!("cpu ({} threads)", rayon::current_num_threads());
        let seconds = bench(
            &Cpu::<f32>::new(),
            &device,
            Preset::Cpu,
            Precision::Element,
            StepMode::Host,
            &corpus,
            &|| 0,
        )?;
        Report::from_env(&device).write(step_result(
            Preset::Cpu,
            Precision::Element,
            StepMode::Host,
            seconds,
            None,
        )?);
        compare(
            Preset::Cpu.config().tokens_per_step() as f64 / seconds,
            "cpu",
        );
    }
    if only.as_deref() != Some("cpu") {
        if let Some(cuda) = bench_device_or_skip("bench train (gpu and enwik8 presets)")? {
            let name = cuda.name()?;
            let device = format!("cuda:0 ({name})");
            let report = Report::from_env(&name);
            let (forward, backward) = launches_per_layer(&cuda)?;
            println!(
                "a transformer layer issues {forward} kernels and GEMMs forward, {backward} backward (bf16, \
                 enwik8 shapes, dropout on)"
            );
            let launches = || cuda.launches();
            for preset in [Preset::Gpu, Preset::Enwik8] {
                let mut f32_seconds = None;
                let runs = [
                    (Precision::Element, StepMode::Graph),
                    (Precision::Bf16, StepMode::Host),
                    (Precision::Bf16, StepMode::Device),
                    (Precision::Bf16, StepMode::Graph),
                ];
                for (precision, mode) in runs {
                    cuda.reset_memory_high_water()?;
                    let seconds =
                        bench(&cuda, &device, preset, precision, mode, &corpus, &launches)?;
                    // Graph memory is a pool of its own; its high-water mark is kept since the start.
                    let graph = match mode {
                        StepMode::Graph => cuda.graph_memory_high_water()?,
                        _ => 0,
                    };
                    let peak = cuda.memory_high_water()?.map(|pool| pool + graph);
                    report.write(step_result(preset, precision, mode, seconds, peak)?);
                    match (precision, mode, f32_seconds) {
                        (Precision::Element, _, _) => f32_seconds = Some(seconds),
                        (_, StepMode::Graph, Some(f32_s)) => {
                            println!(
                                "bf16 speed-up over f32 (both graphs): {:.2}x",
                                f32_s / seconds
                            )
                        }
                        _ => {}
                    }
                    // Under tools/gpu-validate.sh (results as JSON), tools/bench_torch_step.py times PyTorch.
                    if preset == Preset::Gpu
                        && mode == StepMode::Graph
                        && std::env::var_os("HOURGLASS_BENCH_JSON").is_none()
                    {
                        compare(preset.config().tokens_per_step() as f64 / seconds, "cuda");
                    }
                }
            }
        }
    }
    Ok(())
}
