//! The CUDA half of attention: launches of `kernels/attention.cu`.

use super::{AttentionOps, AttnDims, AttnGrads, AttnLayout, AttnMask};
use crate::device::cuda::{cuda_err, pointwise_config, warp_per_row_config, AttnVersion};
use crate::device::kernels::AttnParams;
use crate::device::{BackendCore, Cuda};
use crate::error::{shape_err, Result};
use crate::rng::DropoutMask;
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

/// Tile sizes of the CUDA kernels for one head-dimension bucket: the mirror of the table at the end of
/// `kernels/attention.cu` (the grid depends on them; keep the two in step).
struct CudaTiles {
    /// Largest head dimension of the bucket: the kernels' names end in `_d{bucket}_f32`.
    bucket: usize,
    /// Queries per block of the forward kernel.
    fwd_q: usize,
    /// Keys per block of the dK/dV kernel.
    dkv_k: usize,
    /// Queries per block of the dQ kernel.
    dq_q: usize,
}

/// Threads per block of every attention kernel but `attention_bwd_dot_f32`.
const CUDA_ATTN_THREADS: u32 = 128;

impl CudaTiles {
    fn for_dims(d: &AttnDims) -> Result<Self> {
        if d.batch == 0 || d.heads == 0 || d.q_len == 0 || d.kv_len == 0 || d.d_head == 0 {
            return Err(shape_err!(
                "attention on CUDA needs every size to be at least 1, got {d:?}"
            ));
        }
        if d.batch * d.heads > 65_535 {
            return Err(shape_err!(
                "attention on CUDA supports at most 65535 batch x heads, got {}",
                d.batch * d.heads
            ));
        }
        let too_long = |n: usize| n > i32::MAX as usize / 2;
        if too_long(d.q_len) || too_long(d.kv_len) || too_long(d.heads * d.d_head) {
            return Err(shape_err!("attention on CUDA: sizes too large, got {d:?}"));
        }
        let (bucket, fwd_q, dkv_k, dq_q) = match d.d_head {
            1..=32 => (32, 64, 64, 64),
            33..=64 => (64, 64, 64, 64),
            65..=128 => (128, 64, 32, 32),
            dh => {
                return Err(shape_err!(
                    "attention on CUDA supports head dimensions up to 128, got {dh}"
                ))
            }
        };
        Ok(Self {
            bucket,
            fwd_q,
            dkv_k,
            dq_q,
        })
    }

    /// The kernel instance of this head-dimension bucket: `attention_{kernel}_d{bucket}_f32`.
    fn instance(&self, kernel: &str) -> String {
        format!("attention_{kernel}_d{}_f32", self.bucket)
    }
}

/// A grid of `ceil(rows / per_block) x (batch·heads)` blocks of 128 threads (static shared memory only).
fn attention_config(rows: usize, per_block: usize, d: &AttnDims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            rows.div_ceil(per_block) as u32,
            (d.batch * d.heads) as u32,
            1,
        ),
        block_dim: (CUDA_ATTN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
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

/// `kernels/attention.cu`: flash-style forward (`attention_fwd_d{32,64,128}_f32`), and backward as
/// `attention_bwd_dot_f32` (D = rowsum(dO ∘ O)), `attention_bwd_dkv_d*_f32` (blocks own key tiles) and
/// `attention_bwd_dq_d*_f32` (blocks own query tiles): deterministic, no atomics.
impl AttentionOps for Cuda {
    fn attention_fwd(
        &self,
        q: &CudaSlice<f32>,
        kv: &CudaSlice<f32>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let tiles = CudaTiles::for_dims(&d)?;
        let width = d.heads * d.d_head;
        // SAFETY: the forward kernel's blocks cover every query tile of every (batch, head) and write out and
        // lse for each query.
        let mut out = unsafe { self.alloc_uninit(d.q_len * d.batch * width) }?;
        // SAFETY: as for out.
        let mut lse = unsafe { self.alloc_uninit(d.batch * d.heads * d.q_len) }?;
        let a = self.attn_params("attention", &d, layout, mask, dropout)?;
        self.attention_fwd(
            &tiles.instance("fwd"),
            attention_config(d.q_len, tiles.fwd_q, &d),
            q,
            kv,
            &mut out,
            &mut lse,
            a,
        )?;
        Ok((out, lse))
    }

    fn attention_bwd(
        &self,
        q: &CudaSlice<f32>,
        kv: &CudaSlice<f32>,
        layout: AttnLayout,
        (out, lse): (&CudaSlice<f32>, &CudaSlice<f32>),
        dout: &CudaSlice<f32>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, CudaSlice<f32>>,
    ) -> Result<()> {
        let tiles = CudaTiles::for_dims(&d)?;
        let a = self.attn_params("attention", &d, layout, mask, dropout)?;
        let dvec = self.attention_dvec(dout, out, &d)?;

        // Two launches, one writing dk and dv, one dq: into one buffer when packed.
        let (dq, dkv) = grads.into_parts();
        self.attention_bwd_dkv(
            &tiles.instance("bwd_dkv"),
            attention_config(d.kv_len, tiles.dkv_k, &d),
            q,
            kv,
            dout,
            lse,
            &dvec,
            &mut *dkv,
            a,
        )?;
        self.attention_bwd_dq(
            &tiles.instance("bwd_dq"),
            attention_config(d.q_len, tiles.dq_q, &d),
            q,
            kv,
            dout,
            lse,
            &dvec,
            dq.unwrap_or(dkv),
            a,
        )
    }

    fn attention_fwd_bf16(
        &self,
        q: &CudaSlice<bf16>,
        kv: &CudaSlice<bf16>,
        layout: AttnLayout,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let bucket = CudaTiles::for_dims(&d)?.bucket;
        // SAFETY: either forward kernel's warps cover every query of every (batch, head) and write out and lse
        // for each.
        let mut out = unsafe { self.alloc_uninit(d.q_len * d.batch * d.heads * d.d_head) }?;
        // SAFETY: as for out.
        let mut lse = unsafe { self.alloc_uninit(d.batch * d.heads * d.q_len) }?;
        let (config, a) = (
            attention_config(d.q_len, MMA_ROWS_PER_BLOCK, &d),
            self.attn_params("attention_mma", &d, layout, mask, dropout)?,
        );
        let instance = self.mma_instance("fwd", &d, layout, bucket);
        self.attention_mma_fwd(&instance, config, q, kv, &mut out, &mut lse, a)?;
        Ok((out, lse))
    }

    fn attention_bwd_bf16(
        &self,
        q: &CudaSlice<bf16>,
        kv: &CudaSlice<bf16>,
        layout: AttnLayout,
        (out, lse): (&CudaSlice<f32>, &CudaSlice<f32>),
        dout: &CudaSlice<f32>,
        d: AttnDims,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        grads: AttnGrads<'_, CudaSlice<f32>>,
    ) -> Result<()> {
        let bucket = CudaTiles::for_dims(&d)?.bucket;
        let a = self.attn_params("attention_mma", &d, layout, mask, dropout)?;
        let dvec = self.attention_dvec(dout, out, &d)?;
        // dO enters its products rounded to bf16, and the dropout mask as bits: both made once here, for both
        // kernels.
        let dout = self.round_to_bf16(dout)?;
        let keep = self.attention_keep(&d, dropout)?;
        let (dq, dkv) = grads.into_parts();
        self.attention_mma_bwd_dkv(
            &self.mma_instance("bwd_dkv", &d, layout, bucket),
            attention_config(d.kv_len, MMA_ROWS_PER_BLOCK, &d),
            q,
            kv,
            &dout,
            lse,
            &dvec,
            &keep,
            &mut *dkv,
            a,
        )?;
        self.attention_mma_bwd_dq(
            &self.mma_instance("bwd_dq", &d, layout, bucket),
            attention_config(d.q_len, MMA_ROWS_PER_BLOCK, &d),
            q,
            kv,
            &dout,
            lse,
            &dvec,
            &keep,
            dq.unwrap_or(dkv),
            a,
        )
    }
}

/// Rows (queries, or keys for dK/dV) per block of the tensor-core kernels: 4 warps of 16
/// (`MMA_WARPS`·`MMA_ROWS` in kernels/attention_mma.cu).
const MMA_ROWS_PER_BLOCK: usize = 64;

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
    bucket <= 64 && chunks.iter().all(|n| n % 8 == 0)
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

    /// The tensor-core kernel instance for this shape: `attention_mma_{kernel}[_tuned]_d{bucket}_bf16`, tuned
    /// when asked for (`AttnVersion`) and the shape allows it.
    fn mma_instance(
        &self,
        kernel: &str,
        d: &AttnDims,
        layout: AttnLayout,
        bucket: usize,
    ) -> String {
        let tuned =
            self.attention_version() == AttnVersion::Tuned && tuned_supports(d, layout, bucket);
        let version = if tuned { "_tuned" } else { "" };
        format!("attention_mma_{kernel}{version}_d{bucket}_bf16")
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
