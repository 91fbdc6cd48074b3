//! Whole HourGlass models on CUDA against the CPU reference: forward output, grad_x and every parameter's
//! gradient, for factor lists [2], [3], [2,3], [2,2,2], ragged seq_len, batch 1 and 3; then determinism
//! (a second run gives the same bits) and dropout masks that agree with the CPU path in training mode; and
//! models with rotary positions. On the emulated device (CI) the largest eval-mode cases run one in six
//! (`crate::common::left_to_a_real_gpu`, each skipped case named); a real GPU runs them all.

use crate::common::{bits, left_to_a_real_gpu, norm_f32, random_vec, rel_err_f32};
use hourglass::checkpoint::export_params;
use hourglass::config::{Positions, ShorteningKind, UpsamplingKind};
use hourglass::device::cuda::device_or_skip;
use hourglass::{Backend, Cpu, Cuda, HourGlass, HourGlassConfig, Parameters, Result, Tensor};

/// y, grad_x and every parameter's gradient by name.
type RunOutputs = (Vec<f32>, Vec<f32>, Vec<(String, Vec<f32>)>);

/// Runs forward and backward; returns y, grad_x and every parameter gradient (by name).
fn run<B: Backend>(
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

fn compare(
    cuda: &Cuda,
    config: &HourGlassConfig,
    seq: usize,
    batch: usize,
    training: bool,
) -> Result<()> {
    let shape = [seq, batch, config.d_model];
    // Attention's share of the work; on the emulated device the largest eval-mode cases run one in six (every
    // training-mode case runs: they hold the dropout masks).
    let work = seq * seq * batch * config.d_model;
    let case = (&config.shortening_factors, seq, batch, training);
    if !training && left_to_a_real_gpu(cuda, work, &case) {
        return Ok(());
    }
    let n = shape.iter().product();
    let (x, gy) = (
        random_vec(11 + seq as u64, n),
        random_vec(97 + batch as u64, n),
    );
    let mut cpu_model = HourGlass::from_config(&Cpu::<f32>::new(), config, 5)?;
    cpu_model.train(training);
    let (y_c, gx_c, g_c) = run(&mut cpu_model, &x, &gy, &shape)?;
    // Two fresh GPU models: the second run must repeat the first bit for bit.
    let mut gpu_runs = Vec::new();
    for _ in 0..2 {
        let mut gpu_model = HourGlass::from_config(cuda, config, 5)?;
        gpu_model.train(training);
        gpu_runs.push(run(&mut gpu_model, &x, &gy, &shape)?);
    }
    let (y_g, gx_g, g_g) = gpu_runs.swap_remove(0);
    let what = format!(
        "factors {:?} shortening {:?} upsampling {:?} positions {:?} causal {} seq {seq} batch {batch} \
         training {training}",
        config.shortening_factors, config.shortening, config.upsampling, config.positions, config.causal
    );
    let (y2, gx2, g2) = &gpu_runs[0];
    assert!(
        bits(y2) == bits(&y_g) && bits(gx2) == bits(&gx_g),
        "{what}: a second GPU run differs"
    );
    for ((name, a), (_, b)) in g_g.iter().zip(g2) {
        assert!(
            bits(a) == bits(b),
            "{what}: {name}: a second GPU run differs"
        );
    }
    let tol = 1e-4;
    let e = rel_err_f32(&y_g, &y_c);
    assert!(e < tol, "{what}: y rel err {e:e}");
    let e = rel_err_f32(&gx_g, &gx_c);
    assert!(e < tol, "{what}: grad_x rel err {e:e}");
    assert_eq!(g_c.len(), g_g.len());
    let mut worst = 0.0f64;
    for ((name, c), (name_g, g)) in g_c.iter().zip(&g_g) {
        assert_eq!(name, name_g);
        let e = rel_err_f32(g, c);
        // Some gradients are zero in exact arithmetic (the key bias always: softmax ignores a constant
        // added to every score of a query; query/key weights where a sequence has one position), so both
        // sides hold rounding noise there. Pass: ||a-b|| <= tol·||b|| + 1e-6·sqrt(n), as tools/golden_check.py.
        let diff: Vec<f32> = g.iter().zip(c).map(|(a, b)| a - b).collect();
        let bound = tol * norm_f32(c) + 1e-6 * (c.len() as f64).sqrt();
        assert!(
            norm_f32(&diff) <= bound,
            "{what}: {name} rel err {e:e}, |a-b| {:e} > {bound:e}",
            norm_f32(&diff)
        );
        if norm_f32(c) > 1e-3 {
            worst = worst.max(e);
        }
    }
    println!(
        "{what}: y ok, grad_x ok, {} parameter gradients, worst rel err {worst:.2e} (of gradients with norm > 1e-3)",
        g_c.len()
    );
    Ok(())
}

fn config(factors: &[usize]) -> HourGlassConfig {
    HourGlassConfig::reference(4, 64, 0.1, 128, factors)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn whole_models_match_cpu_in_eval_mode() -> Result<()> {
    let Some(cuda) = device_or_skip("whole_models_match_cpu_in_eval_mode")? else {
        return Ok(());
    };
    for factors in [&[2][..], &[3], &[2, 3], &[2, 2, 2]] {
        for (seq, batch) in [(24, 1), (29, 3), (1, 3), (2, 1), (67, 3)] {
            compare(&cuda, &config(factors), seq, batch, false)?;
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn whole_models_match_cpu_with_dropout() -> Result<()> {
    let Some(cuda) = device_or_skip("whole_models_match_cpu_with_dropout")? else {
        return Ok(());
    };
    for factors in [&[2, 3][..], &[2, 2, 2]] {
        compare(&cuda, &config(factors), 37, 3, true)?;
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn whole_model_is_deterministic_on_cuda() -> Result<()> {
    let Some(cuda) = device_or_skip("whole_model_is_deterministic_on_cuda")? else {
        return Ok(());
    };
    let config = config(&[2, 3]);
    let shape = [50, 3, config.d_model];
    let n = shape.iter().product();
    let (x, gy) = (random_vec(1, n), random_vec(2, n));
    let mut first = None;
    for _ in 0..2 {
        let mut model = HourGlass::from_config(&cuda, &config, 9)?;
        model.train(false);
        let out = run(&mut model, &x, &gy, &shape)?;
        let key = (
            bits(&out.0),
            bits(&out.1),
            out.2.iter().map(|(_, g)| bits(g)).collect::<Vec<_>>(),
        );
        match &first {
            None => first = Some(key),
            Some(f) => assert!(f == &key, "second CUDA run differs in some bit"),
        }
    }
    Ok(())
}

/// Every shortening and upsampling kind, both attention masks, depth stacks, non-causal mode, and the plain
/// transformer.
#[test]
#[ignore = "needs a CUDA GPU"]
fn mixed_component_models_match_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("mixed_component_models_match_cpu")? else {
        return Ok(());
    };
    let base = r#""n_heads": 4, "d_model": 64, "dropout": 0.1, "d_ff": 128"#;
    let variants = [
        r#""shortening_factors": [2, 3], "shortening": "linear", "upsampling": "attention""#,
        r#""shortening_factors": [3], "shortening": "attention", "upsampling": "linear""#,
        r#""shortening_factors": [2, 2], "shortening": ["attention", "linear"], "upsampling": ["linear", "attention"],
           "attention_pooling": "linear", "attention_upsampling": "linear", "attention_resampling_mask": "window""#,
        r#""shortening_factors": [2, 3], "shortening": "attention", "upsampling": "attention",
           "depth": [2, [1, 2, 0], 1]"#,
        r#""shortening_factors": [2, 2], "shortening": "attention", "upsampling": ["attention", "linear"],
           "causal": false"#,
        r#""shortening_factors": [3], "shortening": "attention", "upsampling": "attention",
           "attention_resampling_mask": "window", "causal": false"#,
        // The baseline: a plain transformer, no shortening.
        r#""shortening_factors": [], "depth": 3, "positions": "rotary""#,
    ];
    for variant in variants {
        let config = HourGlassConfig::from_json(&format!("{{{base}, {variant}}}"))?;
        for (seq, batch, training) in [(29, 3, false), (2, 1, false), (40, 2, true)] {
            compare(&cuda, &config, seq, batch, training)?;
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rotary_models_match_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("rotary_models_match_cpu")? else {
        return Ok(());
    };
    let rotary = |factors: &[usize]| HourGlassConfig {
        positions: Positions::Rotary,
        ..config(factors)
    };
    for factors in [&[2][..], &[2, 3]] {
        for (seq, batch) in [(29, 3), (1, 1), (67, 2)] {
            compare(&cuda, &rotary(factors), seq, batch, false)?;
        }
    }
    compare(&cuda, &rotary(&[2, 2]), 37, 3, true)?;
    let attention = HourGlassConfig {
        shortening: ShorteningKind::Attention.into(),
        upsampling: UpsamplingKind::Attention.into(),
        ..rotary(&[2, 3])
    };
    compare(&cuda, &attention, 29, 2, false)
}
