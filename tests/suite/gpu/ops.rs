//! The CUDA ops against the CPU reference (`Cpu<f32>`): forward and every gradient on fresh random inputs with
//! ragged shapes (sequence lengths that are not a multiple of the factor, widths that are not a multiple of 32,
//! batch 1 and 3), relative error below 1e-5; dropout masks identical; and a second GPU run must give the same
//! bits (the kernels are deterministic).
//!
//! They need a GPU, so they are ignored by default: `cargo test --test suite -- gpu::ops:: --include-ignored`. Without
//! a device each test prints "skipped"; with `HOURGLASS_REQUIRE_GPU=1` a missing device fails it instead.

use crate::common::{assert_repeatable, bits, random_f32, rel_err_f32, Outputs, COMMON_WIDTHS};
use hourglass::device::cuda::{device_or_skip, Cuda};
use hourglass::ops::elementwise::{self, ElementwiseOps};
use hourglass::ops::layernorm::{self, LayerNormOps};
use hourglass::ops::linear::{self, LinearOps};
use hourglass::ops::shorten::{self, ShortenOps};
use hourglass::ops::upsample::{self, UpsampleOps};
use hourglass::ops::window::{self, WindowOps};
use hourglass::rng::DropoutMask;
use hourglass::{BackendCore, Cpu, Result, Tensor};

/// Largest accepted `||gpu - cpu|| / ||cpu||`, for every output and gradient.
const TOL: f64 = 1e-5;

/// The GPU's outputs against the CPU's (relative error below `TOL`), and a second GPU run against the first
/// (identical bits).
fn check(case: &str, cpu: &Outputs, gpu: &Outputs, gpu_again: &Outputs) {
    assert_eq!(cpu.len(), gpu.len());
    for ((name, c), (_, g)) in cpu.iter().zip(gpu) {
        assert_eq!(c.len(), g.len(), "{case}: {name}: lengths differ");
        let e = rel_err_f32(g, c);
        assert!(
            e < TOL,
            "{case}: {name}: relative error {e:e} against the CPU"
        );
    }
    assert_repeatable(case, gpu, gpu_again);
}

/// The ops under test, on a backend whose elements are f32 (`Cpu<f32>` or `Cuda`).
trait Ops:
    BackendCore<Elem = f32>
    + LinearOps
    + LayerNormOps
    + ShortenOps
    + UpsampleOps
    + WindowOps
    + ElementwiseOps
{
}
impl<B> Ops for B where
    B: BackendCore<Elem = f32>
        + LinearOps
        + LayerNormOps
        + ShortenOps
        + UpsampleOps
        + WindowOps
        + ElementwiseOps
{
}

/// One op at one size: builds its inputs from fixed seeds on a backend, runs forward and backward there,
/// and returns every output.
trait Case: std::fmt::Debug {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs>;
}

/// Runs `case` on the CPU and twice on the GPU, checks the outputs, and returns the CPU's and the GPU's.
fn compare(gpu: &Cuda, case: &impl Case) -> Result<(Outputs, Outputs)> {
    let cpu = case.run(&Cpu::<f32>::new())?;
    let first = case.run(gpu)?;
    let second = case.run(gpu)?;
    check(&format!("{case:?}"), &cpu, &first, &second);
    Ok((cpu, first))
}

/// Asserts that the GPU's outputs have exactly the CPU's bits.
fn assert_same_bits(case: &impl Case, cpu: &Outputs, gpu: &Outputs) {
    for ((name, c), (_, g)) in cpu.iter().zip(gpu) {
        assert!(bits(c) == bits(g), "{case:?}: {name} differs from the CPU");
    }
}

fn upload<B: Ops>(b: &B, shape: &[usize], seed: u64) -> Result<Tensor<B>> {
    Tensor::from_slice(b, shape, &random_f32(seed, shape.iter().product()))
}

#[derive(Debug)]
struct LinearCase {
    rows: usize,
    d_in: usize,
    d_out: usize,
    bias: bool,
}

impl Case for LinearCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let x = upload(b, &[self.rows, self.d_in], 1)?;
        let w = upload(b, &[self.d_out, self.d_in], 2)?;
        let bias = upload(b, &[self.d_out], 3)?;
        let bias = self.bias.then_some(&bias);
        let y = linear::forward(&x, &w, bias)?;
        let dy = upload(b, &[self.rows, self.d_out], 4)?;
        // Gradients accumulate, so start them from nonzero values.
        let mut dw = upload(b, &[self.d_out, self.d_in], 5)?;
        let mut db = upload(b, &[self.d_out], 6)?;
        let dx = linear::backward(&x, &w, &dy, &mut dw, self.bias.then_some(&mut db))?;
        Ok(vec![
            ("y", y.to_vec()?),
            ("dx", dx.to_vec()?),
            ("dw", dw.to_vec()?),
            ("db", db.to_vec()?),
        ])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("linear_matches_cpu")? else {
        return Ok(());
    };
    for (rows, d_in, d_out) in [
        (1, 64, 31),
        (7, 37, 53),
        (3 * 41, 100, 257),
        (3 * 333, 512, 96),
        (2048, 33, 1000),
        (5000, 48, 40),
    ] {
        for bias in [true, false] {
            let case = LinearCase {
                rows,
                d_in,
                d_out,
                bias,
            };
            compare(&gpu, &case)?;
        }
    }
    Ok(())
}

#[derive(Debug)]
struct AddCase {
    len: usize,
}

impl Case for AddCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let x = upload(b, &[self.len], 1)?;
        let y = upload(b, &[self.len], 2)?;
        let sum = x.add(&y)?;
        let mut acc = upload(b, &[self.len], 3)?;
        acc.add_assign(&x)?;
        Ok(vec![("add", sum.to_vec()?), ("add_assign", acc.to_vec()?)])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn add_and_add_assign_match_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("add_and_add_assign_match_cpu")? else {
        return Ok(());
    };
    for len in [1, 1000, 3 * 1000 + 17, 65_535 * 256 + 1001] {
        let case = AddCase { len };
        let (cpu, cuda) = compare(&gpu, &case)?;
        // One rounding of the same two operands: identical bits.
        assert_same_bits(&case, &cpu, &cuda);
    }
    Ok(())
}

#[derive(Debug)]
struct ResidualLayerNormCase {
    shape: [usize; 3],
    dropout: bool,
}

impl Case for ResidualLayerNormCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let d = self.shape[2];
        let x = upload(b, &self.shape, 1)?;
        let branch = upload(b, &self.shape, 7)?;
        let (gamma, beta) = (upload(b, &[d], 2)?, upload(b, &[d], 3)?);
        let mask = self.dropout.then_some(DropoutMask::new(0.2, 77));
        let (s, y, saved) = layernorm::forward_residual(&x, &branch, mask, &gamma, &beta, false)?;
        let (dy, dres) = (upload(b, &self.shape, 4)?, upload(b, &self.shape, 8)?);
        let (mut dgamma, mut dbeta) = (upload(b, &[d], 5)?, upload(b, &[d], 6)?);
        let ds = layernorm::backward_residual(
            &s,
            &gamma,
            &saved,
            &dy,
            Some(&dres),
            &mut dgamma,
            &mut dbeta,
        )?;
        Ok(vec![
            ("s", s.to_vec()?),
            ("y", y.to_vec()?),
            ("mean", saved.mean.to_vec()?),
            ("rstd", saved.rstd.to_vec()?),
            ("ds", ds.to_vec()?),
            ("dgamma", dgamma.to_vec()?),
            ("dbeta", dbeta.to_vec()?),
        ])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_layernorm_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("residual_layernorm_matches_cpu")? else {
        return Ok(());
    };
    // The common model widths with 9 rows (two blocks of the one-kernel backward where it has 7 or 8 warps a
    // block, one row a block at 3072 and 4096, the wide path from 6144), after ragged shapes.
    let common = COMMON_WIDTHS.map(|d| [3, 3, d]);
    for shape in [[1, 1, 5], [13, 3, 64], [7, 2, 100], [683, 8, 512]]
        .into_iter()
        .chain(common)
    {
        for dropout in [false, true] {
            let case = ResidualLayerNormCase { shape, dropout };
            let (cpu, gpu_out) = compare(&gpu, &case)?;
            // s is one product and one sum per element, as on the CPU: the same bits.
            assert!(
                bits(&cpu[0].1) == bits(&gpu_out[0].1),
                "{case:?}: s differs"
            );
        }
    }
    Ok(())
}

#[derive(Debug)]
struct LayerNormCase {
    shape: [usize; 3],
}

impl Case for LayerNormCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let d = self.shape[2];
        // Offset from zero, where a one-pass variance would lose digits.
        let n = self.shape.iter().product();
        let x_data: Vec<f32> = random_f32(1, n).iter().map(|v| 3.0 + 2.0 * v).collect();
        let x = Tensor::from_slice(b, &self.shape, &x_data)?;
        let gamma = upload(b, &[d], 2)?;
        let beta = upload(b, &[d], 3)?;
        let (y, saved) = layernorm::forward(&x, &gamma, &beta)?;
        let dy = upload(b, &self.shape, 4)?;
        let mut dgamma = upload(b, &[d], 5)?;
        let mut dbeta = upload(b, &[d], 6)?;
        let dx = layernorm::backward(&x, &gamma, &saved, &dy, &mut dgamma, &mut dbeta)?;
        Ok(vec![
            ("y", y.to_vec()?),
            ("mean", saved.mean.to_vec()?),
            ("rstd", saved.rstd.to_vec()?),
            ("dx", dx.to_vec()?),
            ("dgamma", dgamma.to_vec()?),
            ("dbeta", dbeta.to_vec()?),
        ])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("layernorm_matches_cpu")? else {
        return Ok(());
    };
    for shape in [
        [7, 1, 37],
        [1, 1, 1],
        [50, 3, 100],
        [129, 3, 257],
        [5, 1, 4096],
        // Too wide for the one-kernel backward: dx, per-chunk partials and column sums.
        [3, 2, 7000],
        [300, 3, 1000],
        [33_333, 3, 48],
        [100_003, 1, 31],
    ]
    .into_iter()
    // Every common model width, few rows: the one-kernel backward's shared memory (static plus dynamic)
    // must fit the 48 KiB a launch gets at each, which it did not at 768, 1024, 1536, 2048, 3072 and 6144.
    .chain(COMMON_WIDTHS.map(|d| [3, 3, d]))
    {
        compare(&gpu, &LayerNormCase { shape })?;
    }
    Ok(())
}

#[derive(Debug)]
struct ShortenCase {
    shape: [usize; 3],
    factor: usize,
    shift: usize,
}

impl Case for ShortenCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let x = upload(b, &self.shape, 1)?;
        let short = shorten::forward(&x, self.factor, self.shift)?;
        let dshort = upload(b, short.shape(), 2)?;
        let dx = shorten::backward(&dshort, &self.shape, self.factor, self.shift)?;
        Ok(vec![("short", short.to_vec()?), ("dx", dx.to_vec()?)])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn shorten_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("shorten_matches_cpu")? else {
        return Ok(());
    };
    let mut cases = Vec::new();
    for batch in [1, 3] {
        for (seq, d) in [(17, 40), (30, 33), (5, 20), (64, 96)] {
            for factor in [1, 2, 3, 4, 8] {
                for shift in [0, factor - 1, factor + 2] {
                    cases.push(ShortenCase {
                        shape: [seq, batch, d],
                        factor,
                        shift,
                    });
                }
            }
        }
    }
    // More positions than the grid's 65 535 rows: the kernels' grid-stride loops over positions.
    for (factor, shift) in [(1, 0), (3, 2)] {
        cases.push(ShortenCase {
            shape: [70_001, 1, 8],
            factor,
            shift,
        });
    }
    for case in &cases {
        let (cpu, cuda) = compare(&gpu, case)?;
        // The same products and sums in the same order as the CPU (no FMA contraction): identical bits.
        assert_same_bits(case, &cpu, &cuda);
    }
    Ok(())
}

#[derive(Debug)]
struct UpsampleCase {
    shape: [usize; 3],
    factor: usize,
}

impl Case for UpsampleCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let [seq, batch, d] = self.shape;
        let x = upload(b, &self.shape, 1)?;
        let short = upload(b, &[seq.div_ceil(self.factor), batch, d], 2)?;
        let y = upsample::forward_add(&x, &short, self.factor)?;
        let dy = upload(b, &self.shape, 3)?;
        let dshort = upsample::backward(&dy, self.factor)?;
        Ok(vec![("y", y.to_vec()?), ("dshort", dshort.to_vec()?)])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn upsample_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("upsample_matches_cpu")? else {
        return Ok(());
    };
    let mut cases = Vec::new();
    for batch in [1, 3] {
        for (seq, d) in [(17, 40), (30, 33), (5, 20), (64, 96)] {
            for factor in [1, 2, 3, 4, 8] {
                cases.push(UpsampleCase {
                    shape: [seq, batch, d],
                    factor,
                });
            }
        }
    }
    // More positions (full and shortened) than the grid's 65 535 rows.
    for (seq, factor) in [(70_001, 3), (140_001, 2)] {
        cases.push(UpsampleCase {
            shape: [seq, 1, 4],
            factor,
        });
    }
    for case in &cases {
        let (cpu, cuda) = compare(&gpu, case)?;
        // The same additions in the same order as the CPU: identical bits.
        assert_same_bits(case, &cpu, &cuda);
    }
    Ok(())
}

#[derive(Debug)]
struct WindowCase {
    shape: [usize; 3],
    factor: usize,
    shift: usize,
}

impl Case for WindowCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let [seq, batch, d] = self.shape;
        let x = upload(b, &self.shape, 1)?;
        let folded = window::fold(&x, self.factor, self.shift)?;
        assert_eq!(
            folded.shape(),
            &[seq.div_ceil(self.factor), batch, self.factor * d],
            "{self:?}: folded shape"
        );
        // Unfold on its own input (not fold's output), so that every slot it reads holds a distinct value.
        let g = upload(b, folded.shape(), 2)?;
        let unfolded = window::unfold(&g, self.factor, self.shift, &self.shape)?;
        Ok(vec![
            ("fold", folded.to_vec()?),
            ("unfold", unfolded.to_vec()?),
        ])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn window_fold_and_unfold_match_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("window_fold_and_unfold_match_cpu")? else {
        return Ok(());
    };
    let mut cases = Vec::new();
    for batch in [1, 3] {
        // Ragged lengths (a partial last window, and T < k), widths off multiples of 32, and one wider than a
        // block's 1024 elements per row.
        for (seq, d) in [
            (17, 40),
            (30, 33),
            (5, 20),
            (1, 7),
            (2, 3),
            (64, 100),
            (9, 1037),
        ] {
            for factor in [1, 2, 3, 4] {
                // Unshifted (linear upsampling, non-causal pooling) and shifted by k - 1 (causal pooling).
                let shifts: &[usize] = if factor == 1 { &[0] } else { &[0, factor - 1] };
                for &shift in shifts {
                    cases.push(WindowCase {
                        shape: [seq, batch, d],
                        factor,
                        shift,
                    });
                }
            }
        }
    }
    // More rows (folded and full length) than the grid's 65 535: the kernels' grid-stride loops over rows.
    for (seq, batch, factor, shift) in [(70_001, 1, 3, 2), (70_001, 1, 2, 0), (40_000, 3, 4, 3)] {
        cases.push(WindowCase {
            shape: [seq, batch, 8],
            factor,
            shift,
        });
    }
    for case in &cases {
        let (cpu, cuda) = compare(&gpu, case)?;
        // Pure copies and zero fill: identical bits, zeros included (the output buffers come from a pool and
        // may hold an earlier run's values, so an element the kernel fails to write shows up here).
        assert_same_bits(case, &cpu, &cuda);
    }
    Ok(())
}

#[derive(Debug)]
struct ReluCase {
    len: usize,
}

impl Case for ReluCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        // Exact zeros of both signs too: the boundary of both halves.
        let mut x_data = random_f32(1, self.len);
        x_data.iter_mut().step_by(7).for_each(|v| *v = 0.0);
        x_data
            .iter_mut()
            .skip(3)
            .step_by(11)
            .for_each(|v| *v = -0.0);
        let x = Tensor::from_slice(b, &[self.len], &x_data)?;
        let y = elementwise::relu(&x)?;
        let dy = upload(b, &[self.len], 2)?;
        let dx = elementwise::relu_backward(&y, &dy)?;
        // Fused with the dropout after it, in f32 and rounded to bf16, and its gradient.
        let mask = Some(DropoutMask::new(0.3, 41));
        let y_drop = elementwise::relu_dropout(&x, mask, false)?;
        let y_drop16 = elementwise::relu_dropout(&x, mask, true)?;
        let dx_drop = elementwise::relu_dropout_backward(&x, &dy, mask)?;
        Ok(vec![
            ("y", y.to_vec()?),
            ("dx", dx.to_vec()?),
            ("relu_dropout", y_drop.to_vec()?),
            ("relu_dropout bf16", y_drop16.to_vec()?),
            ("relu_dropout dx", dx_drop.to_vec()?),
        ])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn relu_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("relu_matches_cpu")? else {
        return Ok(());
    };
    for len in [1, 1000, 3 * 1000 + 17, (1 << 20) + 5] {
        let case = ReluCase { len };
        let (cpu, cuda) = compare(&gpu, &case)?;
        assert_same_bits(&case, &cpu, &cuda);
    }
    Ok(())
}

#[derive(Debug)]
struct DropoutCase {
    len: usize,
    mask: DropoutMask,
}

impl Case for DropoutCase {
    fn run<B: Ops>(&self, b: &B) -> Result<Outputs> {
        let x = upload(b, &[self.len], 1)?;
        let y = elementwise::dropout(x, Some(self.mask))?;
        // Backward is the same map on the gradient.
        let dy = upload(b, &[self.len], 2)?;
        let dx = elementwise::dropout(dy, Some(self.mask))?;
        Ok(vec![("y", y.to_vec()?), ("dx", dx.to_vec()?)])
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dropout_masks_match_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("dropout_masks_match_cpu")? else {
        return Ok(());
    };
    let mut cases = Vec::new();
    for len in [1, 1000, 3 * 1000 + 17] {
        for p in [0.0, 0.1, 0.5, 0.9] {
            for seed in [0, 12_345, u64::MAX - 1] {
                cases.push(DropoutCase {
                    len,
                    mask: DropoutMask::new(p, seed),
                });
            }
        }
    }
    // More elements than one pass of the grid (65 535 blocks of 256 threads): the grid-stride loop.
    cases.push(DropoutCase {
        len: 65_535 * 256 + 1001,
        mask: DropoutMask::new(0.1, 7),
    });
    for case in &cases {
        let (cpu, cuda) = compare(&gpu, case)?;
        for ((name, c), (_, g)) in cpu.iter().zip(&cuda) {
            for (i, (&c, &g)) in c.iter().zip(g).enumerate() {
                assert_eq!(
                    c == 0.0,
                    g == 0.0,
                    "{case:?}: {name}[{i}]: {c} on the CPU, {g} on the GPU"
                );
                assert!(
                    (c - g).abs() <= 1e-6 * c.abs(),
                    "{case:?}: {name}[{i}]: {c} on the CPU, {g} on the GPU"
                );
            }
        }
    }
    Ok(())
}
