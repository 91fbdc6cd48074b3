//! Generation speed: bytes per second of `train::sample::generate_all` with incremental decoding (per-level
//! caches, the default) against recomputing the whole context for every byte (`--recompute`), with the
//! context window held near 512 and 2048 bytes (a prompt that fills it, then bytes generated before it slides).
//! The `cpu` preset's model on the CPU; the `gpu` and `enwik8` presets' on a GPU when there is one (otherwise
//! it says so). The weights are the initial ones: speed does not depend on them. With
//! `HOURGLASS_BENCH_JSON=FILE` each result is appended to FILE as a JSON line.
//!
//! `cargo bench --bench sample`  (`-- cpu` or `-- gpu` for one of them)

mod common;

use common::Report;
use hourglass::device::cuda::bench_device_or_skip;
use hourglass::model::lm::HourglassLM;
use hourglass::model::Precision;
use hourglass::rng::SeededRng;
use hourglass::train::sample::{generate_all, SampleOptions};
use hourglass::train::{Preset, TrainConfig};
use hourglass::{Backend, Cpu, Result};
use serde_json::json;
use std::time::Instant;

/// Bytes per second generating `length` bytes after a prompt of `context − length` bytes (so the window ends
/// full and never slides), incrementally or by recomputation: timed from the first byte drawn to the last, so
/// the decoder's one reading of the prompt is left out.
fn bytes_per_s<B: Backend>(
    lm: &mut HourglassLM<B>,
    context: usize,
    length: usize,
    recompute: bool,
) -> Result<f64> {
    let mut rng = SeededRng::new(3);
    let prompt: Vec<u8> = (0..context - length)
        .map(|_| b'a' + (rng.next_u64() % 26) as u8)
        .collect();
    let options = SampleOptions {
        length,
        temperature: 1.0,
        top_k: 0,
        seed: 1,
        context,
        num_samples: 1,
        recompute,
    };
    let (mut first, mut last) = (None, Instant::now());
    generate_all(lm, &prompt, &options, |_, _| {
        last = Instant::now();
        first.get_or_insert(last);
        Ok(())
    })?;
    let first = first.expect("bytes were drawn");
    Ok((length - 1) as f64 / (last - first).as_secs_f64())
}

fn bench<B: Backend>(
    backend: &B,
    device: &str,
    preset: Preset,
    precision: Precision,
) -> Result<()> {
    let config = TrainConfig {
        precision: Some(precision),
        ..preset.config()
    };
    let mut lm = config.resolve(backend).build_lm(backend)?;
    let report = Report::from_env(device);
    for context in [512, 2048] {
        let cached = bytes_per_s(&mut lm, context, 256, false)?;
        let recomputed = bytes_per_s(&mut lm, context, 8, true)?;
        println!(
            "{:<7} {precision:<4} {device:<28} context {context:>5}: {cached:>9.1} bytes/s decoding, \
             {recomputed:>8.2} bytes/s recomputing ({:.0}x)",
            preset.name(),
            cached / recomputed
        );
        for (mode, rate) in [("decode", cached), ("recompute", recomputed)] {
            report.write(json!({
                "kind": "sample", "config": preset.name(), "mode": format!("{precision}-{mode}"),
                "context": context, "bytes_per_s": rate, "status": "ok",
            }));
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let only: Option<String> = std::env::args().skip(1).find(|a| a == "cpu" || a == "gpu");
    if only.as_deref() != Some("gpu") {
        let device = format!("cpu ({} threads)", rayon::current_num_threads());
        bench(&Cpu::<f32>::new(), &device, Preset::Cpu, Precision::Element)?;
    }
    if only.as_deref() != Some("cpu") {
        if let Some(cuda) = bench_device_or_skip("bench sample (gpu and enwik8 presets)")? {
            let device = format!("cuda:0 ({})", cuda.name()?);
            for preset in [Preset::Gpu, Preset::Enwik8] {
                bench(&cuda, &device, preset, Precision::Bf16)?;
            }
        }
    }
    Ok(())
}
