//! Attention cases shared by the CPU and GPU attention tests: one op at one size, with inputs from seeds
//! derived from the sizes, run forward and backward in both layouts, in f32 or in bf16.

use super::{random_f32, unpack_columns, Outputs};
use hourglass::ops::attention::{self, AttentionOps, AttnMask};
use hourglass::rng::DropoutMask;
use hourglass::{BackendCore, Result, Tensor};

/// One attention op at one size: inputs come from seeds derived from the sizes, so every case sees fresh data.
#[derive(Debug, Clone, Copy)]
pub struct AttnCase {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub d_head: usize,
    pub mask: AttnMask,
    pub dropout: Option<DropoutMask>,
}

impl AttnCase {
    /// The case's size for `left_to_a_real_gpu`: batch·heads·q_len·kv_len·d_head.
    pub fn work(&self) -> usize {
        self.batch * self.heads * self.q_len * self.kv_len * self.d_head
    }

    pub fn seed(&self) -> u64 {
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
    pub fn at_most_one_key_per_row(&self) -> bool {
        (0..self.q_len).all(|i| {
            let (lo, hi) = self.mask.key_range(i, self.kv_len);
            hi <= lo + 1
        })
    }

    /// Forward and backward on `b`: `[out, lse, dq, dk, dv]` with q alone and k, v side by side, and when
    /// the lengths agree the same from q, k and v side by side in one buffer.
    pub fn run<B: BackendCore<Elem = f32> + AttentionOps>(&self, b: &B) -> Result<Outputs> {
        self.run_as(b, false)
    }

    /// `run` with q, k and v rounded to bf16 first (the bf16 attention: tensor cores on the GPU).
    pub fn run_bf16<B: BackendCore<Elem = f32> + AttentionOps>(&self, b: &B) -> Result<Outputs> {
        self.run_as(b, true)
    }

    /// `run_bf16` on a backend of any element type, the outputs rounded to f32: on `Cpu<f64>`, the bf16
    /// reference with the same bf16 rounding points and every other value in f64, which rounds a value that
    /// lies near a bf16 rounding boundary the other way now and then, as another f32 summation order does.
    pub fn run_bf16_any<B: BackendCore + AttentionOps>(&self, b: &B) -> Result<Outputs> {
        self.run_as(b, true)
    }

    fn run_as<B: BackendCore + AttentionOps>(&self, b: &B, bf16: bool) -> Result<Outputs> {
        let width = self.heads * self.d_head;
        let seed = self.seed();
        // f32 data on every backend (exact in f64 too), read back as f32.
        let upload = |shape: &[usize], k: u64| -> Result<Tensor<B>> {
            let data = random_f32(seed + k, shape.iter().product());
            Tensor::from_f64(
                b,
                shape,
                &data.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            )
        };
        let host = |t: &Tensor<B>| -> Result<Vec<f32>> {
            Ok(t.to_f64_vec()?.into_iter().map(|v| v as f32).collect())
        };
        // q, k and v as the op takes them (rounded to bf16 for the bf16 attention); dout stays f32. The bf16
        // values are rounded here from f32, so that every backend gets the same ones: half's f64-to-bf16
        // conversion, which `Cpu<f64>` would use, ignores the low 32 bits of the f64 when it breaks ties and
        // rounds about 5 in 100,000 f32 values the other way (0x3f908003 goes down).
        let operand = |shape: &[usize], k: u64| -> Result<Tensor<B>> {
            if !bf16 {
                return upload(shape, k);
            }
            let data: Vec<f64> = random_f32(seed + k, shape.iter().product())
                .into_iter()
                .map(|v| half::bf16::from_f32(v).to_f64())
                .collect();
            Tensor::from_f64(b, shape, &data)?.to_bf16()
        };
        let q = operand(&[self.q_len, self.batch, width], 1)?;
        let kv = operand(&[self.kv_len, self.batch, 2 * width], 2)?;
        let dout = if bf16 {
            // dO stays f32 (D = rowsum(dO ∘ O) takes it whole) and is rounded to bf16 inside the op, by half's
            // conversion on `Cpu<f64>`: the few values it would round the other way lose their last three bits,
            // which makes them exact ties that both conversions round to even.
            let data: Vec<f64> = random_f32(seed + 4, self.q_len * self.batch * width)
                .into_iter()
                .map(|v| {
                    if half::bf16::from_f64(v as f64) == half::bf16::from_f32(v) {
                        v as f64
                    } else {
                        f32::from_bits(v.to_bits() & !7) as f64
                    }
                })
                .collect();
            Tensor::from_f64(b, &[self.q_len, self.batch, width], &data)?
        } else {
            upload(&[self.q_len, self.batch, width], 4)?
        };
        let saved = attention::forward(&q, &kv, self.heads, self.mask, self.dropout)?;
        let (dq, dkv) =
            attention::backward(&q, &kv, &saved, &dout, self.heads, self.mask, self.dropout)?;
        let [dk, dv] = <[Vec<f32>; 2]>::try_from(unpack_columns(&host(&dkv)?, &[width; 2]))
            .expect("two parts");
        let mut outputs = vec![
            ("out", host(&saved.out)?),
            ("lse", host(&saved.lse)?),
            ("dq", host(&dq)?),
            ("dk", dk),
            ("dv", dv),
        ];
        if self.q_len == self.kv_len {
            // Self-attention's layout: q, k and v side by side in one buffer, the gradients likewise.
            let qkv = operand(&[self.q_len, self.batch, 3 * width], 5)?;
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
                <[Vec<f32>; 3]>::try_from(unpack_columns(&host(&dqkv)?, &[width; 3]))
                    .expect("three parts");
            outputs.extend([
                ("packed out", host(&packed.out)?),
                ("packed lse", host(&packed.lse)?),
                ("packed dq", dq),
                ("packed dk", dk),
                ("packed dv", dv),
            ]);
        }
        Ok(outputs)
    }
}
