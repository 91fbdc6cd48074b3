//! The language-model ops and the whole LM on CUDA against the CPU reference: embedding forward/backward,
//! fused softmax + cross-entropy, AdamW steps, and an LM training step (loss and every gradient).

use crate::common::*;
use hourglass::device::cuda::device_or_skip;
use hourglass::model::lm::HourglassLM;
use hourglass::ops::adamw::{self, AdamWStep};
use hourglass::ops::{embedding, loss};
use hourglass::{Cpu, HourGlassConfig, Parameters, Result, Tensor, Tokens};

const TOL: f64 = 1e-5;

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_matches_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("embedding_matches_cpu")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    for (n, d) in [(1usize, 8usize), (37, 33), (4096, 512)] {
        let ids: Vec<u32> = (0..n)
            .map(|i| ((i * 2654435761usize) >> 7) as u32 % 256)
            .collect();
        let table = random_vec(n as u64, 256 * d);
        let g = random_vec(n as u64 + 1, n * d);
        let (ids_c, ids_g) = (
            Tokens::upload(&cpu, &ids, 256)?,
            Tokens::upload(&cuda, &ids, 256)?,
        );
        let out_c = values(&embedding::forward(
            &tensor(&cpu, &[256, d], &table),
            &ids_c,
        )?);
        let out_g = values(&embedding::forward(
            &tensor(&cuda, &[256, d], &table),
            &ids_g,
        )?);
        assert_eq!(
            out_c, out_g,
            "gather is a copy: identical bits (n {n}, d {d})"
        );
        let mut dt_c = tensor(&cpu, &[256, d], &table);
        let mut dt_g = tensor(&cuda, &[256, d], &table);
        embedding::backward(&tensor(&cpu, &[n, d], &g), &ids_c, &mut dt_c)?;
        embedding::backward(&tensor(&cuda, &[n, d], &g), &ids_g, &mut dt_g)?;
        let e = rel_err(&values(&dt_g), &values(&dt_c));
        assert!(e < TOL, "embedding backward n {n} d {d}: rel err {e:e}");
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn softmax_cross_entropy_matches_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("softmax_cross_entropy_matches_cpu")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    for (rows, vocab) in [(1usize, 256usize), (333, 256), (1000, 77)] {
        let z: Vec<f64> = random_vec(rows as u64, rows * vocab)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        let t: Vec<u32> = (0..rows).map(|i| (i * 31 % vocab) as u32).collect();
        let (t_c, t_g) = (
            Tokens::upload(&cpu, &t, vocab)?,
            Tokens::upload(&cuda, &t, vocab)?,
        );
        let (l_c, d_c) = loss::softmax_cross_entropy(
            &tensor(&cpu, &[rows, vocab], &z),
            &t_c,
            1.0 / rows as f64,
        )?;
        let (l_g, d_g) = loss::softmax_cross_entropy(
            &tensor(&cuda, &[rows, vocab], &z),
            &t_g,
            1.0 / rows as f64,
        )?;
        let (el, ed) = (
            rel_err(&values(&l_g), &values(&l_c)),
            rel_err(&values(&d_g), &values(&d_c)),
        );
        assert!(
            el < TOL && ed < TOL,
            "rows {rows} vocab {vocab}: loss {el:e}, dlogits {ed:e}"
        );
    }
    Ok(())
}

/// Tensors of the given sizes (at least one element), each with its own weight decay, every other one with a bf16
/// copy, updated over several steps by `step_all` on `backend` with clipping's factor folded in; returns the
/// parameters, after checking that each bf16 copy holds its parameter rounded.
fn multi_tensor_steps<B: hourglass::Backend>(
    backend: &B,
    sizes: &[usize],
) -> Result<Vec<Vec<f64>>> {
    let t = |n: usize, seed| tensor(backend, &[n.max(1)], &random_vec(seed, n.max(1)));
    let mut params: Vec<_> = sizes.iter().map(|&n| t(n, n as u64)).collect();
    let mut copies: Vec<Option<Tensor<B>>> = params
        .iter()
        .enumerate()
        .map(|(i, p)| (i % 2 == 1).then(|| p.to_bf16()).transpose())
        .collect::<Result<_>>()?;
    let mut moments: Vec<_> = sizes
        .iter()
        .map(|&n| {
            (
                tensor(backend, &[n.max(1)], &vec![0.0; n.max(1)]),
                tensor(backend, &[n.max(1)], &vec![0.0; n.max(1)]),
            )
        })
        .collect();
    for step in 1..=3u64 {
        let grads: Vec<_> = sizes
            .iter()
            .map(|&n| t(n, 1000 * step + n as u64))
            .collect();
        let mut entries: Vec<adamw::AdamWTensors<'_, B>> = params
            .iter_mut()
            .zip(&grads)
            .zip(moments.iter_mut())
            .zip(copies.iter_mut())
            .enumerate()
            .map(|(i, (((param, grad), (m, v)), copy))| adamw::AdamWTensors {
                param,
                grad,
                m,
                v,
                param_bf16: copy.as_mut(),
                weight_decay: 0.1 - 0.02 * i as f64,
            })
            .collect();
        let h = AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            step,
            grad_scale: 0.6,
        };
        adamw::step_all(&mut entries, h, None)?;
    }
    for (i, (param, copy)) in params.iter().zip(&copies).enumerate() {
        if let Some(copy) = copy {
            assert_eq!(
                values(copy),
                values(&param.to_bf16()?),
                "tensor {i}: the bf16 copy is not the updated parameter rounded"
            );
        }
    }
    Ok(params.iter().map(values).collect())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn multi_tensor_adamw_matches_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("multi_tensor_adamw_matches_cpu")? else {
        return Ok(());
    };
    // Ragged sizes: small, around the kernel's 4096-element chunks, large; then one tensor alone
    // (a table of one entry), not a whole number of chunks.
    for sizes in [&[0usize, 1, 4095, 4096, 4097, 70_001][..], &[100_003]] {
        let cpu = multi_tensor_steps(&Cpu::<f32>::new(), sizes)?;
        let gpu = multi_tensor_steps(&cuda, sizes)?;
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            let e = rel_err(g, c);
            assert!(e < TOL, "tensor {i} ({} elements): rel err {e:e}", c.len());
        }
        assert_eq!(
            multi_tensor_steps(&cuda, sizes)?,
            gpu,
            "a second GPU run differs"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn lm_training_step_matches_cpu() -> Result<()> {
    let Some(cuda) = device_or_skip("lm_training_step_matches_cpu")? else {
        return Ok(());
    };
    let config = HourGlassConfig::reference(4, 64, 0.1, 128, &[2, 3]);
    let (seq, batch) = (37, 3);
    let ids: Vec<u32> = (0..seq * batch).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..seq * batch).map(|i| (i * 91 % 256) as u32).collect();
    let mut lm_c = HourglassLM::new(&Cpu::<f32>::new(), &config, 4)?;
    let mut lm_g = HourglassLM::new(&cuda, &config, 4)?;
    let (l_c, l_g) = (
        lm_c.loss(&ids, &targets, seq, batch, true)?,
        lm_g.loss(&ids, &targets, seq, batch, true)?,
    );
    assert!((l_c - l_g).abs() < 1e-5 * l_c, "loss {l_c} vs {l_g}");
    let (mut grads_c, mut grads_g) = (Vec::new(), Vec::new());
    lm_c.visit("", &mut |n, p| grads_c.push((n, values(&p.grad))));
    lm_g.visit("", &mut |_, p| grads_g.push(values(&p.grad)));
    for ((name, c), g) in grads_c.iter().zip(&grads_g) {
        // Near-zero-in-theory gradients (key biases) get an absolute floor, as in tests/suite/gpu/model.rs.
        let diff: Vec<f64> = g.iter().zip(c).map(|(a, b)| a - b).collect();
        assert!(
            norm(&diff) <= 1e-4 * norm(c) + 1e-6 * (c.len() as f64).sqrt(),
            "{name}: rel err {:e}",
            rel_err(g, c)
        );
    }
    Ok(())
}
