//! GPU microbenchmarks: every kernel and the whole HourGlass, timed with CUDA events after warm-up, median of
//! many runs, on sizes that fill an H100. Prints TFLOP/s (causal attention FLOPs counted as half of the full),
//! GB/s (against the bytes each op must move) and tokens/s; the GEMMs and the whole model in f32 and in bf16.
//! Without a GPU it says so and exits 0.
//!
//! With `HOURGLASS_BENCH_JSON=FILE`, each kernel's result is appended to FILE as a JSON line for
//! `tools/perf_report.py` (`docs/perf.md`).
//!
//! `cargo bench --bench gpu`  (on a GPU machine without Rust: `tools/gpu-bundle.sh --benches` here, then
//! `bash tools/gpu-validate.sh --benches-only` there)

mod common;

use common::Report;
use hourglass::device::cuda::{bench_device_or_skip, AttnVersion, CudaOptions};
use hourglass::model::{size, Precision};
use hourglass::ops::adamw::{self, AdamWStep};
use hourglass::ops::attention::{self, AttnMask};
use hourglass::ops::{embedding, layernorm, linear, loss, shorten, upsample};
use hourglass::rng::{DropoutMask, SeededRng};
use hourglass::train::Preset;
use hourglass::{
    BackendCore, Cuda, HourGlass, HourGlassConfig, Parameters, Result, Tensor, Tokens,
};
use serde_json::json;

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

/// Prints a kernel's line and writes its JSON result (op and shape named as `tools/bench_torch_kernels.py`
/// names PyTorch's, so `tools/perf_report.py` sets them side by side): `rate` is TFLOP/s or GB/s.
#[allow(clippy::too_many_arguments)]
fn kernel(
    report: &Report,
    op: &str,
    variant: &str,
    shape: &str,
    ms: f64,
    rate: f64,
    unit: &str,
    name: Option<&str>,
) {
    row(
        &format!("{op} {variant} {} {shape}", name.unwrap_or("")),
        ms,
        rate,
        unit,
    );
    let (tflops, gbps) = if unit == "TFLOP/s" {
        (Some(rate), None)
    } else {
        (None, Some(rate))
    };
    let mut line = json!({
        "kind": "kernel", "op": op, "variant": variant, "shape": shape, "ms": ms, "tflops": tflops, "gbps": gbps,
    });
    if let Some(name) = name {
        line["name"] = json!(name);
    }
    report.write(line);
}

/// Causal self-attention of the packed q, k, v that one projection GEMM leaves (`[T, B, 3·d]`), forward and
/// backward, without and with the preset's dropout (0.2): the f32 kernels and the bf16 tensor-core ones on
/// `cuda` (its `attention_version`), and the bf16 simple version on `simple`.
/// 4·B·H·T²·dh FLOPs for the full matrix, half of it for causal; backward counts 2.5x forward.
fn attention_kernels(
    (cuda, simple): (&Cuda, &Cuda),
    report: &Report,
    seq: usize,
    batch: usize,
    heads: usize,
    d: usize,
) -> Result<()> {
    let shape = format!("L={seq} B={batch} H={heads} dh={}", d / heads);
    let causal_flops = 4.0 * (batch * heads) as f64 * (seq * seq) as f64 * (d / heads) as f64 / 2.0;
    let tuned = format!("bf16 mma {:?}", cuda.attention_version()).to_lowercase();
    for (variant, on, bf16) in [
        ("f32", cuda, false),
        (tuned.as_str(), cuda, true),
        ("bf16 mma simple", simple, true),
    ] {
        let (qkv, dout) = (
            random(on, &[seq, batch, 3 * d], 2)?,
            random(on, &[seq, batch, d], 5)?,
        );
        let qkv = if bf16 { qkv.to_bf16()? } else { qkv };
        for dropout in [None, Some(DropoutMask::new(0.2, 7))] {
            let variant = match dropout {
                Some(_) => format!("{variant} dropout"),
                None => variant.to_string(),
            };
            let ms = median_ms(on, 3, 20, || {
                attention::forward_packed(&qkv, heads, AttnMask::Causal, dropout).map(drop)
            })?;
            let rate = causal_flops / ms / 1e9;
            kernel(
                report,
                "attention_fwd",
                &variant,
                &shape,
                ms,
                rate,
                "TFLOP/s",
                None,
            );
            let saved = attention::forward_packed(&qkv, heads, AttnMask::Causal, dropout)?;
            let ms = median_ms(on, 3, 20, || {
                attention::backward_packed(&qkv, &saved, &dout, heads, AttnMask::Causal, dropout)
                    .map(drop)
            })?;
            let rate = 2.5 * causal_flops / ms / 1e9;
            kernel(
                report,
                "attention_bwd",
                &variant,
                &shape,
                ms,
                rate,
                "TFLOP/s",
                None,
            );
        }
    }
    Ok(())
}

/// The same device with the simple bf16 attention forward (the other options as `cuda` has them).
fn simple_attention(cuda: &Cuda) -> Result<Cuda> {
    let options = CudaOptions {
        gemm: cuda.gemm_path(),
        attention: AttnVersion::Simple,
        ..CudaOptions::from_env()?
    };
    Cuda::with_options(0, options)
}

/// Every kernel of the `enwik8` preset's training step at its shapes: d_model 512, 8 heads (d_head 64),
/// d_ff 2048, batch 8, at full length 2048 and shortened by 3 (683).
fn kernels(cuda: &Cuda, report: &Report) -> Result<()> {
    let simple = &simple_attention(cuda)?;
    let (batch, d, heads, d_ff, k) = (8usize, 512usize, 8usize, 2048usize, 3usize);
    for seq in [2048usize, 2048usize.div_ceil(k)] {
        let rows = seq * batch;
        let shape = format!("L={seq} B={batch} H={heads} dh={}", d / heads);
        println!("\n-- kernels at {shape} (x [{seq}, {batch}, {d}])");
        let x = random(cuda, &[seq, batch, d], 1)?;
        let dout = random(cuda, &[seq, batch, d], 5)?;

        attention_kernels((cuda, simple), report, seq, batch, heads, d)?;

        // LayerNorm: forward reads x, writes y; backward reads x and dy, writes dx (parameters negligible).
        let rows_shape = format!("N={rows} D={d}");
        let gamma = random(cuda, &[d], 6)?;
        let beta = random(cuda, &[d], 7)?;
        let bytes = (rows * d * 4) as f64;
        let ms = median_ms(cuda, 3, 50, || {
            layernorm::forward(&x, &gamma, &beta).map(drop)
        })?;
        kernel(
            report,
            "layernorm_fwd",
            "f32",
            &rows_shape,
            ms,
            2.0 * bytes / ms / 1e6,
            "GB/s",
            None,
        );
        let (_, saved) = layernorm::forward(&x, &gamma, &beta)?;
        let (mut dg, mut db) = (Tensor::zeros(cuda, &[d])?, Tensor::zeros(cuda, &[d])?);
        let ms = median_ms(cuda, 3, 50, || {
            layernorm::backward(&x, &gamma, &saved, &dout, &mut dg, &mut db).map(drop)
        })?;
        kernel(
            report,
            "layernorm_bwd",
            "f32",
            &rows_shape,
            ms,
            3.0 * bytes / ms / 1e6,
            "GB/s",
            None,
        );

        // A layer's GEMMs (x [M, K] · Wᵀ + b, W [N, K]); q, k and v come from one (the stacked weights).
        let mut gemms = vec![
            ("qkv", 3 * d, d),
            ("proj", d, d),
            ("ff1", d_ff, d),
            ("ff2", d, d_ff),
        ];
        if seq == 2048 {
            gemms.push(("head", 256, d));
        }
        // Rounding to bf16 (what a bf16 GEMM's activation operand costs): reads 4 bytes, writes 2.
        let ms = median_ms(cuda, 3, 50, || x.to_bf16().map(drop))?;
        let rate = 6.0 * (rows * d) as f64 / ms / 1e6;
        kernel(
            report,
            "round_to_bf16",
            "f32",
            &rows_shape,
            ms,
            rate,
            "GB/s",
            None,
        );
        for (name, n, kdim) in gemms {
            let xin = random(cuda, &[rows, kdim], 8)?;
            let (w, bias) = (random(cuda, &[n, kdim], 9)?, random(cuda, &[n], 10)?);
            let flops = 2.0 * (rows * n * kdim) as f64;
            let gemm_shape = format!("M={rows} N={n} K={kdim}");
            let dy = linear::forward(&xin, &w, None)?;
            // f32 operands and bf16 (tensor cores); f32 accumulation and outputs both; the bias in the epilogue.
            for variant in ["f32", "bf16"] {
                let (xin, w) = if variant == "bf16" {
                    (xin.to_bf16()?, w.to_bf16()?)
                } else {
                    (xin.share(), w.share())
                };
                let ms = median_ms(cuda, 3, 20, || {
                    linear::forward(&xin, &w, Some(&bias)).map(drop)
                })?;
                let rate = flops / ms / 1e9;
                kernel(
                    report,
                    "gemm",
                    variant,
                    &gemm_shape,
                    ms,
                    rate,
                    "TFLOP/s",
                    Some(name),
                );
                let mut dw = Tensor::zeros(cuda, &[n, kdim])?;
                // In bf16 this includes rounding dy, as the model's backward does.
                let ms = median_ms(cuda, 3, 20, || {
                    linear::backward(&xin, &w, &dy, &mut dw, None).map(drop)
                })?;
                let rate = 2.0 * flops / ms / 1e9;
                kernel(
                    report,
                    "gemm_bwd",
                    variant,
                    &gemm_shape,
                    ms,
                    rate,
                    "TFLOP/s",
                    Some(name),
                );
            }
        }
    }

    // The ops between the levels, at full length: x [2048, 8, 512] shortened by 3 to 683.
    let (seq, rows) = (2048usize, 2048 * batch);
    let shape = format!("T={seq} B={batch} D={d} k={k}");
    println!("\n-- resampling, embedding, loss and AdamW ({shape})");
    let x = random(cuda, &[seq, batch, d], 1)?;
    let bytes = (rows * d * 4) as f64;
    let short_bytes = (seq.div_ceil(k) * batch * d * 4) as f64;
    let ms = median_ms(cuda, 3, 50, || shorten::forward(&x, k, k - 1).map(drop))?;
    let rate = (bytes + short_bytes) / ms / 1e6;
    kernel(
        report,
        "shift_shorten",
        "f32",
        &shape,
        ms,
        rate,
        "GB/s",
        None,
    );
    let short = shorten::forward(&x, k, k - 1)?;
    let ms = median_ms(cuda, 3, 50, || {
        shorten::backward(&short, x.shape(), k, k - 1).map(drop)
    })?;
    let rate = (bytes + short_bytes) / ms / 1e6;
    kernel(
        report,
        "shift_shorten_bwd",
        "f32",
        &shape,
        ms,
        rate,
        "GB/s",
        None,
    );
    let ms = median_ms(cuda, 3, 50, || {
        upsample::forward_add(&x, &short, k).map(drop)
    })?;
    let rate = (2.0 * bytes + short_bytes) / ms / 1e6;
    kernel(
        report,
        "upsample_skip",
        "f32",
        &shape,
        ms,
        rate,
        "GB/s",
        None,
    );
    let ms = median_ms(cuda, 3, 50, || upsample::backward(&x, k).map(drop))?;
    let rate = (bytes + short_bytes) / ms / 1e6;
    kernel(
        report,
        "upsample_skip_bwd",
        "f32",
        &shape,
        ms,
        rate,
        "GB/s",
        None,
    );

    // Embedding: gather 8·2048 rows of 512 (read + write); its backward scatters them back.
    let shape = format!("N={rows} D={d} V=256");
    let table = random(cuda, &[256, d], 10)?;
    let mut rng = SeededRng::new(11);
    let ids: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % 256) as u32).collect();
    let ids = Tokens::upload(cuda, &ids, 256)?;
    let ms = median_ms(cuda, 3, 50, || embedding::forward(&table, &ids).map(drop))?;
    kernel(
        report,
        "embedding",
        "f32",
        &shape,
        ms,
        2.0 * bytes / ms / 1e6,
        "GB/s",
        None,
    );
    let dout = random(cuda, &[rows, d], 12)?;
    let mut dtable = Tensor::zeros(cuda, &[256, d])?;
    let ms = median_ms(cuda, 3, 50, || {
        embedding::backward(&dout, &ids, &mut dtable)
    })?;
    let rate = (bytes + (256 * d * 4) as f64) / ms / 1e6;
    kernel(
        report,
        "embedding_bwd",
        "f32",
        &shape,
        ms,
        rate,
        "GB/s",
        None,
    );

    // Softmax + cross-entropy over 256 bytes: reads the logits, writes their gradient.
    let logits = random(cuda, &[rows, 256], 13)?;
    let ms = median_ms(cuda, 3, 50, || {
        loss::softmax_cross_entropy(&logits, &ids, 1.0 / rows as f64).map(drop)
    })?;
    let logit_bytes = (rows * 256 * 4) as f64;
    let shape = format!("N={rows} V=256");
    kernel(
        report,
        "softmax_xent",
        "f32",
        &shape,
        ms,
        2.0 * logit_bytes / ms / 1e6,
        "GB/s",
        None,
    );

    // AdamW (the multi-tensor kernel) over the preset's parameter count as one tensor: reads p, g, m, v and
    // writes p, m, v.
    let n = size::lm_params(&Preset::Enwik8.config().model, false)? as usize;
    let (mut p, g) = (random(cuda, &[n], 14)?, random(cuda, &[n], 15)?);
    let (mut m, mut v) = (Tensor::zeros(cuda, &[n])?, Tensor::zeros(cuda, &[n])?);
    let mut step = 0;
    let ms = median_ms(cuda, 3, 20, || {
        step += 1;
        let h = AdamWStep {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            step,
            grad_scale: 1.0,
        };
        let one_tensor = adamw::AdamWTensors {
            param: &mut p,
            grad: &g,
            m: &mut m,
            v: &mut v,
            param_bf16: None,
            weight_decay: 0.0,
        };
        adamw::step_all(&mut [one_tensor], h, None)
    })?;
    let rate = 7.0 * 4.0 * n as f64 / ms / 1e6;
    kernel(
        report,
        "adamw",
        "f32",
        &format!("P={n}"),
        ms,
        rate,
        "GB/s",
        None,
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
    for precision in [Precision::Element, Precision::Bf16] {
        model.set_precision(precision);
        let label = format!(
            "{name} {precision} [{seq}, {batch}, {}] {:?}",
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
    }
    Ok(())
}

fn main() -> Result<()> {
    let Some(cuda) = bench_device_or_skip("benches/gpu")? else {
        return Ok(());
    };
    println!(
        "device: {}, GEMMs through {:?} (HOURGLASS_GEMM=lt|gemmex)",
        cuda.name()?,
        cuda.gemm_path()
    );
    let report = Report::from_env(&cuda.name()?);
    kernels(&cuda, &report)?;
    println!("\n-- attention at longer contexts");
    let simple = simple_attention(&cuda)?;
    for (seq, batch) in [(4096, 4), (8192, 2)] {
        attention_kernels((&cuda, &simple), &report, seq, batch, 8, 512)?;
    }
    println!(
        "GEMM shapes cuBLASLt could not plan (run through cublasGemmEx): {:?}",
        cuda.gemm_fallbacks()
    );
    println!("\n-- whole HourGlass, training mode (dropout on)");
    let seed = HourGlassConfig::reference(4, 512, 0.1, 2048, &[2, 3]);
    whole_model(&cuda, "seed", &seed, 10, 32)?;
    let large = HourGlassConfig::reference(8, 512, 0.1, 2048, &[2, 2]);
    whole_model(&cuda, "large", &large, 4096, 8)?;
    Ok(())
}
