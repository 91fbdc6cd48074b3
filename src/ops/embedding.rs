//! Token embedding: `out[n] = table[ids[n]]`; backward scatter-adds into the table's gradient.
//! Token ids are checked on the host and then live in the backend's memory (`BackendCore::Ids`): uploaded per
//! call, or staged by a training step into buffers a captured graph reads.
//! Kernels: `kernels/embedding.cu`.

use crate::device::cuda::kernels::GRID_Y_MAX;
use crate::device::cuda::rows_config;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor, Tokens};
use cudarc::driver::{CudaSlice, LaunchConfig};
use rayon::prelude::*;

pub trait EmbeddingOps: BackendCore {
    /// `[n, d]` rows of `table[vocab, d]` picked by `ids` (all `< vocab`).
    fn embedding_fwd(
        &self,
        table: &Self::Storage,
        ids: &Self::Ids,
        d: usize,
    ) -> Result<Self::Storage>;
    /// `dtable[v] += Σ_{n: ids[n] = v} dout[n]`, summed in order of `n`.
    fn embedding_bwd(
        &self,
        dout: &Self::Storage,
        ids: &Self::Ids,
        dtable: &mut Self::Storage,
        d: usize,
    ) -> Result<()>;
}

impl<T: Element> EmbeddingOps for Cpu<T> {
    fn embedding_fwd(&self, table: &Vec<T>, ids: &Vec<u32>, d: usize) -> Result<Vec<T>> {
        let mut out = vec![T::zero(); ids.len() * d];
        out.par_chunks_mut(d)
            .zip(ids.par_iter())
            .for_each(|(row, &id)| {
                row.copy_from_slice(&table[id as usize * d..][..d]);
            });
        Ok(out)
    }

    fn embedding_bwd(
        &self,
        dout: &Vec<T>,
        ids: &Vec<u32>,
        dtable: &mut Vec<T>,
        d: usize,
    ) -> Result<()> {
        dtable.par_chunks_mut(d).enumerate().for_each(|(v, row)| {
            for (n, _) in ids.iter().enumerate().filter(|(_, &id)| id as usize == v) {
                row.iter_mut()
                    .zip(&dout[n * d..][..d])
                    .for_each(|(a, &g)| *a += g);
            }
        });
        Ok(())
    }
}

impl EmbeddingOps for Cuda {
    fn embedding_fwd(
        &self,
        table: &CudaSlice<f32>,
        ids: &CudaSlice<u32>,
        d: usize,
    ) -> Result<CudaSlice<f32>> {
        // SAFETY: embedding_fwd_f32 writes every element of every id's row.
        let mut out = unsafe { self.alloc_uninit(ids.len() * d) }?;
        let (n, width) = (ids.len() as i64, d as i32);
        self.embedding_fwd_f32(rows_config(ids.len(), d), table, ids, &mut out, n, width)?;
        Ok(out)
    }

    fn embedding_bwd(
        &self,
        dout: &CudaSlice<f32>,
        ids: &CudaSlice<u32>,
        dtable: &mut CudaSlice<f32>,
        d: usize,
    ) -> Result<()> {
        let vocab = dtable.len() / d;
        let (n, width, vocab_i) = (ids.len() as i64, d as i32, vocab as i32);
        let config = LaunchConfig {
            grid_dim: (d.div_ceil(128) as u32, vocab.clamp(1, GRID_Y_MAX) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        self.embedding_bwd_f32(config, dout, ids, dtable, n, width, vocab_i)
    }
}

/// Checks `table[vocab, d]` and that every id is below `vocab`; returns `(vocab, d)`.
fn dims<B: BackendCore>(table: &Tensor<B>, ids: &Tokens<B>) -> Result<(usize, usize)> {
    let [vocab, d] = *table.shape() else {
        return Err(shape_err!(
            "embedding table must be [vocab, d], got {:?}",
            table.shape()
        ));
    };
    check_nonempty("embedding table", table.shape())?;
    if ids.vocab() > vocab {
        return Err(shape_err!(
            "token ids checked against a vocabulary of {}, but the embedding table has {vocab} rows",
            ids.vocab()
        ));
    }
    Ok((vocab, d))
}

/// The rows of `table` for `ids`, shaped `[ids.len(), d]`.
pub fn forward<B: EmbeddingOps>(table: &Tensor<B>, ids: &Tokens<B>) -> Result<Tensor<B>> {
    let (_, d) = dims(table, ids)?;
    let out = table
        .backend()
        .embedding_fwd(table.storage()?, ids.ids(), d)?;
    Tensor::from_storage(table.backend(), &[ids.len(), d], out)
}

/// Accumulates the gradient of `forward` into `dtable`.
pub fn backward<B: EmbeddingOps>(
    dout: &Tensor<B>,
    ids: &Tokens<B>,
    dtable: &mut Tensor<B>,
) -> Result<()> {
    let (_, d) = dims(dtable, ids)?;
    dout.expect_shape("embedding output gradient", &[ids.len(), d])?;
    let backend = dout.backend().clone();
    backend.embedding_bwd(dout.storage()?, ids.ids(), dtable.storage_mut()?, d)
}
