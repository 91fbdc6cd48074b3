//! Deterministic sum of squares over one or several tensors, returned on the host in f64: the global gradient
//! norm of gradient clipping. The order of every addition is fixed by the tensors' lengths alone (never by
//! thread counts or timing), so the same gradients give the same norm bit for bit on every run.
//!
//! CPU half: each tensor in chunks of `CPU_CHUNK` elements, each chunk summed left to right in f64 (in
//! parallel), the chunk sums then added in order. CUDA half (`kernels/reduce.cu`): stage 1 gives each tensor a
//! number of blocks that depends only on its length, each block sums its grid-stride share in double and
//! combines its threads by a fixed tree into one partial; stage 2 (one block) sums all partials by the same
//! scheme; one 8-byte copy to the host.

use crate::device::cuda::cuda_err;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::driver::{CudaSlice, LaunchConfig};
use rayon::prelude::*;

/// Elements per chunk of the CPU half.
const CPU_CHUNK: usize = 1 << 14;
/// Threads per block of both CUDA stages (`REDUCE_THREADS` in `kernels/reduce.cu`).
const THREADS: usize = 256;
/// Elements each stage-1 thread handles at least, before a tensor gets another block.
const PER_THREAD: usize = 8;
/// At most this many stage-1 blocks (partials) per tensor.
const MAX_BLOCKS: usize = 1024;

pub trait ReduceOps: BackendCore {
    /// `Σ_t Σ_i x_t[i]²` over the storages `xs`, accumulated in f64 and in an order fixed by their lengths.
    fn sum_squares(&self, xs: &[&Self::Storage]) -> Result<f64>;
}

/// The sum of squares of one slice, in f64, in the fixed chunked order.
fn sum_squares_slice<T: Element>(x: &[T]) -> f64 {
    let chunk = |c: &[T]| -> f64 {
        c.iter()
            .map(|&v| {
                let v = v.to_f64();
                v * v
            })
            .sum()
    };
    let partials: Vec<f64> = if x.len() > CPU_CHUNK {
        x.par_chunks(CPU_CHUNK).map(chunk).collect()
    } else {
        vec![chunk(x)]
    };
    partials.iter().sum()
}

impl<T: Element> ReduceOps for Cpu<T> {
    fn sum_squares(&self, xs: &[&Vec<T>]) -> Result<f64> {
        Ok(xs.iter().map(|x| sum_squares_slice(x)).sum())
    }
}

/// Stage-1 blocks for a tensor of `n` elements: a function of `n` alone.
fn stage1_blocks(n: usize) -> usize {
    n.div_ceil(THREADS * PER_THREAD).min(MAX_BLOCKS)
}

impl ReduceOps for Cuda {
    fn sum_squares(&self, xs: &[&CudaSlice<f32>]) -> Result<f64> {
        let total: usize = xs.iter().map(|x| stage1_blocks(x.len())).sum();
        if total == 0 {
            return Ok(0.0);
        }
        // SAFETY: stage 1 writes every partial (each tensor's blocks cover their range) before stage 2 reads.
        let mut partials = unsafe { self.alloc_uninit::<f64>(total) }?;
        let mut offset = 0usize;
        for x in xs {
            let blocks = stage1_blocks(x.len());
            if blocks == 0 {
                continue;
            }
            let (n, off) = (x.len() as i64, offset as i64);
            let config = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            self.sum_squares_stage1_f32(config, x, n, &mut partials, off)?;
            offset += blocks;
        }
        // SAFETY: stage 2's one block writes out[0] before anything reads it.
        let mut out = unsafe { self.alloc_uninit::<f64>(1) }?;
        let n = total as i64;
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        self.sum_squares_stage2_f64(config, &partials, n, &mut out)?;
        let host = self.stream().clone_dtoh(&out).map_err(cuda_err)?;
        Ok(host[0])
    }
}

/// `Σ x²` of one tensor, in f64.
pub fn sum_squares<B: ReduceOps>(x: &Tensor<B>) -> Result<f64> {
    sum_squares_all(&[x])
}

/// `Σ x²` over every element of every tensor in `xs` (all on the same backend), in f64; 0 for none.
pub fn sum_squares_all<B: ReduceOps>(xs: &[&Tensor<B>]) -> Result<f64> {
    let Some(first) = xs.first() else {
        return Ok(0.0);
    };
    let storages = xs.iter().map(|t| t.storage()).collect::<Result<Vec<_>>>()?;
    first.backend().sum_squares(&storages)
}
