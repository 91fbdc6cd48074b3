//! The bf16 CPU reference: tensors that carry bf16, rounding to nearest with ties to even, linear maps that
//! round their operands and accumulate in f32, and the calibration of the GPU's bf16 parity bounds
//! (`crate::common::BF16_*_BOUND`): each is held to at most a fifth of the f32-vs-bf16 noise floor measured here, and
//! shown to catch a value rounded at the wrong place.

use crate::common::{
    bf16_model_bound, bf16_model_configs, linear_run, model_run, random_f32, random_vec, rel_err,
    rel_err_f32, Outputs, BF16_OP_BOUND,
};
use hourglass::device::DType;
use hourglass::model::Precision;
use hourglass::ops::{layernorm, linear};
use hourglass::{Cpu, Result, Tensor};

fn cpu() -> Cpu<f32> {
    Cpu::new()
}

/// `values` rounded to bf16 and widened back, through a tensor.
fn round_trip(values: &[f32]) -> Result<Vec<f32>> {
    Tensor::from_slice(&cpu(), &[values.len()], values)?
        .to_bf16()?
        .to_vec()
}

#[test]
fn rounding_is_to_nearest_with_ties_to_even() -> Result<()> {
    let ulp = 2f32.powi(-7); // bf16's spacing in [1, 2)
    let cases = [
        (1.0 + ulp / 2.0, 1.0),                        // a tie: down to the even 1.0
        (1.0 + 1.5 * ulp, 1.0 + 2.0 * ulp),            // a tie: up to the even neighbour
        (1.0 + ulp / 2.0 + 2f32.powi(-20), 1.0 + ulp), // just past a tie: up
        (1.0 + ulp / 2.0 - 2f32.powi(-20), 1.0),       // just below: down
        (-(1.0 + 1.5 * ulp), -(1.0 + 2.0 * ulp)),      // symmetric in sign
        (f32::MAX, f32::INFINITY), // past the midpoint above bf16's largest finite value
        (f32::from_bits(1), 0.0),  // the smallest subnormal rounds to zero
        (f32::from_bits(0x0001_8000), f32::from_bits(0x0002_0000)), // a subnormal tie, up to even
    ];
    let (inputs, want): (Vec<f32>, Vec<f32>) = cases.into_iter().unzip();
    let got = round_trip(&inputs)?;
    for ((x, w), g) in inputs.iter().zip(&want).zip(&got) {
        assert_eq!(g.to_bits(), w.to_bits(), "bf16({x:e}) = {g:e}, want {w:e}");
    }
    assert!(round_trip(&[f32::NAN])?[0].is_nan(), "NaN stays NaN");
    // Rounding is idempotent: a bf16 value is its own rounding.
    assert_eq!(round_trip(&got)?, got);
    Ok(())
}

#[test]
fn a_tensor_carries_its_dtype() -> Result<()> {
    let x = Tensor::from_slice(&cpu(), &[2, 3], &random_f32(1, 6))?;
    let h = x.to_bf16()?;
    assert_eq!((x.dtype(), h.dtype()), (DType::F32, DType::Bf16));
    assert_eq!(h.widen()?.dtype(), DType::F32);
    assert_eq!(h.try_clone()?.to_vec()?, h.to_vec()?);
    assert_eq!(h.to_bf16()?.dtype(), DType::Bf16);
    assert_eq!(
        h.to_bf16()?.to_vec()?,
        h.to_vec()?,
        "a bf16 tensor rounds to itself"
    );
    assert_eq!(h.shape(), x.shape());
    // Relative rounding error of at most 2^-8 per element (8 significant bits, to nearest).
    for (r, v) in h.to_vec()?.iter().zip(x.to_vec()?) {
        assert!(((r - v) / v).abs() <= 2f32.powi(-8), "{v} -> {r}");
    }
    Ok(())
}

#[test]
fn ops_that_take_f32_name_a_bf16_input() -> Result<()> {
    let b = cpu();
    let x = Tensor::from_slice(&b, &[4, 8], &random_f32(1, 32))?.to_bf16()?;
    let ones = Tensor::from_slice(&b, &[8], &[1.0; 8])?;
    let Err(err) = layernorm::forward(&x, &ones, &ones) else {
        panic!("layernorm took a bf16 input")
    };
    let err = err.to_string();
    assert!(err.contains("bf16") && err.contains("[4, 8]"), "{err}");
    let err = x.add(&x).unwrap_err().to_string();
    assert!(err.contains("bf16"), "{err}");
    // A linear map takes both operands in bf16 or neither.
    let w = Tensor::from_slice(&b, &[3, 8], &random_f32(2, 24))?;
    let err = linear::forward(&x, &w, None).unwrap_err().to_string();
    assert!(
        err.contains("bf16") && err.contains("f32") && err.contains("[3, 8]"),
        "{err}"
    );
    Ok(())
}

fn linear_outputs(rows: usize, d_in: usize, d_out: usize, bf16: bool) -> Result<Outputs> {
    linear_run(&cpu(), rows, d_in, d_out, bf16)
}

/// Exact products of bf16 values summed in f64: what the bf16 linear map computes but for f32 sum order.
fn bf16(v: &[f32]) -> Vec<f64> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f64())
        .collect()
}

#[test]
fn bf16_linear_rounds_its_operands_and_the_output_gradient_and_sums_in_f32() -> Result<()> {
    let (rows, d_in, d_out) = (37, 50, 23);
    let got = linear_outputs(rows, d_in, d_out, true)?;
    let (x, w, bias) = (
        random_f32(1, rows * d_in),
        random_f32(2, d_out * d_in),
        random_f32(3, d_out),
    );
    let (dy, dw0, db0) = (
        random_f32(4, rows * d_out),
        random_f32(5, d_out * d_in),
        random_f32(6, d_out),
    );
    let (xr, wr, dyr) = (bf16(&x), bf16(&w), bf16(&dy));
    let mut y = vec![0.0; rows * d_out];
    let mut dx = vec![0.0; rows * d_in];
    let mut dw: Vec<f64> = dw0.iter().map(|&v| v as f64).collect();
    // The bias gradient sums the unrounded output gradient.
    let mut db: Vec<f64> = db0.iter().map(|&v| v as f64).collect();
    for r in 0..rows {
        for o in 0..d_out {
            let dot: f64 = (0..d_in).map(|i| xr[r * d_in + i] * wr[o * d_in + i]).sum();
            y[r * d_out + o] = dot + bias[o] as f64;
            let g = dyr[r * d_out + o];
            for i in 0..d_in {
                dx[r * d_in + i] += g * wr[o * d_in + i];
                dw[o * d_in + i] += g * xr[r * d_in + i];
            }
            db[o] += dy[r * d_out + o] as f64;
        }
    }
    for ((name, g), want) in got.iter().zip([y, dx, dw, db]) {
        let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        let e = rel_err(&g, &want);
        assert!(
            e < 1e-6,
            "{name}: {e:e} from the exact sums of the rounded operands"
        );
    }
    Ok(())
}

/// Relative errors of one set of outputs against another, by name.
fn errors(a: &Outputs, b: &Outputs) -> Vec<(&'static str, f64)> {
    a.iter()
        .zip(b)
        .map(|((name, x), (_, y))| (*name, rel_err_f32(x, y)))
        .collect()
}

#[test]
fn gpu_bounds_are_a_fifth_of_the_measured_noise_floor() -> Result<()> {
    // One linear map at a transformer's shapes.
    let (f32_run, bf16_run) = (
        linear_outputs(300, 256, 512, false)?,
        linear_outputs(300, 256, 512, true)?,
    );
    for (name, floor) in errors(&bf16_run, &f32_run) {
        if name == "db" {
            continue; // sums the unrounded gradient: no bf16 in it
        }
        println!("linear {name}: f32 vs bf16 {floor:.3e}, bound {BF16_OP_BOUND:e}");
        assert!(
            floor >= 5.0 * BF16_OP_BOUND,
            "linear {name}: floor {floor:e}"
        );
    }
    // A LayerNorm writing bf16 (for the GEMMs after it) against its f32 output.
    let x = Tensor::from_slice(&cpu(), &[300, 512], &random_f32(7, 300 * 512))?;
    let (g, b) = (
        Tensor::from_slice(&cpu(), &[512], &random_f32(8, 512))?,
        Tensor::from_slice(&cpu(), &[512], &random_f32(9, 512))?,
    );
    let (y32, _) = layernorm::forward(&x, &g, &b)?;
    let (y16, _) = layernorm::forward_bf16(&x, &g, &b)?;
    let floor = rel_err_f32(&y16.to_vec()?, &y32.to_vec()?);
    println!("layernorm y: f32 vs bf16 {floor:.3e}, bound {BF16_OP_BOUND:e}");
    assert!(floor >= 5.0 * BF16_OP_BOUND, "layernorm y: floor {floor:e}");
    // Whole models.
    for config in bf16_model_configs() {
        let (seq, batch) = (13, 3);
        let shape = [seq, batch, config.d_model];
        let n = seq * batch * config.d_model;
        let (x, gy) = (random_vec(11, n), random_vec(12, n));
        let run = |p| model_run(&cpu(), &config, p, &shape, &x, &gy);
        for (name, floor) in errors(&run(Precision::Bf16), &run(Precision::Element)) {
            let bound = bf16_model_bound(name);
            println!(
                "model {:?} {name}: f32 vs bf16 {floor:.3e}, bound {bound:e}",
                config.shortening
            );
            assert!(floor >= 5.0 * bound, "model {name}: floor {floor:e}");
            assert!(
                floor < 0.1,
                "model {name}: bf16 is {floor:e} from f32, more than rounding explains"
            );
        }
    }
    Ok(())
}

#[test]
fn the_linear_bound_catches_a_rounding_at_the_wrong_place() -> Result<()> {
    let (rows, d_in, d_out) = (300, 256, 512);
    let reference = linear_outputs(rows, d_in, d_out, true)?;
    let b = cpu();
    let t = |shape: &[usize], seed| {
        Tensor::from_slice(&b, shape, &random_f32(seed, shape.iter().product()))
    };
    let (x, w) = (
        t(&[rows, d_in], 1)?.to_bf16()?,
        t(&[d_out, d_in], 2)?.to_bf16()?,
    );
    let (x_wide, w_wide) = (x.widen()?, w.widen()?);
    // Backward that forgets to round the output gradient: the f32 op on the rounded operands.
    let dy = t(&[rows, d_out], 4)?;
    let (mut dw, mut db) = (t(&[d_out, d_in], 5)?, t(&[d_out], 6)?);
    let dx = linear::backward(&x_wide, &w_wide, &dy, &mut dw, Some(&mut db))?;
    let e = rel_err_f32(&dx.to_vec()?, &reference[1].1);
    assert!(e > BF16_OP_BOUND, "unrounded dy: dx is only {e:e} off");
    // A forward that also rounds its output to bf16.
    let bias = t(&[d_out], 3)?;
    let y = linear::forward(&x, &w, Some(&bias))?.to_bf16()?;
    let e = rel_err_f32(&y.to_vec()?, &reference[0].1);
    assert!(e > BF16_OP_BOUND, "rounded y is only {e:e} off");
    Ok(())
}

#[test]
fn a_bf16_model_run_is_deterministic() -> Result<()> {
    for config in bf16_model_configs() {
        let shape = [7, 2, config.d_model];
        let n = shape.iter().product();
        let (x, gy) = (random_vec(3, n), random_vec(4, n));
        let first = model_run(&cpu(), &config, Precision::Bf16, &shape, &x, &gy);
        let again = model_run(&cpu(), &config, Precision::Bf16, &shape, &x, &gy);
        assert_eq!(first, again, "a bf16 run is deterministic");
    }
    Ok(())
}

#[test]
fn training_in_bf16_reaches_the_f32_validation_loss_within_two_percent() -> Result<()> {
    use hourglass::train::data::{Corpus, Split};
    use hourglass::train::{Preset, TrainConfig, Trainer};
    use std::sync::atomic::AtomicBool;
    // Text with structure at several scales, enough that 150 steps are far from the unigram baseline.
    let text: String = (0..400)
        .map(|i| {
            format!(
                "<row id=\"{i}\">the {} sat on the {}.</row>\n",
                ["cat", "dog", "fox"][i % 3],
                ["mat", "log"][i % 2]
            )
        })
        .collect();
    let corpus = Corpus::from_bytes(text.into_bytes())?;
    let mut valid = Vec::new();
    for precision in [Precision::Element, Precision::Bf16] {
        let mut config = TrainConfig {
            seq_len: 48,
            batch: 8,
            steps: 150,
            warmup_steps: 15,
            eval_every: 150,
            precision: Some(precision),
            ..Preset::Cpu.config()
        };
        (
            config.model.d_model,
            config.model.d_ff,
            config.model.n_heads,
        ) = (64, 128, 4);
        let mut trainer = Trainer::new(&cpu(), config, &corpus)?;
        trainer.run(&corpus, None, &AtomicBool::new(false), &mut ())?;
        valid.push(trainer.evaluate(&corpus, Split::Valid, 0, &mut |_, _| {})?);
    }
    let (f32_bits, bf16_bits) = (valid[0], valid[1]);
    println!("validation: f32 {f32_bits:.4} bpc, bf16 {bf16_bits:.4} bpc");
    assert!(f32_bits < 2.0, "the f32 run did not learn: {f32_bits} bpc");
    assert!(
        (bf16_bits - f32_bits).abs() <= 0.02 * f32_bits,
        "bf16 {bf16_bits} vs f32 {f32_bits} bits per character"
    );
    Ok(())
}

#[test]
fn the_optimiser_keeps_each_bf16_weight_copy_current() -> Result<()> {
    use hourglass::model::lm::HourglassLM;
    use hourglass::train::AdamW;
    use hourglass::{HourGlassConfig, Parameters};
    let config = HourGlassConfig::reference(2, 16, 0.0, 32, &[2]);
    let (seq, batch) = (9, 2);
    let ids: Vec<u32> = (0..seq * batch).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..seq * batch).map(|i| (i * 91 % 256) as u32).collect();
    let mut lm = HourglassLM::new(&cpu(), &config, 5)?;
    lm.set_precision(Precision::Bf16);
    lm.loss(&ids, &targets, seq, batch, true)?;
    AdamW::new(0.9, 0.98, 1e-8, 0.1).step(&mut lm, 1e-2)?;

    // Every weight a GEMM took (each matrix but the embedding, which a gather reads) has a copy that the
    // update rewrote: the new value, rounded.
    let mut checked = 0;
    lm.visit_mut("", &mut |name, p| {
        let copy = p.take_bf16_copy();
        let multiplied = p.value.shape().len() == 2 && name != "embedding.weight";
        assert_eq!(copy.is_some(), multiplied, "{name}: bf16 copy");
        if let Some(copy) = copy {
            let rounded = p.value.to_bf16().and_then(|r| r.to_vec()).unwrap();
            assert_eq!(copy.to_vec().unwrap(), rounded, "{name}: a stale copy");
            p.restore_bf16_copy(copy);
            checked += 1;
        }
    });
    assert!(checked > 0);

    // The next forward uses the copies: the same loss as a model given the same values and no copies.
    let mut fresh = HourglassLM::new(&cpu(), &config, 6)?;
    fresh.set_precision(Precision::Bf16);
    let mut stepped = Vec::new();
    lm.visit("", &mut |_, p| stepped.push(p.value.share()));
    let mut stepped = stepped.into_iter();
    fresh.visit_mut("", &mut |_, p| p.value = stepped.next().unwrap());
    let with_copies = lm.loss(&ids, &targets, seq, batch, false)?;
    assert_eq!(with_copies, fresh.loss(&ids, &targets, seq, batch, false)?);

    // A value changed any other way leaves its copy stale, and a stale copy is never used.
    let mut stale = 0;
    lm.visit_mut("", &mut |_, p| {
        let step = p.grad.share();
        p.value.add_assign(&step).unwrap();
        stale += p.take_bf16_copy().is_some() as usize;
    });
    assert_eq!(stale, 0, "copies of changed values were still current");
    Ok(())
}

#[test]
fn a_tensor_version_changes_with_every_write_and_only_then() -> Result<()> {
    let mut a = Tensor::from_slice(&cpu(), &[2], &[1.0, 2.0])?;
    let v = a.version();
    assert_eq!(a.share().version(), v, "a share holds the same values");
    assert_eq!(a.try_clone()?.version(), v, "so does a copy");
    a.fill_zero()?;
    assert_ne!(a.version(), v, "a write takes a new version");
    let b = Tensor::from_slice(&cpu(), &[2], &[1.0, 2.0])?;
    assert_ne!(b.version(), a.version(), "each new tensor has its own");
    Ok(())
}
