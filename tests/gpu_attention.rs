//! The fused CUDA attention (`kernels/attention.cu`) against the CPU reference (`Cpu<f32>`): output, logsumexp
//! and dq, dk, dv on fresh random inputs, for causal and full masks, ragged lengths (1, 7, 33, 100, 257 and
//! 4096), query and key lengths that differ, head dimensions 8, 24, 64, 128 and odd ones, batch 1 and 3, with
//! and without dropout on the probabilities; the attention-resampling masks (funnel, window, up-causal,
//! up-window) on the shortened/full lengths they are used with, and with rows that see no key; relative error
//! below 1e-5, and a second GPU run must give the same bits (the kernels use no atomics).
//!
//! They need a GPU, so they are ignored by default: `cargo test --test gpu_attention -- --include-ignored`.
//! Without a device each test prints "skipped"; with `HOURGLASS_REQUIRE_GPU=1` a missing device fails it.

mod common;

use common::{assert_repeatable, random_f32, rel_err_f32, unpack_columns, Outputs};
use hourglass::device::cuda::{device_or_skip, Cuda};
use hourglass::ops::attention::{self, AttentionOps, AttnMask};
use hourglass::rng::DropoutMask;
use hourglass::{BackendCore, Cpu, Result, Tensor};

/// Largest accepted `||gpu - cpu|| / ||cpu||`, for every output and gradient.
const TOL: f64 = 1e-5;

/// The dropout used wherever a case has one.
const DROPOUT: DropoutMask = DropoutMask {
    p: 0.1,
    seed: 0x5EED_A77E,
};

/// One attention op at one size: inputs come from seeds derived from the sizes, so every case sees fresh data.
#[derive(Debug, Clone, Copy)]
struct AttnCase {
    batch: usize,
    heads: usize,
    q_len: usize,
    kv_len: usize,
    d_head: usize,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
}

impl AttnCase {
    fn seed(&self) -> u64 {
        let mut s = 0x00A7_7E47_1011u64;
        for x in [
            self.batch,
            self.heads,
            self.q_len,
            self.kv_len,
            self.d_head,
            self.mask.code().0 as usize,
            self.mask.code().1 as usize,
            self.dropout.is_some() as usize,
        ] {
            s = hourglass::rng::splitmix64(s ^ x as u64);
        }
        s
    }

    /// Whether no query row sees more than one key (one key, or an up-window mask): then `P` is 1 or 0
    /// everywhere and dq, dk vanish in exact arithmetic.
    fn at_most_one_key_per_row(&self) -> bool {
        (0..self.q_len).all(|i| {
            let (lo, hi) = self.mask.key_range(i, self.kv_len);
            hi <= lo + 1
        })
    }

    /// Forward and backward on `b`: `[out, lse, dq, dk, dv]` with q alone and k, v side by side, and when
    /// the lengths agree the same from q, k and v side by side in one buffer.
    fn run<B: BackendCore<Elem = f32> + AttentionOps>(&self, b: &B) -> Result<Outputs> {
        let width = self.heads * self.d_head;
        let seed = self.seed();
        let upload = |shape: &[usize], k: u64| -> Result<Tensor<B>> {
            Tensor::from_slice(b, shape, &random_f32(seed + k, shape.iter().product()))
        };
        let q = upload(&[self.q_len, self.batch, width], 1)?;
        let kv = upload(&[self.kv_len, self.batch, 2 * width], 2)?;
        let dout = upload(&[self.q_len, self.batch, width], 4)?;
        let saved = attention::forward(&q, &kv, self.heads, self.mask, self.dropout)?;
        let (dq, dkv) =
            attention::backward(&q, &kv, &saved, &dout, self.heads, self.mask, self.dropout)?;
        let [dk, dv] = <[Vec<f32>; 2]>::try_from(unpack_columns(&dkv.to_vec()?, &[width; 2]))
            .expect("two parts");
        let mut outputs = vec![
            ("out", saved.out.to_vec()?),
            ("lse", saved.lse.to_vec()?),
            ("dq", dq.to_vec()?),
            ("dk", dk),
            ("dv", dv),
        ];
        if self.q_len == self.kv_len {
            // Self-attention's layout: q, k and v side by side in one buffer, the gradients likewise.
            let qkv = upload(&[self.q_len, self.batch, 3 * width], 5)?;
            let packed = attention::forward_packed(&qkv, self.heads, self.mask, self.dropout)?;
            let dqkv = attention::backward_packed(
                &qkv,
                &packed,
                &dout,
                self.heads,
                self.mask,
                self.dropout,
            )?;
            let [dq, dk, dv] =
                <[Vec<f32>; 3]>::try_from(unpack_columns(&dqkv.to_vec()?, &[width; 3]))
                    .expect("three parts");
            outputs.extend([
                ("packed out", packed.out.to_vec()?),
                ("packed lse", packed.lse.to_vec()?),
                ("packed dq", dq),
                ("packed dk", dk),
                ("packed dv", dv),
            ]);
        }
        Ok(outputs)
    }
}

/// Runs `case` on the CPU and twice on the GPU: relative error against the CPU below `TOL` for every output,
/// and identical bits from the two GPU runs.
fn compare(gpu: &Cuda, case: &AttnCase) -> Result<()> {
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
