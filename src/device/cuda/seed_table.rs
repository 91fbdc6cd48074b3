//! The dropout seed table's memory: slot 0, written just before a launch that reads it, and the slots a
//! training step stages, in blocks of `SITES_PER_PASS` (one a micro-batch). What the slots are for, and how
//! the backend fills them: `seeds`.

use super::error::cuda_err;
use crate::error::{Error, Result};
use crate::rng::SITES_PER_PASS;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::sync::Arc;

/// Bytes a slot holds: one u64 seed.
pub(super) const SEED_BYTES: u64 = std::mem::size_of::<u64>() as u64;

/// Slot 0, and the staged slots in blocks of `SITES_PER_PASS`, added outside a capture as steps stage more and
/// never freed before the device (a block, once made, never moves).
pub(super) struct SeedTable {
    launch_slot: CudaSlice<u64>,
    staged: Vec<CudaSlice<u64>>,
}

impl SeedTable {
    pub(super) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let launch_slot = stream.alloc_zeros::<u64>(1).map_err(cuda_err)?;
        Ok(Self {
            launch_slot,
            staged: Vec::new(),
        })
    }

    /// Slots in the table, slot 0 included.
    fn len(&self) -> usize {
        1 + self.staged.len() * SITES_PER_PASS
    }

    /// Slot 0's address.
    pub(super) fn launch_slot(&self, stream: &Arc<CudaStream>) -> CUdeviceptr {
        self.launch_slot.device_ptr(stream).0
    }

    /// Queues a write of `seed` to slot 0 on `stream` and returns the slot's address: stream order keeps the
    /// write after the launches queued before and ahead of the one that follows.
    pub(super) fn write_launch_slot(
        &mut self,
        stream: &Arc<CudaStream>,
        seed: u64,
    ) -> Result<CUdeviceptr> {
        let address = self.launch_slot(stream);
        stream
            .memcpy_htod(&[seed], &mut self.launch_slot)
            .map_err(cuda_err)?;
        Ok(address)
    }

    /// The address of staged slot `slot`, or an error if the table has no such slot (slot 0 is not staged).
    pub(super) fn staged_slot(&self, stream: &Arc<CudaStream>, slot: u32) -> Result<CUdeviceptr> {
        if slot == 0 || slot as usize >= self.len() {
            return Err(Error::Cuda(format!(
                "dropout seed slot {slot} is not among the {} staged: stage the step's seeds first",
                self.len() - 1
            )));
        }
        let staged = (slot - 1) as usize;
        let block = &self.staged[staged / SITES_PER_PASS];
        let offset = SEED_BYTES * (staged % SITES_PER_PASS) as u64;
        Ok(block.device_ptr(stream).0 + offset)
    }

    /// Whether the table has staged slots `1..=count`.
    pub(super) fn holds(&self, count: usize) -> bool {
        self.staged.len() >= count.div_ceil(SITES_PER_PASS)
    }

    /// Adds the blocks that staged slots `1..=count` lack.
    pub(super) fn grow_to(&mut self, stream: &Arc<CudaStream>, count: usize) -> Result<()> {
        while !self.holds(count) {
            let block = stream
                .alloc_zeros::<u64>(SITES_PER_PASS)
                .map_err(cuda_err)?;
            self.staged.push(block);
        }
        Ok(())
    }

    /// Each block's address, with the part of `seeds` (slot 1 on) that goes there.
    pub(super) fn blocks_for<'a>(
        &'a self,
        stream: &'a Arc<CudaStream>,
        seeds: &'a [u64],
    ) -> impl Iterator<Item = (CUdeviceptr, &'a [u64])> + 'a {
        let addresses = self.staged.iter().map(|block| block.device_ptr(stream).0);
        addresses.zip(seeds.chunks(SITES_PER_PASS))
    }
}
