//! `Cuda` itself: the context, its one stream and cuBLAS handles, the memory pool, the loaded kernels, and the
//! state a device keeps across launches (seed table, staging buffers, tensor tables, the capture in progress
//! and the graph it becomes). The files above add its operations: `kernels` (a typed method per kernel),
//! `seeds`, `gemm`, `backend_core`.

use super::emulator::{self, CudaSource};
use super::error::cuda_err;
use super::gemm_lt::GemmLt;
use super::modules::{self, KernelImages, ATTENTION_SEED, NVCC_FOUND};
use super::options::{AttnVersion, CudaOptions, GemmPath, KernelSource};
use super::seed_table::SeedTable;
use super::staging::{PendingRead, Staging};
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A CUDA device. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

struct Inner {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLAS's scratch, fixed so that a captured GEMM never allocates.
    _blas_workspace: CudaSlice<u8>,
    /// `None`: every GEMM goes through cublasGemmEx (`GemmPath::GemmEx`, or no libcublasLt).
    lt: Option<GemmLt>,
    attention: AttnVersion,
    functions: HashMap<String, CudaFunction>,
    /// What the kernels were loaded from (cubin or PTX), and how long it took.
    kernel_images: KernelImages,
    seeds: Mutex<SeedTable>,
    /// The address of each attention module's dropout-seed constant (`ATTENTION_SEED`), by module name.
    attention_seeds: HashMap<String, CUdeviceptr>,
    staging: Mutex<Staging>,
    /// While the stream is being captured into a graph (what may not happen then is refused by name): the
    /// tensor tables the capture reads, which the graph will keep.
    capture: Mutex<Option<Vec<Arc<TensorTable>>>>,
    /// Kernels and GEMMs queued so far (`launches`: the bench counts them per layer).
    launches: AtomicU64,
    /// The last table of each multi-tensor kernel, by the kernel's name (`tensor_table`).
    tensor_tables: Mutex<HashMap<&'static str, Arc<TensorTable>>>,
}

/// A captured step (`begin_capture` ... `end_capture`), with the tensor tables it reads: another step, or a
/// host-path reduction, may replace a kernel's table in `Cuda`'s cache, but not under a graph that reads it.
pub struct CapturedGraph {
    pub(super) graph: CudaGraph,
    pub(super) _tables: Vec<Arc<TensorTable>>,
}

/// A multi-tensor kernel's table on the device (`Cuda::tensor_table`), and the host values it was made from;
/// never written after it is made.
pub(crate) struct TensorTable {
    pub(crate) words: CudaSlice<u64>,
    pub(crate) starts: CudaSlice<i64>,
    host_words: Vec<u64>,
    host_starts: Vec<i64>,
}

/// What a staged copy is called when a capture refuses it (`upload_bytes`, `download_bytes`).
const STAGED_COPY: &str = "a copy through a pinned staging buffer";

/// cuBLAS's workspace: what NVIDIA recommends for Hopper (and more than enough before it).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

impl Cuda {
    /// Opens device `ordinal`, with the options the environment sets (`CudaOptions::from_env`). Errors (never
    /// panics) without a driver, a GPU, cuBLAS or embedded kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_options(ordinal, CudaOptions::from_env()?)
    }

    /// `new` with the options given.
    pub fn with_options(ordinal: usize, options: CudaOptions) -> Result<Self> {
        if !NVCC_FOUND {
            return Err(Error::Cuda(
                "this build has no CUDA kernels: nvcc was not found at build time (run tools/install-cuda.sh)".into(),
            ));
        }
        if CudaSource::from_env()? == CudaSource::Emulator {
            emulator::load()?;
        }
        // SAFETY: these only try to dlopen the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "no CUDA driver (libcuda) on this machine".into(),
            ));
        }
        // SAFETY: as above, a dlopen attempt and nothing else.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "cuBLAS (libcublas) not found on this machine".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(cuda_err)?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Cuda(format!(
                "no CUDA device {ordinal}: {count} device(s) present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err)?;
        // One stream for everything: cudarc's cross-stream event bookkeeping would be pure overhead.
        // SAFETY: every buffer is allocated, written and read on this context's one stream (`Cuda::stream`), so
        // no access can race with work on another stream, which is what the events would order.
        unsafe { ctx.disable_event_tracking() };
        // A created stream: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(cuda_err)?;
        keep_freed_memory_in_pool(&ctx)?;
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err)?;
        let blas_workspace = fixed_blas_workspace(&blas, &stream)?;
        let seeds = SeedTable::new(&stream)?;
        let lt = match options.gemm {
            GemmPath::Lt => GemmLt::new(stream.clone())?,
            GemmPath::GemmEx => None,
        };
        let loaded = modules::load(&ctx, &stream, options.kernels == KernelSource::Cubin)?;
        Ok(Self {
            inner: Arc::new(Inner {
                ordinal,
                ctx,
                stream,
                seeds: Mutex::new(seeds),
                blas,
                _blas_workspace: blas_workspace,
                lt,
                attention: options.attention,
                functions: loaded.functions,
                kernel_images: loaded.images,
                staging: Mutex::new(Staging::default()),
                attention_seeds: loaded.attention_seeds,
                capture: Mutex::new(None),
                launches: AtomicU64::new(0),
                tensor_tables: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The first device, or the reason there is none.
    pub fn first() -> Result<Self> {
        Self::new(0)
    }

    pub fn name(&self) -> Result<String> {
        self.inner.ctx.name().map_err(cuda_err)
    }

    /// What the kernels were loaded from (the device's cubin, or the PTX JIT-compiled), and how long it took.
    pub fn kernel_images(&self) -> &KernelImages {
        &self.inner.kernel_images
    }

    /// Whether this device is the emulator (`HOURGLASS_CUDA=emulator`): right answers, no meaningful timings.
    pub fn is_emulated(&self) -> bool {
        emulator::active()
    }

    /// The most memory the pool has held in use at once since the last `reset_memory_high_water` (or the
    /// start), in bytes: our counterpart of PyTorch's `max_memory_allocated`. `None` without a pool.
    pub fn memory_high_water(&self) -> Result<Option<u64>> {
        self.pool_attribute(
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            None,
        )
    }

    /// Starts `memory_high_water` afresh from what is in use now.
    pub fn reset_memory_high_water(&self) -> Result<()> {
        self.pool_attribute(
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            Some(0),
        )
        .map(drop)
    }

    /// The memory allocated from the default pool now, in bytes. `None` without a pool.
    pub fn memory_in_use(&self) -> Result<Option<u64>> {
        self.pool_attribute(
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            None,
        )
    }

    /// The memory the default pool holds freed, for reuse, in bytes (reserved less in use). `None` without a
    /// pool.
    pub fn memory_cached(&self) -> Result<Option<u64>> {
        let reserved = self.pool_attribute(
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            None,
        )?;
        Ok(reserved
            .zip(self.memory_in_use()?)
            .map(|(reserved, used)| reserved.saturating_sub(used)))
    }

    /// Returns the default pool's freed memory to the device, once every queued free has run (a trim releases
    /// only frees the host has seen complete).
    pub(super) fn release_cached_memory(&self) -> Result<()> {
        let ctx = &self.inner.ctx;
        if !ctx.has_async_alloc() {
            return Ok(());
        }
        self.stream().synchronize().map_err(cuda_err)?;
        let pool = default_pool(ctx)?;
        // SAFETY: a plain driver call on the current device's default pool; it frees nothing in use.
        unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) }
            .result()
            .map_err(cuda_err)
    }

    /// Reads (or, with `set`, writes) a u64 attribute of the default pool.
    fn pool_attribute(
        &self,
        attribute: cudarc::driver::sys::CUmemPool_attribute,
        set: Option<u64>,
    ) -> Result<Option<u64>> {
        let ctx = &self.inner.ctx;
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        ctx.bind_to_thread().map_err(cuda_err)?;
        let pool = default_pool(ctx)?;
        let mut value: u64 = set.unwrap_or(0);
        let ptr = &mut value as *mut u64 as *mut std::ffi::c_void;
        // SAFETY: a u64 attribute of a valid pool, through a pointer to a live u64.
        unsafe {
            match set {
                Some(_) => cudarc::driver::sys::cuMemPoolSetAttribute(pool, attribute, ptr),
                None => cudarc::driver::sys::cuMemPoolGetAttribute(pool, attribute, ptr),
            }
        }
        .result()
        .map_err(cuda_err)?;
        Ok(Some(value))
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    pub(super) fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    pub(super) fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    pub(super) fn blas(&self) -> &CudaBlas {
        &self.inner.blas
    }

    /// The cuBLASLt path, where it is in use (see `Inner::lt`).
    pub(super) fn gemm_lt(&self) -> Option<&GemmLt> {
        self.inner.lt.as_ref()
    }

    /// The bf16 attention kernels asked for (`Tuned` runs only on the shapes it supports).
    pub fn attention_version(&self) -> AttnVersion {
        self.inner.attention
    }

    /// The kernel `name` (an `extern "C" __global__` function of some `kernels/*.cu`).
    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.inner
            .functions
            .get(name)
            .ok_or_else(|| Error::Cuda(format!("kernel {name} is not in the embedded PTX")))
    }

    /// Uninitialised device memory, for outputs a kernel writes in full.
    ///
    /// # Safety
    /// Every element must be written (by a kernel, a copy or a GEMM with beta 0) before anything reads it.
    pub(crate) unsafe fn alloc_uninit<T: cudarc::driver::DeviceRepr>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        // SAFETY: the caller's promise above.
        unsafe { self.stream().alloc::<T>(len) }.map_err(cuda_err)
    }

    /// Kernels and GEMMs queued on this device so far: the difference across a piece of work is how many
    /// operations the host issued for it (a captured graph replays them as one).
    pub fn launches(&self) -> u64 {
        self.inner.launches.load(Ordering::Relaxed)
    }

    pub(super) fn count_launch(&self) {
        self.inner.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// The address of module `module`'s attention dropout-seed constant.
    pub(super) fn attention_seed_symbol(&self, module: &str) -> Result<CUdeviceptr> {
        self.inner
            .attention_seeds
            .get(module)
            .copied()
            .ok_or_else(|| Error::Cuda(format!("kernels/{module}.cu has no {ATTENTION_SEED}")))
    }

    pub(super) fn seed_table(&self) -> MutexGuard<'_, SeedTable> {
        lock(&self.inner.seeds)
    }

    /// The device copy of a multi-tensor kernel's table (`words` describing the tensors, `starts` where each
    /// one's blocks begin), uploaded only when it differs from the last one of kernel `name`: a training run's
    /// tensors stay where they are, so a step uploads nothing. A capture in progress keeps the table for its
    /// graph (`CapturedGraph`), so that a later table of `name` (another model's) cannot free it.
    pub(crate) fn tensor_table(
        &self,
        name: &'static str,
        words: Vec<u64>,
        starts: Vec<i64>,
    ) -> Result<Arc<TensorTable>> {
        let mut tables = lock(&self.inner.tensor_tables);
        let table = match tables.get(name) {
            Some(t) if t.host_words == words && t.host_starts == starts => t.clone(),
            _ => {
                self.refuse_while_capturing(&format!("uploading a new {name} tensor table"))?;
                let stream = self.stream();
                let table = Arc::new(TensorTable {
                    words: stream.clone_htod(&words).map_err(cuda_err)?,
                    starts: stream.clone_htod(&starts).map_err(cuda_err)?,
                    host_words: words,
                    host_starts: starts,
                });
                tables.insert(name, table.clone());
                table
            }
        };
        if let Some(kept) = self.capture().as_mut() {
            kept.push(table.clone());
        }
        Ok(table)
    }

    /// The capture in progress, if any: the tensor tables it reads so far (`None` while nothing is captured).
    pub(super) fn capture(&self) -> MutexGuard<'_, Option<Vec<Arc<TensorTable>>>> {
        lock(&self.inner.capture)
    }

    /// Errors, naming `what`, while the stream is being captured: for work a graph cannot replay (a copy
    /// from pageable memory or through a recycled staging buffer, an allocation that outlives the step).
    pub(crate) fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        if self.capture().is_some() {
            return Err(Error::Cuda(format!(
                "{what} inside a captured step: a graph would replay it with the values of the capture"
            )));
        }
        Ok(())
    }

    /// Queues a copy of `bytes` to device address `dst` through a pinned buffer (`staging`). Never inside a
    /// capture: the graph would keep the address of a buffer that `Staging` hands to later copies.
    pub(super) fn upload_bytes(&self, dst: CUdeviceptr, bytes: &[u8]) -> Result<()> {
        self.refuse_while_capturing(STAGED_COPY)?;
        lock(&self.inner.staging).upload(&self.inner.ctx, self.stream(), dst, bytes)
    }

    /// Queues a copy of `len` bytes from device address `src` to a pinned buffer (`staging`);
    /// `finish_download` returns them. Never inside a capture, as `upload_bytes`.
    pub(super) fn download_bytes(&self, src: CUdeviceptr, len: usize) -> Result<PendingRead> {
        self.refuse_while_capturing(STAGED_COPY)?;
        lock(&self.inner.staging).download(&self.inner.ctx, self.stream(), src, len)
    }

    /// Waits for `read`'s copy and returns its bytes.
    pub(super) fn finish_download(&self, read: PendingRead) -> Result<Vec<u8>> {
        lock(&self.inner.staging).finish(read)
    }

    /// The most memory captured graphs have held at once (their allocations come from a pool of their own,
    /// beside `memory_high_water`'s), in bytes.
    pub fn graph_memory_high_water(&self) -> Result<u64> {
        use cudarc::driver::sys;
        let mut value: u64 = 0;
        // SAFETY: a u64 attribute of a valid device, through a pointer to a live u64.
        unsafe {
            sys::cuDeviceGetGraphMemAttribute(
                self.inner.ctx.cu_device(),
                sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
                &mut value as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .result()
        .map_err(cuda_err)?;
        Ok(value)
    }

    /// Timing events (with timing enabled) on this device's stream.
    pub fn event(&self) -> Result<cudarc::driver::CudaEvent> {
        self.inner
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err)
    }

    /// Records `event` on this device's stream.
    pub fn record(&self, event: &cudarc::driver::CudaEvent) -> Result<()> {
        event.record(self.stream()).map_err(cuda_err)
    }
}

/// The current device's default memory pool (the one `alloc` draws from).
fn default_pool(ctx: &Arc<CudaContext>) -> Result<cudarc::driver::sys::CUmemoryPool> {
    let mut pool = std::ptr::null_mut();
    // SAFETY: a plain driver query on a valid device; the pool handle is owned by the driver.
    unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(cuda_err)?;
    Ok(pool)
}

/// Gives cuBLAS a workspace of its own for good: without one it allocates as it goes, which a captured GEMM
/// may not.
fn fixed_blas_workspace(blas: &CudaBlas, stream: &Arc<CudaStream>) -> Result<CudaSlice<u8>> {
    use cudarc::driver::DevicePtrMut;
    // SAFETY: scratch that cuBLAS writes before it reads; we never read it.
    let mut workspace = unsafe { stream.alloc::<u8>(BLAS_WORKSPACE_BYTES) }.map_err(cuda_err)?;
    let (ptr, _done) = workspace.device_ptr_mut(stream);
    // SAFETY: a valid handle and a live device buffer of the size given, kept as long as the handle (both
    // belong to the backend's `Inner`).
    unsafe {
        cudarc::cublas::sys::cublasSetWorkspace_v2(
            *blas.handle(),
            ptr as *mut std::ffi::c_void,
            BLAS_WORKSPACE_BYTES,
        )
    }
    .result()
    .map_err(cuda_err)?;
    drop(_done);
    Ok(workspace)
}

/// Sets the default memory pool's release threshold to "never", so memory freed by one step is reused by
/// the next without returning to the OS.
fn keep_freed_memory_in_pool(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let pool = default_pool(ctx)?;
    // SAFETY: a plain driver call on the current device's default pool with a valid attribute value.
    unsafe {
        let mut threshold: u64 = u64::MAX;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .map_err(cuda_err)?;
    }
    Ok(())
}

/// `mutex`'s guard, even if a panic while it was held poisoned it (the caches and buffers it guards stay
/// usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// For GPU tests and benches: the first CUDA device, or `Ok(None)` after printing "skipped: no CUDA device"
/// for `what`. With `HOURGLASS_REQUIRE_GPU=1` a missing device is an error, so GPU checks cannot pass
/// silently where they did not run.
pub fn device_or_skip(what: &str) -> Result<Option<Cuda>> {
    match Cuda::first() {
        Ok(cuda) => Ok(Some(cuda)),
        Err(e) if std::env::var("HOURGLASS_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            Err(Error::Cuda(format!(
                "{what}: HOURGLASS_REQUIRE_GPU=1 but no usable CUDA device: {e}"
            )))
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({what}): {e}");
            Ok(None)
        }
    }
}

/// For benches: `device_or_skip`, except that the emulated device (`HOURGLASS_CUDA=emulator`) is skipped with a
/// message: it gives right answers but no timing worth printing.
pub fn bench_device_or_skip(what: &str) -> Result<Option<Cuda>> {
    let cuda = device_or_skip(what)?;
    if cuda.as_ref().is_some_and(Cuda::is_emulated) {
        println!("{what}: the emulated CUDA device (HOURGLASS_CUDA=emulator) is not timed; no GPU numbers");
        return Ok(None);
    }
    Ok(cuda)
}
