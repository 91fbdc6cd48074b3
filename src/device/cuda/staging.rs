//! Pinned host buffers for the copies a training step makes without stopping the host: its inputs (ids,
//! targets, learning rate, dropout seeds) go up, its results (loss, gradient norm, the non-finite flag) come
//! down, each queued on the stream like a kernel.
//!
//! A copy from pageable memory cannot be captured into a graph and may block the host; one from pinned memory
//! is an ordinary stream operation, but its buffer must not be rewritten (upload) or read (download) until the
//! copy has run. So each upload takes a buffer no copy in flight still uses (an event recorded after each copy
//! says when), and each download hands back its buffer with the event to wait on. None of them may be captured
//! into a graph (`Cuda` refuses them while capturing): the graph would keep the address of a buffer handed to
//! later copies, and the buffer's event would be recorded inside the capture instead of on the stream.

use super::error::cuda_err;
use crate::error::Result;
use cudarc::driver::sys::{self, CUdeviceptr};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, PinnedHostSlice};
use std::collections::VecDeque;
use std::sync::Arc;

/// One page-locked buffer and the event recorded after the last copy that used it.
struct Pinned {
    bytes: PinnedHostSlice<u8>,
    done: CudaEvent,
}

impl Pinned {
    fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        // SAFETY: the bytes are written by the host (upload) or by a copy (download) before anyone reads them.
        // Flags 0: cached, not write-combined, since downloads are read back by the host.
        let bytes =
            unsafe { ctx.alloc_pinned_with_flags::<u8>(len.max(64), 0) }.map_err(cuda_err)?;
        let done = ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(cuda_err)?;
        Ok(Self { bytes, done })
    }

    /// Whether the last copy recorded on `done` has run (or none was recorded).
    fn idle(&self) -> bool {
        // SAFETY: a status query of a live event.
        let status = unsafe { sys::cuEventQuery(self.done.cu_event()) };
        status != sys::CUresult::CUDA_ERROR_NOT_READY
    }

    fn host(&mut self, len: usize) -> Result<&mut [u8]> {
        Ok(&mut self.bytes.as_mut_slice().map_err(cuda_err)?[..len])
    }
}

impl Drop for Pinned {
    /// Waits for the last copy that used the buffer (a download dropped unread, say) before it is freed.
    fn drop(&mut self) {
        let _ = self.done.synchronize();
    }
}

/// The buffers of a backend: uploads in flight (oldest first), and idle ones to reuse.
#[derive(Default)]
pub(crate) struct Staging {
    in_flight: VecDeque<Pinned>,
    idle: Vec<Pinned>,
}

/// A download queued on the stream: `Staging::finish` waits for it and returns its bytes.
pub struct PendingRead {
    buffer: Pinned,
    len: usize,
}

impl Staging {
    /// A buffer of at least `len` bytes that no queued copy uses.
    fn take(&mut self, ctx: &Arc<CudaContext>, len: usize) -> Result<Pinned> {
        while self.in_flight.front().is_some_and(Pinned::idle) {
            self.idle.extend(self.in_flight.pop_front());
        }
        match self.idle.iter().position(|b| b.bytes.len() >= len) {
            Some(i) => Ok(self.idle.swap_remove(i)),
            None => Pinned::new(ctx, len.next_power_of_two()),
        }
    }

    /// Queues a copy of `bytes` to device address `dst` (which must hold them) on `stream`; returns at once.
    pub(crate) fn upload(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &CudaStream,
        dst: CUdeviceptr,
        bytes: &[u8],
    ) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut buffer = self.take(ctx, bytes.len())?;
        let host = buffer.host(bytes.len())?;
        host.copy_from_slice(bytes);
        // SAFETY: `host` is pinned and stays untouched until `done` (recorded right after) has passed: the
        // buffer waits in `in_flight` until then. The caller vouches for `dst`.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, host, stream.cu_stream()) }
            .map_err(cuda_err)?;
        buffer.done.record(stream).map_err(cuda_err)?;
        self.in_flight.push_back(buffer);
        Ok(())
    }

    /// Queues a copy of `len` bytes from device address `src` to a pinned buffer; `finish` returns them.
    pub(crate) fn download(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &CudaStream,
        src: CUdeviceptr,
        len: usize,
    ) -> Result<PendingRead> {
        let mut buffer = self.take(ctx, len)?;
        let host = buffer.host(len)?;
        // SAFETY: the buffer belongs to the PendingRead alone, which reads it only after `done` has passed.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(host, src, stream.cu_stream()) }
            .map_err(cuda_err)?;
        buffer.done.record(stream).map_err(cuda_err)?;
        Ok(PendingRead { buffer, len })
    }

    /// Waits for `read`'s copy and returns its bytes; the buffer is reused.
    pub(crate) fn finish(&mut self, mut read: PendingRead) -> Result<Vec<u8>> {
        read.buffer.done.synchronize().map_err(cuda_err)?;
        let bytes = read.buffer.host(read.len)?.to_vec();
        self.idle.push(read.buffer);
        Ok(bytes)
    }
}
