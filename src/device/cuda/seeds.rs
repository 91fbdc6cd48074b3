//! Where the dropout kernels read their masks' seeds: a table of u64 in device memory, one seed a slot.
//!
//! A kernel argument is fixed when a step is captured into a CUDA graph, but every step draws new masks, so
//! the kernels take the address of their seed instead of the seed. A training step stages its seeds in slots
//! `1..` (`rng::staged_slot`: micro-batch and site) from pinned memory before it runs, and its masks name those
//! slots; any other mask is written to slot 0 just before its launch, which stream order makes safe however
//! soon the slot is written again. Each micro-batch's slots are a block of their own that, once made, never
//! moves: a captured step keeps reading the slots it was captured with however many micro-batches another
//! step (of another trainer on the same device) stages later, and each step stages its seeds right before
//! it runs or replays.

use super::error::cuda_err;
use super::handle::Cuda;
use super::kernels::SeedPtr;
use super::seed_table::SEED_BYTES;
use crate::error::Result;
use crate::rng::DropoutMask;

impl Cuda {
    /// The address a dropout kernel reads `mask`'s seed from: its staged slot, or slot 0 after queuing a write
    /// of its seed there. Without a mask, slot 0 (the kernels then read nothing).
    pub(crate) fn seed_ptr(&self, mask: Option<&DropoutMask>) -> Result<SeedPtr> {
        let mut table = self.seed_table();
        let stream = self.stream();
        let Some(mask) = mask else {
            return Ok(SeedPtr(table.launch_slot(stream)));
        };
        let address = match mask.slot {
            Some(slot) => table.staged_slot(stream, slot)?,
            None => {
                self.refuse_while_capturing("a dropout mask whose seed was not staged")?;
                table.write_launch_slot(stream, mask.seed)?
            }
        };
        Ok(SeedPtr(address))
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

    /// Writes `seeds` to slots `1..=seeds.len()` through pinned memory, in stream order, first adding the
    /// blocks the table lacks (never during a capture: a captured step holds the addresses of its slots).
    pub(crate) fn stage_seeds(&self, seeds: &[u64]) -> Result<()> {
        let mut table = self.seed_table();
        if !table.holds(seeds.len()) {
            self.refuse_while_capturing("growing the dropout seed table")?;
            table.grow_to(self.stream(), seeds.len())?;
        }
        for (dst, block_seeds) in table.blocks_for(self.stream(), seeds) {
            self.upload_bytes(dst, bytemuck::cast_slice(block_seeds))?;
        }
        Ok(())
    }
}
