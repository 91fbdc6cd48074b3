//! Causality of the whole hourglass (shift, shortening, nested valleys and upsampling must never let a
//! position see a later one), for the reference and for every causal combination of the components of
//! `docs/components.md`, plus dropout and seeding behaviour of whole models.

use crate::common::*;
use hourglass::config::{
    AttentionPooling, AttentionUpsampling, PerLevel, ResamplingMask, ShorteningKind, UpsamplingKind,
};
use hourglass::device::BackendCore;
use hourglass::{Cpu, HourGlass, HourGlassConfig, Tensor};

const FACTOR_LISTS: [&[usize]; 4] = [&[2], &[3], &[2, 3], &[2, 2, 2]];

fn config(factors: &[usize], dropout: f64) -> HourGlassConfig {
    HourGlassConfig::reference(2, 8, dropout, 16, factors)
}

/// Lengths to test: multiples of the total factor, ragged ones, and ones shorter than a factor at some level.
fn seq_lens(factors: &[usize]) -> Vec<usize> {
    let prod: usize = factors.iter().product();
    let mut lens = vec![
        1,
        factors[0] - 1,
        factors[0] + 1,
        prod,
        prod + 1,
        2 * prod - 1,
        2 * prod + 3,
    ];
    lens.retain(|&s| s > 1);
    lens.sort_unstable();
    lens.dedup();
    lens
}

/// Positions `range` of a `[seq, batch, d]` tensor's data (all batch entries).
fn rows<'a>(data: &'a [f64], shape: &[usize], range: std::ops::Range<usize>) -> &'a [f64] {
    let row = shape[1] * shape[2];
    &data[range.start * row..range.end * row]
}

/// `x` with every position after `i` replaced by fresh random values.
fn perturb_after(x: &[f64], shape: &[usize], i: usize, seed: u64) -> Vec<f64> {
    let row = shape[1] * shape[2];
    let mut out = x.to_vec();
    let fresh = random_vec(seed, x.len());
    out[(i + 1) * row..].copy_from_slice(&fresh[(i + 1) * row..]);
    out
}

/// For every `i`, changing the inputs after `i` leaves outputs `0..=i` unchanged (within `tol`), and does
/// change some later output (so the check is not vacuous). `forward` must be deterministic in its input.
fn check_causal<B: BackendCore>(
    what: &str,
    backend: &B,
    shape: [usize; 3],
    seed: u64,
    tol: f64,
    mut forward: impl FnMut(&Tensor<B>) -> Vec<f64>,
) {
    let x = random_vec(seed, shape.iter().product());
    let y = forward(&tensor(backend, &shape, &x));
    assert!(y.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    for i in 0..shape[0] - 1 {
        let x2 = perturb_after(&x, &shape, i, seed + 1 + i as u64);
        let y2 = forward(&tensor(backend, &shape, &x2));
        let past = max_abs_diff(rows(&y2, &shape, 0..i + 1), rows(&y, &shape, 0..i + 1));
        assert!(
            past <= tol,
            "{what}: changing inputs after position {i} changed outputs at or before it by {past:.3e}"
        );
        let future = max_abs_diff(
            rows(&y2, &shape, i + 1..shape[0]),
            rows(&y, &shape, i + 1..shape[0]),
        );
        assert!(
            future > 1e-4,
            "{what}: changing inputs after position {i} changed nothing after it ({future:.3e})"
        );
    }
}

#[test]
fn hourglass_is_causal_in_eval_mode() {
    let be = cpu64();
    for (f, factors) in FACTOR_LISTS.iter().enumerate() {
        let mut model = HourGlass::from_config(&be, &config(factors, 0.1), 11 + f as u64).unwrap();
        model.train(false);
        for seq in seq_lens(factors) {
            for batch in [1, 3] {
                let what = format!("eval {factors:?} seq={seq} batch={batch}");
                check_causal(&what, &be, [seq, batch, 8], 100 + seq as u64, 1e-12, |x| {
                    values(&model.forward(x).unwrap())
                });
            }
        }
    }
}

#[test]
fn hourglass_is_causal_in_training_mode() {
    // A fresh model from the same seed per forward: its first forward always uses the same dropout masks.
    let be = cpu64();
    for (f, factors) in FACTOR_LISTS.iter().enumerate() {
        let cfg = config(factors, 0.3);
        let prod: usize = factors.iter().product();
        for seq in [prod + 1, 2 * prod - 1] {
            let what = format!("training {factors:?} seq={seq}");
            check_causal(&what, &be, [seq, 2, 8], 200 + seq as u64, 1e-12, |x| {
                let mut model = HourGlass::from_config(&be, &cfg, 21 + f as u64).unwrap();
                assert!(model.is_training());
                values(&model.forward(x).unwrap())
            });
        }
    }
}

#[test]
fn hourglass_is_causal_in_f32() {
    let be = Cpu::<f32>::new();
    for (f, factors) in FACTOR_LISTS.iter().enumerate() {
        let mut model = HourGlass::from_config(&be, &config(factors, 0.1), 31 + f as u64).unwrap();
        model.train(false);
        let prod: usize = factors.iter().product();
        let what = format!("f32 {factors:?}");
        check_causal(&what, &be, [2 * prod + 1, 2, 8], 300, 0.0, |x| {
            values(&model.forward(x).unwrap())
        });
    }
}

/// The gradient side of causality: the gradient of output position `i` reaches no input after `i`.
#[test]
fn hourglass_gradient_is_causal() {
    let be = cpu64();
    for (f, factors) in FACTOR_LISTS.iter().enumerate() {
        let mut model = HourGlass::from_config(&be, &config(factors, 0.1), 41 + f as u64).unwrap();
        model.train(false);
        let prod: usize = factors.iter().product();
        let shape = [2 * prod + 1, 2, 8];
        let x = random_tensor(&be, &shape, 400);
        for i in 0..shape[0] {
            // Output gradient non-zero only at position i.
            let mut r = vec![0.0; shape.iter().product()];
            let row = shape[1] * shape[2];
            r[i * row..(i + 1) * row].copy_from_slice(&random_vec(401 + i as u64, row));
            model.forward(&x).unwrap();
            let dx = values(&model.backward(&tensor(&be, &shape, &r)).unwrap());
            let leaked = rows(&dx, &shape, i + 1..shape[0]);
            assert!(
                leaked.iter().all(|&g| g == 0.0),
                "{factors:?}: gradient of output {i} reaches later inputs ({:.3e})",
                leaked.iter().fold(0.0f64, |m, g| m.max(g.abs()))
            );
            assert!(
                norm(rows(&dx, &shape, i..i + 1)) > 0.0,
                "{factors:?}: output {i} has no gradient with respect to input {i}"
            );
        }
    }
}

#[test]
fn training_mode_applies_dropout() {
    let be = cpu64();
    for (f, factors) in FACTOR_LISTS.iter().enumerate() {
        let seed = 51 + f as u64;
        let shape = [7, 2, 8];
        let x = random_tensor(&be, &shape, 500);
        let mut model = HourGlass::from_config(&be, &config(factors, 0.2), seed).unwrap();
        assert!(model.is_training(), "models start in training mode");
        let train1 = values(&model.forward(&x).unwrap());
        let train2 = values(&model.forward(&x).unwrap());
        model.train(false);
        let eval1 = values(&model.forward(&x).unwrap());
        let eval2 = values(&model.forward(&x).unwrap());
        assert!(
            max_abs_diff(&train1, &eval1) > 1e-3,
            "{factors:?}: training output equals eval output"
        );
        assert!(
            max_abs_diff(&train1, &train2) > 1e-3,
            "{factors:?}: two training forwards used the same dropout masks"
        );
        assert_eq!(eval1, eval2, "{factors:?}: eval mode is not deterministic");

        // Control: with dropout 0 training and eval agree exactly, so the difference above is dropout.
        let mut model = HourGlass::from_config(&be, &config(factors, 0.0), seed).unwrap();
        let train = values(&model.forward(&x).unwrap());
        model.train(false);
        assert_eq!(
            train,
            values(&model.forward(&x).unwrap()),
            "{factors:?}: p = 0"
        );
        // ...and the eval output does not depend on the dropout probability.
        assert_eq!(
            eval1,
            values(&model.forward(&x).unwrap()),
            "{factors:?}: eval depends on p"
        );
    }
}

#[test]
fn same_seed_gives_identical_models() {
    let be = cpu64();
    for factors in FACTOR_LISTS {
        let cfg = config(factors, 0.2);
        let shape = [9, 3, 8];
        let x = random_tensor(&be, &shape, 600);
        let mut a = HourGlass::from_config(&be, &cfg, 7).unwrap();
        let mut b = HourGlass::from_config(&be, &cfg, 7).unwrap();
        let mut c = HourGlass::from_config(&be, &cfg, 8).unwrap();
        // Parameters are bitwise equal.
        let pa = param_sizes(&a);
        assert_eq!(pa, param_sizes(&b));
        for (name, _) in &pa {
            assert_eq!(param_values(&a, name), param_values(&b, name), "{name}");
        }
        // Training mode: the same (seed, step) gives the same masks, call after call.
        for step in 0..2 {
            let ya = values(&a.forward(&x).unwrap());
            let yb = values(&b.forward(&x).unwrap());
            let yc = values(&c.forward(&x).unwrap());
            assert_eq!(ya, yb, "{factors:?} training step {step}");
            assert!(
                max_abs_diff(&ya, &yc) > 1e-3,
                "{factors:?}: seeds 7 and 8 agree"
            );
        }
        a.train(false);
        b.train(false);
        assert_eq!(
            values(&a.forward(&x).unwrap()),
            values(&b.forward(&x).unwrap()),
            "{factors:?} eval"
        );
    }
}

// ---- every causal combination of shortening and upsampling ------------------------------------------------

/// Shortening (avg, linear, attention with avg or linear pooling) × upsampling (naive, linear, attention with
/// naive or linear U) × resampling mask (funnel, window; only where attention is involved), each the same at
/// every level, on factors [2, 3] and [3]; plus per-level mixes.
fn component_configs(dropout: f64) -> Vec<HourGlassConfig> {
    use AttentionPooling as P;
    use AttentionUpsampling as U;
    let shortenings = [
        (ShorteningKind::Avg, P::Avg),
        (ShorteningKind::Linear, P::Avg),
        (ShorteningKind::Attention, P::Avg),
        (ShorteningKind::Attention, P::Linear),
    ];
    let upsamplings = [
        (UpsamplingKind::Naive, U::Naive),
        (UpsamplingKind::Linear, U::Naive),
        (UpsamplingKind::Attention, U::Naive),
        (UpsamplingKind::Attention, U::Linear),
    ];
    let mut configs = Vec::new();
    for factors in [&[2, 3][..], &[3]] {
        for (shortening, attention_pooling) in shortenings {
            for (upsampling, attention_upsampling) in upsamplings {
                let attention = shortening == ShorteningKind::Attention
                    || upsampling == UpsamplingKind::Attention;
                let masks: &[ResamplingMask] = if attention {
                    &[ResamplingMask::Funnel, ResamplingMask::Window]
                } else {
                    &[ResamplingMask::Funnel]
                };
                for &attention_resampling_mask in masks {
                    configs.push(HourGlassConfig {
                        shortening: shortening.into(),
                        upsampling: upsampling.into(),
                        attention_pooling,
                        attention_upsampling,
                        attention_resampling_mask,
                        ..config(factors, dropout)
                    });
                }
            }
        }
    }
    for mask in [ResamplingMask::Funnel, ResamplingMask::Window] {
        configs.push(HourGlassConfig {
            shortening: PerLevel::Each(vec![
                ShorteningKind::Attention,
                ShorteningKind::Linear,
                ShorteningKind::Attention,
            ]),
            upsampling: PerLevel::Each(vec![
                UpsamplingKind::Linear,
                UpsamplingKind::Attention,
                UpsamplingKind::Naive,
            ]),
            attention_resampling_mask: mask,
            ..config(&[2, 2, 2], dropout)
        });
    }
    configs
}

fn describe(c: &HourGlassConfig) -> String {
    c.to_json().replace(char::is_whitespace, "")
}

#[test]
fn every_component_combination_is_causal_in_eval_mode() {
    let be = cpu64();
    for (i, cfg) in component_configs(0.1).iter().enumerate() {
        let mut model = HourGlass::from_config(&be, cfg, 1000 + i as u64).unwrap();
        model.train(false);
        for seq in seq_lens(&cfg.shortening_factors) {
            let what = format!("eval {} seq={seq}", describe(cfg));
            check_causal(&what, &be, [seq, 2, 8], 700 + seq as u64, 1e-12, |x| {
                values(&model.forward(x).unwrap())
            });
        }
    }
}

#[test]
fn attention_resampling_is_causal_in_training_mode() {
    let be = cpu64();
    for (i, cfg) in component_configs(0.3).iter().enumerate() {
        let attention = (0..cfg.shortening_factors.len()).any(|l| {
            cfg.shortening.at(l) == ShorteningKind::Attention
                || cfg.upsampling.at(l) == UpsamplingKind::Attention
        });
        if !attention {
            continue;
        }
        let prod: usize = cfg.shortening_factors.iter().product();
        let what = format!("training {}", describe(cfg));
        check_causal(&what, &be, [prod + 2, 2, 8], 800, 1e-12, |x| {
            let mut model = HourGlass::from_config(&be, cfg, 2000 + i as u64).unwrap();
            values(&model.forward(x).unwrap())
        });
    }
}

/// The gradient side: the gradient of output position `i` reaches no input after `i`, for every combination.
#[test]
fn every_component_combination_has_causal_gradients() {
    let be = cpu64();
    for (c, cfg) in component_configs(0.1).iter().enumerate() {
        let mut model = HourGlass::from_config(&be, cfg, 3000 + c as u64).unwrap();
        model.train(false);
        let prod: usize = cfg.shortening_factors.iter().product();
        let shape = [prod + 3, 2, 8];
        let row = shape[1] * shape[2];
        let x = random_tensor(&be, &shape, 900);
        for i in 0..shape[0] {
            let mut r = vec![0.0; shape.iter().product()];
            r[i * row..(i + 1) * row].copy_from_slice(&random_vec(901 + i as u64, row));
            model.forward(&x).unwrap();
            let dx = values(&model.backward(&tensor(&be, &shape, &r)).unwrap());
            let leaked = rows(&dx, &shape, i + 1..shape[0]);
            assert!(
                leaked.iter().all(|&g| g == 0.0),
                "{}: gradient of output {i} reaches later inputs",
                describe(cfg)
            );
            assert!(
                norm(rows(&dx, &shape, i..i + 1)) > 0.0,
                "{}: output {i} has no gradient with respect to input {i}",
                describe(cfg)
            );
        }
    }
}

#[test]
fn a_plain_transformer_is_causal() {
    let be = cpu64();
    let mut model =
        HourGlass::from_config(&be, &HourGlassConfig::plain(2, 8, 0.1, 16, 3), 41).unwrap();
    model.train(false);
    for seq in [1, 2, 7] {
        check_causal(
            &format!("plain seq={seq}"),
            &be,
            [seq, 2, 8],
            400 + seq as u64,
            1e-12,
            |x| values(&model.forward(x).unwrap()),
        );
    }
}
