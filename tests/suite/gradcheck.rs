//! Finite-difference gradient checks in f64 on `Cpu<f64>`: every op's backward against central differences of
//! its forward, then transformer layers (eval and training with a fixed dropout stream) and whole hourglass
//! models (eval, and training with the same dropout masks rebuilt from the seed).
//!
//! Every check uses the loss `L = Σ out · r` for a fixed random `r` (so `r` is the output gradient) and
//! compares gradients by `||analytic - numeric|| <= rtol·||numeric|| + atol` (see `crate::common::Tol`).

use crate::common::*;
use hourglass::config::{
    AttentionPooling, AttentionUpsampling, Depth, PerLevel, ResamplingMask, ShorteningKind,
    UpsamplingKind,
};
use hourglass::model::transformer::TransformerLayer;
use hourglass::model::{HourGlass, Parameters, Pass};
use hourglass::ops::attention::{self, AttnMask};
use hourglass::ops::{elementwise, layernorm, linear, shorten, upsample, window};
use hourglass::rng::{DropoutMask, SeededRng};
use hourglass::HourGlassConfig;

// ---------------------------------------------------------------------------------------------------------
// The checker itself must be able to fail.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn checker_rejects_wrong_gradients() {
    // L(x) = Σ r_i x_i² has gradient 2 r x.
    let x = random_vec(1, 12);
    let r = random_vec(2, 12);
    let loss = |x: &[f64]| x.iter().zip(&r).map(|(a, b)| b * a * a).sum::<f64>();
    let good: Vec<f64> = x.iter().zip(&r).map(|(a, b)| 2.0 * a * b).collect();
    let report = grad_report("good", &x, &good, None, OP_TOL, loss);
    assert!(report.passes(OP_TOL), "{report:?}");
    assert!(report.rel < 1e-8, "{report:?}");

    // One coordinate off by 1e-4 relative, a missing factor, and a sign error must all be caught.
    let mut slightly = good.clone();
    slightly[5] *= 1.0 + 1e-4;
    let half: Vec<f64> = good.iter().map(|g| g * 0.5).collect();
    let neg: Vec<f64> = good.iter().map(|g| -g).collect();
    for (what, bad) in [("slightly", slightly), ("half", half), ("neg", neg)] {
        let report = grad_report(what, &x, &bad, None, OP_TOL, loss);
        assert!(!report.passes(OP_TOL), "{what} passed: {report:?}");
    }
    // A NaN never passes.
    let mut nan = good.clone();
    nan[0] = f64::NAN;
    assert!(!grad_report("nan", &x, &nan, None, OP_TOL, loss).passes(OP_TOL));
    assert_eq!(rel_err(&[f64::NAN], &[1.0]), f64::INFINITY);
    assert!(rel_err(&[1.0, 2.0], &[1.0, 2.0]) == 0.0);
    assert!((rel_err(&[2.0], &[1.0]) - 1.0).abs() < 1e-15);
}

// ---------------------------------------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------------------------------------

fn check_linear(x_shape: &[usize], d_out: usize, bias: bool, coords: Option<usize>, seed: u64) {
    let be = cpu64();
    let d_in = *x_shape.last().unwrap();
    let n_x: usize = x_shape.iter().product();
    let mut y_shape = x_shape.to_vec();
    *y_shape.last_mut().unwrap() = d_out;
    let x = random_vec(seed, n_x);
    let w = random_vec(seed + 1, d_out * d_in);
    let b = random_vec(seed + 2, d_out);
    let r = random_vec(seed + 3, y_shape.iter().product());
    let f = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        let bt = tensor(&be, &[d_out], b);
        let y = linear::forward(
            &tensor(&be, x_shape, x),
            &tensor(&be, &[d_out, d_in], w),
            bias.then_some(&bt),
        )
        .unwrap();
        assert_eq!(y.shape(), y_shape.as_slice());
        weighted_sum(&values(&y), &r)
    };
    // Gradients accumulate: start from non-zero buffers and subtract them afterwards.
    let dw0 = random_vec(seed + 4, d_out * d_in);
    let db0 = random_vec(seed + 5, d_out);
    let mut dw = tensor(&be, &[d_out, d_in], &dw0);
    let mut db = tensor(&be, &[d_out], &db0);
    let dx = linear::backward(
        &tensor(&be, x_shape, &x),
        &tensor(&be, &[d_out, d_in], &w),
        &tensor(&be, &y_shape, &r),
        &mut dw,
        bias.then_some(&mut db),
    )
    .unwrap();
    assert_eq!(dx.shape(), x_shape);
    let dw: Vec<f64> = values(&dw).iter().zip(&dw0).map(|(a, b)| a - b).collect();
    let db: Vec<f64> = values(&db).iter().zip(&db0).map(|(a, b)| a - b).collect();
    let pick = |n: usize, s: u64| coords.map(|k| sample_coords(n, k, s));
    let tag = format!("linear {x_shape:?} -> {d_out} bias={bias}");
    check_grad(
        &format!("{tag} dx"),
        &x,
        &values(&dx),
        pick(n_x, seed).as_deref(),
        OP_TOL,
        |x| f(x, &w, &b),
    );
    check_grad(
        &format!("{tag} dw"),
        &w,
        &dw,
        pick(w.len(), seed + 1).as_deref(),
        OP_TOL,
        |w| f(&x, w, &b),
    );
    if bias {
        check_grad(&format!("{tag} db"), &b, &db, None, OP_TOL, |b| {
            f(&x, &w, b)
        });
    } else {
        assert!(db.iter().all(|&v| v == 0.0), "db touched without a bias");
    }
}

#[test]
fn linear_gradients() {
    check_linear(&[5, 3, 4], 6, true, None, 10);
    check_linear(&[7, 3], 2, false, None, 20);
    check_linear(&[1, 1, 1], 1, true, None, 30);
    // Large enough for the GEMM to split rows across threads and the bias reduction to use several blocks.
    check_linear(&[200, 2, 24], 33, true, Some(40), 40);
}

// ---------------------------------------------------------------------------------------------------------
// layernorm
// ---------------------------------------------------------------------------------------------------------

fn check_layernorm(x_shape: &[usize], coords: Option<usize>, seed: u64) {
    let be = cpu64();
    let d = *x_shape.last().unwrap();
    let n: usize = x_shape.iter().product();
    // Rows with a non-zero mean and a non-unit spread, gamma and beta away from 1 and 0.
    let x: Vec<f64> = random_vec(seed, n).iter().map(|v| 2.5 * v + 0.7).collect();
    let g: Vec<f64> = random_vec(seed + 1, d)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let b = random_vec(seed + 2, d);
    let r = random_vec(seed + 3, n);
    let f = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
        let (y, _) = layernorm::forward(
            &tensor(&be, x_shape, x),
            &tensor(&be, &[d], g),
            &tensor(&be, &[d], b),
        )
        .unwrap();
        weighted_sum(&values(&y), &r)
    };
    let xt = tensor(&be, x_shape, &x);
    let gt = tensor(&be, &[d], &g);
    let (y, saved) = layernorm::forward(&xt, &gt, &tensor(&be, &[d], &b)).unwrap();
    // Forward against the definition (biased variance, eps 1e-5).
    let yv = values(&y);
    let mut want = vec![0.0; n];
    for (row, out) in x.chunks(d).zip(want.chunks_mut(d)) {
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
        for i in 0..d {
            out[i] = (row[i] - mu) / (var + layernorm::EPS).sqrt() * g[i] + b[i];
        }
    }
    assert!(max_abs_diff(&yv, &want) < 1e-12, "layernorm forward");
    let dg0 = random_vec(seed + 4, d);
    let db0 = random_vec(seed + 5, d);
    let mut dg = tensor(&be, &[d], &dg0);
    let mut db = tensor(&be, &[d], &db0);
    let dx = layernorm::backward(
        &xt,
        &gt,
        &saved,
        &tensor(&be, x_shape, &r),
        &mut dg,
        &mut db,
    )
    .unwrap();
    let dg: Vec<f64> = values(&dg).iter().zip(&dg0).map(|(a, b)| a - b).collect();
    let db: Vec<f64> = values(&db).iter().zip(&db0).map(|(a, b)| a - b).collect();
    let tag = format!("layernorm {x_shape:?}");
    let coords = coords.map(|k| sample_coords(n, k, seed));
    check_grad(
        &format!("{tag} dx"),
        &x,
        &values(&dx),
        coords.as_deref(),
        OP_TOL,
        |x| f(x, &g, &b),
    );
    check_grad(&format!("{tag} dgamma"), &g, &dg, None, OP_TOL, |g| {
        f(&x, g, &b)
    });
    check_grad(&format!("{tag} dbeta"), &b, &db, None, OP_TOL, |b| {
        f(&x, &g, b)
    });
}

#[test]
fn layernorm_gradients() {
    check_layernorm(&[5, 3, 8], None, 100);
    check_layernorm(&[4, 2], None, 110);
    // More than one block of rows in the parameter-gradient reduction.
    check_layernorm(&[70, 2, 8], Some(60), 120);
}

/// The fused residual add + LayerNorm: `s = x + dropout(branch)`, `y = LN(s)`, with loss `Σ s·r1 + Σ y·r2`.
/// Its gradients: `ds = r1 + LN'(r2)` (`backward_residual`), `dx = ds`, `dbranch = dropout(ds)`.
#[test]
fn residual_layernorm_gradients() {
    let be = cpu64();
    let (shape, d) = ([5, 3, 8], 8);
    let n = 5 * 3 * 8;
    let x: Vec<f64> = random_vec(300, n).iter().map(|v| 2.0 * v + 0.5).collect();
    let branch = random_vec(301, n);
    let (g, b) = (random_vec(302, d), random_vec(303, d));
    let (r1, r2) = (random_vec(304, n), random_vec(305, n));
    for mask in [None, Some(DropoutMask::new(0.3, 9))] {
        let run = |x: &[f64], branch: &[f64]| {
            layernorm::forward_residual(
                &tensor(&be, &shape, x),
                &tensor(&be, &shape, branch),
                mask,
                &tensor(&be, &[d], &g),
                &tensor(&be, &[d], &b),
                false,
            )
            .unwrap()
        };
        let f = |x: &[f64], branch: &[f64]| {
            let (s, y, _) = run(x, branch);
            weighted_sum(&values(&s), &r1) + weighted_sum(&values(&y), &r2)
        };
        let (s, _, saved) = run(&x, &branch);
        let (mut dg, mut db) = (
            tensor(&be, &[d], &vec![0.0; d]),
            tensor(&be, &[d], &vec![0.0; d]),
        );
        let ds = layernorm::backward_residual(
            &s,
            &tensor(&be, &[d], &g),
            &saved,
            &tensor(&be, &shape, &r2),
            Some(&tensor(&be, &shape, &r1)),
            &mut dg,
            &mut db,
        )
        .unwrap();
        let dbranch = values(&elementwise::dropout(ds.share(), mask).unwrap());
        check_grad(
            "residual layernorm: x",
            &x,
            &values(&ds),
            None,
            OP_TOL,
            |v| f(v, &branch),
        );
        check_grad(
            "residual layernorm: branch",
            &branch,
            &dbranch,
            None,
            OP_TOL,
            |v| f(&x, v),
        );
    }
}

#[test]
fn residual_layernorm_is_dropout_add_and_layernorm_bit_for_bit() {
    let cpu = hourglass::Cpu::<f32>::new();
    let (shape, d) = ([7, 2, 24], 24);
    let t = |seed, shape: &[usize]| tensor(&cpu, shape, &random_vec(seed, shape.iter().product()));
    let (x, branch, g, b) = (t(1, &shape), t(2, &shape), t(3, &[d]), t(4, &[d]));
    let mask = Some(DropoutMask::new(0.2, 5));
    for bf16 in [false, true] {
        let (s, y, _) = layernorm::forward_residual(&x, &branch, mask, &g, &b, bf16).unwrap();
        let s_apart = x
            .add(&elementwise::dropout(branch.share(), mask).unwrap())
            .unwrap();
        let (y_apart, _) = if bf16 {
            layernorm::forward_bf16(&s_apart, &g, &b).unwrap()
        } else {
            layernorm::forward(&s_apart, &g, &b).unwrap()
        };
        assert_eq!(s.to_vec().unwrap(), s_apart.to_vec().unwrap());
        assert_eq!(
            (y.dtype(), y.to_vec().unwrap()),
            (y_apart.dtype(), y_apart.to_vec().unwrap())
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// attention
// ---------------------------------------------------------------------------------------------------------

/// A direct implementation of masked multi-head attention with dropout on the probabilities.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (tq, tk, batch, heads, dh): (usize, usize, usize, usize, usize),
    mask: AttnMask,
    dropout: Option<DropoutMask>,
) -> (Vec<f64>, Vec<f64>) {
    let w = heads * dh;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0.0; tq * batch * w];
    let mut lse = vec![0.0; batch * heads * tq];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..tq {
                let visible: Vec<usize> = (0..tk)
                    .filter(|&j| match mask {
                        AttnMask::Causal => j <= i,
                        AttnMask::Full => true,
                        AttnMask::Funnel(k) => j / k <= i,
                        AttnMask::Window(k) => j / k == i,
                        AttnMask::UpCausal(k) => j <= i / k,
                        AttnMask::UpWindow(k) => j == i / k,
                    })
                    .collect();
                let s: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        (0..dh)
                            .map(|e| {
                                q[(i * batch + b) * w + h * dh + e]
                                    * k[(j * batch + b) * w + h * dh + e]
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                if s.is_empty() {
                    continue;
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                lse[(b * heads + h) * tq + i] = m + z.ln();
                for (&j, sj) in visible.iter().zip(&s) {
                    let mut p = (sj - m).exp() / z;
                    if let Some(d) = dropout {
                        let n = (((b * heads + h) * tq + i) * tk + j) as u64;
                        p *= d.factor(n);
                    }
                    for e in 0..dh {
                        out[(i * batch + b) * w + h * dh + e] +=
                            p * v[(j * batch + b) * w + h * dh + e];
                    }
                }
            }
        }
    }
    (out, lse)
}

fn check_attention(
    (tq, tk, batch, heads, dh): (usize, usize, usize, usize, usize),
    mask: AttnMask,
    dropout: Option<DropoutMask>,
    seed: u64,
) {
    let be = cpu64();
    let w = heads * dh;
    let (q_shape, kv2_shape) = ([tq, batch, w], [tk, batch, 2 * w]);
    let q = random_vec(seed, tq * batch * w);
    let k = random_vec(seed + 1, tk * batch * w);
    let v = random_vec(seed + 2, tk * batch * w);
    let r = random_vec(seed + 3, tq * batch * w);
    // k and v side by side, as cross-attention's one GEMM leaves them.
    let kv_of = |k: &[f64], v: &[f64]| tensor(&be, &kv2_shape, &pack_columns(&[(k, w), (v, w)]));
    let run = |q: &[f64], k: &[f64], v: &[f64]| {
        attention::forward(
            &tensor(&be, &q_shape, q),
            &kv_of(k, v),
            heads,
            mask,
            dropout,
        )
        .unwrap()
    };
    let f = |q: &[f64], k: &[f64], v: &[f64]| weighted_sum(&values(&run(q, k, v).out), &r);
    let saved = run(&q, &k, &v);
    let tag = format!("attention tq={tq} tk={tk} b={batch} h={heads} dh={dh} {mask:?} {dropout:?}");

    // Forward and logsumexp against the direct implementation.
    let (want_out, want_lse) =
        naive_attention(&q, &k, &v, (tq, tk, batch, heads, dh), mask, dropout);
    assert!(
        max_abs_diff(&values(&saved.out), &want_out) < 1e-12,
        "{tag}: forward differs from the naive implementation"
    );
    assert_eq!(saved.lse.shape(), &[batch, heads, tq]);
    assert!(
        max_abs_diff(&values(&saved.lse), &want_lse) < 1e-12,
        "{tag}: logsumexp differs from the naive implementation"
    );
    if dropout.is_some() {
        // The mask really changes the output (so the dropout checks below are not the no-dropout ones).
        let (plain, _) = naive_attention(&q, &k, &v, (tq, tk, batch, heads, dh), mask, None);
        assert!(
            max_abs_diff(&want_out, &plain) > 1e-3,
            "{tag}: dropout had no effect"
        );
        // And it is deterministic given the seed.
        assert_eq!(values(&run(&q, &k, &v).out), values(&saved.out));
    }

    let (dq, dkv) = attention::backward(
        &tensor(&be, &q_shape, &q),
        &kv_of(&k, &v),
        &saved,
        &tensor(&be, &q_shape, &r),
        heads,
        mask,
        dropout,
    )
    .unwrap();
    assert_eq!(dq.shape(), &q_shape);
    assert_eq!(dkv.shape(), &kv2_shape);
    let [dk, dv] = <[Vec<f64>; 2]>::try_from(unpack_columns(&values(&dkv), &[w, w])).unwrap();
    if tq == tk {
        // Self-attention's layout, q, k and v in one buffer: the same numbers, in the same places.
        let qkv = tensor(
            &be,
            &[tq, batch, 3 * w],
            &pack_columns(&[(&q[..], w), (&k[..], w), (&v[..], w)]),
        );
        let packed = attention::forward_packed(&qkv, heads, mask, dropout).unwrap();
        assert_eq!(
            values(&packed.out),
            values(&saved.out),
            "{tag}: packed forward"
        );
        let dqkv = attention::backward_packed(
            &qkv,
            &packed,
            &tensor(&be, &q_shape, &r),
            heads,
            mask,
            dropout,
        )
        .unwrap();
        let want = pack_columns(&[(&values(&dq)[..], w), (&dk[..], w), (&dv[..], w)]);
        assert_eq!(values(&dqkv), want, "{tag}: packed backward");
    }
    check_grad(&format!("{tag} dq"), &q, &values(&dq), None, OP_TOL, |q| {
        f(q, &k, &v)
    });
    check_grad(&format!("{tag} dk"), &k, &dk, None, OP_TOL, |k| {
        f(&q, k, &v)
    });
    check_grad(&format!("{tag} dv"), &v, &dv, None, OP_TOL, |v| {
        f(&q, &k, v)
    });
}

#[test]
fn attention_gradients_causal() {
    check_attention((5, 5, 2, 2, 3), AttnMask::Causal, None, 200);
    check_attention((7, 7, 1, 3, 2), AttnMask::Causal, None, 210);
    check_attention((1, 1, 2, 1, 4), AttnMask::Causal, None, 220);
    // Causal with fewer or more keys than queries (query i sees keys 0..=min(i, kv_len - 1)).
    check_attention((3, 6, 2, 2, 2), AttnMask::Causal, None, 230);
    check_attention((6, 3, 1, 2, 2), AttnMask::Causal, None, 240);
}

#[test]
fn attention_gradients_full() {
    check_attention((5, 5, 2, 2, 3), AttnMask::Full, None, 300);
    check_attention((4, 7, 2, 3, 2), AttnMask::Full, None, 310);
    check_attention((6, 3, 1, 2, 4), AttnMask::Full, None, 320);
    check_attention((1, 5, 3, 1, 2), AttnMask::Full, None, 330);
}

#[test]
fn attention_gradients_resampling_masks() {
    // (tq, tk, batch, heads, dh): shortened queries over full-length keys, and the reverse; ragged lengths.
    check_attention((4, 7, 2, 2, 3), AttnMask::Funnel(2), None, 340);
    check_attention((3, 7, 1, 2, 2), AttnMask::Window(3), None, 350);
    check_attention((7, 4, 2, 2, 3), AttnMask::UpCausal(2), None, 360);
    check_attention((7, 3, 1, 3, 2), AttnMask::UpWindow(3), None, 370);
    let m = Some(DropoutMask::new(0.3, 45));
    check_attention((3, 5, 2, 2, 2), AttnMask::Funnel(2), m, 380);
}

#[test]
fn attention_gradients_with_dropout() {
    let m = |p, seed| Some(DropoutMask::new(p, seed));
    check_attention((6, 6, 2, 2, 3), AttnMask::Causal, m(0.3, 42), 400);
    check_attention((4, 7, 2, 3, 2), AttnMask::Full, m(0.5, 43), 410);
    check_attention((5, 3, 1, 2, 2), AttnMask::Full, m(0.1, 44), 420);
}

// ---------------------------------------------------------------------------------------------------------
// relu, dropout
// ---------------------------------------------------------------------------------------------------------

fn check_relu(shape: &[usize], coords: Option<usize>, seed: u64) {
    let be = cpu64();
    let n: usize = shape.iter().product();
    // Finite differences are only valid away from the kink at 0: keep every input at least 0.01 from it.
    let x: Vec<f64> = random_vec(seed, n)
        .iter()
        .map(|v| v.signum() * (v.abs() + 0.01))
        .collect();
    let r = random_vec(seed + 1, n);
    let f = |x: &[f64]| {
        weighted_sum(
            &values(&elementwise::relu(&tensor(&be, shape, x)).unwrap()),
            &r,
        )
    };
    let y = elementwise::relu(&tensor(&be, shape, &x)).unwrap();
    let yv = values(&y);
    for (a, b) in yv.iter().zip(&x) {
        assert_eq!(*a, b.max(0.0));
    }
    let dx = values(&elementwise::relu_backward(&y, &tensor(&be, shape, &r)).unwrap());
    let want: Vec<f64> = x
        .iter()
        .zip(&r)
        .map(|(a, g)| if *a > 0.0 { *g } else { 0.0 })
        .collect();
    assert_eq!(dx, want, "relu backward");
    let coords = coords.map(|k| sample_coords(n, k, seed));
    check_grad(
        &format!("relu {shape:?}"),
        &x,
        &dx,
        coords.as_deref(),
        OP_TOL,
        f,
    );
}

#[test]
fn relu_gradients() {
    check_relu(&[6, 2, 5], None, 500);
    // Past the size where the CPU loop goes parallel.
    check_relu(&[160, 2, 64], Some(50), 510);
}

fn check_dropout(shape: &[usize], p: f64, seed: u64, coords: Option<usize>) {
    let be = cpu64();
    let n: usize = shape.iter().product();
    let mask = DropoutMask::new(p, seed);
    let x = random_vec(seed + 1, n);
    let r = random_vec(seed + 2, n);
    let f = |x: &[f64]| {
        let y = elementwise::dropout(tensor(&be, shape, x), Some(mask)).unwrap();
        weighted_sum(&values(&y), &r)
    };
    let factors: Vec<f64> = (0..n as u64).map(|i| mask.factor(i)).collect();
    let dropped = factors.iter().filter(|&&f| f == 0.0).count();
    assert!(
        dropped > 0 && dropped < n,
        "mask drops {dropped} of {n}: not a useful test"
    );
    assert!(factors
        .iter()
        .all(|&f| f == 0.0 || (f - 1.0 / (1.0 - p)).abs() < 1e-15));
    let y = values(&elementwise::dropout(tensor(&be, shape, &x), Some(mask)).unwrap());
    let want: Vec<f64> = x.iter().zip(&factors).map(|(a, f)| a * f).collect();
    assert_eq!(y, want, "dropout forward");
    // Backward is the same map on the gradient: the gradient is the mask applied to r.
    let dx = values(&elementwise::dropout(tensor(&be, shape, &r), Some(mask)).unwrap());
    let want: Vec<f64> = r.iter().zip(&factors).map(|(a, f)| a * f).collect();
    assert_eq!(dx, want, "dropout gradient");
    let coords = coords.map(|k| sample_coords(n, k, seed));
    check_grad(
        &format!("dropout {shape:?} p={p}"),
        &x,
        &dx,
        coords.as_deref(),
        OP_TOL,
        f,
    );
    // No mask is the identity.
    let same = values(&elementwise::dropout(tensor(&be, shape, &x), None).unwrap());
    assert_eq!(same, x);
}

#[test]
fn dropout_gradients() {
    check_dropout(&[6, 2, 5], 0.4, 600, None);
    check_dropout(&[3, 1, 7], 0.1, 610, None);
    check_dropout(&[160, 2, 64], 0.25, 620, Some(60));
}

// ---------------------------------------------------------------------------------------------------------
// shorten, upsample
// ---------------------------------------------------------------------------------------------------------

/// ShiftRight(shift) then average pooling by `k` with a partial last window (divided by the rows present).
fn naive_shorten(x: &[f64], seq: usize, row: usize, k: usize, shift: usize) -> Vec<f64> {
    let short = seq.div_ceil(k);
    let mut out = vec![0.0; short * row];
    for s in 0..short {
        let (lo, hi) = (s * k, ((s + 1) * k).min(seq));
        for t in lo..hi {
            if t >= shift {
                for c in 0..row {
                    out[s * row + c] += x[(t - shift) * row + c] / (hi - lo) as f64;
                }
            }
        }
    }
    out
}

fn check_shorten(seq: usize, batch: usize, d: usize, k: usize, shift: usize, seed: u64) {
    let be = cpu64();
    let shape = [seq, batch, d];
    let short = seq.div_ceil(k);
    let x = random_vec(seed, seq * batch * d);
    let r = random_vec(seed + 1, short * batch * d);
    let y = shorten::forward(&tensor(&be, &shape, &x), k, shift).unwrap();
    assert_eq!(y.shape(), &[short, batch, d]);
    let tag = format!("shorten seq={seq} k={k} shift={shift}");
    assert!(
        max_abs_diff(&values(&y), &naive_shorten(&x, seq, batch * d, k, shift)) < 1e-14,
        "{tag}: forward"
    );
    let f = |x: &[f64]| {
        weighted_sum(
            &values(&shorten::forward(&tensor(&be, &shape, x), k, shift).unwrap()),
            &r,
        )
    };
    let dx = shorten::backward(&tensor(&be, &[short, batch, d], &r), &shape, k, shift).unwrap();
    assert_eq!(dx.shape(), &shape);
    check_grad(&format!("{tag} dx"), &x, &values(&dx), None, OP_TOL, f);
}

#[test]
fn shorten_gradients() {
    for k in [2, 3] {
        // A multiple of k, not a multiple, smaller than k, and a single row.
        let mut lens = vec![2 * k, 2 * k + 1, 3 * k - 1, k - 1, 1];
        lens.retain(|&s| s > 0);
        lens.sort_unstable();
        lens.dedup();
        for seq in lens {
            check_shorten(seq, 2, 3, k, k - 1, 700 + (k * 10 + seq) as u64);
        }
        // No shift, and a shift that pushes everything past the end.
        check_shorten(2 * k + 1, 2, 3, k, 0, 750 + k as u64);
        check_shorten(k, 1, 2, k, k + 1, 760 + k as u64);
    }
    check_shorten(5, 3, 2, 1, 0, 770);
    check_shorten(7, 1, 4, 4, 3, 780);
}

fn check_upsample(seq: usize, batch: usize, d: usize, k: usize, seed: u64) {
    let be = cpu64();
    let shape = [seq, batch, d];
    let short = seq.div_ceil(k);
    let s_shape = [short, batch, d];
    let row = batch * d;
    let x = random_vec(seed, seq * row);
    let s = random_vec(seed + 1, short * row);
    let r = random_vec(seed + 2, seq * row);
    let run = |x: &[f64], s: &[f64]| {
        upsample::forward_add(&tensor(&be, &shape, x), &tensor(&be, &s_shape, s), k).unwrap()
    };
    let y = run(&x, &s);
    assert_eq!(y.shape(), &shape);
    let want: Vec<f64> = (0..seq * row)
        .map(|i| x[i] + s[(i / row / k) * row + i % row])
        .collect();
    let tag = format!("upsample seq={seq} k={k}");
    assert!(max_abs_diff(&values(&y), &want) < 1e-15, "{tag}: forward");
    let ds = upsample::backward(&tensor(&be, &shape, &r), k).unwrap();
    assert_eq!(ds.shape(), &s_shape);
    check_grad(
        &format!("{tag} dshort"),
        &s,
        &values(&ds),
        None,
        OP_TOL,
        |s| weighted_sum(&values(&run(&x, s)), &r),
    );
    // The gradient with respect to the residual input is the output gradient itself.
    check_grad(&format!("{tag} dx"), &x, &r, None, OP_TOL, |x| {
        weighted_sum(&values(&run(x, &s)), &r)
    });
}

#[test]
fn upsample_gradients() {
    for k in [2, 3] {
        for seq in [2 * k, 2 * k + 1, k - 1, 1] {
            if seq > 0 {
                check_upsample(seq, 2, 3, k, 800 + (k * 10 + seq) as u64);
            }
        }
    }
    check_upsample(4, 3, 2, 1, 850);
}

// ---------------------------------------------------------------------------------------------------------
// Transformer layers, with an explicit dropout stream.
// ---------------------------------------------------------------------------------------------------------

/// Checks grad_x and every parameter of one transformer layer. `dropout_seed` None is evaluation mode;
/// Some(seed) is training mode with `Pass::new(true, seed)` rebuilt for every forward.
fn check_layer(
    shape: [usize; 3],
    heads: usize,
    d_ff: usize,
    p: f64,
    mask: AttnMask,
    dropout_seed: Option<u64>,
    seed: u64,
) {
    let be = cpu64();
    let d = shape[2];
    let mut layer =
        TransformerLayer::new(&be, heads, d, d_ff, p, &mut SeededRng::new(seed)).unwrap();
    // Move LayerNorm parameters away from their (1, 0) initialisation so their gradients are generic.
    for name in [
        "norm_self_attn.weight",
        "norm_self_attn.bias",
        "norm_ff.weight",
        "norm_ff.bias",
    ] {
        let v: Vec<f64> = param_values(&layer, name)
            .iter()
            .zip(random_vec(seed ^ name.len() as u64, d))
            .map(|(a, e)| a + 0.3 * e)
            .collect();
        set_param(&mut layer, name, &v);
    }
    let stream = || match dropout_seed {
        Some(s) => Pass::new(true, s),
        None => Pass::eval(),
    };
    let n: usize = shape.iter().product();
    let x = random_vec(seed + 1, n);
    let r = random_vec(seed + 2, n);
    let run = |layer: &mut TransformerLayer<F64>, x: &[f64]| -> Vec<f64> {
        values(
            &layer
                .forward(tensor(&be, &shape, x), mask, &mut stream())
                .unwrap(),
        )
    };
    let tag = format!("transformer layer {shape:?} {mask:?} dropout={dropout_seed:?}");
    let y = run(&mut layer, &x);
    if dropout_seed.is_some() {
        let plain = values(
            &layer
                .forward(tensor(&be, &shape, &x), mask, &mut Pass::eval())
                .unwrap(),
        );
        assert!(
            max_abs_diff(&y, &plain) > 1e-3,
            "{tag}: dropout had no effect"
        );
        assert_eq!(
            run(&mut layer, &x),
            y,
            "{tag}: not deterministic given the stream"
        );
    }
    // Analytic gradients from one forward/backward.
    run(&mut layer, &x);
    layer.zero_grad().unwrap();
    let dx = values(&layer.backward(&tensor(&be, &shape, &r)).unwrap());
    check_grad(&format!("{tag} dx"), &x, &dx, None, OP_TOL, |x| {
        weighted_sum(&run(&mut layer, x), &r)
    });
    for (name, len) in param_sizes(&layer) {
        let value = param_values(&layer, &name);
        let grad = param_grad(&layer, &name);
        let coords = sample_coords(len, 24, seed + len as u64);
        let report = check_grad(
            &format!("{tag} {name}"),
            &value,
            &grad,
            Some(&coords),
            OP_TOL,
            |v| {
                set_param(&mut layer, &name, v);
                weighted_sum(&run(&mut layer, &x), &r)
            },
        );
        set_param(&mut layer, &name, &value);
        // Every parameter except the key bias (softmax is shift-invariant per row) gets a real gradient.
        if name != "self_attn.key.linear.bias" {
            assert!(
                report.numeric_norm > 1e-6,
                "{tag} {name}: gradient vanishes"
            );
        }
    }
}

#[test]
fn transformer_layer_gradients_eval() {
    check_layer([5, 2, 8], 2, 16, 0.1, AttnMask::Causal, None, 900);
    check_layer([4, 1, 6], 3, 5, 0.0, AttnMask::Full, None, 910);
}

#[test]
fn transformer_layer_gradients_training() {
    check_layer([5, 2, 8], 2, 16, 0.25, AttnMask::Causal, Some(77), 920);
    check_layer([4, 3, 8], 2, 12, 0.3, AttnMask::Full, Some(78), 930);
}

// ---------------------------------------------------------------------------------------------------------
// Whole models.
// ---------------------------------------------------------------------------------------------------------

fn config(factors: &[usize], dropout: f64) -> HourGlassConfig {
    HourGlassConfig::reference(2, 8, dropout, 16, factors)
}

/// Moves every LayerNorm parameter away from (1, 0) so that no gradient is special at initialisation.
fn perturb_norms(model: &mut HourGlass<F64>, seed: u64) {
    for (i, (name, len)) in param_sizes(model).into_iter().enumerate() {
        if name.contains("norm") {
            let v: Vec<f64> = param_values(model, &name)
                .iter()
                .zip(random_vec(seed + i as u64, len))
                .map(|(a, e)| a + 0.3 * e)
                .collect();
            set_param(model, &name, &v);
        }
    }
}

/// Whole-model check of grad_x and every parameter tensor (sampled coordinates, plus a random direction
/// over all of a tensor's coordinates).
///
/// In training mode each evaluation builds a fresh model from the same seed: `HourGlass::forward` derives
/// its dropout masks from (seed, step), and a fresh model's first forward is always step 1, so every
/// evaluation sees the masks the analytic forward/backward saw.
fn check_model(factors: &[usize], seq: usize, batch: usize, training: bool, seed: u64) {
    let cfg = config(factors, if training { 0.25 } else { 0.1 });
    check_model_config(&cfg, seq, batch, training, seed);
}

/// Parameter tensors of a valid config: 16 per transformer layer plus those of each shortening and upsampling
/// (counted from `docs/components.md`'s tables, independently of the model's own visiting).
fn expected_tensors(cfg: &HourGlassConfig) -> usize {
    let (levels, valley) = cfg.levels().unwrap();
    let pool = 2 * (cfg.attention_pooling == AttentionPooling::Linear) as usize;
    let up = 2 * (cfg.attention_upsampling == AttentionUpsampling::Linear) as usize;
    let shortening = |k| match k {
        ShorteningKind::Avg => 0,
        ShorteningKind::Linear => 2,
        // norm_input, pool, norm_query, attention (4 linears), norm_ff, feed_forward (2 linears)
        ShorteningKind::Attention => 2 + pool + 2 + 8 + 2 + 4,
    };
    let upsampling = |k| match k {
        UpsamplingKind::Naive => 0,
        UpsamplingKind::Linear => 2,
        // norm_input, linear U, norm_query, attention, norm_ff, feed_forward, norm_output
        UpsamplingKind::Attention => 2 + up + 2 + 8 + 2 + 4 + 2,
    };
    16 * valley
        + levels
            .iter()
            .map(|l| 16 * (l.pre + l.post) + shortening(l.shortening) + upsampling(l.upsampling))
            .sum::<usize>()
}

/// `check_model` for any configuration (its dropout is what training mode uses).
fn check_model_config(cfg: &HourGlassConfig, seq: usize, batch: usize, training: bool, seed: u64) {
    let be = cpu64();
    let factors = &cfg.shortening_factors;
    let shape = [seq, batch, cfg.d_model];
    let fresh = || {
        let mut m = HourGlass::from_config(&be, cfg, seed).unwrap();
        perturb_norms(&mut m, seed);
        m.train(training);
        m
    };
    let n: usize = shape.iter().product();
    let x = random_vec(seed + 1, n);
    let r = random_vec(seed + 2, n);
    let tag = format!(
        "hourglass {} seq={seq} batch={batch} training={training}",
        cfg.to_json().replace(char::is_whitespace, "")
    );

    let mut model = fresh();
    let y = values(&model.forward(&tensor(&be, &shape, &x)).unwrap());
    assert_eq!(y.len(), n);
    model.zero_grad().unwrap();
    let dx = values(&model.backward(&tensor(&be, &shape, &r)).unwrap());
    let grads: Vec<(String, Vec<f64>, Vec<f64>)> = param_sizes(&model)
        .into_iter()
        .map(|(name, _)| {
            let v = param_values(&model, &name);
            let g = param_grad(&model, &name);
            (name, v, g)
        })
        .collect();
    assert_eq!(
        grads.len(),
        expected_tensors(cfg),
        "{tag}: parameter tensors"
    );
    // Not vacuous: the outer layers see the whole sequence, so with two or more positions every one of their
    // parameters but the key bias (softmax is shift-invariant per row) has a real gradient. So do the outer
    // level's resamplers once a full window follows the first (in the per-window upsampling every query sees
    // one key, so its attention weights are constant 1 and the query and key projections get none).
    let one_key = cfg.attention_resampling_mask == ResamplingMask::Window;
    for (name, _, g) in &grads {
        let outer_layer =
            name.starts_with("pre.") || name.starts_with("post.") || name.starts_with("layers.");
        let outer_resampler = name.starts_with("shortening.") || name.starts_with("up_sampling.");
        let exempt = name.ends_with("key.linear.bias")
            || (one_key
                && name.starts_with("up_sampling.attention.")
                && (name.contains(".query.") || name.contains(".key.")));
        if ((outer_layer && seq >= 2) || (outer_resampler && seq > 2 * factors[0])) && !exempt {
            assert!(norm(g) > 1e-6, "{tag} {name}: gradient vanishes");
        }
    }

    // One loss evaluation with parameter `name` (if any) set to `v`; in eval mode on `model` itself, which
    // gets the original value back afterwards.
    let mut loss = |param: Option<(&str, &[f64])>, x: &[f64]| -> f64 {
        let out = if training {
            let mut m = fresh();
            if let Some((name, v)) = param {
                set_param(&mut m, name, v);
            }
            values(&m.forward(&tensor(&be, &shape, x)).unwrap())
        } else {
            if let Some((name, v)) = param {
                set_param(&mut model, name, v);
            }
            let out = values(&model.forward(&tensor(&be, &shape, x)).unwrap());
            if let Some((name, _)) = param {
                let original = &grads.iter().find(|g| g.0 == name).unwrap().1;
                set_param(&mut model, name, original);
            }
            out
        };
        weighted_sum(&out, &r)
    };
    // The loss of the unperturbed model reproduces the analytic forward exactly (same dropout masks).
    assert_eq!(
        loss(None, &x),
        weighted_sum(&y, &r),
        "{tag}: loss not reproducible"
    );

    let coords = sample_coords(n, 20, seed);
    check_grad(
        &format!("{tag} dx"),
        &x,
        &dx,
        Some(&coords),
        MODEL_TOL,
        |x| loss(None, x),
    );
    check_directional(&format!("{tag} dx"), &x, &dx, 1, seed, MODEL_TOL, |x| {
        loss(None, x)
    });
    for (i, (name, value, grad)) in grads.iter().enumerate() {
        let coords = sample_coords(value.len(), 3, seed + i as u64);
        let mut eval = |v: &[f64]| loss(Some((name, v)), &x);
        check_grad(
            &format!("{tag} {name}"),
            value,
            grad,
            Some(&coords),
            MODEL_TOL,
            &mut eval,
        );
        check_directional(
            &format!("{tag} {name}"),
            value,
            grad,
            1,
            seed + 1000 + i as u64,
            MODEL_TOL,
            &mut eval,
        );
    }
}

/// seq_len: a multiple of the product of the factors, not a multiple, and smaller than the first factor
/// (and, for nested factors, one where an inner level is shorter than its factor).
fn seq_lens(factors: &[usize]) -> Vec<usize> {
    let prod: usize = factors.iter().product();
    let mut lens = vec![prod, prod + factors[0] + 1, factors[0] - 1];
    if factors.len() > 1 {
        lens.push(factors[0] + 1);
    }
    lens.push(1);
    lens.retain(|&s| s > 0);
    lens.sort_unstable();
    lens.dedup();
    lens
}

fn check_model_family(factors: &[usize], seed: u64) {
    for (i, seq) in seq_lens(factors).into_iter().enumerate() {
        for batch in [1, 3] {
            check_model(factors, seq, batch, false, seed + (i * 10 + batch) as u64);
        }
    }
    // Training mode (dropout 0.25) on a ragged length.
    let prod: usize = factors.iter().product();
    check_model(factors, prod + 1, 2, true, seed + 500);
}

#[test]
fn hourglass_gradients_factor_2() {
    check_model_family(&[2], 1000);
}

#[test]
fn hourglass_gradients_factor_3() {
    check_model_family(&[3], 2000);
}

#[test]
fn hourglass_gradients_factors_2_3() {
    check_model_family(&[2, 3], 3000);
}

#[test]
fn hourglass_gradients_factors_2_2_2() {
    check_model_family(&[2, 2, 2], 4000);
}

// Whole models mixing the components of docs/components.md (eval on a ragged and a short length, and
// training mode on a ragged length).

use ShorteningKind::{Attention as ShortAttention, Avg, Linear as ShortLinear};
use UpsamplingKind::{Attention as UpAttention, Linear as UpLinear, Naive};

fn components(
    factors: &[usize],
    shortening: &[ShorteningKind],
    upsampling: &[UpsamplingKind],
    dropout: f64,
) -> HourGlassConfig {
    HourGlassConfig {
        shortening: PerLevel::Each(shortening.to_vec()),
        upsampling: PerLevel::Each(upsampling.to_vec()),
        ..config(factors, dropout)
    }
}

fn check_components(cfg: HourGlassConfig, seed: u64) {
    let prod: usize = cfg.shortening_factors.iter().product();
    let k = cfg.shortening_factors[0];
    check_model_config(&cfg, prod + k + 1, 2, false, seed);
    check_model_config(&cfg, k - 1 + (k == 1) as usize, 1, false, seed + 10);
    let training = HourGlassConfig {
        dropout: 0.25,
        ..cfg
    };
    check_model_config(&training, prod + 1, 2, true, seed + 20);
}

#[test]
fn hourglass_gradients_linear_then_attention() {
    // Linear pooling and attention upsampling outside, attention shortening (avg pool) and linear
    // upsampling inside.
    let cfg = components(
        &[2, 3],
        &[ShortLinear, ShortAttention],
        &[UpAttention, UpLinear],
        0.1,
    );
    check_components(cfg, 5000);
}

#[test]
fn hourglass_gradients_attention_then_linear_with_linear_resampling() {
    let cfg = HourGlassConfig {
        attention_pooling: AttentionPooling::Linear,
        attention_upsampling: AttentionUpsampling::Linear,
        ..components(
            &[2, 3],
            &[ShortAttention, ShortLinear],
            &[UpLinear, UpAttention],
            0.1,
        )
    };
    check_components(cfg, 5100);
}

#[test]
fn hourglass_gradients_attention_window_masks() {
    let cfg = HourGlassConfig {
        attention_resampling_mask: ResamplingMask::Window,
        ..components(
            &[3, 2],
            &[ShortAttention, Avg],
            &[UpAttention, UpAttention],
            0.1,
        )
    };
    check_components(cfg, 5200);
}

#[test]
fn hourglass_gradients_depth_stacks() {
    // (2, (1, 2, 0), 1): numbered stacks, an empty post stack, a two-layer valley.
    let cfg = HourGlassConfig {
        depth: Some(Depth::triple(2, Depth::triple(1, 2, 0), 1)),
        ..components(
            &[2, 3],
            &[ShortAttention, ShortLinear],
            &[Naive, UpAttention],
            0.1,
        )
    };
    check_components(cfg, 5300);
}

#[test]
fn hourglass_gradients_non_causal() {
    let cfg = HourGlassConfig {
        causal: false,
        attention_pooling: AttentionPooling::Linear,
        depth: Some(Depth::triple(0, Depth::triple(1, 1, 0), 1)),
        ..components(
            &[2, 2],
            &[ShortAttention, Avg],
            &[UpLinear, UpAttention],
            0.1,
        )
    };
    check_components(cfg, 5400);
    let cfg = HourGlassConfig {
        causal: false,
        attention_resampling_mask: ResamplingMask::Window,
        attention_upsampling: AttentionUpsampling::Linear,
        ..components(&[3], &[ShortLinear], &[UpAttention], 0.1)
    };
    check_components(cfg, 5500);
}

#[test]
fn backward_accumulates_and_zero_grad_clears() {
    let be = cpu64();
    let mut model = HourGlass::from_config(&be, &config(&[2], 0.1), 5).unwrap();
    model.train(false);
    let shape = [5, 2, 8];
    let x = random_tensor(&be, &shape, 6);
    let r = random_tensor(&be, &shape, 7);
    let name = "pre.self_attn.query.linear.weight";
    model.forward(&x).unwrap();
    model.backward(&r).unwrap();
    let once = param_grad(&model, name);
    assert!(norm(&once) > 0.0);
    model.forward(&x).unwrap();
    model.backward(&r).unwrap();
    let twice = param_grad(&model, name);
    let doubled: Vec<f64> = once.iter().map(|g| 2.0 * g).collect();
    assert!(
        rel_err(&twice, &doubled) < 1e-14,
        "gradients do not accumulate"
    );
    model.zero_grad().unwrap();
    let mut all_zero = true;
    model.visit("", &mut |_, p| {
        all_zero &= values(&p.grad).iter().all(|&g| g == 0.0);
    });
    assert!(all_zero, "zero_grad left non-zero gradients");
    // Backward without a matching forward is an error, not a silent zero.
    assert!(model.backward(&r).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// Window fold / unfold (linear pooling and linear upsampling)

#[test]
fn window_fold_matches_its_definition_and_unfold_is_its_adjoint() {
    let cpu = cpu64();
    for (seq, batch, d, k, shift) in [
        (7, 2, 3, 2, 1),
        (9, 1, 2, 3, 2),
        (2, 3, 2, 3, 2),
        (6, 2, 4, 3, 0),
        (5, 1, 1, 1, 0),
    ] {
        let x = random_vec(seq as u64 * 31 + k as u64, seq * batch * d);
        let folded = values(&window::fold(&tensor(&cpu, &[seq, batch, d], &x), k, shift).unwrap());
        let ts = seq.div_ceil(k);
        assert_eq!(folded.len(), ts * batch * k * d);
        for s in 0..ts {
            for b in 0..batch {
                for r in 0..k {
                    for e in 0..d {
                        let p = s * k + r;
                        let want = if p >= shift && p < seq {
                            x[((p - shift) * batch + b) * d + e]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            folded[((s * batch + b) * k + r) * d + e],
                            want,
                            "fold {seq} {k} {shift}"
                        );
                    }
                }
            }
        }
        // <fold(x), g> = <x, unfold(g)>: unfold is fold's gradient (and fold is unfold's).
        let g = random_vec(seq as u64 * 7 + 1, folded.len());
        let unfolded = window::unfold(
            &tensor(&cpu, &[ts, batch, k * d], &g),
            k,
            shift,
            &[seq, batch, d],
        )
        .unwrap();
        let (lhs, rhs) = (dot(&folded, &g), dot(&x, &values(&unfolded)));
        assert!(
            (lhs - rhs).abs() <= 1e-12 * lhs.abs().max(1.0),
            "adjoint {lhs} vs {rhs}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rotary positions (`"positions": "rotary"`; the op itself is checked in tests/suite/rotary.rs).
// ---------------------------------------------------------------------------------------------------------

fn rotary(cfg: HourGlassConfig) -> HourGlassConfig {
    HourGlassConfig {
        positions: hourglass::config::Positions::Rotary,
        ..cfg
    }
}

#[test]
fn hourglass_gradients_with_rotary() {
    // Ragged lengths: 7 with factor 2 (the shortened level has 4 positions, the last window partial).
    let cfg = rotary(HourGlassConfig::reference(2, 8, 0.25, 12, &[2]));
    check_model_config(&cfg, 7, 2, false, 6000);
    check_model_config(&cfg, 7, 1, true, 6010);
}

#[test]
fn hourglass_gradients_with_rotary_nested_and_attention_resampling() {
    let cfg = rotary(HourGlassConfig {
        shortening: PerLevel::Each(vec![ShorteningKind::Attention, ShorteningKind::Linear]),
        upsampling: PerLevel::Each(vec![UpsamplingKind::Attention, UpsamplingKind::Naive]),
        depth: Some(Depth::triple(1, Depth::triple(0, 2, 1), 1)),
        ..HourGlassConfig::reference(2, 8, 0.25, 12, &[2, 3])
    });
    check_model_config(&cfg, 11, 2, false, 6100);
}

#[test]
fn plain_transformer_gradients() {
    // The hourglass's baseline: no shortening, layers at full length (rotary, ragged length, dropout).
    let cfg = rotary(HourGlassConfig::plain(2, 8, 0.25, 12, 2));
    check_model_config(&cfg, 5, 2, false, 7000);
    check_model_config(&cfg, 4, 1, true, 7010);
    check_model_config(&HourGlassConfig::plain(2, 8, 0.0, 12, 1), 3, 2, false, 7020);
}

#[test]
fn relu_dropout_is_relu_then_dropout_bit_for_bit() {
    let cpu = hourglass::Cpu::<f32>::new();
    let shape = [1001];
    let x = tensor(&cpu, &shape, &random_vec(1, 1001));
    let dy = tensor(&cpu, &shape, &random_vec(2, 1001));
    for mask in [None, Some(DropoutMask::new(0.25, 3))] {
        let apart = elementwise::dropout(elementwise::relu(&x).unwrap(), mask).unwrap();
        let fused = elementwise::relu_dropout(&x, mask, false).unwrap();
        assert_eq!(fused.to_vec().unwrap(), apart.to_vec().unwrap());
        let fused16 = elementwise::relu_dropout(&x, mask, true).unwrap();
        assert_eq!(
            fused16.to_vec().unwrap(),
            apart.to_bf16().unwrap().to_vec().unwrap()
        );
        let d_apart =
            elementwise::relu_backward(&apart, &elementwise::dropout(dy.share(), mask).unwrap());
        let d_fused = elementwise::relu_dropout_backward(&x, &dy, mask).unwrap();
        // Where dropout dropped a positive ReLU output, both give a zero gradient (the fused form by dy · 0).
        assert_eq!(
            d_fused.to_vec().unwrap(),
            d_apart.unwrap().to_vec().unwrap()
        );
    }
}
