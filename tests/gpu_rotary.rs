//! Rotary position embeddings on CUDA against the CPU reference (`Cpu<f32>`): the op's forward and backward on
//! ragged random shapes (batch 1, 2 and 3, odd head counts, more positions than a grid's y dimension), and
//! whole HourGlass models with `"positions": "rotary"` (output, grad_x, every parameter's gradient); relative
//! error below 1e-5 for the op and 1e-4 for models (as `gpu_model.rs`), and a second GPU run bit-identical.
//!
//! They need a GPU, so they are ignored by default: `cargo test --test gpu_rotary -- --include-ignored`.
//! Without a device each test prints "skipped"; with `HOURGLASS_REQUIRE_GPU=1` a missing device fails it.

mod common;

use common::{assert_repeatable, bits, norm_f32, random_f32, random_vec, rel_err_f32, Outputs};
use hourglass::checkpoint::export_params;
use hourglass::config::{Positions, ShorteningKind, UpsamplingKind};
use hourglass::device::cuda::device_or_skip;
use hourglass::ops::rotary::{self, RotaryOps};
use hourglass::{
    Backend, BackendCore, Cpu, Cuda, HourGlass, HourGlassConfig, Parameters, Result, Tensor,
};

/// Largest accepted `||gpu - cpu|| / ||cpu||` for the op.
const OP_TOL: f64 = 1e-5;

/// Forward of `x` and backward of `dy` for one shape, on one backend.
fn run_op<B: BackendCore<Elem = f32> + RotaryOps>(
    b: &B,
    shape: [usize; 3],
    heads: usize,
) -> Result<Outputs> {
    let n = shape.iter().product();
    let seed = (shape[0] * 7 + shape[1] * 3 + shape[2]) as u64;
    let x = Tensor::from_slice(b, &shape, &random_f32(seed, n))?;
    let dy = Tensor::from_slice(b, &shape, &random_f32(seed + 1, n))?;
    Ok(vec![
        ("y", rotary::forward(&x, heads)?.to_vec()?),
        ("dx", rotary::backward(&dy, heads)?.to_vec()?),
    ])
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rotary_op_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("rotary_op_matches_cpu")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    let mut identical = 0usize;
    let mut total = 0usize;
    for (seq, heads, d_head) in [
        (1, 1, 2),
        (7, 3, 10),
        (29, 4, 64),
        (100, 2, 128),
        (513, 5, 6),
        (2048, 8, 64),
        // More positions than the grid's y dimension (65 535), and angles up to ~7e4 radians.
        (70_001, 1, 8),
    ] {
        for batch in [1, 2, 3] {
            let shape = [seq, batch, heads * d_head];
            let case = format!("rotary {shape:?} heads {heads}");
            let c = run_op(&cpu, shape, heads)?;
            let g = run_op(&gpu, shape, heads)?;
            let g2 = run_op(&gpu, shape, heads)?;
            for ((name, c), (_, g)) in c.iter().zip(&g) {
                let e = rel_err_f32(g, c);
                assert!(e < OP_TOL, "{case}: {name}: relative error {e:e}");
                identical += bits(c)
                    .iter()
                    .zip(bits(g))
                    .filter(|(a, b)| **a == *b)
                    .count();
                total += c.len();
            }
            assert_repeatable(&case, &g, &g2);
        }
    }
    // Angles, cosines and sines in double on both sides, products without FMA: nearly every element should
    // have the CPU's exact bits (a rare difference is a last-ulp difference of the two libraries' sin/cos).
    println!("rotary: {identical} of {total} elements bit-identical to the CPU");
    assert!(
        identical as f64 >= 0.99 * total as f64,
        "only {identical} of {total} elements match the CPU's bits"
    );
    Ok(())
}

/// y, grad_x and every parameter's gradient by name.
type RunOutputs = (Vec<f32>, Vec<f32>, Vec<(String, Vec<f32>)>);

fn run_model<B: Backend>(
    model: &mut HourGlass<B>,
    x: &[f64],
    gy: &[f64],
    shape: &[usize],
) -> Result<RunOutputs> {
    let b = model.backend().clone();
    model.zero_grad()?;
    let y = model.forward(&Tensor::from_f64(&b, shape, x)?)?;
    let gx = model.backward(&Tensor::from_f64(&b, shape, gy)?)?;
    let grads = export_params(model, true)?
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect();
    let f32s = |t: Tensor<B>| -> Result<Vec<f32>> {
        Ok(t.to_f64_vec()?.into_iter().map(|v| v as f32).collect())
    };
    Ok((f32s(y)?, f32s(gx)?, grads))
}

fn compare_model(
    cuda: &Cuda,
    config: &HourGlassConfig,
    seq: usize,
    batch: usize,
    training: bool,
) -> Result<()> {
    let shape = [seq, batch, config.d_model];
    let n = shape.iter().product();
    let (x, gy) = (
        random_vec(11 + seq as u64, n),
        random_vec(97 + batch as u64, n),
    );
    let mut cpu_model = HourGlass::from_config(&Cpu::<f32>::new(), config, 5)?;
    cpu_model.train(training);
    let (y_c, gx_c, g_c) = run_model(&mut cpu_model, &x, &gy, &shape)?;
    let mut gpu_runs = Vec::new();
    for _ in 0..2 {
        let mut gpu_model = HourGlass::from_config(cuda, config, 5)?;
        gpu_model.train(training);
        gpu_runs.push(run_model(&mut gpu_model, &x, &gy, &shape)?);
    }
    let (y_g, gx_g, g_g) = &gpu_runs[0];
    let what = format!(
        "rotary factors {:?} shortening {:?} upsampling {:?} seq {seq} batch {batch} training {training}",
        config.shortening_factors, config.shortening, config.upsampling
    );
    let tol = 1e-4;
    let e = rel_err_f32(y_g, &y_c);
    assert!(e < tol, "{what}: y rel err {e:e}");
    let e = rel_err_f32(gx_g, &gx_c);
    assert!(e < tol, "{what}: grad_x rel err {e:e}");
    assert_eq!(g_c.len(), g_g.len());
    let mut worst = 0.0f64;
    for ((name, c), (name_g, g)) in g_c.iter().zip(g_g) {
        assert_eq!(name, name_g);
        // As gpu_model.rs: gradients that are zero in exact arithmetic (the key bias) hold rounding noise on
        // both sides, so pass ||a-b|| <= tol·||b|| + 1e-6·sqrt(n).
        let diff: Vec<f32> = g.iter().zip(c).map(|(a, b)| a - b).collect();
        let bound = tol * norm_f32(c) + 1e-6 * (c.len() as f64).sqrt();
        assert!(
            norm_f32(&diff) <= bound,
            "{what}: {name} rel err {:e}, |a-b| {:e} > {bound:e}",
            rel_err_f32(g, c),
            norm_f32(&diff)
        );
        if norm_f32(c) > 1e-3 {
            worst = worst.max(rel_err_f32(g, c));
        }
    }
    // A second GPU run: the same bits everywhere.
    let (y2, gx2, g2) = &gpu_runs[1];
    assert!(
        bits(y2) == bits(y_g) && bits(gx2) == bits(gx_g),
        "{what}: second run differs"
    );
    for ((name, a), (_, b)) in g_g.iter().zip(g2) {
        assert!(bits(a) == bits(b), "{what}: {name}: second run differs");
    }
    println!(
        "{what}: y ok, grad_x ok, {} parameter gradients, worst rel err {worst:.2e} (norm > 1e-3)",
        g_c.len()
    );
    Ok(())
}

fn config(factors: &[usize]) -> HourGlassConfig {
    HourGlassConfig {
        positions: Positions::Rotary,
        ..HourGlassConfig::reference(4, 64, 0.1, 128, factors)
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rotary_models_match_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("rotary_models_match_cpu")? else {
        return Ok(());
    };
    for factors in [&[2][..], &[2, 3]] {
        for (seq, batch) in [(29, 3), (1, 1), (67, 2)] {
            compare_model(&cuda, &config(factors), seq, batch, false)?;
        }
    }
    compare_model(&cuda, &config(&[2, 2]), 37, 3, true)?;
    let attention = HourGlassConfig {
        shortening: ShorteningKind::Attention.into(),
        upsampling: UpsamplingKind::Attention.into(),
        ..config(&[2, 3])
    };
    compare_model(&cuda, &attention, 29, 2, false)?;
    Ok(())
}
