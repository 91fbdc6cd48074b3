//! Rotary position embeddings on CUDA against the CPU reference (`Cpu<f32>`): the op's forward and backward on
//! ragged random shapes (batch 1, 2 and 3, odd head counts, more positions than a grid's y dimension), relative
//! error below 1e-5, and a second GPU run bit-identical. Whole models with `"positions": "rotary"` are in
//! `gpu_model.rs`.
//!
//! They need a GPU, so they are ignored by default: `cargo test --test suite -- gpu::rotary:: --include-ignored`.
//! Without a device each test prints "skipped"; with `HOURGLASS_REQUIRE_GPU=1` a missing device fails it.

use crate::common::{assert_repeatable, bits, random_f32, rel_err_f32, Outputs};
use hourglass::device::cuda::device_or_skip;
use hourglass::ops::rotary::{self, RotaryOps};
use hourglass::{BackendCore, Cpu, Result, Tensor};

/// Largest accepted `||gpu - cpu|| / ||cpu||` for the op.
const OP_TOL: f64 = 1e-5;

/// Forward of `x` and backward of `dy` for one shape, on one backend.
fn run_op<B: BackendCore<Elem = f32> + RotaryOps>(
    b: &B,
    shape: [usize; 3],
    heads: usize,
) -> Result<Outputs> {
    let n = shape.iter().product();
    let seed = (shape[0] * 7 + shape[1] * 3 + shape[2]) as u64;
    let x = Tensor::from_slice(b, &shape, &random_f32(seed, n))?;
    let dy = Tensor::from_slice(b, &shape, &random_f32(seed + 1, n))?;
    Ok(vec![
        ("y", rotary::forward(&x, heads)?.to_vec()?),
        ("dx", rotary::backward(&dy, heads)?.to_vec()?),
    ])
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rotary_op_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("rotary_op_matches_cpu")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    let mut identical = 0usize;
    let mut total = 0usize;
    for (seq, heads, d_head) in [
        (1, 1, 2),
        (7, 3, 10),
        (29, 4, 64),
        (100, 2, 128),
        (513, 5, 6),
        (2048, 8, 64),
        // More positions than the grid's y dimension (65 535), and angles up to ~7e4 radians.
        (70_001, 1, 8),
    ] {
        for batch in [1, 2, 3] {
            let shape = [seq, batch, heads * d_head];
            let case = format!("rotary {shape:?} heads {heads}");
            let c = run_op(&cpu, shape, heads)?;
            let g = run_op(&gpu, shape, heads)?;
            let g2 = run_op(&gpu, shape, heads)?;
            for ((name, c), (_, g)) in c.iter().zip(&g) {
                let e = rel_err_f32(g, c);
                assert!(e < OP_TOL, "{case}: {name}: relative error {e:e}");
                identical += bits(c)
                    .iter()
                    .zip(bits(g))
                    .filter(|(a, b)| **a == *b)
                    .count();
                total += c.len();
            }
            assert_repeatable(&case, &g, &g2);
        }
    }
    // Angles, cosines and sines in double on both sides, products without FMA: nearly every element should
    // have the CPU's exact bits (a rare difference is a last-ulp difference of the two libraries' sin/cos).
    println!("rotary: {identical} of {total} elements bit-identical to the CPU");
    assert!(
        identical as f64 >= 0.99 * total as f64,
        "only {identical} of {total} elements match the CPU's bits"
    );
    Ok(())
}
