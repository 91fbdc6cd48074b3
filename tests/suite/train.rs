//! Training pieces on the CPU: the sum-of-squares reduction and in-place scaling, gradient clipping by global
//! norm, and gradient accumulation (micro-batches give the big batch's gradient). The learning-rate schedule
//! is `train::schedule`'s unit tests.

use crate::common::*;
use hourglass::model::lm::HourglassLM;
use hourglass::model::Param;
use hourglass::ops::{elementwise, reduce};
use hourglass::train::{clip_grad_norm, grad_norm};
use hourglass::{Cpu, HourGlassConfig, Parameters, Tensor};

// ---------------------------------------------------------------------------------------------------------
// Ops

#[test]
fn sum_squares_matches_a_direct_sum() {
    let cpu = cpu64();
    for n in [1usize, 7, 16384, 16385, 100_003] {
        let v = random_vec(n as u64, n);
        let want: f64 = v.iter().map(|x| x * x).sum();
        let got = reduce::sum_squares(&tensor(&cpu, &[n], &v)).unwrap();
        assert!((got - want).abs() <= 1e-12 * want, "n {n}: {got} vs {want}");
    }
    let (a, b) = (random_vec(1, 300), random_vec(2, 40_000));
    let want: f64 = a.iter().chain(&b).map(|x| x * x).sum();
    let (ta, tb) = (tensor(&cpu, &[300], &a), tensor(&cpu, &[200, 200], &b));
    let got = reduce::sum_squares_all(&[&ta, &tb]).unwrap();
    assert!(
        (got - want).abs() <= 1e-12 * want,
        "two tensors: {got} vs {want}"
    );
    assert_eq!(reduce::sum_squares_all::<Cpu<f64>>(&[]).unwrap(), 0.0);
}

#[test]
fn sum_squares_is_deterministic_and_accumulates_f32_in_f64() {
    let cpu = Cpu::<f32>::new();
    let n = 200_000;
    let v = random_vec(9, n);
    let t = tensor(&cpu, &[n], &v);
    let first = reduce::sum_squares(&t).unwrap();
    for _ in 0..5 {
        assert_eq!(reduce::sum_squares(&t).unwrap().to_bits(), first.to_bits());
    }
    let want: f64 = values(&t).iter().map(|x| x * x).sum();
    assert!((first - want).abs() <= 1e-12 * want, "{first} vs {want}");
}

#[test]
fn scale_multiplies_in_place() {
    let cpu = Cpu::<f32>::new();
    for n in [3usize, 20_000] {
        let v = random_vec(n as u64, n);
        let mut t = tensor(&cpu, &[n], &v);
        let before = t.to_vec().unwrap();
        elementwise::scale(&mut t, 0.3).unwrap();
        let want: Vec<f32> = before.iter().map(|x| x * 0.3f32).collect();
        assert_eq!(bits(&t.to_vec().unwrap()), bits(&want), "n {n}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Clipping

/// A model of two loose parameters, for clipping tests.
struct Two<B: hourglass::Backend> {
    a: Param<B>,
    b: Param<B>,
}

impl<B: hourglass::Backend> Parameters<B> for Two<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        self.a.visit(&format!("{prefix}a"), f);
        self.b.visit(&format!("{prefix}b"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        self.a.visit_mut(&format!("{prefix}a"), f);
        self.b.visit_mut(&format!("{prefix}b"), f);
    }
}

fn two(ga: &[f64], gb: &[f64]) -> Two<Cpu<f64>> {
    let cpu = cpu64();
    let param = |g: &[f64]| {
        let mut p = Param::new(Tensor::zeros(&cpu, &[g.len()]).unwrap()).unwrap();
        p.grad = tensor(&cpu, &[g.len()], g);
        p
    };
    Two {
        a: param(ga),
        b: param(gb),
    }
}

fn all_grads(m: &impl Parameters<Cpu<f64>>) -> Vec<f64> {
    let mut out = Vec::new();
    m.visit("", &mut |_, p| out.extend(values(&p.grad)));
    out
}

#[test]
fn clip_returns_the_global_norm_and_scales_to_max_norm() {
    let (ga, gb) = (random_vec(3, 50), random_vec(4, 1000));
    let direct = norm(&ga.iter().chain(&gb).copied().collect::<Vec<_>>());
    let mut m = two(&ga, &gb);
    assert!((grad_norm(&m).unwrap() - direct).abs() <= 1e-13 * direct);
    let before = all_grads(&m);
    let max_norm = direct / 3.0;
    let got = clip_grad_norm(&mut m, max_norm).unwrap();
    assert!(
        (got - direct).abs() <= 1e-13 * direct,
        "norm before clipping: {got} vs {direct}"
    );
    let after = all_grads(&m);
    let clipped = norm(&after);
    assert!(
        (clipped - max_norm).abs() <= 1e-13 * max_norm,
        "clipped norm {clipped} vs {max_norm}"
    );
    // Every gradient scaled by the same factor (the direction is kept).
    let factor = max_norm / direct;
    for (x, y) in after.iter().zip(&before) {
        assert!((x - y * factor).abs() <= 1e-15 * y.abs().max(1.0));
    }
    // Already inside the ball: untouched, bit for bit.
    let again = clip_grad_norm(&mut m, max_norm * 2.0).unwrap();
    assert!((again - max_norm).abs() <= 1e-13 * max_norm);
    assert_eq!(all_grads(&m), after);
}

#[test]
fn clip_leaves_non_finite_gradients_alone_and_rejects_bad_max_norm() {
    let mut m = two(&[1.0, f64::INFINITY], &[2.0]);
    assert_eq!(clip_grad_norm(&mut m, 1.0).unwrap(), f64::INFINITY);
    assert_eq!(all_grads(&m)[0], 1.0, "not scaled");
    let mut m = two(&[1.0, f64::NAN], &[2.0]);
    assert!(clip_grad_norm(&mut m, 1.0).unwrap().is_nan());
    let mut m = two(&[3.0], &[4.0]);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(clip_grad_norm(&mut m, bad).is_err(), "max_norm {bad}");
    }
    assert_eq!(clip_grad_norm(&mut m, 1.0).unwrap(), 5.0);
    assert!((norm(&all_grads(&m)) - 1.0).abs() < 1e-15);
}

#[test]
fn clip_on_a_language_model_gradient() {
    let (seq, batch) = (6, 2);
    let ids: Vec<u32> = (0..seq * batch).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..seq * batch).map(|i| (i * 91 % 256) as u32).collect();
    let mut lm = HourglassLM::new(&cpu64(), &lm_config(), 3).unwrap();
    lm.train(false);
    lm.loss(&ids, &targets, seq, batch, true).unwrap();
    let mut all = Vec::new();
    lm.visit("", &mut |_, p| all.extend(values(&p.grad)));
    let direct = norm(&all);
    let got = clip_grad_norm(&mut lm, 0.1).unwrap();
    assert!((got - direct).abs() <= 1e-12 * direct, "{got} vs {direct}");
    assert!(
        direct > 0.1,
        "the test needs a norm above max_norm: {direct}"
    );
    assert!((grad_norm(&lm).unwrap() - 0.1).abs() <= 1e-12);
}

// ---------------------------------------------------------------------------------------------------------
// Accumulation

fn lm_config() -> HourGlassConfig {
    HourGlassConfig::reference(2, 8, 0.1, 16, &[2])
}

/// Columns `cols` of a `[seq, batch]` row-major id array, as a `[seq, cols.len()]` one.
fn columns(x: &[u32], seq: usize, batch: usize, cols: std::ops::Range<usize>) -> Vec<u32> {
    (0..seq)
        .flat_map(|t| cols.clone().map(move |b| x[t * batch + b]))
        .collect()
}

fn grads_by_name(m: &impl Parameters<Cpu<f64>>) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    m.visit("", &mut |n, p| out.push((n, values(&p.grad))));
    out
}

#[test]
fn micro_batches_accumulate_the_big_batch_gradient() {
    let (seq, batch) = (8, 4);
    let ids: Vec<u32> = (0..seq * batch).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..seq * batch).map(|i| (i * 91 % 256) as u32).collect();

    let mut big = HourglassLM::new(&cpu64(), &lm_config(), 5).unwrap();
    big.train(false);
    let big_loss = big.loss(&ids, &targets, seq, batch, true).unwrap();

    let mut micro = HourglassLM::new(&cpu64(), &lm_config(), 5).unwrap();
    micro.train(false);
    let mut losses = Vec::new();
    for cols in [0..2, 2..4] {
        let (x, y) = (
            columns(&ids, seq, batch, cols.clone()),
            columns(&targets, seq, batch, cols),
        );
        losses.push(micro.accumulate(&x, &y, seq, 2, 2).unwrap());
    }
    let mean = (losses[0] + losses[1]) / 2.0;
    assert!(
        (mean - big_loss).abs() <= 1e-12,
        "loss {mean} vs {big_loss}"
    );
    let (gb, gm) = (grads_by_name(&big), grads_by_name(&micro));
    assert_eq!(gb.len(), gm.len());
    let mut nonzero = 0;
    for ((name, b), (_, m)) in gb.iter().zip(&gm) {
        let d = max_abs_diff(m, b);
        assert!(d <= 1e-12, "{name}: accumulated gradient differs by {d:e}");
        nonzero += b.iter().any(|v| *v != 0.0) as usize;
    }
    assert!(nonzero > gb.len() / 2, "most gradients are non-zero");

    // A second step after zero_grad starts from zero again.
    micro.zero_grad().unwrap();
    assert!(grads_by_name(&micro)
        .iter()
        .all(|(_, g)| g.iter().all(|v| *v == 0.0)));
    assert!(micro.accumulate(&ids, &targets, seq, batch, 0).is_err());
}
