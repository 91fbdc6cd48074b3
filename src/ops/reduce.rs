//! Deterministic sum of squares over one or several tensors, returned on the host in f64 or written into a slot
//! of a tensor on the device (a training step's state: no host round trip): the global gradient norm of
//! gradient clipping; and the mean of a tensor into such a slot (a micro-batch's loss). The order of every addition is fixed by the tensors' lengths alone (never by
//! thread counts or timing), so the same gradients give the same norm bit for bit on every run.
//!
//! CPU half: each tensor in chunks of `CPU_CHUNK` elements, each chunk summed left to right in f64 (in
//! parallel), the chunk sums then added in order. CUDA half (`kernels/reduce.cu`): stage 1 gives each tensor a
//! number of blocks that depends only on its length, each block sums its grid-stride share in double and
//! combines its threads by a fixed tree into one partial; stage 2 (one block) sums all partials by the same
//! scheme; one 8-byte copy to the host, or an f32 store into the slot.

use crate::device::cuda::cuda_err;
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor};
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
    /// `sum_squares`, stored (rounded to `Elem`) in `out[index]` on the device.
    fn sum_squares_into(
        &self,
        xs: &[&Self::Storage],
        out: &mut Self::Storage,
        index: usize,
    ) -> Result<()>;
    /// The mean of `x` (summed in f64, in a fixed order), stored in `out[index]`.
    fn mean_into(&self, x: &Self::Storage, out: &mut Self::Storage, index: usize) -> Result<()>;
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
    fn sum_squares_into(&self, xs: &[&Vec<T>], out: &mut Vec<T>, index: usize) -> Result<()> {
        out[index] = T::from_f64(self.sum_squares(xs)?);
        Ok(())
    }
    fn mean_into(&self, x: &Vec<T>, out: &mut Vec<T>, index: usize) -> Result<()> {
        let sum: f64 = x.iter().map(|v| v.to_f64()).sum();
        out[index] = T::from_f64(sum * (1.0 / x.len() as f64));
        Ok(())
    }
}

/// Stage-1 blocks for a tensor of `n` elements: a function of `n` alone.
fn stage1_blocks(n: usize) -> usize {
    n.div_ceil(THREADS * PER_THREAD).min(MAX_BLOCKS)
}

/// One block, for stage 2 and the mean.
fn one_block() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Cuda {
    /// Stage 1 over `xs`, every tensor in one launch (`sum_squares_multi_f32`): the partial sums and their
    /// count (none when every tensor is empty).
    fn sum_squares_partials(
        &self,
        xs: &[&CudaSlice<f32>],
    ) -> Result<Option<(CudaSlice<f64>, i64)>> {
        use cudarc::driver::DevicePtr;
        let stream = self.stream();
        let (mut words, mut starts, mut total) = (Vec::new(), Vec::new(), 0i64);
        for x in xs.iter().filter(|x| !x.is_empty()) {
            words.extend([x.device_ptr(stream).0, x.len() as u64]);
            starts.push(total);
            total += stage1_blocks(x.len()) as i64;
        }
        if total == 0 {
            return Ok(None);
        }
        starts.push(total);
        let count = (starts.len() - 1) as i32;
        // SAFETY: stage 1 writes every partial (each tensor's blocks cover their range) before stage 2 reads.
        let mut partials = unsafe { self.alloc_uninit::<f64>(total as usize) }?;
        let table = self.tensor_table("sum of squares", words, starts)?;
        let config = LaunchConfig {
            grid_dim: (total as u32, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        self.sum_squares_multi_f32(config, &table.words, &table.starts, count, &mut partials)?;
        Ok(Some((partials, total)))
    }
}

impl ReduceOps for Cuda {
    fn sum_squares(&self, xs: &[&CudaSlice<f32>]) -> Result<f64> {
        let Some((partials, n)) = self.sum_squares_partials(xs)? else {
            return Ok(0.0);
        };
        // SAFETY: stage 2's one block writes out[0] before anything reads it.
        let mut out = unsafe { self.alloc_uninit::<f64>(1) }?;
        self.sum_squares_stage2_f64(one_block(), &partials, n, &mut out)?;
        let host = self.stream().clone_dtoh(&out).map_err(cuda_err)?;
        Ok(host[0])
    }

    fn sum_squares_into(
        &self,
        xs: &[&CudaSlice<f32>],
        out: &mut CudaSlice<f32>,
        index: usize,
    ) -> Result<()> {
        match self.sum_squares_partials(xs)? {
            Some((partials, n)) => {
                self.sum_squares_stage2_into_f32(one_block(), &partials, n, out, index as i64)
            }
            // Nothing to sum: a zero written on the device, which a capture can record (a staged copy not).
            None => self
                .stream()
                .memset_zeros(&mut out.slice_mut(index..index + 1))
                .map_err(cuda_err),
        }
    }

    fn mean_into(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>, index: usize) -> Result<()> {
        self.mean_into_f32(one_block(), x, x.len() as i64, out, index as i64)
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

/// `sum_squares_all` stored in `out[index]`, on the device (nothing comes back to the host).
pub(crate) fn sum_squares_all_into<B: ReduceOps>(
    xs: &[&Tensor<B>],
    out: &mut Tensor<B>,
    index: usize,
) -> Result<()> {
    check_slot("sum of squares", out, index)?;
    let storages = xs.iter().map(|t| t.storage()).collect::<Result<Vec<_>>>()?;
    let backend = out.backend().clone();
    backend.sum_squares_into(&storages, out.storage_mut()?, index)
}

/// The mean of `x` stored in `out[index]`, on the device.
pub(crate) fn mean_into<B: ReduceOps>(
    x: &Tensor<B>,
    out: &mut Tensor<B>,
    index: usize,
) -> Result<()> {
    check_slot("mean", out, index)?;
    check_nonempty("the tensor to average", x.shape())?;
    let backend = out.backend().clone();
    backend.mean_into(x.storage()?, out.storage_mut()?, index)
}

fn check_slot<B: BackendCore>(what: &str, out: &Tensor<B>, index: usize) -> Result<()> {
    if index >= out.len() {
        return Err(shape_err!(
            "{what} into slot {index} of a tensor of shape {:?}",
            out.shape()
        ));
    }
    Ok(())
}
