//! GPU microbenchmarks: every kernel and the whole HourGlass, timed with CUDA events after warm-up, median of
//! many runs, on sizes that fill an H100. Prints TFLOP/s (causal attention FLOPs counted as half of the full),
//! GB/s (against the bytes each op must move) and tokens/s. Without a GPU it says so and exits 0.
//!
//! `cargo bench --bench gpu`  (on a GPU machine without Rust: `tools/gpu-bundle.sh --benches` here, then
//! `bash tools/gpu-validate.sh --benches-only` there)

use hourglass::device::cuda::device_or_skip;
use hourglass::ops::attention::{self, AttnMask};
use hourglass::ops::{layernorm, linear, shorten, upsample};
use hourglass::rng::SeededRng;
use hourglass::{BackendCore, Cuda, HourGlass, HourGlassConfig, Parameters, Result, Tensor};

/// Median milliseconds of `f` over `runs` timed runs (CUDA events), after `warmup` runs.
fn median_ms(
    cuda: &Cuda,
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    cuda.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (start, end) = (cuda.event()?, cuda.event()?);
        cuda.record(&start)?;
        f()?;
        cuda.record(&end)?;
        end.synchronize()
            .map_err(|e| hourglass::Error::Cuda(format!("{e:?}")))?;
        times.push(
            start
                .elapsed_ms(&end)
                .map_err(|e| hourglass::Error::Cuda(format!("{e:?}")))? as f64,
        );
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}

fn random(cuda: &Cuda, shape: &[usize], seed: u64) -> Result<Tensor<Cuda>> {
    let mut rng = SeededRng::new(seed);
    let data: Vec<f64> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
    Tensor::from_f64(cuda, shape, &data)
}

fn row(what: &str, ms: f64, rate: f64, unit: &str) {
    println!("{what:<58} {ms:>9.3} ms {rate:>10.1} {unit}");
}

fn kernels(cuda: &Cuda) -> Result<()> {
    let (seq, batch, d, heads) = (4096usize, 8usize, 512usize, 8usize);
    let rows = seq * batch;
    let x = random(cuda, &[seq, batch, d], 1)?;
    println!(
        "\n-- kernels: x [{seq}, {batch}, {d}], {heads} heads (d_head {})",
        d / heads
    );

    // Attention: 4·B·H·T²·dh FLOPs for the full matrix, half for causal; backward is 2.5x forward.
    let (q, k, v) = (
        random(cuda, &[seq, batch, d], 2)?,
        random(cuda, &[seq, batch, d], 3)?,
        random(cuda, &[seq, batch, d], 4)?,
    );
    let dout = random(cuda, &[seq, batch, d], 5)?;
    let causal_flops = 4.0 * (batch * heads) as f64 * (seq * seq) as f64 * (d / heads) as f64 / 2.0;
    let ms = median_ms(cuda, 3, 20, || {
        attention::forward(&q, &k, &v, heads, AttnMask::Causal, None).map(drop)
    })?;
    row(
        "attention forward (causal)",
        ms,
        causal_flops / ms / 1e9,
        "TFLOP/s",
    );
    let saved = attention::forward(&q, &k, &v, heads, AttnMask::Causal, None)?;
    let ms_b = median_ms(cuda, 3, 20, || {
        attention::backward(&q, &k, &v, &saved, &dout, heads, AttnMask::Causal, None).map(drop)
    })?;
    row(
        "attention backward (causal)",
        ms_b,
        2.5 * causal_flops / ms_b / 1e9,
        "TFLOP/s",
    );
    row(
        "attention forward+backward (causal)",
        ms + ms_b,
        3.5 * causal_flops / (ms + ms_b) / 1e9,
        "TFLOP/s",
    );

    // LayerNorm: forward reads x, writes y; backward reads x and dy, writes dx (parameters are negligible).
    let gamma = random(cuda, &[d], 6)?;
    let beta = random(cuda, &[d], 7)?;
    let bytes = (rows * d * 4) as f64;
    let ms = median_ms(cuda, 3, 50, || {
        layernorm::forward(&x, &gamma, &beta).map(drop)
    })?;
    row("layernorm forward", ms, 2.0 * bytes / ms / 1e6, "GB/s");
    let (_, saved) = layernorm::forward(&x, &gamma, &beta)?;
    let (mut dg, mut db) = (Tensor::zeros(cuda, &[d])?, Tensor::zeros(cuda, &[d])?);
    let ms = median_ms(cuda, 3, 50, || {
        layernorm::backward(&x, &gamma, &saved, &dout, &mut dg, &mut db).map(drop)
    })?;
    row("layernorm backward", ms, 3.0 * bytes / ms / 1e6, "GB/s");

    // Shortening by 2 (read x, write half); upsampling + residual (read x and the half, write y).
    let ms = median_ms(cuda, 3, 50, || shorten::forward(&x, 2, 1).map(drop))?;
    row(
        "shift + avg-pool shortening (k=2) forward",
        ms,
        1.5 * bytes / ms / 1e6,
        "GB/s",
    );
    let short = shorten::forward(&x, 2, 1)?;
    let ms = median_ms(cuda, 3, 50, || {
        shorten::backward(&short, x.shape(), 2, 1).map(drop)
    })?;
    row(
        "shift + avg-pool shortening (k=2) backward",
        ms,
        1.5 * bytes / ms / 1e6,
        "GB/s",
    );
    let ms = median_ms(cuda, 3, 50, || {
        upsample::forward_add(&x, &short, 2).map(drop)
    })?;
    row(
        "naive upsampling + residual (k=2) forward",
        ms,
        2.5 * bytes / ms / 1e6,
        "GB/s",
    );
    let ms = median_ms(cuda, 3, 50, || upsample::backward(&x, 2).map(drop))?;
    row(
        "naive upsampling (k=2) backward",
        ms,
        1.5 * bytes / ms / 1e6,
        "GB/s",
    );

    // GEMMs of the feed-forward: [rows, 512] x [2048, 512]ᵀ and back.
    let w1 = random(cuda, &[2048, d], 8)?;
    let flops = 2.0 * rows as f64 * d as f64 * 2048.0;
    let ms = median_ms(cuda, 3, 20, || linear::forward(&x, &w1, None).map(drop))?;
    row(
        "linear 512->2048 forward (cuBLAS sgemm)",
        ms,
        flops / ms / 1e9,
        "TFLOP/s",
    );
    let h = linear::forward(&x, &w1, None)?;
    let mut dw = Tensor::zeros(cuda, &[2048, d])?;
    let ms = median_ms(cuda, 3, 20, || {
        linear::backward(&x, &w1, &h, &mut dw, None).map(drop)
    })?;
    row(
        "linear 512->2048 backward (dx and dW)",
        ms,
        2.0 * flops / ms / 1e9,
        "TFLOP/s",
    );
    Ok(())
}

fn whole_model(
    cuda: &Cuda,
    name: &str,
    config: &HourGlassConfig,
    seq: usize,
    batch: usize,
) -> Result<()> {
    let mut model = HourGlass::from_config(cuda, config, 0)?;
    let x = random(cuda, &[seq, batch, config.d_model], 1)?;
    let gy = random(cuda, &[seq, batch, config.d_model], 2)?;
    let tokens = (seq * batch) as f64;
    let label = format!(
        "{name} [{seq}, {batch}, {}] {:?}",
        config.d_model, config.shortening_factors
    );
    let ms = median_ms(cuda, 3, 10, || model.forward(&x).map(drop))?;
    row(
        &format!("{label} forward"),
        ms,
        tokens / ms * 1e3,
        "tokens/s",
    );
    let ms = median_ms(cuda, 3, 10, || {
        model.forward(&x)?;
        model.backward(&gy)?;
        model.zero_grad()
    })?;
    row(
        &format!("{label} fwd+bwd"),
        ms,
        tokens / ms * 1e3,
        "tokens/s",
    );
    Ok(())
}

fn main() -> Result<()> {
    let Some(cuda) = device_or_skip("benches/gpu")? else {
        return Ok(());
    };
    println!("device: {}", cuda.name()?);
    kernels(&cuda)?;
    println!("\n-- whole HourGlass, training mode (dropout on)");
    let seed = HourGlassConfig::reference(4, 512, 0.1, 2048, &[2, 3]);
    whole_model(&cuda, "seed", &seed, 10, 32)?;
    let large = HourGlassConfig::reference(8, 512, 0.1, 2048, &[2, 2]);
    whole_model(&cuda, "large", &large, 4096, 8)?;
    Ok(())
}
