//! The bf16 attention's CPU reference (the rounding points of the tensor-core kernels, described in
//! `src/ops/attention/mod.rs`): within bf16 noise of the f32 attention, with that noise measured to calibrate
//! the GPU's bound (`common::BF16_ATTN_BOUND`, at most a fifth of it); a rounding in another place (the
//! probabilities rounded after normalising, as a naive bf16 attention does) moves the output by more than the
//! bound.

mod common;

use common::attention::AttnCase;
use common::{random_f32, rel_err_f32, BF16_ATTN_BOUND};
use hourglass::ops::attention::{AttnMask, BF16_KEY_TILE};
use hourglass::rng::DropoutMask;
use hourglass::{Cpu, Result};

fn cpu() -> Cpu<f32> {
    Cpu::new()
}

/// Every mask on the lengths it is used with, ragged lengths that cross key tiles, head sizes 24 to 128,
/// dropout.
fn cases() -> Vec<AttnCase> {
    let case = |q_len, kv_len, d_head, mask, dropout| AttnCase {
        batch: 2,
        heads: 2,
        q_len,
        kv_len,
        d_head,
        mask,
        dropout,
    };
    let drop = Some(DropoutMask::new(0.1, 9));
    vec![
        case(150, 150, 64, AttnMask::Causal, None),
        case(150, 150, 64, AttnMask::Causal, drop),
        case(70, 70, 128, AttnMask::Causal, None),
        case(37, 100, 32, AttnMask::Full, None),
        case(100, 100, 24, AttnMask::Full, drop),
        case(34, 100, 64, AttnMask::Funnel(3), None),
        case(34, 100, 64, AttnMask::Window(3), None),
        case(100, 34, 64, AttnMask::UpCausal(3), None),
    ]
}

#[test]
fn bf16_attention_is_within_bf16_noise_and_the_gpu_bound_is_a_fifth_of_it() -> Result<()> {
    for case in cases() {
        let exact = case.run(&cpu())?;
        let bf16 = case.run_bf16(&cpu())?;
        for ((name, e), (_, b)) in exact.iter().zip(&bf16) {
            let floor = rel_err_f32(b, e);
            println!("{case:?} {name}: f32 vs bf16 {floor:.2e}");
            assert!(floor < 3e-2, "{case:?} {name}: bf16 is {floor:e} from f32");
            assert!(
                5.0 * BF16_ATTN_BOUND <= floor,
                "{case:?} {name}: the noise floor {floor:e} is under 5x the GPU bound {BF16_ATTN_BOUND:e}"
            );
        }
    }
    Ok(())
}

#[test]
fn probabilities_rounded_after_normalising_miss_the_bound() -> Result<()> {
    // One head, so that q [T, 1, dh] and kv [T, 1, 2·dh] are plain rows; long enough for several key tiles.
    let case = AttnCase {
        batch: 1,
        heads: 1,
        q_len: 3 * BF16_KEY_TILE + 5,
        kv_len: 3 * BF16_KEY_TILE + 5,
        d_head: 64,
        mask: AttnMask::Causal,
        dropout: None,
    };
    let (t, dh) = (case.q_len, case.d_head);
    let round = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| half::bf16::from_f32(x).to_f32())
            .collect()
    };
    let q = round(random_f32(case.seed() + 1, t * dh));
    let kv = round(random_f32(case.seed() + 2, t * 2 * dh));
    let scale = 1.0 / (dh as f32).sqrt();
    let mut naive = vec![0.0f32; t * dh];
    for i in 0..t {
        let s: Vec<f32> = (0..=i)
            .map(|j| {
                (0..dh)
                    .map(|e| q[i * dh + e] * kv[j * 2 * dh + e])
                    .sum::<f32>()
                    * scale
            })
            .collect();
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let l: f32 = s.iter().map(|&x| (x - m).exp()).sum();
        for (j, &sj) in s.iter().enumerate() {
            let p = half::bf16::from_f32((sj - m).exp() / l).to_f32();
            for e in 0..dh {
                naive[i * dh + e] += p * kv[j * 2 * dh + dh + e];
            }
        }
    }
    let reference = case.run_bf16(&cpu())?;
    let e = rel_err_f32(&naive, &reference[0].1);
    println!("probabilities rounded after normalising: {e:.2e} from the reference");
    assert!(
        e > BF16_ATTN_BOUND,
        "rounding elsewhere is only {e:e} off, under the bound {BF16_ATTN_BOUND:e}"
    );
    Ok(())
}
