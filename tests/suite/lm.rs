//! The byte-level LM: its gradient (f64 finite differences through embedding, hourglass, norm, head and
//! loss) and a short training run with AdamW whose loss falls.

use crate::common::*;
use hourglass::model::lm::HourglassLM;
use hourglass::train::AdamW;
use hourglass::{Cpu, HourGlassConfig, Parameters};

fn config(dropout: f64) -> HourGlassConfig {
    HourGlassConfig::reference(2, 8, dropout, 16, &[2])
}

#[test]
fn lm_gradients_match_finite_differences() {
    let (seq, batch) = (5, 2);
    let ids: Vec<u32> = (0..seq * batch).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..seq * batch).map(|i| (i * 91 % 256) as u32).collect();
    let mut lm = HourglassLM::new(&cpu64(), &config(0.0), 3).unwrap();
    lm.loss(&ids, &targets, seq, batch, true).unwrap();
    for name in [
        "embedding.weight",
        "head.weight",
        "norm.bias",
        "hourglass.pre.feed_forward.layer1.weight",
    ] {
        let x = param_values(&lm, name);
        let analytic = param_grad(&lm, name);
        let coords = sample_coords(x.len(), 12, 5);
        // Include embedding rows that are used (others have zero gradient).
        let coords: Vec<usize> = if name == "embedding.weight" {
            (0..8).map(|e| ids[1] as usize * 8 + e).collect()
        } else {
            coords
        };
        let mut probe = HourglassLM::new(&cpu64(), &config(0.0), 3).unwrap();
        check_grad(name, &x, &analytic, Some(&coords), MODEL_TOL, |v| {
            set_param(&mut probe, name, v);
            probe.loss(&ids, &targets, seq, batch, false).unwrap()
        });
    }
}

#[test]
fn short_training_run_reduces_the_loss() {
    let text = b"the quick brown fox jumps over the lazy dog. ".repeat(8);
    let (seq, batch) = (16, 4);
    let cpu = Cpu::<f32>::new();
    let mut lm = HourglassLM::new(&cpu, &config(0.1), 1).unwrap();
    let mut opt = AdamW::new(0.9, 0.98, 1e-8, 0.01);
    let batch_at = |step: usize| -> (Vec<u32>, Vec<u32>) {
        let (mut x, mut y) = (vec![0; seq * batch], vec![0; seq * batch]);
        for b in 0..batch {
            let start = (step * 7 + b * 13) % (text.len() - seq - 1);
            for t in 0..seq {
                x[t * batch + b] = text[start + t] as u32;
                y[t * batch + b] = text[start + t + 1] as u32;
            }
        }
        (x, y)
    };
    let mut losses = Vec::new();
    for step in 0..60 {
        let (x, y) = batch_at(step);
        lm.zero_grad().unwrap();
        losses.push(lm.loss(&x, &y, seq, batch, true).unwrap());
        opt.step(&mut lm, 3e-3).unwrap();
    }
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[55..].iter().sum::<f64>() / 5.0;
    assert!(
        (first - (256f64).ln()).abs() < 1.0,
        "starts near uniform over bytes: {first}"
    );
    assert!(
        last < first * 0.6,
        "loss fell from {first:.3} to only {last:.3}"
    );
}

#[test]
fn tied_lm_gradients_match_finite_differences() {
    let (seq, batch) = (5, 2);
    let ids: Vec<u32> = (0..seq * batch).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..seq * batch).map(|i| (i * 91 % 256) as u32).collect();
    let mut lm = HourglassLM::build(&cpu64(), &config(0.0), 3, true).unwrap();
    assert!(lm.is_tied());
    let names = lm.param_names();
    assert!(names.contains(&"head.bias".to_string()));
    assert!(!names.contains(&"head.weight".to_string()), "{names:?}");
    lm.loss(&ids, &targets, seq, batch, true).unwrap();
    // Row ids[1] gets gradient as an input and as an output class; row 200 (never an input) only through
    // the head.
    let name = "embedding.weight";
    let x = param_values(&lm, name);
    let analytic = param_grad(&lm, name);
    let coords: Vec<usize> = (0..8)
        .map(|e| ids[1] as usize * 8 + e)
        .chain((0..8).map(|e| 200 * 8 + e))
        .collect();
    assert!(coords.iter().all(|&c| analytic[c] != 0.0));
    let mut probe = HourglassLM::build(&cpu64(), &config(0.0), 3, true).unwrap();
    check_grad(name, &x, &analytic, Some(&coords), MODEL_TOL, |v| {
        set_param(&mut probe, name, v);
        probe.loss(&ids, &targets, seq, batch, false).unwrap()
    });
    for name in ["head.bias", "norm.weight"] {
        let x = param_values(&lm, name);
        let analytic = param_grad(&lm, name);
        let coords = sample_coords(x.len(), 8, 7);
        let mut probe = HourglassLM::build(&cpu64(), &config(0.0), 3, true).unwrap();
        check_grad(name, &x, &analytic, Some(&coords), MODEL_TOL, |v| {
            set_param(&mut probe, name, v);
            probe.loss(&ids, &targets, seq, batch, false).unwrap()
        });
    }
}
