//! The training ops on CUDA against the CPU reference: the deterministic sum of squares (global gradient
//! norm), in-place scaling, and gradient clipping of a whole LM.

use crate::common::*;
use hourglass::device::cuda::device_or_skip;
use hourglass::model::lm::HourglassLM;
use hourglass::ops::{elementwise, reduce};
use hourglass::train::{clip_grad_norm, grad_norm};
use hourglass::{Cpu, HourGlassConfig, Result, Tensor};

/// Both sides accumulate squares of the same f32 values in f64; only the order of additions differs.
const SUM_TOL: f64 = 1e-12;

#[test]
#[ignore = "needs a CUDA GPU"]
fn sum_squares_matches_cpu_and_is_deterministic() -> Result<()> {
    let Some(cuda) = device_or_skip("sum_squares_matches_cpu_and_is_deterministic")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    // Lengths around the stage-1 block sizes (256 threads × 8) and the 1024-block cap.
    for n in [1usize, 255, 2048, 2049, 100_003, 2_097_152, 5_000_001] {
        let v = random_vec(n as u64, n);
        let (c, g) = (
            reduce::sum_squares(&tensor(&cpu, &[n], &v))?,
            reduce::sum_squares(&tensor(&cuda, &[n], &v))?,
        );
        assert!((g - c).abs() <= SUM_TOL * c, "n {n}: cuda {g} vs cpu {c}");
        let t = tensor(&cuda, &[n], &v);
        let first = reduce::sum_squares(&t)?;
        for _ in 0..3 {
            assert_eq!(
                reduce::sum_squares(&t)?.to_bits(),
                first.to_bits(),
                "n {n}: run to run"
            );
        }
    }
    // Several tensors at once, of lengths below, between and above the block sizes.
    let sizes = [3usize, 1, 70_000, 513, 1_000_000];
    let data: Vec<Vec<f64>> = sizes.iter().map(|&n| random_vec(n as u64 + 7, n)).collect();
    let tc: Vec<Tensor<Cpu<f32>>> = sizes
        .iter()
        .zip(&data)
        .map(|(&n, d)| Tensor::from_f64(&cpu, &[n], d))
        .collect::<Result<_>>()?;
    let tg: Vec<Tensor<_>> = sizes
        .iter()
        .zip(&data)
        .map(|(&n, d)| Tensor::from_f64(&cuda, &[n], d))
        .collect::<Result<_>>()?;
    let c = reduce::sum_squares_all(&tc.iter().collect::<Vec<_>>())?;
    let g = reduce::sum_squares_all(&tg.iter().collect::<Vec<_>>())?;
    assert!(
        (g - c).abs() <= SUM_TOL * c,
        "several tensors: cuda {g} vs cpu {c}"
    );
    // Non-finite values propagate.
    let mut v = random_vec(1, 10_000);
    v[4321] = f64::NAN;
    assert!(reduce::sum_squares(&tensor(&cuda, &[10_000], &v))?.is_nan());
    v[4321] = f64::INFINITY;
    assert_eq!(
        reduce::sum_squares(&tensor(&cuda, &[10_000], &v))?,
        f64::INFINITY
    );
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scale_matches_cpu_bit_for_bit() -> Result<()> {
    let Some(cuda) = device_or_skip("scale_matches_cpu_bit_for_bit")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    for (n, factor) in [(1usize, 0.5), (1000, 0.123_456_789), (3_000_017, 1e-3)] {
        let v = random_vec(n as u64, n);
        let (mut c, mut g) = (tensor(&cpu, &[n], &v), tensor(&cuda, &[n], &v));
        elementwise::scale(&mut c, factor)?;
        elementwise::scale(&mut g, factor)?;
        assert_eq!(
            bits(&g.to_vec()?),
            bits(&c.to_vec()?),
            "n {n} factor {factor}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn clip_grad_norm_of_an_lm_matches_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("clip_grad_norm_of_an_lm_matches_cpu")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    let config = HourGlassConfig::reference(2, 32, 0.0, 64, &[2]);
    let (seq, batch) = (16, 3);
    let ids: Vec<u32> = (0..seq * batch).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..seq * batch).map(|i| (i * 91 % 256) as u32).collect();
    let mut lc = HourglassLM::new(&cpu, &config, 2)?;
    let mut lg = HourglassLM::new(&cuda, &config, 2)?;
    lc.train(false);
    lg.train(false);
    lc.loss(&ids, &targets, seq, batch, true)?;
    lg.loss(&ids, &targets, seq, batch, true)?;
    let (nc, ng) = (grad_norm(&lc)?, grad_norm(&lg)?);
    assert!((ng - nc).abs() <= 1e-4 * nc, "norm: cuda {ng} vs cpu {nc}");
    let max_norm = nc / 2.0;
    clip_grad_norm(&mut lc, max_norm)?;
    clip_grad_norm(&mut lg, max_norm)?;
    let (cc, cg) = (grad_norm(&lc)?, grad_norm(&lg)?);
    assert!(
        (cc - max_norm).abs() <= 1e-5 * max_norm,
        "cpu clipped to {cc}"
    );
    assert!(
        (cg - max_norm).abs() <= 1e-5 * max_norm,
        "cuda clipped to {cg}"
    );
    let (pc, pg) = (
        param_grad(&lc, "head.weight"),
        param_grad(&lg, "head.weight"),
    );
    let e = rel_err(&pg, &pc);
    assert!(e < 1e-4, "clipped head gradient: rel err {e:e}");
    Ok(())
}
