//! Rotary position embeddings (`ops::rotary`, `"positions": "rotary"`): the op against its definition, its
//! gradient (f64 central differences), the relative property, position 0 as the identity; whole hourglasses
//! with rotary (causality, rotary only in self-attention; their gradient checks are in gradcheck.rs); the
//! config key; and bad inputs.

use crate::common::*;
use hourglass::config::{Depth, Positions, ShorteningKind, UpsamplingKind};
use hourglass::model::HourGlass;
use hourglass::ops::rotary;
use hourglass::{Cpu, Error, HourGlassConfig};

// ---------------------------------------------------------------------------------------------------------
// The op.
// ---------------------------------------------------------------------------------------------------------

/// The definition, written out directly: pair (i, i + dh/2) of every head rotated by `sign · p · θ_i`.
fn reference(x: &[f64], shape: [usize; 3], heads: usize, sign: f64) -> Vec<f64> {
    let [seq, batch, width] = shape;
    let dh = width / heads;
    let half = dh / 2;
    let mut y = x.to_vec();
    for p in 0..seq {
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..half {
                    let theta = 10000f64.powf(-2.0 * i as f64 / dh as f64);
                    let (s, c) = (sign * p as f64 * theta).sin_cos();
                    let ia = (p * batch + b) * width + h * dh + i;
                    let ib = ia + half;
                    y[ia] = x[ia] * c - x[ib] * s;
                    y[ib] = x[ia] * s + x[ib] * c;
                }
            }
        }
    }
    y
}

#[test]
fn forward_and_backward_match_the_definition() {
    let be = cpu64();
    for (shape, heads) in [
        ([5, 2, 12], 2),
        ([7, 3, 8], 1),
        ([1, 1, 2], 1),
        ([9, 1, 32], 4),
    ] {
        let x = random_vec(1 + shape[0] as u64, shape.iter().product());
        let t = tensor(&be, &shape, &x);
        let y = values(&rotary::forward(&t, heads).unwrap());
        let e = max_abs_diff(&y, &reference(&x, shape, heads, 1.0));
        assert!(e < 1e-14, "{shape:?} heads {heads}: forward off by {e:e}");
        let dx = values(&rotary::backward(&t, heads).unwrap());
        let e = max_abs_diff(&dx, &reference(&x, shape, heads, -1.0));
        assert!(e < 1e-14, "{shape:?} heads {heads}: backward off by {e:e}");
    }
}

#[test]
fn known_values() {
    // d_head 4: θ_0 = 1, θ_1 = 10000^(-1/2) = 0.01. Position 1 of x = (1, 2, 3, 4) (pairs (1, 3), (2, 4)).
    let be = cpu64();
    let x = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0];
    let y = values(&rotary::forward(&tensor(&be, &[2, 1, 4], &x), 1).unwrap());
    let (c0, s0) = (1f64.cos(), 1f64.sin());
    let (c1, s1) = (0.01f64.cos(), 0.01f64.sin());
    let want = [
        0.0,
        0.0,
        0.0,
        0.0,
        c0 - 3.0 * s0,
        2.0 * c1 - 4.0 * s1,
        s0 + 3.0 * c0,
        2.0 * s1 + 4.0 * c1,
    ];
    assert!(max_abs_diff(&y, &want) < 1e-15, "{y:?} vs {want:?}");
}

#[test]
fn rotary_gradient() {
    let be = cpu64();
    for (k, (shape, heads)) in [([5, 2, 12], 2), ([4, 3, 8], 4), ([3, 1, 6], 1)]
        .into_iter()
        .enumerate()
    {
        let n = shape.iter().product();
        let x = random_vec(10 + k as u64, n);
        let r = random_vec(20 + k as u64, n);
        let analytic = values(&rotary::backward(&tensor(&be, &shape, &r), heads).unwrap());
        check_grad(
            &format!("rotary {shape:?} heads {heads}"),
            &x,
            &analytic,
            None,
            OP_TOL,
            |x| {
                let y = rotary::forward(&tensor(&be, &shape, x), heads).unwrap();
                weighted_sum(&values(&y), &r)
            },
        );
    }
}

#[test]
fn backward_inverts_forward_and_norms_are_kept() {
    let be = cpu64();
    let shape = [33, 2, 16];
    let x = random_vec(3, shape.iter().product());
    let y = rotary::forward(&tensor(&be, &shape, &x), 2).unwrap();
    let back = values(&rotary::backward(&y, 2).unwrap());
    assert!(max_abs_diff(&back, &x) < 1e-13);
    let y = values(&y);
    // Every pair keeps its length.
    for head in 0..shape[0] * shape[1] * 2 {
        for i in 0..4 {
            let (a, b) = (head * 8 + i, head * 8 + i + 4);
            let before = x[a].hypot(x[b]);
            let after = y[a].hypot(y[b]);
            assert!((before - after).abs() < 1e-13);
        }
    }
}

#[test]
fn position_zero_is_the_identity() {
    let x = random_vec(4, 3 * 2 * 8);
    let be = cpu64();
    let y = values(&rotary::forward(&tensor(&be, &[3, 2, 8], &x), 2).unwrap());
    assert_eq!(&y[..16], &x[..16], "f64");
    assert_ne!(&y[16..], &x[16..]);
    let f = Cpu::<f32>::new();
    let y = values(&rotary::forward(&tensor(&f, &[3, 2, 8], &x), 2).unwrap());
    let x32: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
    assert_eq!(&y[..16], &x32[..16], "f32");
}

/// `⟨R_p q, R_{p+s} k⟩` depends only on `s`: the same q at every position, the same k at every position.
#[test]
fn scores_depend_only_on_the_distance() {
    let be = cpu64();
    let (dh, heads, seq) = (16, 2, 40);
    let width = dh * heads;
    let (q, k) = (random_vec(5, width), random_vec(6, width));
    let tile = |v: &[f64]| -> Vec<f64> { (0..seq).flat_map(|_| v.iter().copied()).collect() };
    let rq = values(&rotary::forward(&tensor(&be, &[seq, 1, width], &tile(&q)), heads).unwrap());
    let rk = values(&rotary::forward(&tensor(&be, &[seq, 1, width], &tile(&k)), heads).unwrap());
    let score = |p: usize, pk: usize, h: usize| -> f64 {
        dot(
            &rq[p * width + h * dh..][..dh],
            &rk[pk * width + h * dh..][..dh],
        )
    };
    for h in 0..heads {
        for s in [0, 1, 3, 17] {
            let first = score(0, s, h);
            for p in 1..seq - s {
                let e = (score(p, p + s, h) - first).abs();
                assert!(
                    e < 1e-12,
                    "head {h} distance {s}: position {p} off by {e:e}"
                );
            }
        }
        // ...and does depend on the distance (positions are visible at all).
        assert!((score(0, 1, h) - score(0, 5, h)).abs() > 1e-3);
    }
}

#[test]
fn bad_shapes_are_errors() {
    let be = cpu64();
    let cases: [(&[usize], usize, &[&str]); 6] = [
        (&[4, 12], 2, &["3-D", "[4, 12]"]),
        (&[2, 1, 4, 3], 1, &["3-D", "[2, 1, 4, 3]"]),
        (&[3, 1, 10], 4, &["10", "n_heads (4)"]),
        (&[3, 1, 6], 2, &["d_head 3 is odd", "[3, 1, 6]"]),
        (&[3, 1, 8], 0, &["n_heads (0)"]),
        (&[0, 1, 8], 2, &["[0, 1, 8]"]),
    ];
    for (shape, heads, needles) in cases {
        let n = shape.iter().product();
        let t = tensor(&be, shape, &vec![0.5; n]);
        for result in [rotary::forward(&t, heads), rotary::backward(&t, heads)] {
            let msg = match result {
                Ok(_) => panic!("{shape:?} heads {heads}: accepted"),
                Err(e @ Error::Shape(_)) => e.to_string(),
                Err(e) => panic!("{shape:?} heads {heads}: wrong error kind {e}"),
            };
            for needle in needles {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The config key.
// ---------------------------------------------------------------------------------------------------------

fn rotary_config(factors: &[usize]) -> HourGlassConfig {
    HourGlassConfig {
        positions: Positions::Rotary,
        ..HourGlassConfig::reference(2, 8, 0.1, 16, factors)
    }
}

#[test]
fn config_json_round_trip() {
    let reference = HourGlassConfig::reference(2, 8, 0.1, 16, &[2]);
    assert_eq!(reference.positions, Positions::None);
    assert!(!reference.to_json().contains("positions"));
    let cfg = rotary_config(&[2, 3]);
    let json = cfg.to_json();
    assert!(json.contains(r#""positions": "rotary""#), "{json}");
    assert_eq!(HourGlassConfig::from_json(&json).unwrap(), cfg);

    let base =
        r#""n_heads": 2, "d_model": 8, "dropout": 0.1, "d_ff": 16, "shortening_factors": [2]"#;
    let none = HourGlassConfig::from_json(&format!(r#"{{{base}, "positions": "none"}}"#)).unwrap();
    assert_eq!(none, reference);
    assert!(!none.to_json().contains("positions"));
    let with =
        HourGlassConfig::from_json(&format!(r#"{{{base}, "positions": "rotary"}}"#)).unwrap();
    assert_eq!(with.positions, Positions::Rotary);

    let msg = HourGlassConfig::from_json(&format!(r#"{{{base}, "positions": "learned"}}"#))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("positions") && msg.contains("learned"),
        "{msg}"
    );
}

#[test]
fn odd_head_dim_is_a_config_error() {
    // d_head = 12 / 4 = 3.
    let cfg = HourGlassConfig {
        positions: Positions::Rotary,
        ..HourGlassConfig::reference(4, 12, 0.1, 16, &[2])
    };
    for result in [
        cfg.validate().map(|_| ()),
        HourGlassConfig::from_json(&cfg.to_json()).map(|_| ()),
        HourGlass::from_config(&cpu64(), &cfg, 0).map(|_| ()),
    ] {
        let msg = match result {
            Err(e @ Error::Config(_)) => e.to_string(),
            other => panic!("odd d_head with rotary: {:?}", other.err()),
        };
        assert!(msg.contains("d_head 3") && msg.contains("rotary"), "{msg}");
    }
    // Without rotary an odd d_head is fine.
    HourGlassConfig::reference(4, 12, 0.1, 16, &[2])
        .validate()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// Whole models.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn rotary_leaves_the_parameter_names_and_sizes_unchanged() {
    // Which attentions rotate (self-attention only, not the resamplers'): `model::hourglass`'s unit tests.
    let cfg = HourGlassConfig {
        shortening: ShorteningKind::Attention.into(),
        upsampling: UpsamplingKind::Attention.into(),
        depth: Some(Depth::triple(2, Depth::triple(1, 2, 0), 1)),
        ..rotary_config(&[2, 2])
    };
    let model = HourGlass::from_config(&cpu64(), &cfg, 3).unwrap();
    let plain = HourGlass::from_config(
        &cpu64(),
        &HourGlassConfig {
            positions: Positions::None,
            ..cfg.clone()
        },
        3,
    )
    .unwrap();
    assert_eq!(param_sizes(&model), param_sizes(&plain));
}

#[test]
fn rotary_changes_the_output_but_not_the_first_position() {
    // Same seed, same parameters: at position 0 every layer's rotation is the identity, and each stack sees
    // position 0 first, so y[0] is unchanged; later positions differ.
    let be = cpu64();
    let shape = [7, 2, 8];
    let x = random_tensor(&be, &shape, 7);
    let mut outs = Vec::new();
    for positions in [Positions::None, Positions::Rotary] {
        let cfg = HourGlassConfig {
            positions,
            ..rotary_config(&[2])
        };
        let mut model = HourGlass::from_config(&be, &cfg, 8).unwrap();
        model.train(false);
        outs.push(values(&model.forward(&x).unwrap()));
    }
    let row = shape[1] * shape[2];
    assert!(max_abs_diff(&outs[0][..row], &outs[1][..row]) < 1e-14);
    assert!(max_abs_diff(&outs[0][row..], &outs[1][row..]) > 1e-3);
}

/// Changing the inputs after position `i` leaves outputs `0..=i` unchanged (and changes a later one).
fn check_causal(cfg: &HourGlassConfig, seq: usize, batch: usize, seed: u64) {
    let be = cpu64();
    let mut model = HourGlass::from_config(&be, cfg, seed).unwrap();
    model.train(false);
    let shape = [seq, batch, cfg.d_model];
    let row = batch * cfg.d_model;
    let x = random_vec(seed, shape.iter().product());
    let y = values(&model.forward(&tensor(&be, &shape, &x)).unwrap());
    for i in 0..seq - 1 {
        let mut x2 = x.clone();
        let fresh = random_vec(seed + 1 + i as u64, x.len());
        x2[(i + 1) * row..].copy_from_slice(&fresh[(i + 1) * row..]);
        let y2 = values(&model.forward(&tensor(&be, &shape, &x2)).unwrap());
        let past = max_abs_diff(&y2[..(i + 1) * row], &y[..(i + 1) * row]);
        assert!(
            past <= 1e-12,
            "{cfg:?} seq {seq}: inputs after {i} changed outputs at or before it by {past:e}"
        );
        let future = max_abs_diff(&y2[(i + 1) * row..], &y[(i + 1) * row..]);
        assert!(
            future > 1e-4,
            "{cfg:?} seq {seq}: nothing after {i} changed"
        );
    }
}

#[test]
fn hourglass_with_rotary_is_causal() {
    for (f, factors) in [&[2][..], &[3], &[2, 3], &[2, 2, 2]]
        .into_iter()
        .enumerate()
    {
        for seq in [7, 13] {
            check_causal(&rotary_config(factors), seq, 2, 70 + f as u64);
        }
    }
    let attention = HourGlassConfig {
        shortening: ShorteningKind::Attention.into(),
        upsampling: UpsamplingKind::Attention.into(),
        ..rotary_config(&[2, 2])
    };
    check_causal(&attention, 11, 2, 90);
}
