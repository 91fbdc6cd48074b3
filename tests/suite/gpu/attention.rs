//! The fused CUDA attention (`kernels/attention.cu`) against the CPU reference (`Cpu<f32>`): output, logsumexp
//! and dq, dk, dv on fresh random inputs, for causal and full masks, ragged lengths (1, 7, 33, 100, 257 and
//! 4096; 15, 47, 63 and 127, one short of whole tiles), query and key lengths that differ, head dimensions 8,
//! 24, 64, 128 and odd ones, batch 1 and 3, with and without dropout on the probabilities; the
//! attention-resampling masks (funnel, window, up-causal, up-window) on the shortened/full lengths they are
//! used with, and with rows that see no key; relative error below 1e-5, and a second GPU run must give the
//! same bits (the kernels use no atomics).
//!
//! The bf16 tensor-core kernels (`kernels/attention_mma.cu`) against the bf16 CPU reference by
//! `crate::common::bf16_attn_agreement`, on every mask, every head-size bucket and ragged lengths, among them lengths
//! one short of whole 64-key tiles and 16-row warps (15, 47, 63, 127), where an off-by-one in a tile's mask
//! drops or adds a key that carries weight. The measure: every element within `BF16_ATTN_MAX_UNITS` bf16
//! units of its row's scale and almost every one (`BF16_ATTN_WITHIN_ONE_UNIT`) within one; after setting aside
//! the rows with the largest errors, at most an eighth of them or 4 (`bf16_attn_flip_rows`), the L2-relative
//! error of the rest below `BF16_ATTN_BOUND`. The GPU and the reference round the same values to bf16 but add in
//! other orders, so a value that lies near a rounding boundary sometimes rounds the other way on one side: one
//! term of one row's sums moves by one bf16 unit, a few rows by a unit or less, which a plain L2 bound of 2e-5
//! over the whole output does not allow (an emulated run failed 43 of 332 comparisons on such rows); a bug
//! moves most rows, or a few by many units. `tests/suite/attention_bf16.rs` shows both sides of that on the CPU.
//!
//! They need a GPU, so they are ignored by default: `cargo test --test suite -- gpu::attention:: --include-ignored`.
//! Without a device each test prints "skipped"; with `HOURGLASS_REQUIRE_GPU=1` a missing device fails it. On
//! the emulated device (CI) each test runs a deterministic subset of its cases (`crate::common::left_to_a_real_gpu`:
//! every small one, one in six of the medium ones, none of the largest, each skipped case named on stdout).

use crate::common::attention::AttnCase;
use crate::common::{assert_repeatable, bf16_attn_agreement, left_to_a_real_gpu, rel_err_f32};
use hourglass::device::cuda::{device_or_skip, AttnVersion, Cuda, CudaOptions};
use hourglass::ops::attention::AttnMask;
use hourglass::rng::DropoutMask;
use hourglass::{Cpu, Result};

/// Largest accepted `||gpu - cpu|| / ||cpu||`, for every output and gradient.
const TOL: f64 = 1e-5;

/// The dropout used wherever a case has one.
const DROPOUT: DropoutMask = DropoutMask::new(0.1, 0x5EED_A77E);

/// Runs `case` on the CPU and twice on the GPU: relative error against the CPU below `TOL` for every output,
/// and identical bits from the two GPU runs.
fn compare(gpu: &Cuda, case: &AttnCase) -> Result<()> {
    if left_to_a_real_gpu(gpu, case.work(), case) {
        return Ok(());
    }
    let cpu = case.run(&Cpu::<f32>::new())?;
    let first = case.run(gpu)?;
    let second = case.run(gpu)?;
    for ((name, c), (_, g)) in cpu.iter().zip(&first) {
        assert_eq!(c.len(), g.len(), "{case:?}: {name}: lengths differ");
        if case.at_most_one_key_per_row() && (name.ends_with("dq") || name.ends_with("dk")) {
            // One key per row (one key in all, or an up-window mask): P = 1 and dS = P ∘ (dP − dO·O) = 0
            // exactly, so both sides hold only rounding noise and a relative error means nothing; both must be
            // tiny instead.
            let worst = c.iter().chain(g).fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                worst < 1e-5,
                "{case:?}: {name} should vanish with one key, largest magnitude {worst:e}"
            );
        } else {
            let e = rel_err_f32(g, c);
            assert!(
                e < TOL,
                "{case:?}: {name}: relative error {e:e} against the CPU"
            );
        }
    }
    assert_repeatable(&format!("{case:?}"), &first, &second);
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn causal_self_attention_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("causal_self_attention_matches_cpu")? else {
        return Ok(());
    };
    for len in [1, 7, 33, 100, 257] {
        for d_head in [8, 24, 64, 128] {
            for batch in [1, 3] {
                for dropout in [None, Some(DROPOUT)] {
                    compare(
                        &gpu,
                        &AttnCase {
                            batch,
                            heads: 2,
                            q_len: len,
                            kv_len: len,
                            d_head,
                            mask: AttnMask::Causal,
                            dropout,
                        },
                    )?;
                }
            }
        }
    }
    // One short of whole 16- and 64-row tiles, where an off-by-one in a tile's mask drops or adds a key.
    for len in [15, 47, 63, 127] {
        for d_head in [24, 64, 128] {
            for (batch, dropout) in [(1, None), (3, Some(DROPOUT))] {
                compare(
                    &gpu,
                    &AttnCase {
                        batch,
                        heads: 2,
                        q_len: len,
                        kv_len: len,
                        d_head,
                        mask: AttnMask::Causal,
                        dropout,
                    },
                )?;
            }
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn full_attention_with_other_key_lengths_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("full_attention_with_other_key_lengths_matches_cpu")? else {
        return Ok(());
    };
    for (q_len, kv_len) in [
        (1, 7),
        (7, 1),
        (33, 100),
        (100, 33),
        (257, 64),
        (64, 257),
        (100, 100),
        (15, 47),
        (127, 63),
    ] {
        for d_head in [8, 24, 64, 128] {
            for batch in [1, 3] {
                for dropout in [None, Some(DROPOUT)] {
                    compare(
                        &gpu,
                        &AttnCase {
                            batch,
                            heads: 2,
                            q_len,
                            kv_len,
                            d_head,
                            mask: AttnMask::Full,
                            dropout,
                        },
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The causal mask with query and key lengths that differ (query i sees keys 0..=i, as `AttnMask::key_range`
/// says), more heads, and head dimensions off the usual sizes (not multiples of 4 or 32, bucket edges).
#[test]
#[ignore = "needs a CUDA GPU"]
fn odd_shapes_match_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("odd_shapes_match_cpu")? else {
        return Ok(());
    };
    for (q_len, kv_len) in [(33, 100), (100, 33), (65, 65)] {
        for d_head in [1, 7, 32, 33, 40, 65, 100] {
            for mask in [AttnMask::Causal, AttnMask::Full] {
                compare(
                    &gpu,
                    &AttnCase {
                        batch: 2,
                        heads: 3,
                        q_len,
                        kv_len,
                        d_head,
                        mask,
                        dropout: Some(DROPOUT),
                    },
                )?;
            }
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn long_sequences_match_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("long_sequences_match_cpu")? else {
        return Ok(());
    };
    for (mask, dropout) in [
        (AttnMask::Causal, None),
        (AttnMask::Causal, Some(DROPOUT)),
        (AttnMask::Full, Some(DROPOUT)),
    ] {
        compare(
            &gpu,
            &AttnCase {
                batch: 1,
                heads: 2,
                q_len: 4096,
                kv_len: 4096,
                d_head: 64,
                mask,
                dropout,
            },
        )?;
    }
    // Ragged and longer than a few tiles in both directions, with the largest head dimension.
    compare(
        &gpu,
        &AttnCase {
            batch: 1,
            heads: 1,
            q_len: 2049,
            kv_len: 1500,
            d_head: 128,
            mask: AttnMask::Full,
            dropout: Some(DROPOUT),
        },
    )?;
    Ok(())
}

/// Which way an attention-resampling mask maps lengths: shortening runs `ceil(T/k)` queries over `T` keys,
/// upsampling `T` queries over `ceil(T/k)` keys (`docs/components.md`).
#[derive(Clone, Copy, Debug)]
enum Resampling {
    Shorten,
    Upsample,
}

impl Resampling {
    /// `(q_len, kv_len)` at full length `len` and factor `k`.
    fn lengths(self, len: usize, k: usize) -> (usize, usize) {
        match self {
            Resampling::Shorten => (len.div_ceil(k), len),
            Resampling::Upsample => (len, len.div_ceil(k)),
        }
    }
}

/// Head dimensions for the resampling masks: 8 and 64 (the 32 and 64 kernel buckets), and 128 (the third
/// bucket, other tile sizes) where dq and dk carry signal. Where every row sees one key (up-window), dq and dk
/// are pure rounding noise held to the absolute one-key bound in `compare`, and at d_head 128 that noise
/// alone reaches 1e-5 (largest |dk| on `Cpu<f32>`: 9.6e-6 at d_head 128, 5.8e-6 at 64, 2.2e-6 at 8), so those
/// cases stop at 64.
fn resampling_head_dims(mask: AttnMask) -> &'static [usize] {
    match mask {
        AttnMask::UpWindow(_) => &[8, 64],
        _ => &[8, 64, 128],
    }
}

/// One resampling mask on the shapes it is used with: ragged full lengths, factors 2, 3 and 4, the head
/// dimensions of `resampling_head_dims`, batch 1 and 3, with and without dropout. At these lengths every query
/// row sees at least one key (row i's window starts at i·k < T, or at key i/k < ceil(T/k)), so there is no
/// empty row here; `rows_and_keys_outside_the_masks_match_cpu` has those.
fn resampling_mask_matches_cpu(
    gpu: &Cuda,
    mask: fn(usize) -> AttnMask,
    direction: Resampling,
) -> Result<()> {
    for len in [7, 33, 257, 1000] {
        for factor in [2, 3, 4] {
            let (q_len, kv_len) = direction.lengths(len, factor);
            for &d_head in resampling_head_dims(mask(factor)) {
                for batch in [1, 3] {
                    for dropout in [None, Some(DROPOUT)] {
                        let case = AttnCase {
                            batch,
                            heads: 2,
                            q_len,
                            kv_len,
                            d_head,
                            mask: mask(factor),
                            dropout,
                        };
                        assert!(
                            (0..q_len).all(|i| {
                                let (lo, hi) = case.mask.key_range(i, kv_len);
                                lo < hi
                            }),
                            "{case:?}: a query row sees no key"
                        );
                        compare(gpu, &case)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Funnel(k): shortened query i sees keys `[0, (i+1)·k)` (attention shortening).
#[test]
#[ignore = "needs a CUDA GPU"]
fn funnel_mask_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("funnel_mask_matches_cpu")? else {
        return Ok(());
    };
    resampling_mask_matches_cpu(&gpu, AttnMask::Funnel, Resampling::Shorten)
}

/// Window(k): shortened query i sees only its own window, keys `[i·k, (i+1)·k)`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn window_mask_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("window_mask_matches_cpu")? else {
        return Ok(());
    };
    resampling_mask_matches_cpu(&gpu, AttnMask::Window, Resampling::Shorten)
}

/// UpCausal(k): full-length query i sees shortened keys `[0, i/k + 1)` (attention upsampling).
#[test]
#[ignore = "needs a CUDA GPU"]
fn up_causal_mask_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("up_causal_mask_matches_cpu")? else {
        return Ok(());
    };
    resampling_mask_matches_cpu(&gpu, AttnMask::UpCausal, Resampling::Upsample)
}

/// UpWindow(k): full-length query i sees only shortened key `i/k`. Every row has one key, so dq and dk are
/// rounding noise on both sides and are held to the one-key bound in `compare`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn up_window_mask_matches_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("up_window_mask_matches_cpu")? else {
        return Ok(());
    };
    resampling_mask_matches_cpu(&gpu, AttnMask::UpWindow, Resampling::Upsample)
}

/// Lengths other than the resampling shapes, which the op accepts: query rows whose window lies past the last
/// key see no key at all (the CPU defines their output, logsumexp and dq as 0), and keys past every query's
/// range get dk = dv = 0. Within a kernel tile, such rows and keys sit next to ones that do see something.
#[test]
#[ignore = "needs a CUDA GPU"]
fn rows_and_keys_outside_the_masks_match_cpu() -> Result<()> {
    let Some(gpu) = device_or_skip("rows_and_keys_outside_the_masks_match_cpu")? else {
        return Ok(());
    };
    for len in [7usize, 33, 257] {
        for factor in [2, 3, 4] {
            let short = len.div_ceil(factor);
            // (mask, q_len, kv_len, whether some row sees no key, whether some key is seen by no row)
            let shapes = [
                // Five more windows than there are keys for: the last rows see nothing.
                (AttnMask::Window(factor), short + 5, len, true, false),
                // One window fewer than the keys fill: the last keys are seen by nobody.
                (AttnMask::Window(factor), short - 1, len, false, true),
                (AttnMask::Funnel(factor), short - 1, len, false, true),
                // One shortened key too few: the last k (or fewer) full-length rows see nothing.
                (AttnMask::UpWindow(factor), len, short - 1, true, false),
                // Shortened keys past the last full-length row's window.
                (AttnMask::UpWindow(factor), len, short + 3, false, true),
                (AttnMask::UpCausal(factor), len, short + 3, false, true),
            ];
            for (mask, q_len, kv_len, empty_row, unseen_key) in shapes {
                let ranges: Vec<(usize, usize)> =
                    (0..q_len).map(|i| mask.key_range(i, kv_len)).collect();
                assert_eq!(
                    ranges.iter().any(|&(lo, hi)| lo >= hi),
                    empty_row,
                    "{mask:?} q_len {q_len} kv_len {kv_len}: empty rows"
                );
                assert_eq!(
                    (0..kv_len).any(|j| !ranges.iter().any(|&(lo, hi)| lo <= j && j < hi)),
                    unseen_key,
                    "{mask:?} q_len {q_len} kv_len {kv_len}: unseen keys"
                );
                for (&d_head, batch) in resampling_head_dims(mask).iter().zip([3, 1, 3]) {
                    for dropout in [None, Some(DROPOUT)] {
                        compare(
                            &gpu,
                            &AttnCase {
                                batch,
                                heads: 2,
                                q_len,
                                kv_len,
                                d_head,
                                mask,
                                dropout,
                            },
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Sizes the kernels do not take are errors, not panics or garbage.
#[test]
#[ignore = "needs a CUDA GPU"]
fn head_dimension_over_128_is_an_error() -> Result<()> {
    let Some(gpu) = device_or_skip("head_dimension_over_128_is_an_error")? else {
        return Ok(());
    };
    let case = AttnCase {
        batch: 1,
        heads: 1,
        q_len: 4,
        kv_len: 4,
        d_head: 129,
        mask: AttnMask::Causal,
        dropout: None,
    };
    assert!(case.run(&gpu).is_err());
    Ok(())
}

/// Runs `case` in bf16 on the CPU reference and twice on the GPU's tensor-core kernels
/// (`kernels/attention_mma.cu`): every output passes `bf16_attn_agreement` against the reference (rows of one
/// head's vector; the log-sum-exp value by value), identical bits on the rerun. Where every row sees one key,
/// dq and dk are cancellation noise on both sides (dS = P ∘ (dP − D) with P = 1), which the two round
/// differently: those two are not compared there.
fn compare_bf16(gpu: &Cuda, case: &AttnCase) -> Result<()> {
    if left_to_a_real_gpu(gpu, case.work(), case) {
        return Ok(());
    }
    let cpu = case.run_bf16(&Cpu::<f32>::new())?;
    let first = case.run_bf16(gpu)?;
    let second = case.run_bf16(gpu)?;
    for ((name, c), (_, g)) in cpu.iter().zip(&first) {
        if case.at_most_one_key_per_row() && (name.ends_with("dq") || name.ends_with("dk")) {
            continue;
        }
        let row_len = if name.ends_with("lse") {
            1
        } else {
            case.d_head
        };
        let agreement = bf16_attn_agreement(g, c, row_len);
        println!("bf16 {case:?} {name}: {agreement}");
        if let Some(failure) = agreement.failure() {
            panic!("bf16 {case:?}: {name}: {failure} against the bf16 CPU reference ({agreement})");
        }
    }
    assert_repeatable(&format!("bf16 {case:?}"), &first, &second);
    Ok(())
}

/// The GPU with the bf16 attention forward `version` (the other options as the environment sets them).
fn gpu_with(version: AttnVersion) -> Result<Cuda> {
    let options = CudaOptions {
        attention: version,
        ..CudaOptions::from_env()?
    };
    Cuda::with_options(0, options)
}

/// Causal self-attention at lengths around the 16-row warps, the 64-key tiles and the 64-row blocks, in every
/// head-size bucket (8, 20 and 24 pad to 32; 72 to 128; 20 is not whole 16-byte chunks, so the tuned forward
/// leaves it to the simple one, as it does d 72 and 128); lengths one short of whole warps and tiles (16k − 1,
/// 64k − 1), where the last key of the last tile is a row's own and carries weight, in the three buckets; then
/// every other mask on the lengths the resamplers use it with, and a full cross-attention of 64k − 1 keys.
fn bf16_cases() -> Vec<AttnCase> {
    let mut cases = Vec::new();
    let heads = [8, 20, 24, 32, 64, 72, 128];
    let lengths = [1, 7, 16, 33, 64, 65, 257].map(|len| (len, &heads[..]));
    let one_short = [15, 47, 63, 127].map(|len| (len, &[24, 64, 128][..]));
    for (len, d_heads) in lengths.into_iter().chain(one_short) {
        for &d_head in d_heads {
            for (batch, dropout) in [(1, None), (3, Some(DROPOUT))] {
                cases.push(AttnCase {
                    batch,
                    heads: 2,
                    q_len: len,
                    kv_len: len,
                    d_head,
                    mask: AttnMask::Causal,
                    dropout,
                });
            }
        }
    }
    for (q_len, kv_len, mask) in [
        (37, 100, AttnMask::Full),
        (47, 127, AttnMask::Full),
        (34, 100, AttnMask::Funnel(3)),
        (34, 100, AttnMask::Window(3)),
        (100, 34, AttnMask::UpCausal(3)),
        (100, 34, AttnMask::UpWindow(3)),
        (683, 2048, AttnMask::Funnel(3)),
    ] {
        for dropout in [None, Some(DROPOUT)] {
            cases.push(AttnCase {
                batch: 2,
                heads: 3,
                q_len,
                kv_len,
                d_head: 64,
                mask,
                dropout,
            });
        }
    }
    cases
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_tensor_core_attention_matches_the_bf16_reference() -> Result<()> {
    if device_or_skip("bf16_tensor_core_attention_matches_the_bf16_reference")?.is_none() {
        return Ok(());
    }
    // The simple version first: a failure in the tuned one alone then points at its shared-memory staging.
    for version in [AttnVersion::Simple, AttnVersion::Tuned] {
        println!("-- bf16 attention forward: {version:?}");
        let gpu = gpu_with(version)?;
        for case in bf16_cases() {
            compare_bf16(&gpu, &case)?;
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_tensor_core_attention_on_small_shapes() -> Result<()> {
    if device_or_skip("bf16_tensor_core_attention_on_small_shapes")?.is_none() {
        return Ok(());
    }
    // A few of the cases above, small enough for compute-sanitizer's memcheck and racecheck (the tuned
    // forward's shared memory and cp.async): tools/gpu-validate.sh skips the full set there, not this.
    let small = bf16_cases().into_iter().filter(|c| {
        matches!(c.q_len, 7 | 63 | 65) && matches!(c.d_head, 24 | 64 | 128)
            || c.q_len.max(c.kv_len) == 100
    });
    let small: Vec<AttnCase> = small.collect();
    for version in [AttnVersion::Simple, AttnVersion::Tuned] {
        let gpu = gpu_with(version)?;
        for case in &small {
            compare_bf16(&gpu, case)?;
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_tensor_core_attention_at_the_enwik8_shape() -> Result<()> {
    if device_or_skip("bf16_tensor_core_attention_at_the_enwik8_shape")?.is_none() {
        return Ok(());
    }
    // T 2048, batch 2 (of the preset's 8), 8 heads of 64, causal, with the preset's dropout.
    let case = AttnCase {
        batch: 2,
        heads: 8,
        q_len: 2048,
        kv_len: 2048,
        d_head: 64,
        mask: AttnMask::Causal,
        dropout: Some(DropoutMask::new(0.2, 3)),
    };
    for version in [AttnVersion::Simple, AttnVersion::Tuned] {
        compare_bf16(&gpu_with(version)?, &case)?;
    }
    Ok(())
}
