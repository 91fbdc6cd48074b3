//! LayerNorm over the last dimension (biased variance, affine). Forward saves mean and 1/std per row for
//! backward, like PyTorch and llm.c. Forward can write y rounded to bf16 (`forward_as`, for a GEMM that takes
//! bf16), with the statistics in f32; the input and backward stay in the element type.

use crate::device::cpu::REDUCE_ROWS;
use crate::device::cuda::kernels::{GRID_Y_MAX, LN_PARAM_COLS, LN_PARAM_MAX_LANES};
use crate::device::cuda::{cuda_err, warp_per_row_config};
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Error, Result};
use crate::ops::elementwise::ElementwiseOps;
use crate::ops::tensor_of;
use crate::rng::DropoutMask;
use crate::tensor::{Storage, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig};
use rayon::prelude::*;

/// PyTorch's default epsilon.
pub const EPS: f64 = 1e-5;

/// What forward keeps for backward.
pub struct LayerNormSaved<B: BackendCore> {
    pub mean: Tensor<B>,
    pub rstd: Tensor<B>,
}

/// What a LayerNorm forward writes: y (in the element type, or bf16 for the GEMMs it feeds) and each row's mean
/// and 1/std (in the element type).
pub struct Normalized<B: BackendCore> {
    pub(crate) y: Storage<B>,
    pub(crate) mean: B::Storage,
    pub(crate) rstd: B::Storage,
}

pub trait LayerNormOps: BackendCore {
    /// LayerNorm of `x[rows, d]`: y in bf16 with `bf16` (rounded from the value in the element type), else in
    /// the element type.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        x: &Self::Storage,
        gamma: &Self::Storage,
        beta: &Self::Storage,
        rows: usize,
        d: usize,
        bf16: bool,
    ) -> Result<Normalized<Self>>;
    /// The residual add before a pre-norm sublayer and its LayerNorm in one pass: `s = x + dropout(branch)`,
    /// then `layernorm_fwd(s)`; returns `s` and the LayerNorm's outputs.
    #[allow(clippy::too_many_arguments)]
    fn residual_layernorm_fwd(
        &self,
        x: &Self::Storage,
        branch: &Self::Storage,
        mask: Option<DropoutMask>,
        gamma: &Self::Storage,
        beta: &Self::Storage,
        rows: usize,
        d: usize,
        bf16: bool,
    ) -> Result<(Self::Storage, Normalized<Self>)>;
    /// Returns `dx` (plus `dres` when given: the gradient that went around the sublayer, added in the same
    /// pass); accumulates `dgamma += Σ dy·x̂` and `dbeta += Σ dy`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        x: &Self::Storage,
        gamma: &Self::Storage,
        mean: &Self::Storage,
        rstd: &Self::Storage,
        dy: &Self::Storage,
        dres: Option<&Self::Storage>,
        dgamma: &mut Self::Storage,
        dbeta: &mut Self::Storage,
        rows: usize,
        d: usize,
    ) -> Result<Self::Storage>;
}

impl<T: Element> LayerNormOps for Cpu<T> {
    fn layernorm_fwd(
        &self,
        x: &Vec<T>,
        gamma: &Vec<T>,
        beta: &Vec<T>,
        rows: usize,
        d: usize,
        bf16: bool,
    ) -> Result<Normalized<Self>> {
        let mut y = vec![T::zero(); rows * d];
        let mut mean = vec![T::zero(); rows];
        let mut rstd = vec![T::zero(); rows];
        let inv_d = T::from_f64(1.0 / d as f64);
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .for_each(|((y, x), (m, r))| {
                let mu = x.iter().fold(T::zero(), |s, &v| s + v) * inv_d;
                let var = x.iter().fold(T::zero(), |s, &v| s + (v - mu) * (v - mu)) * inv_d;
                let rs = T::one() / (var + T::from_f64(EPS)).sqrt();
                for i in 0..d {
                    y[i] = (x[i] - mu) * rs * gamma[i] + beta[i];
                }
                *m = mu;
                *r = rs;
            });
        let y = if bf16 {
            Storage::Bf16(self.round_to_bf16(&y)?)
        } else {
            Storage::Elem(y)
        };
        Ok(Normalized { y, mean, rstd })
    }

    fn residual_layernorm_fwd(
        &self,
        x: &Vec<T>,
        branch: &Vec<T>,
        mask: Option<DropoutMask>,
        gamma: &Vec<T>,
        beta: &Vec<T>,
        rows: usize,
        d: usize,
        bf16: bool,
    ) -> Result<(Vec<T>, Normalized<Self>)> {
        let s = match mask {
            Some(mask) => self.add(x, &self.dropout(branch, mask)?)?,
            None => self.add(x, branch)?,
        };
        let normalized = self.layernorm_fwd(&s, gamma, beta, rows, d, bf16)?;
        Ok((s, normalized))
    }

    fn layernorm_bwd(
        &self,
        x: &Vec<T>,
        gamma: &Vec<T>,
        mean: &Vec<T>,
        rstd: &Vec<T>,
        dy: &Vec<T>,
        dres: Option<&Vec<T>>,
        dgamma: &mut Vec<T>,
        dbeta: &mut Vec<T>,
        rows: usize,
        d: usize,
    ) -> Result<Vec<T>> {
        let mut dx = vec![T::zero(); rows * d];
        let inv_d = T::from_f64(1.0 / d as f64);
        let block = REDUCE_ROWS * d;
        let partials: Vec<(Vec<T>, Vec<T>)> = dx
            .par_chunks_mut(block)
            .enumerate()
            .map(|(blk, dx_blk)| {
                let mut dg = vec![T::zero(); d];
                let mut db = vec![T::zero(); d];
                for (r, dx) in dx_blk.chunks_mut(d).enumerate() {
                    let row = blk * REDUCE_ROWS + r;
                    let (x, dy) = (&x[row * d..][..d], &dy[row * d..][..d]);
                    let (mu, rs) = (mean[row], rstd[row]);
                    let (mut sum_g, mut sum_gx) = (T::zero(), T::zero());
                    for i in 0..d {
                        let xhat = (x[i] - mu) * rs;
                        let g = dy[i] * gamma[i];
                        sum_g += g;
                        sum_gx += g * xhat;
                        dg[i] += dy[i] * xhat;
                        db[i] += dy[i];
                    }
                    let (mean_g, mean_gx) = (sum_g * inv_d, sum_gx * inv_d);
                    for i in 0..d {
                        let xhat = (x[i] - mu) * rs;
                        dx[i] = rs * (dy[i] * gamma[i] - mean_g - xhat * mean_gx);
                    }
                    if let Some(dres) = dres {
                        dx.iter_mut()
                            .zip(&dres[row * d..][..d])
                            .for_each(|(a, &r)| *a += r);
                    }
                }
                (dg, db)
            })
            .collect();
        for (dg, db) in partials {
            dgamma.iter_mut().zip(dg).for_each(|(a, v)| *a += v);
            dbeta.iter_mut().zip(db).for_each(|(a, v)| *a += v);
        }
        Ok(dx)
    }
}

/// Rows per partial sum of dgamma/dbeta on the GPU for rows too wide for the one-kernel backward: fixed, so
/// the summation order (and the bits) depend on the shape alone.
const PARAM_ROWS_PER_CHUNK: usize = 256;

/// Row lanes (threads along y) per block of those partial sums: at most the kernel's `LN_PARAM_MAX_LANES`.
const PARAM_ROW_LANES: usize = 16;
const _: () = assert!(PARAM_ROW_LANES <= LN_PARAM_MAX_LANES);

/// The one-kernel backward (`layernorm_bwd_f32`): at most this many blocks (a constant, not the GPU's SM
/// count, so that the sums' order depends on the shape alone), each with at most `FUSED_MAX_WARPS` warps that
/// keep 2·d f32 sums in dynamic shared memory between them (`fused_warps`).
const FUSED_MAX_BLOCKS: usize = 256;
const FUSED_MAX_WARPS: usize = 8;

/// The shared memory, static plus dynamic, that a launch may use without raising the function's
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`: 48 KiB on every CUDA GPU. More fails the launch with
/// `CUDA_ERROR_INVALID_VALUE`.
pub(crate) const LAUNCH_SHARED_LIMIT: usize = 48 * 1024;

/// Bytes of dynamic shared memory a launch of a kernel with `static_bytes` of static shared memory
/// (`CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES`, what ptxas reports as "bytes smem") may ask for, so that the two
/// together stay within `LAUNCH_SHARED_LIMIT`.
pub(crate) fn dynamic_shared_budget(static_bytes: usize) -> usize {
    LAUNCH_SHARED_LIMIT.saturating_sub(static_bytes)
}

/// Warps per block of the one-kernel backward at width `d`, for a kernel with `static_bytes` of static shared
/// memory: as many as keep their 2·d f32 sums (8·d bytes each) within `dynamic_shared_budget`, at most
/// `FUSED_MAX_WARPS`; 0 where not even one warp's fit, and the backward takes the kernels for wide rows. The
/// launch asks for `warps · 8·d` bytes of dynamic shared memory.
pub(crate) fn fused_warps(d: usize, static_bytes: usize) -> usize {
    let warp_bytes = 2 * d * std::mem::size_of::<f32>();
    (dynamic_shared_budget(static_bytes) / warp_bytes.max(1)).min(FUSED_MAX_WARPS)
}

// CUDA half: `kernels/layernorm.cu`, one warp per row. Backward is one kernel (dx, and dgamma/dbeta reduced in
// a fixed order) where a warp's 2·d sums fit in shared memory beside the kernel's static shared memory (d up
// to 6142 with the 16 static bytes nvcc 13 gives it; `fused_warps`); wider rows take dx, per-chunk partials,
// then column sums. The fused kernel's static size is read from the loaded function, not assumed, so the launch
// stays within the 48 KiB a launch gets whatever the compiler puts there.
impl LayerNormOps for Cuda {
    fn layernorm_fwd(
        &self,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        bf16: bool,
    ) -> Result<Normalized<Self>> {
        let (n, w) = (rows as i64, d as i32);
        self.normalize(rows, d, bf16, |config, y, m, r| match y {
            Storage::Elem(y) => self.layernorm_fwd_f32(config, x, gamma, beta, y, m, r, n, w),
            Storage::Bf16(y) => self.layernorm_fwd_bf16(config, x, gamma, beta, y, m, r, n, w),
        })
    }

    fn residual_layernorm_fwd(
        &self,
        x: &CudaSlice<f32>,
        branch: &CudaSlice<f32>,
        mask: Option<DropoutMask>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        bf16: bool,
    ) -> Result<(CudaSlice<f32>, Normalized<Self>)> {
        // SAFETY: both residual LayerNorm kernels write every row of s (a warp per row, grid-strided).
        let mut s = unsafe { self.alloc_uninit(rows * d) }?;
        let (n, w) = (rows as i64, d as i32);
        let normalized = self.normalize(rows, d, bf16, |config, y, mean, rstd| {
            let (seed, threshold, scale, on) = self.dropout_args(mask)?;
            let s = &mut s;
            match y {
                Storage::Elem(y) => self.residual_layernorm_fwd_f32(
                    config, x, branch, s, gamma, beta, y, mean, rstd, n, w, seed, threshold, scale,
                    on,
                ),
                Storage::Bf16(y) => self.residual_layernorm_fwd_bf16(
                    config, x, branch, s, gamma, beta, y, mean, rstd, n, w, seed, threshold, scale,
                    on,
                ),
            }
        })?;
        Ok((s, normalized))
    }

    fn layernorm_bwd(
        &self,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        mean: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dres: Option<&CudaSlice<f32>>,
        dgamma: &mut CudaSlice<f32>,
        dbeta: &mut CudaSlice<f32>,
        rows: usize,
        d: usize,
    ) -> Result<CudaSlice<f32>> {
        // SAFETY: every backward kernel below writes every row of dx (a warp per row, rows grid-strided).
        let mut dx = unsafe { self.alloc_uninit(rows * d) }?;
        let (n_rows, width) = (rows as i64, d as i32);
        let fused = match dres {
            None => "layernorm_bwd_f32",
            Some(_) => "layernorm_bwd_residual_f32",
        };
        let warps = fused_warps(d, self.static_shared_bytes(fused)?);
        if rows > 0 && d > 0 && warps > 0 {
            let blocks = rows.div_ceil(warps).min(FUSED_MAX_BLOCKS);
            // SAFETY: each block writes all 2·d of its partials before the last block reads them.
            let mut part = unsafe { self.alloc_uninit(blocks * 2 * d) }?;
            let mut ticket = self.stream().alloc_zeros::<u32>(1).map_err(cuda_err)?;
            let config = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (32 * warps as u32, 1, 1),
                shared_mem_bytes: (warps * 2 * d * std::mem::size_of::<f32>()) as u32,
            };
            let (part, ticket) = (&mut part, &mut ticket);
            match dres {
                None => self.layernorm_bwd_f32(
                    config, x, gamma, mean, rstd, dy, &mut dx, part, dgamma, dbeta, ticket, n_rows,
                    width,
                )?,
                Some(dres) => self.layernorm_bwd_residual_f32(
                    config, x, gamma, mean, rstd, dy, dres, &mut dx, part, dgamma, dbeta, ticket,
                    n_rows, width,
                )?,
            }
            return Ok(dx);
        }
        let config = warp_per_row_config(rows);
        match dres {
            None => {
                self.layernorm_bwd_dx_f32(config, x, gamma, mean, rstd, dy, &mut dx, n_rows, width)?
            }
            Some(dres) => self.layernorm_bwd_dx_residual_f32(
                config, x, gamma, mean, rstd, dy, dres, &mut dx, n_rows, width,
            )?,
        }

        let chunks = rows.div_ceil(PARAM_ROWS_PER_CHUNK);
        if chunks * d == 0 {
            return Ok(dx);
        }
        // SAFETY: layernorm_bwd_params_partial_f32 writes every (chunk, column) partial.
        let mut part_dg = unsafe { self.alloc_uninit(chunks * d) }?;
        // SAFETY: as for part_dg.
        let mut part_db = unsafe { self.alloc_uninit(chunks * d) }?;
        let rows_per_chunk = PARAM_ROWS_PER_CHUNK as i32;
        // Blocks of the kernel's shared-memory tiles: its columns by `PARAM_ROW_LANES` row lanes.
        let config = LaunchConfig {
            grid_dim: (
                d.div_ceil(LN_PARAM_COLS) as u32,
                chunks.min(GRID_Y_MAX) as u32,
                1,
            ),
            block_dim: (LN_PARAM_COLS as u32, PARAM_ROW_LANES as u32, 1),
            shared_mem_bytes: 0,
        };
        self.layernorm_bwd_params_partial_f32(
            config,
            x,
            mean,
            rstd,
            dy,
            &mut part_dg,
            &mut part_db,
            n_rows,
            width,
            rows_per_chunk,
        )?;
        self.col_sum_add(&part_dg, dgamma, chunks, d)?;
        self.col_sum_add(&part_db, dbeta, chunks, d)?;
        Ok(dx)
    }
}

impl Cuda {
    /// The static shared memory of kernel `name` as the driver loaded it (`CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES`):
    /// what a launch's dynamic shared memory must leave room for (`dynamic_shared_budget`).
    fn static_shared_bytes(&self, name: &str) -> Result<usize> {
        let bytes = self.function(name)?.shared_size_bytes().map_err(cuda_err)?;
        usize::try_from(bytes)
            .map_err(|_| Error::Cuda(format!("{name}: static shared memory of {bytes} bytes")))
    }

    /// Allocates y (bf16 with `bf16`, else f32), mean and rstd for `rows` rows of width `d` and runs `launch`,
    /// a forward kernel's launch, with them and the kernels' grid.
    fn normalize(
        &self,
        rows: usize,
        d: usize,
        bf16: bool,
        launch: impl FnOnce(
            LaunchConfig,
            &mut Storage<Self>,
            &mut CudaSlice<f32>,
            &mut CudaSlice<f32>,
        ) -> Result<()>,
    ) -> Result<Normalized<Self>> {
        // SAFETY: every forward kernel writes every row of y (a warp per row, rows grid-strided), and mean[row]
        // and rstd[row] for every row (lane 0 of its warp).
        let (mut y, mut mean, mut rstd) = unsafe {
            let y = if bf16 {
                Storage::Bf16(self.alloc_uninit(rows * d)?)
            } else {
                Storage::Elem(self.alloc_uninit(rows * d)?)
            };
            (y, self.alloc_uninit(rows)?, self.alloc_uninit(rows)?)
        };
        launch(warp_per_row_config(rows), &mut y, &mut mean, &mut rstd)?;
        Ok(Normalized { y, mean, rstd })
    }
}

fn dims<B: BackendCore>(x: &Tensor<B>, gamma: &Tensor<B>) -> Result<(usize, usize)> {
    let [d] = gamma.shape() else {
        return Err(shape_err!(
            "layernorm weight must be 1-d, got {:?}",
            gamma.shape()
        ));
    };
    if x.shape().last() != Some(d) || *d == 0 {
        return Err(shape_err!(
            "layernorm input {:?} does not end in the weight's width {d}",
            x.shape()
        ));
    }
    Ok((x.len() / d, *d))
}

/// LayerNorm of `x[..., d]` with weight `gamma[d]` and bias `beta[d]`.
pub fn forward<B: LayerNormOps>(
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
) -> Result<(Tensor<B>, LayerNormSaved<B>)> {
    forward_as(x, gamma, beta, false)
}

/// `forward` with y rounded to bf16 (`forward_as` with `bf16`).
pub fn forward_bf16<B: LayerNormOps>(
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
) -> Result<(Tensor<B>, LayerNormSaved<B>)> {
    forward_as(x, gamma, beta, true)
}

/// `forward` with y in bf16 when `bf16` (rounded from the value in the element type, for the GEMMs it feeds;
/// the statistics stay in the element type). Backward is `backward` either way.
pub(crate) fn forward_as<B: LayerNormOps>(
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
    bf16: bool,
) -> Result<(Tensor<B>, LayerNormSaved<B>)> {
    let (rows, d) = dims(x, gamma)?;
    beta.expect_shape("layernorm bias", gamma.shape())?;
    let b = x.backend();
    let (x_s, gamma_s, beta_s) = (x.storage()?, gamma.storage()?, beta.storage()?);
    let normalized = b.layernorm_fwd(x_s, gamma_s, beta_s, rows, d, bf16)?;
    LayerNormSaved::split(b, x.shape(), normalized)
}

/// The residual add before a pre-norm sublayer and that sublayer's LayerNorm, in one pass: `s = x +
/// dropout(branch)` (the residual stream, returned) and `y = LayerNorm(s)` (in bf16 with `bf16`, for the GEMMs
/// it feeds). The same values as `elementwise::dropout`, `Tensor::add` and `forward_as` in turn. Returns
/// `(s, y, saved)`; backward is `backward_residual` on `s`.
pub fn forward_residual<B: LayerNormOps>(
    x: &Tensor<B>,
    branch: &Tensor<B>,
    mask: Option<DropoutMask>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
    bf16: bool,
) -> Result<(Tensor<B>, Tensor<B>, LayerNormSaved<B>)> {
    let (rows, d) = dims(x, gamma)?;
    beta.expect_shape("layernorm bias", gamma.shape())?;
    branch.expect_shape("residual branch", x.shape())?;
    let b = x.backend();
    let (x_s, branch_s, gamma_s, beta_s) = (
        x.storage()?,
        branch.storage()?,
        gamma.storage()?,
        beta.storage()?,
    );
    let (s, normalized) =
        b.residual_layernorm_fwd(x_s, branch_s, mask, gamma_s, beta_s, rows, d, bf16)?;
    let (y, saved) = LayerNormSaved::split(b, x.shape(), normalized)?;
    Ok((Tensor::from_storage(b, x.shape(), s)?, y, saved))
}

impl<B: BackendCore> LayerNormSaved<B> {
    /// A forward's y as a tensor of `shape`, and its statistics as what backward keeps.
    fn split(b: &B, shape: &[usize], out: Normalized<B>) -> Result<(Tensor<B>, Self)> {
        let rows = [B::storage_len(&out.mean)];
        let saved = Self {
            mean: Tensor::from_storage(b, &rows, out.mean)?,
            rstd: Tensor::from_storage(b, &rows, out.rstd)?,
        };
        Ok((tensor_of(b, shape, out.y)?, saved))
    }
}

/// Gradient of `forward`: returns `dx`, accumulates into `dgamma` and `dbeta`.
pub fn backward<B: LayerNormOps>(
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    saved: &LayerNormSaved<B>,
    dy: &Tensor<B>,
    dgamma: &mut Tensor<B>,
    dbeta: &mut Tensor<B>,
) -> Result<Tensor<B>> {
    backward_residual(x, gamma, saved, dy, None, dgamma, dbeta)
}

/// `backward` plus `dres`, the gradient that reached this LayerNorm's input around the sublayer it feeds (a
/// pre-norm residual), added in the same pass: what the gradient of `forward_residual`'s `s` is.
pub fn backward_residual<B: LayerNormOps>(
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    saved: &LayerNormSaved<B>,
    dy: &Tensor<B>,
    dres: Option<&Tensor<B>>,
    dgamma: &mut Tensor<B>,
    dbeta: &mut Tensor<B>,
) -> Result<Tensor<B>> {
    let (rows, d) = dims(x, gamma)?;
    dy.expect_shape("layernorm output gradient", x.shape())?;
    if let Some(dres) = dres {
        dres.expect_shape("residual gradient", x.shape())?;
    }
    dgamma.expect_shape("layernorm weight gradient", &[d])?;
    dbeta.expect_shape("layernorm bias gradient", &[d])?;
    let b = x.backend().clone();
    let dres = dres.map(Tensor::storage).transpose()?;
    let dx = b.layernorm_bwd(
        x.storage()?,
        gamma.storage()?,
        saved.mean.storage()?,
        saved.rstd.storage()?,
        dy.storage()?,
        dres,
        dgamma.storage_mut()?,
        dbeta.storage_mut()?,
        rows,
        d,
    )?;
    Tensor::from_storage(&b, x.shape(), dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widths of common models (GPT-2 to GPT-3 sizes and the powers of two).
    const COMMON_WIDTHS: [usize; 9] = [512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192];

    /// What nvcc 13 gives `layernorm_bwd_f32` and `layernorm_bwd_residual_f32` (the ticket flag, `last`),
    /// as ptxas reports it.
    const FUSED_STATIC_BYTES: usize = 16;

    /// The dynamic shared memory the fused backward asks for at width `d` with `warps` warps.
    fn dynamic_bytes(d: usize, warps: usize) -> usize {
        warps * 2 * d * std::mem::size_of::<f32>()
    }

    /// Static plus dynamic shared memory within the 48 KiB a launch gets, at every width up to past the
    /// widest fused one and for static sizes around the kernel's. The old sizing (48 KiB of dynamic memory
    /// whatever the static size) fails this at d 768, 1024, 1536, 2048, 3072 and 6144: 16 + 49152 > 49152.
    #[test]
    fn the_fused_backward_fits_its_shared_memory_beside_the_static() {
        for static_bytes in [0, 4, FUSED_STATIC_BYTES, 1024, 48 * 1024 - 8, 48 * 1024] {
            for d in 1..=8192 {
                let warps = fused_warps(d, static_bytes);
                assert!(warps <= FUSED_MAX_WARPS);
                let total = static_bytes + dynamic_bytes(d, warps);
                assert!(
                    total <= LAUNCH_SHARED_LIMIT,
                    "d {d}, {static_bytes} static bytes: {warps} warps need {total} bytes"
                );
                // As many warps as fit: one more would not (or the cap is reached).
                assert!(
                    warps == FUSED_MAX_WARPS
                        || static_bytes + dynamic_bytes(d, warps + 1) > LAUNCH_SHARED_LIMIT,
                    "d {d}, {static_bytes} static bytes: {warps} warps leave room for another"
                );
            }
        }
        assert_eq!(dynamic_shared_budget(FUSED_STATIC_BYTES), 49_136);
        assert_eq!(dynamic_shared_budget(64 * 1024), 0);
    }

    /// The warps the fused backward gets at the common widths with the kernel's 16 static bytes. The old sizing
    /// gave 8, 6, 4, 3, 2 and 1 warps at 768, 1024, 1536, 2048, 3072 and 6144: 49,152 bytes of dynamic shared
    /// memory each, which cannot launch beside the static 16.
    #[test]
    fn the_fused_backward_at_the_common_widths() {
        let warps: Vec<usize> = COMMON_WIDTHS
            .iter()
            .map(|&d| fused_warps(d, FUSED_STATIC_BYTES))
            .collect();
        assert_eq!(warps, [8, 7, 5, 3, 2, 1, 1, 0, 0]);
        for (&d, &w) in COMMON_WIDTHS.iter().zip(&warps) {
            assert!(FUSED_STATIC_BYTES + dynamic_bytes(d, w) <= LAUNCH_SHARED_LIMIT);
        }
        let old = |d: usize| (LAUNCH_SHARED_LIMIT / (8 * d)).min(FUSED_MAX_WARPS);
        for d in [768, 1024, 1536, 2048, 3072, 6144] {
            assert!(
                FUSED_STATIC_BYTES + dynamic_bytes(d, old(d)) > LAUNCH_SHARED_LIMIT,
                "d {d}: the old sizing was within the limit"
            );
        }
    }

    /// Every kernel launched with dynamic shared memory is one of the fused backward's two (`extern __shared__`
    /// appears nowhere else in kernels/; every other launch asks for 0 bytes), and the static shared memory
    /// this build's ptxas gave them leaves the one-kernel backward the widths up to 4096.
    #[test]
    fn the_built_kernels_leave_the_fused_backward_its_budget() {
        let kernels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut dynamic = Vec::new();
        for entry in std::fs::read_dir(&kernels).expect("kernels/") {
            let path = entry.expect("kernels/ entry").path();
            if !path.extension().is_some_and(|e| e == "cu" || e == "cuh") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a kernel source");
            if text.contains("extern __shared__") {
                dynamic.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        assert_eq!(
            dynamic,
            ["layernorm.cu"],
            "a kernel with dynamic shared memory outside layernorm.cu: budget its launch from its static size"
        );
        let report = crate::device::cuda::ptxas::kernel_resources();
        if report.is_empty() {
            println!("skipped the ptxas half: this build has no kernels (nvcc was not found)");
            return;
        }
        for name in ["layernorm_bwd_f32", "layernorm_bwd_residual_f32"] {
            let k = report
                .iter()
                .find(|k| k.kernel == name)
                .unwrap_or_else(|| panic!("{name} is not in the ptxas report"));
            let static_bytes = k.shared_bytes as usize;
            println!("{name}: {static_bytes} bytes of static shared memory");
            // Small enough that the one-kernel backward still takes every width up to 4096.
            assert!(
                fused_warps(4096, static_bytes) == 1,
                "{name}: {static_bytes} static bytes leave no room for one warp at d 4096"
            );
            for d in COMMON_WIDTHS {
                let w = fused_warps(d, static_bytes);
                assert!(static_bytes + dynamic_bytes(d, w) <= LAUNCH_SHARED_LIMIT);
            }
        }
    }
}
