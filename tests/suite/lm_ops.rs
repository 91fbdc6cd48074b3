//! The language-model ops on the CPU reference: embedding (gather / scatter-add), fused softmax +
//! cross-entropy (f64 finite differences), and the AdamW step (against the formula written out in f64).

use crate::common::*;
use hourglass::ops::adamw::{self, AdamWStep};
use hourglass::ops::{embedding, loss};
use hourglass::Tokens;

#[test]
fn embedding_gathers_rows_and_backward_is_its_adjoint() {
    let cpu = cpu64();
    let (vocab, d) = (5, 3);
    let table = random_vec(1, vocab * d);
    let ids = [4u32, 0, 4, 2, 2, 2, 1];
    let tokens = Tokens::upload(&cpu, &ids, vocab).unwrap();
    let out = values(&embedding::forward(&tensor(&cpu, &[vocab, d], &table), &tokens).unwrap());
    for (n, &id) in ids.iter().enumerate() {
        assert_eq!(&out[n * d..][..d], &table[id as usize * d..][..d]);
    }
    // <forward(table), g> = <table, dtable>: the scatter-add is the gradient, accumulated onto what was there.
    let g = random_vec(2, ids.len() * d);
    let start = random_vec(3, vocab * d);
    let mut dtable = tensor(&cpu, &[vocab, d], &start);
    embedding::backward(&tensor(&cpu, &[ids.len(), d], &g), &tokens, &mut dtable).unwrap();
    let grad: Vec<f64> = values(&dtable)
        .iter()
        .zip(&start)
        .map(|(a, b)| a - b)
        .collect();
    let (lhs, rhs) = (dot(&out, &g), dot(&table, &grad));
    assert!((lhs - rhs).abs() < 1e-12, "{lhs} vs {rhs}");
    assert!(
        grad[3 * d..4 * d].iter().all(|&x| x == 0.0),
        "token 3 never appears: no gradient"
    );
}

#[test]
fn embedding_rejects_ids_outside_the_vocabulary() {
    let cpu = cpu64();
    let err = Tokens::upload(&cpu, &[1, 4], 4).err().unwrap().to_string();
    assert!(
        err.contains("token id 4") && err.contains("vocabulary of 4"),
        "{err}"
    );
    // Ids checked against a larger vocabulary than the table's rows are refused by the op.
    let table = tensor(&cpu, &[4, 2], &random_vec(1, 8));
    let wide = Tokens::upload(&cpu, &[1, 2], 5).unwrap();
    let err = embedding::forward(&table, &wide).unwrap_err().to_string();
    assert!(err.contains("4 rows"), "{err}");
}

#[test]
fn softmax_cross_entropy_loss_and_gradient() {
    let cpu = cpu64();
    let (rows, vocab) = (4, 7);
    let z = random_vec(5, rows * vocab);
    let targets = Tokens::upload(&cpu, &[3u32, 0, 6, 3], vocab).unwrap();
    let scale = 1.0 / rows as f64;
    let mean_loss = |z: &[f64]| -> f64 {
        let (l, _) =
            loss::softmax_cross_entropy(&tensor(&cpu, &[rows, vocab], z), &targets, scale).unwrap();
        values(&l).iter().sum::<f64>() * scale
    };
    // The loss against its definition, -log softmax(z)[t].
    let (l, dz) =
        loss::softmax_cross_entropy(&tensor(&cpu, &[rows, vocab], &z), &targets, scale).unwrap();
    for (r, (&t, &lr)) in [3u32, 0, 6, 3].iter().zip(&values(&l)).enumerate() {
        let row = &z[r * vocab..][..vocab];
        let want = -(row[t as usize].exp() / row.iter().map(|v| v.exp()).sum::<f64>()).ln();
        assert!((lr - want).abs() < 1e-12, "row {r}: {lr} vs {want}");
    }
    check_grad(
        "softmax_xent dlogits",
        &z,
        &values(&dz),
        None,
        OP_TOL,
        mean_loss,
    );
    let err = Tokens::upload(&cpu, &[0, 1, 7, 0], vocab).err().unwrap();
    assert!(err.to_string().contains("token id 7"), "{err}");
    let wide = Tokens::upload(&cpu, &[0, 1, 7, 0], vocab + 1).unwrap();
    let err =
        loss::softmax_cross_entropy(&tensor(&cpu, &[rows, vocab], &z), &wide, scale).unwrap_err();
    assert!(err.to_string().contains("7 columns"), "{err}");
}

#[test]
fn adamw_matches_the_formula_over_several_steps() {
    let cpu = cpu64();
    let n = 6;
    let (mut p, mut m, mut v) = (random_vec(7, n), vec![0.0; n], vec![0.0; n]);
    let mut tp = tensor(&cpu, &[n], &p);
    let (mut tm, mut tv) = (tensor(&cpu, &[n], &m), tensor(&cpu, &[n], &v));
    for step in 1..=4u64 {
        let g = random_vec(100 + step, n);
        let h = AdamWStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            step,
            grad_scale: 0.5,
        };
        let one_tensor = adamw::AdamWTensors {
            param: &mut tp,
            grad: &tensor(&cpu, &[n], &g),
            m: &mut tm,
            v: &mut tv,
            param_bf16: None,
            weight_decay: 0.1,
        };
        adamw::step_all(&mut [one_tensor], h, None).unwrap();
        for i in 0..n {
            let g = 0.5 * g[i];
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.98 * v[i] + 0.02 * g * g;
            let (mh, vh) = (
                m[i] / (1.0 - 0.9f64.powi(step as i32)),
                v[i] / (1.0 - 0.98f64.powi(step as i32)),
            );
            p[i] = p[i] * (1.0 - 0.01 * 0.1) - 0.01 * mh / (vh.sqrt() + 1e-8);
        }
        let got = values(&tp);
        assert!(rel_err(&got, &p) < 1e-14, "step {step}: {got:?} vs {p:?}");
    }
}

#[test]
fn clipping_folded_into_adamw_equals_clipping_first_bit_for_bit() {
    use hourglass::model::lm::HourglassLM;
    use hourglass::model::Parameters;
    use hourglass::train::optim::AdamW;
    use hourglass::train::{clip_factor, clip_grad_norm, grad_norm};
    use hourglass::{Cpu, HourGlassConfig};
    let config = HourGlassConfig::reference(2, 16, 0.0, 32, &[2]);
    let (ids, targets): (Vec<u32>, Vec<u32>) = (0..24).map(|i| (i * 7 % 256, i * 5 % 256)).unzip();
    let run = |folded: bool| {
        let mut lm = HourglassLM::new(&Cpu::<f32>::new(), &config, 1).unwrap();
        let mut opt = AdamW::new(0.9, 0.98, 1e-8, 0.01);
        for _ in 0..3 {
            lm.zero_grad().unwrap();
            lm.loss(&ids, &targets, 12, 2, true).unwrap();
            // A max norm far below the gradients' norm, so every step clips.
            if folded {
                let factor = clip_factor(grad_norm(&lm).unwrap(), 1e-3).unwrap();
                assert!(factor < 1.0);
                opt.step_scaled(&mut lm, 1e-2, factor).unwrap();
            } else {
                clip_grad_norm(&mut lm, 1e-3).unwrap();
                opt.step(&mut lm, 1e-2).unwrap();
            }
        }
        let mut params = Vec::new();
        lm.visit("", &mut |_, p| params.extend(p.value.to_vec().unwrap()));
        params
    };
    let (folded, first) = (run(true), run(false));
    assert!(
        folded
            .iter()
            .zip(&first)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "the folded update differs"
    );
}
