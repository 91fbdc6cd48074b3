//! Helpers shared by the integration tests: seeded random data, error measures, and a central-difference
//! gradient checker (for `Cpu<f64>`).
//!
//! Declared once in `tests/suite/main.rs`; each module uses only part of it.
#![allow(dead_code)]

pub mod attention;
pub mod cli;

use hourglass::device::BackendCore;
use hourglass::model::{Param, Parameters};
use hourglass::rng::SeededRng;
use hourglass::{Cpu, Tensor};

/// The f64 CPU backend the gradient checks run on.
pub type F64 = Cpu<f64>;

pub fn cpu64() -> F64 {
    Cpu::new()
}

/// An empty scratch folder for one test, `<tmp>/hourglass-<area>-<name>-<pid>`: `area` (the module) keeps
/// the modules' names apart, the process id concurrent runs.
pub fn scratch_dir(area: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hourglass-{area}-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A written PNG: (width, height, the RGB of every pixel, row by row), every pixel opaque.
pub fn decode_png(path: &std::path::Path) -> (u32, u32, Vec<[u8; 3]>) {
    let pixmap = tiny_skia::Pixmap::decode_png(&std::fs::read(path).unwrap()).unwrap();
    let pixels = pixmap
        .pixels()
        .iter()
        .map(|p| {
            assert_eq!(p.alpha(), 255);
            [p.red(), p.green(), p.blue()]
        })
        .collect();
    (pixmap.width(), pixmap.height(), pixels)
}

/// Asserts `result` is an error whose message mentions every one of `words`; returns the message.
#[track_caller]
pub fn expect_err<T>(result: hourglass::Result<T>, words: &[&str]) -> String {
    let msg = match result {
        Ok(_) => panic!("expected an error mentioning {words:?}, got Ok"),
        Err(e) => e.to_string(),
    };
    for w in words {
        assert!(
            msg.contains(w),
            "error message {msg:?} does not mention {w:?}"
        );
    }
    msg
}

/// `n` standard-normal values from `seed`.
pub fn random_vec(seed: u64, n: usize) -> Vec<f64> {
    let mut rng = SeededRng::new(seed);
    (0..n).map(|_| rng.normal()).collect()
}

/// `n` values uniform in `[lo, hi)` from `seed`.
pub fn random_uniform_vec(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut rng = SeededRng::new(seed);
    (0..n).map(|_| rng.uniform_in(lo, hi)).collect()
}

/// A tensor of standard-normal values from `seed` on any backend (converted to its element type).
pub fn random_tensor<B: BackendCore>(backend: &B, shape: &[usize], seed: u64) -> Tensor<B> {
    let n = shape.iter().product();
    Tensor::from_f64(backend, shape, &random_vec(seed, n)).expect("random tensor")
}

/// A tensor from f64 values on any backend.
pub fn tensor<B: BackendCore>(backend: &B, shape: &[usize], data: &[f64]) -> Tensor<B> {
    Tensor::from_f64(backend, shape, data).expect("tensor from data")
}

/// A tensor's values as f64, whatever its backend.
pub fn values<B: BackendCore>(t: &Tensor<B>) -> Vec<f64> {
    t.to_f64_vec().expect("tensor to host")
}

/// Row-major matrices with the same number of rows, side by side: row r of the result is row r of each part
/// in turn (`(data, row width)`), as one GEMM lays out q, k and v.
pub fn pack_columns<T: Copy>(parts: &[(&[T], usize)]) -> Vec<T> {
    let rows = parts[0].0.len() / parts[0].1;
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    for r in 0..rows {
        for (data, width) in parts {
            out.extend_from_slice(&data[r * width..][..*width]);
        }
    }
    out
}

/// The inverse of `pack_columns`: the parts of the given row widths.
pub fn unpack_columns<T: Copy>(packed: &[T], widths: &[usize]) -> Vec<Vec<T>> {
    let total: usize = widths.iter().sum();
    let mut parts: Vec<Vec<T>> = widths.iter().map(|_| Vec::new()).collect();
    for row in packed.chunks(total) {
        let mut start = 0;
        for (part, width) in parts.iter_mut().zip(widths) {
            part.extend_from_slice(&row[start..start + width]);
            start += width;
        }
    }
    parts
}

pub fn norm(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `||a - b|| / ||b||` (just `||a||` when `b` is exactly zero). Panics if the lengths differ, and returns
/// infinity if anything is not finite, so a NaN never passes a `<` threshold.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let nb = norm(b);
    if nb == 0.0 {
        diff
    } else {
        diff / nb
    }
}

/// `rel_err` between two tensors (possibly on different backends or of different dtypes); shapes must match.
pub fn rel_err_tensors<B1: BackendCore, B2: BackendCore>(a: &Tensor<B1>, b: &Tensor<B2>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "rel_err_tensors: shapes differ");
    rel_err(&values(a), &values(b))
}

/// Largest elementwise `|a - b|` (infinity if anything is not finite).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

/// The scalar loss every gradient check uses: `L = Σ out · r` for a fixed random `r`, whose gradient with
/// respect to `out` is `r` itself (what is fed to `backward`).
pub fn weighted_sum(out: &[f64], r: &[f64]) -> f64 {
    dot(out, r)
}

/// Up to `k` distinct indices in `0..n`, always including the first and last, the rest drawn from `seed`;
/// all of `0..n` when `n <= k`. Sorted.
pub fn sample_coords(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    let mut rng = SeededRng::new(seed);
    let mut chosen = vec![0, n - 1];
    while chosen.len() < k {
        let i = (rng.next_u64() % n as u64) as usize;
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    chosen.sort_unstable();
    chosen
}

/// Tolerances of a finite-difference check. A gradient passes if
/// `||analytic - numeric|| <= rtol · ||numeric|| + atol` over the checked coordinates.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    /// Central-difference step.
    pub eps: f64,
    pub rtol: f64,
    /// Absolute slack for gradients that are (analytically) zero, where the numeric one is rounding noise.
    pub atol: f64,
}

/// For single ops and single transformer layers on O(1) data: with eps = 1e-6 the rounding noise of a
/// central difference is ~1e-8 relative at worst (observed: <= 3e-8 on ops, <= 3e-9 absolute on the
/// analytically-zero key-bias gradient), truncation ~1e-12; a real bug is O(1e-3) relative or more.
pub const OP_TOL: Tol = Tol {
    eps: 1e-6,
    rtol: 1e-6,
    atol: 5e-8,
};

/// For whole models: deeper compositions and larger losses give more rounding noise in the differences
/// (observed: <= 1.2e-6 relative on a parameter tensor with a small gradient, <= 5e-8 absolute). The step
/// stays small (1e-6) so that no ReLU pre-activation crosses its kink; with eps = 1e-5 one does.
pub const MODEL_TOL: Tol = Tol {
    eps: 1e-6,
    rtol: 1e-5,
    atol: 3e-7,
};

/// With `GRADCHECK_VERBOSE` set, every check prints how much of its allowed error it used (run with
/// `--nocapture`): the way the tolerances above were calibrated.
fn verbose() -> bool {
    std::env::var_os("GRADCHECK_VERBOSE").is_some()
}

/// Central differences `(L(x + eps e_i) - L(x - eps e_i)) / 2 eps` at the given coordinates of `x`.
pub fn numeric_grad(
    x: &[f64],
    coords: &[usize],
    eps: f64,
    mut loss: impl FnMut(&[f64]) -> f64,
) -> Vec<f64> {
    let mut xp = x.to_vec();
    coords
        .iter()
        .map(|&i| {
            xp[i] = x[i] + eps;
            let up = loss(&xp);
            xp[i] = x[i] - eps;
            let down = loss(&xp);
            xp[i] = x[i];
            (up - down) / (2.0 * eps)
        })
        .collect()
}

/// The outcome of one check, for messages and for tests that look at the error itself.
#[derive(Clone, Debug)]
pub struct GradReport {
    pub name: String,
    pub coords: usize,
    pub err: f64,
    pub numeric_norm: f64,
    pub rel: f64,
    pub worst: Option<(usize, f64, f64)>,
}

impl GradReport {
    pub fn passes(&self, tol: Tol) -> bool {
        self.err.is_finite() && self.err <= tol.rtol * self.numeric_norm + tol.atol
    }
}

/// Compares `analytic` (the full gradient with respect to `x`) with central differences of `loss` at `coords`
/// (all coordinates when `None`), without asserting.
pub fn grad_report(
    name: &str,
    x: &[f64],
    analytic: &[f64],
    coords: Option<&[usize]>,
    tol: Tol,
    loss: impl FnMut(&[f64]) -> f64,
) -> GradReport {
    assert_eq!(
        x.len(),
        analytic.len(),
        "{name}: gradient length {} differs from the input's {}",
        analytic.len(),
        x.len()
    );
    let all: Vec<usize>;
    let coords = match coords {
        Some(c) => c,
        None => {
            all = (0..x.len()).collect();
            &all
        }
    };
    let numeric = numeric_grad(x, coords, tol.eps, loss);
    let picked: Vec<f64> = coords.iter().map(|&i| analytic[i]).collect();
    let err = if picked.iter().chain(&numeric).all(|v| v.is_finite()) {
        norm(
            &picked
                .iter()
                .zip(&numeric)
                .map(|(a, n)| a - n)
                .collect::<Vec<_>>(),
        )
    } else {
        f64::INFINITY
    };
    let worst = coords
        .iter()
        .zip(picked.iter().zip(&numeric))
        .map(|(&i, (&a, &n))| (i, a, n))
        .max_by(|p, q| (p.1 - p.2).abs().total_cmp(&(q.1 - q.2).abs()));
    GradReport {
        name: name.to_string(),
        coords: coords.len(),
        err,
        numeric_norm: norm(&numeric),
        rel: rel_err(&picked, &numeric),
        worst,
    }
}

/// Asserts that `analytic` matches central differences of `loss` (see `grad_report`, `Tol`).
pub fn check_grad(
    name: &str,
    x: &[f64],
    analytic: &[f64],
    coords: Option<&[usize]>,
    tol: Tol,
    loss: impl FnMut(&[f64]) -> f64,
) -> GradReport {
    let report = grad_report(name, x, analytic, coords, tol, loss);
    if verbose() {
        eprintln!(
            "gradcheck {:.3e} of allowed error: {name} (err {:.3e}, relative {:.3e}, ||numeric|| {:.3e})",
            report.err / (tol.rtol * report.numeric_norm + tol.atol),
            report.err,
            report.rel,
            report.numeric_norm
        );
    }
    assert!(
        report.passes(tol),
        "gradient check failed for {name}: ||analytic - numeric|| = {:.3e} over {} coordinates, \
         ||numeric|| = {:.3e} (relative {:.3e}; allowed {:.1e}·||numeric|| + {:.1e}); worst (index, analytic, \
         numeric) = {:?}",
        report.err,
        report.coords,
        report.numeric_norm,
        report.rel,
        tol.rtol,
        tol.atol,
        report.worst
    );
    report
}

/// Directional check covering every coordinate at once: for random directions `v`,
/// `(L(x + eps v) - L(x - eps v)) / 2 eps` must equal `<analytic, v>`, within `rtol·||analytic||·||v|| + atol`.
pub fn check_directional(
    name: &str,
    x: &[f64],
    analytic: &[f64],
    dirs: usize,
    seed: u64,
    tol: Tol,
    mut loss: impl FnMut(&[f64]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    for d in 0..dirs {
        let v = random_vec(seed.wrapping_add(d as u64 * 7919), x.len());
        let v_norm = norm(&v);
        let v: Vec<f64> = v.iter().map(|e| e / v_norm).collect();
        let shifted = |s: f64| -> Vec<f64> { x.iter().zip(&v).map(|(a, b)| a + s * b).collect() };
        let numeric = (loss(&shifted(tol.eps)) - loss(&shifted(-tol.eps))) / (2.0 * tol.eps);
        let want = dot(analytic, &v);
        let err = (numeric - want).abs();
        if verbose() {
            eprintln!(
                "gradcheck {:.3e} of allowed error: {name} direction {d} (err {:.3e}, ||grad|| {:.3e})",
                err / (tol.rtol * norm(analytic) + tol.atol),
                err,
                norm(analytic)
            );
        }
        assert!(
            err.is_finite() && err <= tol.rtol * norm(analytic) + tol.atol,
            "directional gradient check failed for {name} (direction {d}): numeric {numeric:.9e}, \
             analytic {want:.9e}, |diff| {err:.3e}, ||grad|| {:.3e}",
            norm(analytic)
        );
    }
}

/// Values of the named parameter.
pub fn param_values<B: BackendCore, M: Parameters<B>>(model: &M, name: &str) -> Vec<f64> {
    let mut out = None;
    model.visit("", &mut |n, p: &Param<B>| {
        if n == name {
            out = Some(values(&p.value));
        }
    });
    out.unwrap_or_else(|| panic!("no parameter named {name}"))
}

/// Accumulated gradient of the named parameter.
pub fn param_grad<B: BackendCore, M: Parameters<B>>(model: &M, name: &str) -> Vec<f64> {
    let mut out = None;
    model.visit("", &mut |n, p: &Param<B>| {
        if n == name {
            out = Some(values(&p.grad));
        }
    });
    out.unwrap_or_else(|| panic!("no parameter named {name}"))
}

/// Overwrites the named parameter's value (same shape).
pub fn set_param<B: BackendCore, M: Parameters<B>>(model: &mut M, name: &str, data: &[f64]) {
    let mut found = false;
    model.visit_mut("", &mut |n, p: &mut Param<B>| {
        if n == name {
            let shape = p.value.shape().to_vec();
            p.value = Tensor::from_f64(p.value.backend(), &shape, data).expect("parameter shape");
            found = true;
        }
    });
    assert!(found, "no parameter named {name}");
}

/// Every parameter's name and element count, in visiting order.
pub fn param_sizes<B: BackendCore, M: Parameters<B>>(model: &M) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    model.visit("", &mut |n, p: &Param<B>| out.push((n, p.value.len())));
    out
}

// ---------------------------------------------------------------------------------------------------------------
// f32 helpers for the GPU tests (`gpu/`): CUDA runs in f32, compared against `Cpu<f32>`.

/// The model widths (d_model) of common configurations, GPT-2 small to GPT-3 sizes and the powers of two
/// between: every width-dependent launch (LayerNorm's shared memory, above all) is tested at each of them.
pub const COMMON_WIDTHS: [usize; 9] = [512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192];

/// Named host copies of one run's outputs.
pub type Outputs = Vec<(&'static str, Vec<f32>)>;

/// `n` standard-normal values from `seed`, as f32 (the f32 rounding of `random_vec(seed, n)`).
pub fn random_f32(seed: u64, n: usize) -> Vec<f32> {
    random_vec(seed, n).into_iter().map(|v| v as f32).collect()
}

/// `||a - b|| / ||b||` accumulated in f64 (`||a - b||` when `b` is zero); infinite if anything is not finite.
pub fn rel_err_f32(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (x as f64 - y as f64).powi(2);
        norm += (y as f64).powi(2);
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Euclidean norm of f32 values, accumulated in f64.
pub fn norm_f32(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// The bit patterns of f32 values: what "bit-identical" compares.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A second GPU run against the first: every output must have the same bits (the kernels are deterministic).
pub fn assert_repeatable(case: &str, first: &Outputs, second: &Outputs) {
    assert_eq!(first.len(), second.len(), "{case}: output counts differ");
    for ((name, g), (_, g2)) in first.iter().zip(second) {
        assert!(
            bits(g) == bits(g2),
            "{case}: {name}: a second GPU run gave different bits"
        );
    }
}

/// bf16 parity bounds: the largest `||gpu - cpu|| / ||cpu||` between the GPU in bf16 and the bf16 CPU
/// reference. Each is at most a fifth of the f32-vs-bf16 noise floor that `tests/suite/bf16.rs` measures on the
/// CPU (and holds these to), so a value rounded to bf16 at a place where the reference does not round fails.
/// One op (a linear map, a LayerNorm with bf16 output): the two sides round the same values to the same bits
/// and differ only in f32 sum order (~1e-7), or by an ulp where that order moves a value across a rounding
/// boundary.
pub const BF16_OP_BOUND: f64 = 1e-4;
/// A whole model's output `y`. f32-level differences (GEMM sum order, attention's exp) occasionally move a
/// value across a bf16 rounding boundary: one bf16 ulp for that element. (Floor measured: 1.6e-3; the
/// residual stream, which is not rounded, dilutes the output's error.)
pub const BF16_MODEL_Y_BOUND: f64 = 3e-4;
/// A whole model's gradients (`grad_x`, every parameter gradient concatenated): the same, and a ReLU whose
/// pre-activation is near zero may pass or block a gradient. (Floor measured: 1.6e-2.)
pub const BF16_MODEL_GRAD_BOUND: f64 = 2e-3;

/// The bf16 attention on the GPU against the bf16 CPU reference, every output: the L2-relative error of the
/// rows that `bf16_attn_agreement` does not set aside as flipped. `tests/suite/attention_bf16.rs` measures the
/// f32-vs-bf16 floor it must stay a fifth of: lowest for the log-sum-exp (1.2e-4 on 2026-11-30; out, dq, dk
/// and dv 1e-3 and up). The GPU differs from the reference only in the order of f32 sums, so a rounding point
/// moved or a fragment misplaced shows far above it.
pub const BF16_ATTN_BOUND: f64 = 2e-5;

/// Largest relative difference of a step's loss, and of the parameters after 6 steps, between the GPU in bf16
/// and the bf16 CPU reference: a fifth of the f32-vs-bf16 floor at most (tests/suite/gpu/train_loop.rs measures it;
/// 2026-11-30: losses 1.35e-4, parameters 2.9e-3; a mean loss barely moves when single predictions do).
pub const BF16_LOSS_BOUND: f64 = 2.5e-5;
pub const BF16_PARAMS_BOUND: f64 = 5e-4;

/// The bf16 attention's comparison with its CPU reference (`bf16_attn_agreement`): how far apart the GPU and
/// the reference may be, element by element and row by row, given that the two round the same values to bf16
/// but add in different orders, so that a value lying near a bf16 rounding boundary now and then rounds the
/// other way on one side (a "flip": one term of a sum moves by one bf16 unit of that term). Measured with the
/// reference itself computed in f64 over `tests/suite/gpu/attention.rs`'s bf16 cases (1,230 comparisons, 192 of them
/// over the plain bound): flips move a few rows of most outputs and up to 7.6% of the rows of long ones, no
/// element by more than 1.31 bf16 units of its row's scale, the L2 error of a whole output by up to 27x
/// `BF16_ATTN_BOUND`, and that of the other rows by at most 4.1e-6. docs/attention.md has the whole argument.
///
/// Every element within this many bf16 units of its row's scale. A key dropped by a tile-mask bug moves its
/// rows by 2.3 to 290 units in `tests/suite/attention_bf16.rs`'s one-head cases (lengths one short of whole tiles).
pub const BF16_ATTN_MAX_UNITS: f64 = 3.0;
/// At least this fraction of the elements within one bf16 unit of their row's scale.
pub const BF16_ATTN_WITHIN_ONE_UNIT: f64 = 0.995;

/// How many rows of `rows` the comparison may set aside as flipped: 4, or an eighth of them.
pub fn bf16_attn_flip_rows(rows: usize) -> usize {
    (rows / 8).max(4)
}

/// One output of the bf16 attention against the bf16 CPU reference, in rows of `row_len` values (one head's
/// vector for out, dq, dk and dv; one value for the log-sum-exp):
///
/// - a row's scale is its largest magnitude, or the output's RMS where that is larger (a row that is only
///   cancellation noise, dq of a row that sees one key, is judged at the output's scale); one bf16 unit of it
///   is the bf16 spacing there, 2^(⌊log2 scale⌋ − 7);
/// - every element is within `BF16_ATTN_MAX_UNITS` units of its row's scale, and at least
///   `BF16_ATTN_WITHIN_ONE_UNIT` of them within one unit;
/// - the rows with the largest errors, at most `bf16_attn_flip_rows`, are set aside as flipped; the L2-relative
///   error of the others is below `BF16_ATTN_BOUND`, as for a comparison with no flip.
///
/// A flip changes one term of one row's sums by one bf16 unit of that term: a few rows, each within a unit or
/// two. A bug changes many rows (a rounding moved, a wrong scale: every row, past the set-aside allowance, and
/// far past `BF16_ATTN_BOUND`), or a few rows by many units (a key of a tile dropped or added, a fragment
/// misplaced).
#[derive(Clone, Debug)]
pub struct Bf16Agreement {
    /// `||got - reference|| / ||reference||` over every element: the measure before this one.
    pub rel_err: f64,
    pub elements: usize,
    /// Elements within one bf16 unit of their row's scale.
    pub within_one_unit: usize,
    /// The largest error, in bf16 units of its row's scale.
    pub worst_units: f64,
    pub rows: usize,
    /// Rows whose error alone exceeds `BF16_ATTN_BOUND` (relative to the row's norm, at least the output's
    /// RMS): the flipped ones, if they are few.
    pub rows_over_bound: usize,
    /// Rows set aside: the `rows_over_bound` with the largest errors, at most `bf16_attn_flip_rows(rows)`.
    pub set_aside: usize,
    /// The L2-relative error of the rows not set aside.
    pub rest_rel_err: f64,
}

/// One bf16 unit at `scale`: the spacing of bf16 values there (8 significant bits).
pub fn bf16_unit(scale: f64) -> f64 {
    if scale > 0.0 && scale.is_finite() {
        2f64.powi(scale.log2().floor() as i32 - 7)
    } else {
        f64::MIN_POSITIVE
    }
}

/// `got` against `reference` by the bf16 attention's measure (`Bf16Agreement`), rows of `row_len`.
pub fn bf16_attn_agreement(got: &[f32], reference: &[f32], row_len: usize) -> Bf16Agreement {
    assert_eq!(
        got.len(),
        reference.len(),
        "bf16_attn_agreement: lengths differ"
    );
    assert!(row_len > 0 && reference.len().is_multiple_of(row_len));
    let rel_err = rel_err_f32(got, reference);
    let elements = reference.len();
    let rows = elements / row_len;
    let rms = (reference.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / elements.max(1) as f64)
        .sqrt();
    let (mut within_one_unit, mut worst_units) = (0, 0.0f64);
    // (squared error, squared norm, whether over the bound) of each row.
    let mut per_row = Vec::with_capacity(rows);
    for (r, g) in reference.chunks(row_len).zip(got.chunks(row_len)) {
        let scale = r.iter().fold(rms, |m, &x| m.max((x as f64).abs()));
        let unit = bf16_unit(scale);
        let (mut err2, mut norm2) = (0.0f64, 0.0f64);
        for (&x, &y) in r.iter().zip(g) {
            let diff = if x.is_finite() && y.is_finite() {
                (x as f64 - y as f64).abs()
            } else {
                f64::INFINITY
            };
            within_one_unit += (diff <= unit) as usize;
            worst_units = worst_units.max(diff / unit);
            err2 += diff * diff;
            norm2 += (x as f64).powi(2);
        }
        let floor2 = rms * rms * row_len as f64;
        let over = err2 > BF16_ATTN_BOUND * BF16_ATTN_BOUND * norm2.max(floor2);
        per_row.push((err2, norm2, over));
    }
    let rows_over_bound = per_row.iter().filter(|r| r.2).count();
    let mut order: Vec<usize> = (0..rows).filter(|&i| per_row[i].2).collect();
    order.sort_by(|&a, &b| per_row[b].0.total_cmp(&per_row[a].0));
    let set_aside = rows_over_bound.min(bf16_attn_flip_rows(rows));
    let mut aside = vec![false; rows];
    order[..set_aside].iter().for_each(|&i| aside[i] = true);
    let (mut err2, mut norm2) = (0.0f64, 0.0f64);
    for (row, &(e, n, _)) in per_row.iter().enumerate() {
        if !aside[row] {
            err2 += e;
            norm2 += n;
        }
    }
    let rest_rel_err = if norm2 > 0.0 {
        (err2 / norm2).sqrt()
    } else {
        err2.sqrt()
    };
    Bf16Agreement {
        rel_err,
        elements,
        within_one_unit,
        worst_units,
        rows,
        rows_over_bound,
        set_aside,
        rest_rel_err,
    }
}

impl Bf16Agreement {
    /// Why this comparison fails the measure, or `None` where it passes.
    pub fn failure(&self) -> Option<String> {
        let within = self.within_one_unit as f64 / self.elements.max(1) as f64;
        if self.worst_units.is_nan() || self.worst_units > BF16_ATTN_MAX_UNITS {
            Some(format!(
                "an element {:.1} bf16 units of its row's scale from the reference (at most {BF16_ATTN_MAX_UNITS})",
                self.worst_units
            ))
        } else if within < BF16_ATTN_WITHIN_ONE_UNIT {
            Some(format!(
                "{:.2}% of the elements within one bf16 unit (at least {:.1}%)",
                100.0 * within,
                100.0 * BF16_ATTN_WITHIN_ONE_UNIT
            ))
        } else if self.rest_rel_err.is_nan() || self.rest_rel_err >= BF16_ATTN_BOUND {
            Some(format!(
                "{} of {} rows over {BF16_ATTN_BOUND:e}; with the {} worst set aside the rest is {:.2e} off",
                self.rows_over_bound, self.rows, self.set_aside, self.rest_rel_err
            ))
        } else {
            None
        }
    }

    pub fn passes(&self) -> bool {
        self.failure().is_none()
    }
}

/// One line for a log: every number of the measure.
impl std::fmt::Display for Bf16Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "L2 {:.2e}; {:.3}% within 1 unit, worst {:.2} units; {}/{} rows over the bound, {} set aside, rest {:.2e}",
            self.rel_err,
            100.0 * self.within_one_unit as f64 / self.elements.max(1) as f64,
            self.worst_units,
            self.rows_over_bound,
            self.rows,
            self.set_aside,
            self.rest_rel_err
        )
    }
}

/// The bf16 parity bound for one of `model_run`'s outputs.
pub fn bf16_model_bound(output: &str) -> f64 {
    if output == "y" {
        BF16_MODEL_Y_BOUND
    } else {
        BF16_MODEL_GRAD_BOUND
    }
}

/// Runs forward and backward of a freshly built model (seed 5, evaluation mode) in `precision` on `x` with
/// output gradient `gy`: returns `y`, `grad_x` and every parameter gradient concatenated (in visiting order),
/// as f32. Norm-wise errors over the concatenation weigh each gradient by its size, as an optimiser step does.
pub fn model_run<B: hourglass::Backend>(
    backend: &B,
    config: &hourglass::HourGlassConfig,
    precision: hourglass::model::Precision,
    shape: &[usize],
    x: &[f64],
    gy: &[f64],
) -> Outputs {
    let mut model = hourglass::HourGlass::from_config(backend, config, 5).expect("model");
    model.train(false);
    model.set_precision(precision);
    let y = model.forward(&tensor(backend, shape, x)).expect("forward");
    let gx = model
        .backward(&tensor(backend, shape, gy))
        .expect("backward");
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let mut grads = Vec::new();
    model.visit("", &mut |_, p| grads.extend(f32s(values(&p.grad))));
    vec![
        ("y", f32s(values(&y))),
        ("grad_x", f32s(values(&gx))),
        ("parameter gradients", grads),
    ]
}

/// The configurations whose bf16 noise floor and parity a whole model is held to: the reference (avg pooling,
/// naive upsampling, two levels) and learned resamplers (linear pooling, attention upsampling).
pub fn bf16_model_configs() -> Vec<hourglass::HourGlassConfig> {
    use hourglass::config::{ShorteningKind, UpsamplingKind};
    let reference = hourglass::HourGlassConfig::reference(4, 64, 0.0, 128, &[2, 3]);
    let learned = hourglass::HourGlassConfig {
        shortening: ShorteningKind::Linear.into(),
        upsampling: UpsamplingKind::Attention.into(),
        ..hourglass::HourGlassConfig::reference(4, 64, 0.0, 128, &[3])
    };
    vec![reference, learned]
}

/// `y`, `dx`, `dw` and `db` of a linear map with bias on `backend`, gradients accumulated onto nonzero
/// starting values; with `bf16`, x and W are rounded to bf16 first (what the model's Linear does), so the op
/// runs on bf16 operands.
pub fn linear_run<B: hourglass::Backend<Elem = f32>>(
    backend: &B,
    rows: usize,
    d_in: usize,
    d_out: usize,
    bf16: bool,
) -> hourglass::Result<Outputs> {
    use hourglass::ops::linear;
    let t = |shape: &[usize], seed| {
        Tensor::from_slice(backend, shape, &random_f32(seed, shape.iter().product()))
    };
    let (mut x, mut w, bias) = (t(&[rows, d_in], 1)?, t(&[d_out, d_in], 2)?, t(&[d_out], 3)?);
    if bf16 {
        (x, w) = (x.to_bf16()?, w.to_bf16()?);
    }
    let y = linear::forward(&x, &w, Some(&bias))?;
    let dy = t(&[rows, d_out], 4)?;
    let (mut dw, mut db) = (t(&[d_out, d_in], 5)?, t(&[d_out], 6)?);
    let dx = linear::backward(&x, &w, &dy, &mut dw, Some(&mut db))?;
    Ok(vec![
        ("y", y.to_vec()?),
        ("dx", dx.to_vec()?),
        ("dw", dw.to_vec()?),
        ("db", db.to_vec()?),
    ])
}

/// Sets the first element of `model`'s parameter `name` to NaN (in a new buffer, as loading a checkpoint
/// would): the next forward pass that reads it gives a NaN loss.
pub fn poison<B: BackendCore>(model: &mut impl Parameters<B>, name: &str) {
    model.visit_mut("", &mut |n, p: &mut Param<B>| {
        if n == name {
            let mut v = p.value.to_vec().unwrap();
            v[0] = hourglass::device::Element::from_f64(f64::NAN);
            p.value = Tensor::from_slice(p.value.backend(), p.value.shape(), &v).unwrap();
        }
    });
}

/// Two steps of `t`; a NaN stop at step 3 (a poisoned parameter, put back as it was before step 4 is queued:
/// a step queued behind a non-finite one changes nothing all the same); then the run to its end, which must
/// finish.
pub fn stop_on_a_nan_and_go_on<B: hourglass::Backend>(
    t: &mut hourglass::train::Trainer<B>,
    corpus: &hourglass::train::data::Corpus,
) {
    use std::sync::atomic::AtomicBool;
    for _ in 0..2 {
        t.train_step(corpus).unwrap();
    }
    let good = hourglass::checkpoint::export_params(t.lm(), false).unwrap();
    poison(t.lm(), "head.bias");
    // The host path stops at step 3 itself; a device step reports it when step 4 is queued.
    let third = t.queue_step(corpus);
    hourglass::checkpoint::import_params(t.lm(), &good).unwrap();
    let err = third
        .and_then(|_| t.queue_step(corpus))
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN") && err.contains("step 3"), "{err}");
    assert_eq!(t.step_count(), 2);
    let outcome = t
        .run(corpus, None, &AtomicBool::new(false), &mut ())
        .unwrap();
    assert_eq!(outcome, hourglass::train::Outcome::Finished);
}

/// Whether a GPU test leaves a case of `work` units (its own measure of size, e.g. batch·heads·q_len·kv_len·d_head)
/// to a real GPU when `gpu` is the emulated device (docs/emulator.md), which runs kernels about a thousand
/// times slower: cases up to `EMULATED_ALWAYS` units always run there, larger ones up to `EMULATED_MAX` one in
/// `EMULATED_STRIDE` (counted per test thread, so each test runs a deterministic spread of its cases), and
/// none above. A skipped case says so on stdout; a real GPU runs every case.
pub fn left_to_a_real_gpu(gpu: &hourglass::Cuda, work: usize, case: &dyn std::fmt::Debug) -> bool {
    use std::cell::Cell;
    thread_local!(static SEEN: Cell<usize> = const { Cell::new(0) });
    if !gpu.is_emulated() || work <= EMULATED_ALWAYS {
        return false;
    }
    let n = SEEN.with(|s| {
        s.set(s.get() + 1);
        s.get()
    });
    let skip = work > EMULATED_MAX || n % EMULATED_STRIDE != 1;
    if skip {
        println!("emulated device: {case:?} ({work} units) is left to a real GPU");
    }
    skip
}

pub const EMULATED_ALWAYS: usize = 1 << 18;
pub const EMULATED_MAX: usize = 1 << 23;
pub const EMULATED_STRIDE: usize = 6;
