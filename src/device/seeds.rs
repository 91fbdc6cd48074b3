//! Where the dropout kernels read their masks' seeds: a table of u64 in device memory, one seed a slot.
//!
//! A kernel argument is fixed when a step is captured into a CUDA graph, but every step draws new masks, so
//! the kernels take the address of their seed instead of the seed. A training step stages its seeds in slots
//! `1..` (`rng::staged_slot`: micro-batch and site) from pinned memory before it runs, and its masks name those
//! slots; any other mask is written to slot 0 just before its launch, which stream order makes safe however
//! soon the slot is written again.

use super::cuda::{cuda_err, Cuda};
use super::kernels::SeedPtr;
use crate::error::{Error, Result};
use crate::rng::DropoutMask;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::sync::Arc;

/// The table, grown (outside a capture) to hold the slots staged.
pub(crate) struct SeedTable {
    slots: CudaSlice<u64>,
}

const SEED_BYTES: u64 = std::mem::size_of::<u64>() as u64;

impl SeedTable {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let slots = stream.alloc_zeros::<u64>(1).map_err(cuda_err)?;
        Ok(Self { slots })
    }
}

impl Cuda {
    /// The address a dropout kernel reads `mask`'s seed from: its staged slot, or slot 0 after queuing a write
    /// of its seed there. Without a mask, slot 0 (the kernels then read nothing).
    pub(crate) fn seed_ptr(&self, mask: Option<&DropoutMask>) -> Result<SeedPtr> {
        let mut table = self.seed_table();
        let stream = self.stream();
        let base = table.slots.device_ptr(stream).0;
        let Some(mask) = mask else {
            return Ok(SeedPtr(base));
        };
        match mask.slot {
            Some(slot) if (slot as usize) < table.slots.len() => {
                Ok(SeedPtr(base + SEED_BYTES * slot as u64))
            }
            Some(slot) => Err(Error::Cuda(format!(
                "dropout seed slot {slot} is past the {} slots staged: stage the step's seeds first",
                table.slots.len()
            ))),
            None => {
                self.refuse_while_capturing("a dropout mask whose seed was not staged")?;
                let mut first = table.slots.slice_mut(0..1);
                stream
                    .memcpy_htod(&[mask.seed], &mut first)
                    .map_err(cuda_err)?;
                Ok(SeedPtr(base))
            }
        }
    }

    /// A mask as the dropout kernels take it: its seed's address, then `rng::kernel_args`.
    pub(crate) fn dropout_args(
        &self,
        mask: Option<DropoutMask>,
    ) -> Result<(SeedPtr, u32, f32, i32)> {
        let seed = self.seed_ptr(mask.as_ref())?;
        let (threshold, scale, on) = crate::rng::kernel_args(mask);
        Ok((seed, threshold, scale, on))
    }

    /// Copies `mask`'s seed into the dropout-seed constant of attention module `module` on the stream, for
    /// the launch that follows (kernels/attention_common.cuh: the tiled kernels read it as a constant, which
    /// costs no registers). Nothing without a mask.
    pub(crate) fn set_attention_seed(
        &self,
        module: &str,
        mask: Option<&DropoutMask>,
    ) -> Result<()> {
        if mask.is_none() {
            return Ok(());
        }
        let SeedPtr(src) = self.seed_ptr(mask)?;
        let dst = self.attention_seed_symbol(module)?;
        // SAFETY: both addresses hold a u64 (a seed-table slot, the module's constant), the copy is queued on
        // the one stream before the kernel that reads the constant, and the table outlives it.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst,
                src,
                SEED_BYTES as usize,
                self.stream().cu_stream(),
            )
        }
        .map_err(cuda_err)
    }

    /// Writes `seeds` to slots `1..=seeds.len()` through pinned memory, in stream order, growing the table
    /// first if it is too small (never during a capture: a captured step holds the table's address).
    pub(crate) fn stage_seeds(&self, seeds: &[u64]) -> Result<()> {
        let mut table = self.seed_table();
        if table.slots.len() < 1 + seeds.len() {
            self.refuse_while_capturing("growing the dropout seed table")?;
            table.slots = self
                .stream()
                .alloc_zeros::<u64>(1 + seeds.len())
                .map_err(cuda_err)?;
        }
        let dst = table.slots.device_ptr(self.stream()).0 + SEED_BYTES;
        self.upload_bytes(dst, bytemuck::cast_slice(seeds))
    }
}
