//! The components of `docs/components.md` as modules: f64 finite-difference gradient checks of each
//! shortening, upsampling and the cross-attention block they share (eval and training mode), their
//! parameter names, the config JSON, and non-causal mode (it sees the future; batch rows never mix).
//! Whole models mixing the components: `tests/suite/gradcheck.rs`; causality: `tests/suite/causality.rs`; bad
//! configurations: `tests/suite/errors.rs`.

use crate::common::*;
use hourglass::config::{
    AttentionPooling, AttentionUpsampling, Depth, PerLevel, ResamplingMask, ShorteningKind,
    UpsamplingKind,
};
use hourglass::model::shortening::Shortening;
use hourglass::model::transformer::CrossAttentionBlock;
use hourglass::model::upsampling::Upsampling;
use hourglass::model::{HourGlass, Parameters, Pass};
use hourglass::ops::attention::AttnMask;
use hourglass::rng::SeededRng;
use hourglass::{HourGlassConfig, Tensor};

const D: usize = 8;

fn base(dropout: f64) -> HourGlassConfig {
    HourGlassConfig::reference(2, D, dropout, 12, &[2])
}

/// Moves every LayerNorm parameter away from (1, 0) so that no gradient is special at initialisation.
fn perturb_norms<M: Parameters<F64>>(m: &mut M, seed: u64) {
    for (i, (name, len)) in param_sizes(m).into_iter().enumerate() {
        if name.contains("norm") {
            let v: Vec<f64> = param_values(m, &name)
                .iter()
                .zip(random_vec(seed + i as u64, len))
                .map(|(a, e)| a + 0.3 * e)
                .collect();
            set_param(m, &name, &v);
        }
    }
}

/// Checks the gradient of every input and every parameter of a module against central differences of
/// `L = Σ forward(inputs) · r`. `dropout_seed` None is evaluation mode; Some(seed) is training mode with
/// `Pass::new(true, seed)` rebuilt for every forward (the same masks each time). Parameters (and
/// inputs, named `input <i>`) for which `may_vanish(name)` holds may have a zero gradient; every other one
/// must have a real one.
#[allow(clippy::too_many_arguments)]
fn check_module<M: Parameters<F64>>(
    tag: &str,
    module: &mut M,
    input_shapes: &[Vec<usize>],
    dropout_seed: Option<u64>,
    seed: u64,
    may_vanish: impl Fn(&str) -> bool,
    forward: impl Fn(&mut M, Vec<Tensor<F64>>, &mut Pass) -> Tensor<F64>,
    backward: impl Fn(&mut M, Tensor<F64>) -> Vec<Tensor<F64>>,
) {
    let be = cpu64();
    perturb_norms(module, seed);
    let inputs: Vec<Vec<f64>> = input_shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random_vec(seed + 10 + i as u64, s.iter().product()))
        .collect();
    let run = |m: &mut M, inputs: &[Vec<f64>], training: bool| -> (Vec<usize>, Vec<f64>) {
        let tensors = inputs
            .iter()
            .zip(input_shapes)
            .map(|(v, s)| tensor(&be, s, v))
            .collect();
        let mut drop = match dropout_seed {
            Some(s) if training => Pass::new(true, s),
            _ => Pass::eval(),
        };
        let y = forward(m, tensors, &mut drop);
        (y.shape().to_vec(), values(&y))
    };
    let (y_shape, y) = run(module, &inputs, true);
    assert!(y.iter().all(|v| v.is_finite()), "{tag}: non-finite output");
    if dropout_seed.is_some() {
        let plain = run(module, &inputs, false).1;
        assert!(
            max_abs_diff(&y, &plain) > 1e-3,
            "{tag}: dropout had no effect"
        );
        assert_eq!(run(module, &inputs, true).1, y, "{tag}: not deterministic");
    }
    let r = random_vec(seed + 2, y.len());
    let loss = |m: &mut M, inputs: &[Vec<f64>]| weighted_sum(&run(m, inputs, true).1, &r);

    // Analytic gradients from one forward/backward.
    run(module, &inputs, true);
    module.zero_grad().unwrap();
    let grads: Vec<Vec<f64>> = backward(module, tensor(&be, &y_shape, &r))
        .iter()
        .map(values)
        .collect();
    assert_eq!(grads.len(), inputs.len(), "{tag}: one gradient per input");
    for (i, (x, g)) in inputs.iter().zip(&grads).enumerate() {
        let name = format!("{tag} input {i}");
        let mut eval = |v: &[f64]| {
            let mut all = inputs.clone();
            all[i] = v.to_vec();
            loss(module, &all)
        };
        let coords = sample_coords(x.len(), 24, seed + i as u64);
        let report = check_grad(&name, x, g, Some(&coords), OP_TOL, &mut eval);
        if !may_vanish(&format!("input {i}")) {
            assert!(report.numeric_norm > 1e-6, "{name}: gradient vanishes");
        }
        check_directional(&name, x, g, 1, seed + 50 + i as u64, OP_TOL, &mut eval);
    }
    for (p, (name, len)) in param_sizes(module).into_iter().enumerate() {
        let value = param_values(module, &name);
        let grad = param_grad(module, &name);
        let coords = sample_coords(len, 8, seed + 100 + p as u64);
        let mut eval = |v: &[f64]| {
            set_param(module, &name, v);
            let l = loss(module, &inputs);
            set_param(module, &name, &value);
            l
        };
        let tag = format!("{tag} {name}");
        let report = check_grad(&tag, &value, &grad, Some(&coords), OP_TOL, &mut eval);
        check_directional(
            &tag,
            &value,
            &grad,
            1,
            seed + 200 + p as u64,
            OP_TOL,
            &mut eval,
        );
        if !may_vanish(&name) {
            assert!(
                report.numeric_norm > 1e-6 || norm(&grad) > 1e-6,
                "{tag}: gradient vanishes"
            );
        }
    }
}

/// The key bias never gets a gradient (softmax is shift-invariant per query).
fn key_bias(name: &str) -> bool {
    name.ends_with("key.linear.bias")
}

fn check_shortening(cfg: &HourGlassConfig, kind: ShorteningKind, k: usize, seq: usize, seed: u64) {
    let be = cpu64();
    let mut s = Shortening::new(&be, cfg, kind, k, &mut SeededRng::new(seed)).unwrap();
    let shape = vec![seq, 2, D];
    let tag = format!(
        "shortening {kind:?} k={k} seq={seq} pool={:?} mask={:?} causal={} dropout={}",
        cfg.attention_pooling, cfg.attention_resampling_mask, cfg.causal, cfg.dropout
    );
    let dropout_seed = (cfg.dropout > 0.0).then_some(seed + 7);
    // A causal sequence shorter than the factor is shifted out entirely: the output is a constant of the
    // parameters (LN of zero rows is its bias), so most gradients are zero; they must still match.
    let shifted_out = cfg.causal && seq < k;
    check_module(
        &tag,
        &mut s,
        &[shape],
        dropout_seed,
        seed,
        |name| shifted_out || key_bias(name),
        |s, mut x, drop| {
            let y = s.forward(&x.remove(0), drop).unwrap();
            assert_eq!(y.shape(), &[seq.div_ceil(k), 2, D]);
            y
        },
        |s, dy| vec![s.backward(&dy).unwrap()],
    );
}

fn check_upsampling(cfg: &HourGlassConfig, kind: UpsamplingKind, k: usize, seq: usize, seed: u64) {
    let be = cpu64();
    let mut u = Upsampling::new(&be, cfg, kind, k, &mut SeededRng::new(seed)).unwrap();
    let tag = format!(
        "upsampling {kind:?} k={k} seq={seq} U={:?} mask={:?} causal={} dropout={}",
        cfg.attention_upsampling, cfg.attention_resampling_mask, cfg.causal, cfg.dropout
    );
    // Under the per-window mask, or with one shortened vector, every full-length query sees one key: the
    // attention weights are constant 1, so the query and key projections get no gradient.
    let one_key = cfg.attention_resampling_mask == ResamplingMask::Window || seq <= k;
    let dropout_seed = (cfg.dropout > 0.0).then_some(seed + 7);
    check_module(
        &tag,
        &mut u,
        &[vec![seq, 2, D], vec![seq.div_ceil(k), 2, D]],
        dropout_seed,
        seed,
        |name| key_bias(name) || (one_key && (name.contains("query.") || name.contains("key."))),
        |u, mut inputs, drop| {
            let short = inputs.pop().unwrap();
            let y = u.forward(&inputs[0], short, drop).unwrap();
            assert_eq!(y.shape(), &[seq, 2, D]);
            y
        },
        |u, dy| {
            let (dx, dshort) = u.backward(dy).unwrap();
            vec![dx, dshort]
        },
    );
}

#[test]
fn linear_pooling_gradients() {
    for (k, seq, causal) in [(2, 5, true), (3, 7, true), (3, 8, false), (3, 2, true)] {
        let cfg = HourGlassConfig {
            causal,
            ..base(0.0)
        };
        check_shortening(&cfg, ShorteningKind::Linear, k, seq, 100 + seq as u64);
    }
    check_shortening(&base(0.0), ShorteningKind::Avg, 3, 7, 110);
}

/// The cases both attention resamplers are checked on: `(config, k, seq)`. `linear` picks linear pooling S
/// and linear upsampling U (else avg and naive); the last two are training mode.
fn attention_cases() -> Vec<(HourGlassConfig, usize, usize)> {
    use ResamplingMask::{Funnel, Window};
    [
        (false, Funnel, true, 3, 7, 0.1),
        (true, Funnel, true, 2, 5, 0.1),
        (false, Window, true, 2, 7, 0.1),
        (true, Window, false, 3, 8, 0.1),
        (false, Funnel, false, 3, 7, 0.1),
        (true, Funnel, true, 3, 2, 0.1),
        (true, Funnel, true, 3, 7, 0.3),
        (false, Window, false, 2, 6, 0.3),
    ]
    .into_iter()
    .map(|(linear, mask, causal, k, seq, dropout)| {
        let cfg = HourGlassConfig {
            attention_pooling: if linear {
                AttentionPooling::Linear
            } else {
                AttentionPooling::Avg
            },
            attention_upsampling: if linear {
                AttentionUpsampling::Linear
            } else {
                AttentionUpsampling::Naive
            },
            attention_resampling_mask: mask,
            causal,
            ..base(dropout)
        };
        (cfg, k, seq)
    })
    .collect()
}

#[test]
fn attention_shortening_gradients() {
    for (i, (cfg, k, seq)) in attention_cases().iter().enumerate() {
        check_shortening(
            cfg,
            ShorteningKind::Attention,
            *k,
            *seq,
            200 + 10 * i as u64,
        );
    }
}

#[test]
fn attention_upsampling_gradients() {
    for (i, (cfg, k, seq)) in attention_cases().iter().enumerate() {
        check_upsampling(
            cfg,
            UpsamplingKind::Attention,
            *k,
            *seq,
            400 + 10 * i as u64,
        );
    }
}

#[test]
fn linear_upsampling_gradients() {
    for (k, seq) in [(2, 5), (3, 7), (3, 2)] {
        check_upsampling(&base(0.0), UpsamplingKind::Linear, k, seq, 300 + seq as u64);
    }
    check_upsampling(&base(0.0), UpsamplingKind::Naive, 3, 7, 310);
}

#[test]
fn cross_attention_block_gradients() {
    let be = cpu64();
    for (i, (mask, q_len, kv_len, dropout)) in [
        (AttnMask::Funnel(3), 3, 7, 0.0),
        (AttnMask::UpCausal(2), 7, 4, 0.0),
        (AttnMask::Full, 4, 6, 0.3),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 500 + 10 * i as u64;
        let mut block =
            CrossAttentionBlock::new(&be, 2, D, 12, dropout, &mut SeededRng::new(seed)).unwrap();
        check_module(
            &format!("cross-attention block {mask:?} q={q_len} kv={kv_len} dropout={dropout}"),
            &mut block,
            &[vec![q_len, 2, D], vec![kv_len, 2, D]],
            (dropout > 0.0).then_some(seed + 7),
            seed,
            key_bias,
            |b, mut inputs, drop| {
                let h = inputs.pop().unwrap();
                b.forward(inputs.pop().unwrap(), h, mask, drop).unwrap()
            },
            |b, dy| {
                let (dq, dh) = b.backward(&dy).unwrap();
                vec![dq, dh]
            },
        );
    }
}

#[test]
fn backward_before_forward_is_an_error() {
    let be = cpu64();
    let mut rng = SeededRng::new(1);
    let dy = random_tensor(&be, &[2, 1, D], 2);
    for kind in [
        ShorteningKind::Avg,
        ShorteningKind::Linear,
        ShorteningKind::Attention,
    ] {
        let mut s = Shortening::new(&be, &base(0.1), kind, 2, &mut rng).unwrap();
        assert!(s.backward(&dy).is_err(), "{kind:?}");
    }
    for kind in [UpsamplingKind::Linear, UpsamplingKind::Attention] {
        let mut u = Upsampling::new(&be, &base(0.1), kind, 2, &mut rng).unwrap();
        assert!(u.backward(dy.try_clone().unwrap()).is_err(), "{kind:?}");
    }
}

// ---- parameter names ---------------------------------------------------------------------------------------

#[test]
fn parameter_names_follow_the_dotted_scheme() {
    let cfg = HourGlassConfig {
        shortening: PerLevel::Each(vec![ShorteningKind::Linear, ShorteningKind::Attention]),
        upsampling: PerLevel::Each(vec![UpsamplingKind::Attention, UpsamplingKind::Linear]),
        attention_pooling: AttentionPooling::Linear,
        attention_upsampling: AttentionUpsampling::Linear,
        depth: Some(Depth::triple(2, Depth::triple(1, 2, 0), 1)),
        ..HourGlassConfig::reference(2, D, 0.1, 12, &[2, 3])
    };
    let model = HourGlass::from_config(&cpu64(), &cfg, 0).unwrap();
    let sizes = param_sizes(&model);
    let shape_of = |name: &str| -> Vec<usize> {
        let mut found = None;
        model.visit("", &mut |n, p| {
            if n == name {
                found = Some(p.value.shape().to_vec());
            }
        });
        found.unwrap_or_else(|| panic!("no parameter {name}; have {:?}", model.param_names()))
    };
    let layer = |prefix: &str| -> Vec<String> {
        [
            "norm_self_attn.weight",
            "norm_self_attn.bias",
            "self_attn.query.linear.weight",
            "self_attn.query.linear.bias",
            "self_attn.key.linear.weight",
            "self_attn.key.linear.bias",
            "self_attn.value.linear.weight",
            "self_attn.value.linear.bias",
            "self_attn.output.weight",
            "self_attn.output.bias",
            "norm_ff.weight",
            "norm_ff.bias",
            "feed_forward.layer1.weight",
            "feed_forward.layer1.bias",
            "feed_forward.layer2.weight",
            "feed_forward.layer2.bias",
        ]
        .iter()
        .map(|n| format!("{prefix}.{n}"))
        .collect()
    };
    let block = |prefix: &str| -> Vec<String> {
        [
            "attention.query.linear.weight",
            "attention.query.linear.bias",
            "attention.key.linear.weight",
            "attention.key.linear.bias",
            "attention.value.linear.weight",
            "attention.value.linear.bias",
            "attention.output.weight",
            "attention.output.bias",
            "norm_ff.weight",
            "norm_ff.bias",
            "feed_forward.layer1.weight",
            "feed_forward.layer1.bias",
            "feed_forward.layer2.weight",
            "feed_forward.layer2.bias",
        ]
        .iter()
        .map(|n| format!("{prefix}.{n}"))
        .collect()
    };
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut want: Vec<String> = Vec::new();
    want.extend(layer("pre.0"));
    want.extend(layer("pre.1"));
    want.extend(names(&[
        "shortening.linear.weight",
        "shortening.linear.bias",
    ]));
    want.extend(layer("hour_glass.pre"));
    want.extend(names(&[
        "hour_glass.shortening.norm_input.weight",
        "hour_glass.shortening.norm_input.bias",
        "hour_glass.shortening.pool.weight",
        "hour_glass.shortening.pool.bias",
        "hour_glass.shortening.norm_query.weight",
        "hour_glass.shortening.norm_query.bias",
    ]));
    want.extend(block("hour_glass.shortening"));
    want.extend(layer("hour_glass.shortened.0"));
    want.extend(layer("hour_glass.shortened.1"));
    want.extend(names(&[
        "hour_glass.up_sampling.linear.weight",
        "hour_glass.up_sampling.linear.bias",
        "up_sampling.norm_input.weight",
        "up_sampling.norm_input.bias",
        "up_sampling.linear.weight",
        "up_sampling.linear.bias",
        "up_sampling.norm_query.weight",
        "up_sampling.norm_query.bias",
    ]));
    want.extend(block("up_sampling"));
    want.extend(names(&[
        "up_sampling.norm_output.weight",
        "up_sampling.norm_output.bias",
    ]));
    want.extend(layer("post"));
    let have: Vec<String> = sizes.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(have, want);
    // Shapes of the resampling projections (PyTorch's [out, in]): outer level k = 2, inner k = 3.
    assert_eq!(shape_of("shortening.linear.weight"), [D, 2 * D]);
    assert_eq!(shape_of("hour_glass.shortening.pool.weight"), [D, 3 * D]);
    assert_eq!(shape_of("hour_glass.up_sampling.linear.weight"), [3 * D, D]);
    assert_eq!(shape_of("hour_glass.up_sampling.linear.bias"), [3 * D]);
    assert_eq!(shape_of("up_sampling.linear.weight"), [2 * D, D]);
    assert_eq!(shape_of("up_sampling.norm_output.bias"), [D]);
}

#[test]
fn reference_constructor_is_avg_naive_one_layer_causal() {
    let model = HourGlass::new(2, 8, 0.1, 16, &[2, 3]).unwrap();
    assert_eq!(
        model.config(),
        &HourGlassConfig::reference(2, 8, 0.1, 16, &[2, 3])
    );
    let c = model.config();
    assert_eq!(c.shortening, PerLevel::All(ShorteningKind::Avg));
    assert_eq!(c.upsampling, PerLevel::All(UpsamplingKind::Naive));
    assert_eq!(c.depth, None);
    assert!(c.causal);
    // Only transformer layers: pre, post and the nested level's pre, shortened, post.
    assert_eq!(model.param_names().len(), 16 * 5);
    assert!(model
        .param_names()
        .iter()
        .all(|n| !n.contains("shortening") && !n.contains("up_sampling")));
}

// ---- configuration JSON ------------------------------------------------------------------------------------

#[test]
fn reference_config_json_keeps_the_five_keys() {
    let old =
        r#"{"n_heads": 2, "d_model": 8, "dropout": 0.1, "d_ff": 16, "shortening_factors": [2, 3]}"#;
    let c = HourGlassConfig::from_json(old).unwrap();
    assert_eq!(c, HourGlassConfig::reference(2, 8, 0.1, 16, &[2, 3]));
    let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    let mut keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "d_ff",
            "d_model",
            "dropout",
            "n_heads",
            "shortening_factors"
        ]
    );
}

#[test]
fn component_config_json_reads_and_round_trips() {
    let text = r#"{"n_heads": 4, "d_model": 16, "dropout": 0.1, "d_ff": 32, "shortening_factors": [2, 4],
        "shortening": "attention", "upsampling": ["naive", "attention"], "attention_pooling": "linear",
        "attention_upsampling": "linear", "attention_resampling_mask": "window",
        "depth": [4, [2, 1, 2], 3], "causal": false}"#;
    let c = HourGlassConfig::from_json(text).unwrap();
    assert_eq!(c.shortening, PerLevel::All(ShorteningKind::Attention));
    assert_eq!(
        c.upsampling,
        PerLevel::Each(vec![UpsamplingKind::Naive, UpsamplingKind::Attention])
    );
    assert_eq!(c.attention_pooling, AttentionPooling::Linear);
    assert_eq!(c.attention_upsampling, AttentionUpsampling::Linear);
    assert_eq!(c.attention_resampling_mask, ResamplingMask::Window);
    assert_eq!(c.depth, Some(Depth::triple(4, Depth::triple(2, 1, 2), 3)));
    assert!(!c.causal);
    let (levels, valley) = c.levels().unwrap();
    assert_eq!(valley, 1);
    assert_eq!(
        levels
            .iter()
            .map(|l| (l.factor, l.pre, l.post))
            .collect::<Vec<_>>(),
        [(2, 4, 3), (4, 2, 2)]
    );
    assert_eq!(HourGlassConfig::from_json(&c.to_json()).unwrap(), c);
    assert_eq!(c.depth.as_ref().unwrap().to_string(), "[4, [2, 1, 2], 3]");
}

// ---- non-causal mode ---------------------------------------------------------------------------------------

fn non_causal_configs() -> Vec<HourGlassConfig> {
    let mut configs = Vec::new();
    for (shortening, upsampling, mask) in [
        (
            ShorteningKind::Avg,
            UpsamplingKind::Naive,
            ResamplingMask::Funnel,
        ),
        (
            ShorteningKind::Linear,
            UpsamplingKind::Linear,
            ResamplingMask::Funnel,
        ),
        (
            ShorteningKind::Attention,
            UpsamplingKind::Attention,
            ResamplingMask::Funnel,
        ),
        (
            ShorteningKind::Attention,
            UpsamplingKind::Attention,
            ResamplingMask::Window,
        ),
        (
            ShorteningKind::Linear,
            UpsamplingKind::Attention,
            ResamplingMask::Window,
        ),
    ] {
        configs.push(HourGlassConfig {
            shortening: shortening.into(),
            upsampling: upsampling.into(),
            attention_resampling_mask: mask,
            causal: false,
            ..HourGlassConfig::reference(2, D, 0.1, 12, &[2, 3])
        });
    }
    configs
}

/// Every output position depends on the last input position: the model really is non-causal.
#[test]
fn non_causal_models_see_later_positions() {
    let be = cpu64();
    for (i, cfg) in non_causal_configs().iter().enumerate() {
        let mut model = HourGlass::from_config(&be, cfg, 40 + i as u64).unwrap();
        model.train(false);
        for seq in [5, 7, 12] {
            let shape = [seq, 2, D];
            let row = 2 * D;
            let x = random_vec(41, seq * row);
            let mut x2 = x.clone();
            x2[(seq - 1) * row..].copy_from_slice(&random_vec(42, row));
            let y = values(&model.forward(&tensor(&be, &shape, &x)).unwrap());
            let y2 = values(&model.forward(&tensor(&be, &shape, &x2)).unwrap());
            for t in 0..seq {
                let d = max_abs_diff(&y[t * row..][..row], &y2[t * row..][..row]);
                assert!(
                    d > 1e-6,
                    "{cfg:?} seq={seq}: output {t} ignores the last input ({d:.3e})"
                );
            }
        }
    }
}

/// No padding leaks: a sequence gives the same output alone as in any row of a batch beside other data, for
/// ragged lengths (partial windows) in every mode, and the gradient of one row's output reaches no other row.
#[test]
fn batch_rows_never_mix() {
    let be = cpu64();
    let mut configs = non_causal_configs();
    configs.extend(
        non_causal_configs()
            .into_iter()
            .map(|c| HourGlassConfig { causal: true, ..c }),
    );
    for (i, cfg) in configs.iter().enumerate() {
        let mut model = HourGlass::from_config(&be, cfg, 60 + i as u64).unwrap();
        model.train(false);
        for seq in [1, 5, 7] {
            let alone = random_vec(61 + seq as u64, seq * D);
            let y_alone = values(&model.forward(&tensor(&be, &[seq, 1, D], &alone)).unwrap());
            for b in 0..3 {
                // Row b holds the sequence, the other rows other data.
                let mut batch = random_vec(62 + b as u64, seq * 3 * D);
                for t in 0..seq {
                    batch[(t * 3 + b) * D..][..D].copy_from_slice(&alone[t * D..][..D]);
                }
                let shape = [seq, 3, D];
                let y = values(&model.forward(&tensor(&be, &shape, &batch)).unwrap());
                let row: Vec<f64> = (0..seq)
                    .flat_map(|t| y[(t * 3 + b) * D..][..D].to_vec())
                    .collect();
                let d = max_abs_diff(&row, &y_alone);
                assert!(d < 1e-12, "{cfg:?} seq={seq} row {b}: differs by {d:.3e}");

                // Output gradient only on row b: no other row's input gets any.
                let mut r = vec![0.0; y.len()];
                for t in 0..seq {
                    r[(t * 3 + b) * D..][..D].copy_from_slice(&random_vec(63 + t as u64, D));
                }
                let dx = values(&model.backward(&tensor(&be, &shape, &r)).unwrap());
                for t in 0..seq {
                    for other in (0..3).filter(|&o| o != b) {
                        assert!(
                            dx[(t * 3 + other) * D..][..D].iter().all(|&g| g == 0.0),
                            "{cfg:?} seq={seq}: gradient of row {b} reaches row {other}"
                        );
                    }
                }
            }
        }
    }
}
