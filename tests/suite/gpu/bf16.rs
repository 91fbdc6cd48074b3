//! bf16 on CUDA against the bf16 CPU reference: rounding and widening bit for bit (ties, subnormals,
//! overflow, every length modulo the 8-element vectors); linear maps on the tensor cores and whole models in
//! bf16 within the bounds that `tests/suite/bf16.rs` calibrates (`crate::common::BF16_*`), repeatable bit for bit.
//!
//! They need a GPU, so they are ignored by default: `cargo test --test suite -- gpu::bf16:: --include-ignored`. Without
//! a device each test prints "skipped"; with `HOURGLASS_REQUIRE_GPU=1` a missing device fails it instead.

use crate::common::{
    assert_repeatable, bf16_model_bound, bf16_model_configs, bits, linear_run, model_run,
    random_f32, random_vec, rel_err_f32, Outputs, BF16_OP_BOUND, COMMON_WIDTHS,
};
use hourglass::device::cuda::{device_or_skip, CudaOptions, GemmPath};
use hourglass::model::Precision;
use hourglass::ops::layernorm;
use hourglass::rng::DropoutMask;
use hourglass::Cuda;
use hourglass::{Backend, Cpu, Result, Tensor};

#[test]
#[ignore = "needs a CUDA GPU"]
fn rounding_and_widening_match_the_cpu_bit_for_bit() -> Result<()> {
    let Some(gpu) = device_or_skip("rounding_and_widening_match_the_cpu_bit_for_bit")? else {
        return Ok(());
    };
    let cpu = Cpu::<f32>::new();
    let ulp = 2f32.powi(-7);
    let special = [
        1.0 + ulp / 2.0,
        1.0 + 1.5 * ulp,
        -(1.0 + 1.5 * ulp),
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::from_bits(1),
        f32::from_bits(0x0001_8000),
        -0.0,
        1e-40,
    ];
    for len in [1, 7, 8, 9, 10, 4096 + 3, 1_000_003] {
        let mut data = random_f32(len as u64, len);
        for (d, s) in data.iter_mut().zip(special) {
            *d = s;
        }
        let on_cpu = Tensor::from_slice(&cpu, &[len], &data)?.to_bf16()?;
        let on_gpu = Tensor::from_slice(&gpu, &[len], &data)?.to_bf16()?;
        let (c, g) = (on_cpu.to_vec()?, on_gpu.to_vec()?);
        assert!(bits(&c) == bits(&g), "length {len}: rounding differs");
        // Widening back on the GPU gives the CPU's values too (to_vec widens on the device).
        let wide = Tensor::from_slice(&gpu, &[len], &c)?
            .to_bf16()?
            .widen()?
            .to_vec()?;
        assert!(bits(&wide) == bits(&c), "length {len}: widening differs");
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_linear_matches_the_cpu_reference() -> Result<()> {
    let Some(gpu) = device_or_skip("bf16_linear_matches_the_cpu_reference")? else {
        return Ok(());
    };
    for (rows, d_in, d_out) in [
        (1, 64, 31),
        (7, 37, 53),
        (3 * 333, 512, 96),
        (2048, 512, 2048),
        (5000, 48, 256),
    ] {
        let case = format!("linear {rows}x{d_in}->{d_out}");
        let cpu = linear_run(&Cpu::<f32>::new(), rows, d_in, d_out, true)?;
        let first = linear_run(&gpu, rows, d_in, d_out, true)?;
        let second = linear_run(&gpu, rows, d_in, d_out, true)?;
        for ((name, c), (_, g)) in cpu.iter().zip(&first) {
            let e = rel_err_f32(g, c);
            println!("{case} {name}: {e:.2e} (bound {BF16_OP_BOUND:e})");
            assert!(
                e < BF16_OP_BOUND,
                "{case}: {name}: {e:e} from the bf16 CPU reference"
            );
        }
        assert_repeatable(&case, &first, &second);
    }
    Ok(())
}

/// Every f32 GPU op's bound against `Cpu<f32>` (as in tests/suite/gpu/ops.rs).
const F32_BOUND: f64 = 1e-5;

#[test]
#[ignore = "needs a CUDA GPU"]
fn both_gemm_paths_match_the_cpu_in_f32_and_bf16() -> Result<()> {
    if device_or_skip("both_gemm_paths_match_the_cpu_in_f32_and_bf16")?.is_none() {
        return Ok(());
    }
    for path in [GemmPath::Lt, GemmPath::GemmEx] {
        let options = CudaOptions {
            gemm: path,
            ..CudaOptions::from_env()?
        };
        let gpu = Cuda::with_options(0, options)?;
        for (rows, d_in, d_out) in [
            (1, 64, 31),
            (7, 37, 53),
            (2048, 512, 2048),
            (683, 512, 1536),
        ] {
            for bf16 in [false, true] {
                let case = format!("{path:?} linear {rows}x{d_in}->{d_out} bf16 {bf16}");
                let bound = if bf16 { BF16_OP_BOUND } else { F32_BOUND };
                let cpu = linear_run(&Cpu::<f32>::new(), rows, d_in, d_out, bf16)?;
                let on_gpu = linear_run(&gpu, rows, d_in, d_out, bf16)?;
                for ((name, c), (_, g)) in cpu.iter().zip(&on_gpu) {
                    let e = rel_err_f32(g, c);
                    println!("{case} {name}: {e:.2e} (bound {bound:e})");
                    assert!(e < bound, "{case}: {name}: {e:e} from the CPU");
                }
            }
        }
        println!(
            "{path:?}: shapes run through cublasGemmEx instead: {:?}",
            gpu.gemm_fallbacks()
        );
    }
    Ok(())
}

/// The two LayerNorms that write bf16 (alone, and fused with the residual add and dropout before it) on
/// `backend`, from fixed seeds, and their backwards (f32, from the statistics the bf16 forwards saved; the
/// fused one with the residual gradient): outputs whose name ends in "bwd" are f32 values.
fn layernorms_in_bf16<B: Backend<Elem = f32>>(b: &B, rows: usize, d: usize) -> Result<Outputs> {
    let t = |shape: &[usize], seed| {
        Tensor::from_slice(b, shape, &random_f32(seed, shape.iter().product()))
    };
    let (x, branch, g, beta) = (
        t(&[rows, d], 1)?,
        t(&[rows, d], 2)?,
        t(&[d], 3)?,
        t(&[d], 4)?,
    );
    let (dy, dres) = (t(&[rows, d], 5)?, t(&[rows, d], 6)?);
    let mask = Some(DropoutMask::new(0.2, 3));
    let (y, saved) = layernorm::forward_bf16(&x, &g, &beta)?;
    let (s, y_fused, saved_fused) =
        layernorm::forward_residual(&x, &branch, mask, &g, &beta, true)?;
    // Gradients accumulate, so start them from nonzero values.
    let (mut dg, mut db) = (t(&[d], 7)?, t(&[d], 8)?);
    let dx = layernorm::backward(&x, &g, &saved, &dy, &mut dg, &mut db)?;
    let (mut dg_fused, mut db_fused) = (t(&[d], 9)?, t(&[d], 10)?);
    let ds = layernorm::backward_residual(
        &s,
        &g,
        &saved_fused,
        &dy,
        Some(&dres),
        &mut dg_fused,
        &mut db_fused,
    )?;
    Ok(vec![
        ("layernorm_fwd_bf16", y.to_vec()?),
        ("residual_layernorm_fwd_bf16", y_fused.to_vec()?),
        ("dx: layernorm_bwd", dx.to_vec()?),
        ("dgamma: layernorm_bwd", dg.to_vec()?),
        ("dbeta: layernorm_bwd", db.to_vec()?),
        ("ds: residual layernorm_bwd", ds.to_vec()?),
        ("dgamma: residual layernorm_bwd", dg_fused.to_vec()?),
        ("dbeta: residual layernorm_bwd", db_fused.to_vec()?),
    ])
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_with_bf16_output_matches_the_cpu_reference() -> Result<()> {
    let Some(gpu) = device_or_skip("layernorm_with_bf16_output_matches_the_cpu_reference")? else {
        return Ok(());
    };
    // Ragged shapes, then every common model width with 9 rows (forward and the one-kernel backward, or the
    // wide path from 6144, whose shared memory must fit beside the kernel's static memory at each).
    let common = COMMON_WIDTHS.map(|d| (9, d));
    for (rows, d) in [(1, 5), (39, 64), (14, 100), (5464, 512)]
        .into_iter()
        .chain(common)
    {
        let cpu = layernorms_in_bf16(&Cpu::<f32>::new(), rows, d)?;
        let first = layernorms_in_bf16(&gpu, rows, d)?;
        for ((name, c), (_, g)) in cpu.iter().zip(&first) {
            let e = rel_err_f32(g, c);
            let bound = if name.ends_with("bwd") {
                F32_BOUND
            } else {
                BF16_OP_BOUND
            };
            println!("{name} {rows}x{d}: {e:.2e} (bound {bound:e})");
            assert!(
                e < bound,
                "{name} {rows}x{d}: {e:e} from the CPU reference (bound {bound:e})"
            );
        }
        assert_repeatable(
            "bf16 layernorms",
            &first,
            &layernorms_in_bf16(&gpu, rows, d)?,
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_models_match_the_cpu_reference() -> Result<()> {
    let Some(gpu) = device_or_skip("bf16_models_match_the_cpu_reference")? else {
        return Ok(());
    };
    for config in bf16_model_configs() {
        for (seq, batch) in [(13, 3), (25, 1)] {
            let shape = [seq, batch, config.d_model];
            let n = shape.iter().product();
            let (x, gy) = (random_vec(11, n), random_vec(12, n));
            let case = format!("{:?} seq {seq} batch {batch}", config.shortening);
            let cpu = model_run(
                &Cpu::<f32>::new(),
                &config,
                Precision::Bf16,
                &shape,
                &x,
                &gy,
            );
            let first = model_run(&gpu, &config, Precision::Bf16, &shape, &x, &gy);
            let second = model_run(&gpu, &config, Precision::Bf16, &shape, &x, &gy);
            for ((name, c), (_, g)) in cpu.iter().zip(&first) {
                let (e, bound) = (rel_err_f32(g, c), bf16_model_bound(name));
                println!("{case} {name}: {e:.2e} (bound {bound:e})");
                assert!(
                    e < bound,
                    "{case}: {name}: {e:e} from the bf16 CPU reference"
                );
            }
            assert_repeatable(&case, &first, &second);
        }
    }
    Ok(())
}
