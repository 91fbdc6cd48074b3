//! `BackendCore` for `Cuda`: storage on the device, copies (queued ones through pinned buffers), the
//! elementwise kernels the trait names, and a training step's capture into a CUDA graph and its replay.

use super::error::cuda_err;
use super::handle::{CapturedGraph, Cuda};
use super::launch_config::{pointwise_config, vector8_config};
use super::staging::PendingRead;
use crate::device::{BackendCore, DeviceKind};
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;

impl Cuda {
    /// The buffers one after another, by device-to-device copies.
    fn concat_slices<T: cudarc::driver::DeviceRepr>(
        &self,
        parts: &[&CudaSlice<T>],
    ) -> Result<CudaSlice<T>> {
        let total = parts.iter().map(|p| p.len()).sum();
        // SAFETY: the copies below write every element: the parts' lengths add up to `total`.
        let mut out = unsafe { self.alloc_uninit::<T>(total) }?;
        let mut start = 0;
        for part in parts {
            let mut dst = out.slice_mut(start..start + part.len());
            self.stream()
                .memcpy_dtod(*part, &mut dst)
                .map_err(cuda_err)?;
            start += part.len();
        }
        Ok(out)
    }

    /// Elements `start..start + len` of `storage` in a buffer of their own (a device-to-device copy).
    fn copy_range_of<T: cudarc::driver::DeviceRepr>(
        &self,
        storage: &CudaSlice<T>,
        start: usize,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        // SAFETY: the copy below writes all `len` elements.
        let mut out = unsafe { self.alloc_uninit::<T>(len) }?;
        self.stream()
            .memcpy_dtod(&storage.slice(start..start + len), &mut out)
            .map_err(cuda_err)?;
        Ok(out)
    }

    /// `src` over `dst[offset..]` (a device-to-device copy).
    fn copy_into_of<T: cudarc::driver::DeviceRepr>(
        &self,
        dst: &mut CudaSlice<T>,
        offset: usize,
        src: &CudaSlice<T>,
    ) -> Result<()> {
        let mut view = dst.slice_mut(offset..offset + src.len());
        self.stream().memcpy_dtod(src, &mut view).map_err(cuda_err)
    }
}

impl BackendCore for Cuda {
    type Elem = f32;
    type Storage = CudaSlice<f32>;
    type Bf16Storage = CudaSlice<half::bf16>;
    type Ids = CudaSlice<u32>;
    type PendingRead = PendingRead;
    type Graph = CapturedGraph;

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda(self.ordinal())
    }
    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream().alloc_zeros::<f32>(len).map_err(cuda_err)
    }
    fn available_memory(&self) -> Option<u64> {
        let (free, _total) = self.context().mem_get_info().ok()?;
        Some(free as u64)
    }
    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.refuse_while_capturing("a copy from pageable host memory")?;
        self.stream().clone_htod(data).map_err(cuda_err)
    }
    fn download(&self, storage: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.refuse_while_capturing("a copy back to the host")?;
        self.stream().clone_dtoh(storage).map_err(cuda_err)
    }
    fn copy(&self, storage: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        // SAFETY: the device-to-device copy below writes all of it.
        let mut out = unsafe { self.alloc_uninit(storage.len()) }?;
        self.stream()
            .memcpy_dtod(storage, &mut out)
            .map_err(cuda_err)?;
        Ok(out)
    }
    fn storage_len(storage: &CudaSlice<f32>) -> usize {
        storage.len()
    }
    fn bf16_len(storage: &CudaSlice<half::bf16>) -> usize {
        storage.len()
    }
    fn round_to_bf16(&self, x: &CudaSlice<f32>) -> Result<CudaSlice<half::bf16>> {
        // SAFETY: round_to_bf16_f32 writes every element.
        let mut y = unsafe { self.alloc_uninit(x.len()) }?;
        self.round_to_bf16_f32(vector8_config(x.len()), x, &mut y, x.len() as i64)?;
        Ok(y)
    }
    fn widen_bf16(&self, x: &CudaSlice<half::bf16>) -> Result<CudaSlice<f32>> {
        // SAFETY: widen_bf16_f32 writes every element.
        let mut y = unsafe { self.alloc_uninit(x.len()) }?;
        self.widen_bf16_f32(vector8_config(x.len()), x, &mut y, x.len() as i64)?;
        Ok(y)
    }
    fn add(&self, a: &CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        let n = a.len() as i64;
        // SAFETY: add_f32 writes every element (grid-stride over n).
        let mut out = unsafe { self.alloc_uninit(a.len()) }?;
        self.add_f32(pointwise_config(a.len()), a, b, &mut out, n)?;
        Ok(out)
    }
    fn add_assign_from(
        &self,
        acc: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        offset: usize,
    ) -> Result<()> {
        let n = acc.len() as i64;
        self.add_assign_f32(pointwise_config(acc.len()), acc, x, offset as i64, n)
    }
    fn concat(&self, parts: &[&CudaSlice<f32>]) -> Result<CudaSlice<f32>> {
        self.concat_slices(parts)
    }
    fn concat_bf16(&self, parts: &[&CudaSlice<half::bf16>]) -> Result<CudaSlice<half::bf16>> {
        self.concat_slices(parts)
    }
    fn copy_range(
        &self,
        storage: &CudaSlice<f32>,
        start: usize,
        len: usize,
    ) -> Result<CudaSlice<f32>> {
        self.copy_range_of(storage, start, len)
    }
    fn copy_range_bf16(
        &self,
        storage: &CudaSlice<half::bf16>,
        start: usize,
        len: usize,
    ) -> Result<CudaSlice<half::bf16>> {
        self.copy_range_of(storage, start, len)
    }
    fn copy_into(
        &self,
        dst: &mut CudaSlice<f32>,
        offset: usize,
        src: &CudaSlice<f32>,
    ) -> Result<()> {
        self.copy_into_of(dst, offset, src)
    }
    fn copy_into_bf16(
        &self,
        dst: &mut CudaSlice<half::bf16>,
        offset: usize,
        src: &CudaSlice<half::bf16>,
    ) -> Result<()> {
        self.copy_into_of(dst, offset, src)
    }
    fn fill_zero(&self, storage: &mut CudaSlice<f32>) -> Result<()> {
        self.stream().memset_zeros(storage).map_err(cuda_err)
    }
    fn synchronize(&self) -> Result<()> {
        self.stream().synchronize().map_err(cuda_err)
    }
    fn upload_ids(&self, ids: &[u32]) -> Result<CudaSlice<u32>> {
        self.refuse_while_capturing("uploading token ids from pageable memory")?;
        self.stream().clone_htod(ids).map_err(cuda_err)
    }
    fn ids_len(ids: &CudaSlice<u32>) -> usize {
        ids.len()
    }
    fn write_async(&self, dst: &mut CudaSlice<f32>, offset: usize, src: &[f32]) -> Result<()> {
        use cudarc::driver::DevicePtrMut;
        let (ptr, _done) = dst.device_ptr_mut(self.stream());
        let at = ptr + (offset * std::mem::size_of::<f32>()) as u64;
        self.upload_bytes(at, bytemuck::cast_slice(src))
    }
    fn write_ids_async(&self, dst: &mut CudaSlice<u32>, src: &[u32]) -> Result<()> {
        use cudarc::driver::DevicePtrMut;
        let (ptr, _done) = dst.device_ptr_mut(self.stream());
        self.upload_bytes(ptr, bytemuck::cast_slice(src))
    }
    fn stage_seeds(&self, seeds: &[u64]) -> Result<()> {
        Cuda::stage_seeds(self, seeds)
    }
    fn read_async(&self, src: &CudaSlice<f32>) -> Result<PendingRead> {
        use cudarc::driver::DevicePtr;
        let (ptr, _done) = src.device_ptr(self.stream());
        let bytes = std::mem::size_of_val(&0f32) * src.len();
        self.download_bytes(ptr, bytes)
    }
    fn finish_read(&self, read: PendingRead) -> Result<Vec<f32>> {
        let bytes = self.finish_download(read)?;
        // Not cast_slice: a Vec<u8> need not be 4-aligned.
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
    fn can_capture(&self) -> bool {
        true
    }
    fn begin_capture(&self) -> Result<()> {
        use cudarc::driver::sys::CUstreamCaptureMode;
        // The uncaptured step before a capture left its activations freed in the default pool, which keeps
        // freed memory (`keep_freed_memory_in_pool`); the graph allocates from a pool of its own and never
        // reuses them, so without this the run would hold two steps' activations.
        self.release_cached_memory()?;
        // Thread-local: another thread's unrelated CUDA calls neither join nor break this capture.
        self.stream()
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err)?;
        *self.capture() = Some(Vec::new());
        Ok(())
    }
    fn end_capture(&self) -> Result<CapturedGraph> {
        use cudarc::driver::sys::CUgraphInstantiate_flags;
        let tables = self.capture().take().unwrap_or_default();
        let graph = self
            .stream()
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(cuda_err)?;
        let graph =
            graph.ok_or_else(|| Error::Cuda("the captured step recorded no work".into()))?;
        // Maps the graph's memory now rather than at its first replay.
        graph.upload().map_err(cuda_err)?;
        Ok(CapturedGraph {
            graph,
            _tables: tables,
        })
    }
    fn replay(&self, captured: &CapturedGraph) -> Result<()> {
        captured.graph.launch().map_err(cuda_err)?;
        self.count_launch();
        Ok(())
    }
}
