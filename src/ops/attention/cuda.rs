//! The CUDA half of attention: launches of `kernels/attention.cu` (f32 operands) and `kernels/attention_mma.cu`
//! (bf16 operands, the tensor cores).

use super::{AttentionOps, AttnDims, AttnGrads, AttnLayout, AttnMask};
use crate::device::cuda::kernels::{
    AttnImpl, AttnKernel, AttnParams, AttnPass, ATT_TILES, GRID_Y_MAX, MMA_TUNED_BUCKETS,
};
use crate::device::cuda::{cuda_err, pointwise_config, warp_per_row_config, AttnVersion};
use crate::device::{BackendCore, Cuda};
use crate::error::{shape_err, Result};
use crate::ops::Operands;
use crate::rng::DropoutMask;
use cudarc::driver::{CudaSlice, LaunchConfig};

impl Cuda {
    /// The attention kernels for this shape and operand dtype: attention.cu's with f32 operands; with bf16,
    /// attention_mma.cu's, tuned when asked for (`AttnVersion`) and the shape allows it. Errors name the sizes
    /// attention on CUDA does not take.
    fn attn_kernel(&self, d: &AttnDims, layout: AttnLayout, bf16: bool) -> Result<AttnKernel> {
        if d.batch == 0 || d.heads == 0 || d.q_len == 0 || d.kv_len == 0 || d.d_head == 0 {
            return Err(shape_err!(
                "attention on CUDA needs every size to be at least 1, got {d:?}"
            ));
        }
        if d.batch * d.heads > GRID_Y_MAX {
            return Err(shape_err!(
                "attention on CUDA supports at most {GRID_Y_MAX} batch x heads, got {}",
                d.batch * d.heads
            ));
        }
        let too_long = |n: usize| n > i32::MAX as usize / 2;
        if too_long(d.q_len) || too_long(d.kv_len) || too_long(d.heads * d.d_head) {
            return Err(shape_err!("attention on CUDA: sizes too large, got {d:?}"));
        }
        let Some(&tiles) = ATT_TILES.iter().find(|t| d.d_head <= t.bucket) else {
            return Err(shape_err!(
                "attention on CUDA supports head dimensions up to {}, got {}",
                ATT_TILES[ATT_TILES.len() - 1].bucket,
                d.d_head
            ));
        };
        let tuned = self.attention_version() == AttnVersion::Tuned
            && tuned_supports(d, layout, tiles.bucket);
        let version = match (bf16, tuned) {
            (false, _) => AttnImpl::Simt,
            (true, false) => AttnImpl::Mma,
            (true, true) => AttnImpl::MmaTuned,
        };
        Ok(AttnKernel { version, tiles })
    }
}

/// The instance of `kernel` for `pass` and its grid: `ceil(rows / rows per block) x (batch·heads)` blocks over
/// the queries (forward, dQ) or the keys (dK/dV), static shared memory only.
fn launch(kernel: AttnKernel, pass: AttnPass, d: &AttnDims) -> (String, LaunchConfig) {
    let rows = match pass {
        AttnPass::Fwd | AttnPass::BwdDq => d.q_len,
        AttnPass::BwdDkv => d.kv_len,
    };
    let config = LaunchConfig {
        grid_dim: (
            rows.div_ceil(kernel.rows_per_block(pass)) as u32,
            (d.batch * d.heads) as u32,
            1,
        ),
        block_dim: (kernel.threads(), 1, 1),
        shared_mem_bytes: 0,
    };
    (kernel.name(pass), config)
}

impl Cuda {
    /// The scalars every attention kernel takes after its tensors, after queuing the copy of the dropout seed into
    /// kernel module `module`'s constant (`Cuda::set_attention_seed`).
    fn attn_params(
        &self,
        module: &str,
        d: &AttnDims,
        layout: AttnLayout,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<AttnParams> {
        self.set_attention_seed(module, dropout.as_ref())?;
        let (mask_kind, mask_param) = mask.code();
        Ok(AttnParams {
            batch: d.batch as i32,
            heads: d.heads as i32,
            q_len: d.q_len as i32,
            kv_len: d.kv_len as i32,
            d_head: d.d_head as i32,
            scale: d.scale() as f32,
            mask_kind,
            mask_param,
            threshold: dropout.map_or(0, |m| m.threshold()),
            drop_scale: dropout.map_or(1.0, |m| m.scale() as f32),
            use_dropout: dropout.is_some() as i32,
            q_stride: layout.q_stride as i32,
            q_off: layout.q_offset as i32,
            kv_stride: layout.kv_stride as i32,
            k_off: layout.k_offset as i32,
            v_off: layout.v_offset as i32,
            scale_log2: (d.scale() * std::f64::consts::LOG2_E) as f32,
        })
    }
}

/// Forward (flash-style in f32; on the tensor cores in bf16), and backward as D = rowsum(dO ∘ O)
/// (`attention_bwd_dot_f32`, for both versions), a dK/dV kernel (blocks own key tiles) and a dQ kernel (blocks
/// own query tiles): deterministic, no atomics.
impl AttentionOps for Cuda {
    fn attention_fwd(
        &self,
        qkv: Operands<'_, Self>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let kernel = self.attn_kernel(&d, layout, qkv.is_bf16())?;
        // SAFETY: every forward kernel's blocks cover every query of every (batch, head) and write out and lse
        // for each.
        let mut out = unsafe { self.alloc_uninit(d.q_len * d.batch * d.heads * d.d_head) }?;
        // SAFETY: as for out.
        let mut lse = unsafe { self.alloc_uninit(d.batch * d.heads * d.q_len) }?;
        let a = self.attn_params(kernel.module(), &d, layout, mask, dropout)?;
        let (name, config) = launch(kernel, AttnPass::Fwd, &d);
        let (o, l) = (&mut out, &mut lse);
        match qkv {
            Operands::Elem(q, kv) => self.attention_fwd(&name, config, q, kv, o, l, a)?,
            Operands::Bf16(q, kv) => self.attention_mma_fwd(&name, config, q, kv, o, l, a)?,
        }
        Ok((out, lse))
    }

    fn attention_bwd(
        &self,
        qkv: Operands<'_, Self>,
        layout: AttnLayout,
        (out, lse): (&CudaSlice<f32>, &CudaSlice<f32>),
        dout: &CudaSlice<f32>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, CudaSlice<f32>>,
    ) -> Result<()> {
        let kernel = self.attn_kernel(&d, layout, qkv.is_bf16())?;
        let a = self.attn_params(kernel.module(), &d, layout, mask, dropout)?;
        let dvec = self.attention_dvec(dout, out, &d)?;
        let (dkv_name, dkv_config) = launch(kernel, AttnPass::BwdDkv, &d);
        let (dq_name, dq_config) = launch(kernel, AttnPass::BwdDq, &d);
        // Two launches, one writing dk and dv, one dq: into one buffer when packed.
        let (dq, dkv) = grads.into_parts();
        match qkv {
            Operands::Elem(q, kv) => {
                self.attention_bwd_dkv(
                    &dkv_name, dkv_config, q, kv, dout, lse, &dvec, &mut *dkv, a,
                )?;
                let dq = dq.unwrap_or(dkv);
                self.attention_bwd_dq(&dq_name, dq_config, q, kv, dout, lse, &dvec, dq, a)
            }
            Operands::Bf16(q, kv) => {
                // dO enters its products rounded to bf16, and the dropout mask as bits: both made once here,
                // for both kernels.
                let (dout, keep) = (
                    &self.round_to_bf16(dout)?,
                    &self.attention_keep(&d, dropout)?,
                );
                self.attention_mma_bwd_dkv(
                    &dkv_name, dkv_config, q, kv, dout, lse, &dvec, keep, &mut *dkv, a,
                )?;
                let dq = dq.unwrap_or(dkv);
                self.attention_mma_bwd_dq(&dq_name, dq_config, q, kv, dout, lse, &dvec, keep, dq, a)
            }
        }
    }
}

/// Whether the tuned kernels take this shape: head-size buckets 32 and 64, and every row of q, k and v in
/// whole 16-byte chunks (head size, strides and offsets multiples of 8 bf16), as their cp.async copies need.
/// (dO, `[Tq, B, H·dh]`, is then whole chunks too.)
fn tuned_supports(d: &AttnDims, layout: AttnLayout, bucket: usize) -> bool {
    let chunks = [
        d.d_head,
        layout.q_stride,
        layout.q_offset,
        layout.kv_stride,
        layout.k_offset,
        layout.v_offset,
    ];
    MMA_TUNED_BUCKETS.contains(&bucket) && chunks.iter().all(|n| n % 8 == 0)
}

impl Cuda {
    /// The dropout mask of the probabilities as bits (`attention_keep_bits`: row `(b·H + h)·Tq + i`,
    /// `ceil(Tk / 32)` words a row); one unused word without dropout.
    fn attention_keep(&self, d: &AttnDims, dropout: Option<DropoutMask>) -> Result<CudaSlice<u32>> {
        let Some(mask) = dropout else {
            return self.stream().alloc_zeros::<u32>(1).map_err(cuda_err);
        };
        let rows = d.batch * d.heads * d.q_len;
        let words = rows * d.kv_len.div_ceil(32);
        // SAFETY: attention_keep_bits writes every word (grid-stride over rows · words a row).
        let mut keep = unsafe { self.alloc_uninit(words) }?;
        self.attention_keep_bits(
            pointwise_config(words),
            &mut keep,
            rows as i64,
            d.kv_len as i32,
            self.seed_ptr(Some(&mask))?,
            mask.threshold(),
        )?;
        Ok(keep)
    }

    /// D = rowsum(dO ∘ O) per (batch, head, query), which both backward versions take: one warp per row.
    fn attention_dvec(
        &self,
        dout: &CudaSlice<f32>,
        out: &CudaSlice<f32>,
        d: &AttnDims,
    ) -> Result<CudaSlice<f32>> {
        let rows = d.batch * d.heads * d.q_len;
        // SAFETY: attention_bwd_dot_f32 writes every row (a warp per row, grid-strided).
        let mut dvec = unsafe { self.alloc_uninit(rows) }?;
        let (batch, heads, q_len, d_head) = (
            d.batch as i32,
            d.heads as i32,
            d.q_len as i32,
            d.d_head as i32,
        );
        self.attention_bwd_dot_f32(
            warp_per_row_config(rows),
            dout,
            out,
            &mut dvec,
            batch,
            heads,
            q_len,
            d_head,
        )?;
        Ok(dvec)
    }
}
