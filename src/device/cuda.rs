//! The CUDA backend: one context and stream, cuBLAS, and the PTX that build.rs compiled from `kernels/`.
//!
//! Every op queues its kernels on the one stream with no host synchronisation; memory comes from the
//! driver's stream-ordered pool (`cuMemAllocAsync`), which we tell to keep freed blocks, so a training step
//! reuses the previous step's activations instead of calling cudaMalloc per op. The stream is a created one,
//! not the legacy default stream, so that a whole training step can be captured into a CUDA graph and
//! replayed (`begin_capture`, `end_capture`, `replay`): cuBLAS gets a fixed workspace for that, dropout seeds
//! are read from device memory (`seeds`), and per-step inputs arrive through pinned buffers (`staging`).

use super::gemm_lt::GemmLt;
use super::seeds::SeedTable;
use super::staging::{PendingRead, Staging};
use super::{BackendCore, DeviceKind};
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, LaunchConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::modules::{KernelImages, ATTENTION_SEED};
pub use super::modules::{NVCC_FOUND, PTXAS_REPORT};

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
    attention_seeds: HashMap<String, cudarc::driver::sys::CUdeviceptr>,
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
    graph: CudaGraph,
    _tables: Vec<Arc<TensorTable>>,
}

/// A multi-tensor kernel's table on the device (`Cuda::tensor_table`), and the host values it was made from;
/// never written after it is made.
pub(crate) struct TensorTable {
    pub(crate) words: CudaSlice<u64>,
    pub(crate) starts: CudaSlice<i64>,
    host_words: Vec<u64>,
    host_starts: Vec<i64>,
}

/// What a staged copy is called when a capture refuses it (`upload_bytes`, `read_async`).
const STAGED_COPY: &str = "a copy through a pinned staging buffer";

/// cuBLAS's workspace: what NVIDIA recommends for Hopper (and more than enough before it).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// How a `Cuda` backend runs what has more than one implementation; `CudaOptions::from_env` reads the
/// environment (`HOURGLASS_GEMM`, `HOURGLASS_ATTENTION`, `HOURGLASS_KERNELS`) for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    pub gemm: GemmPath,
    pub attention: AttnVersion,
    pub kernels: KernelSource,
}

impl CudaOptions {
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            gemm: GemmPath::from_env()?,
            attention: AttnVersion::from_env()?,
            kernels: KernelSource::from_env()?,
        })
    }
}

/// What the kernels are loaded from (`device::modules`). `Cubin` (the default): the embedded machine code for
/// the device's architecture, the PTX where there is none. `Ptx`: always the PTX, JIT-compiled by the driver:
/// the path of GPUs without a cubin, kept checkable on those with one, and the code with line numbers for a
/// profiler. The environment variable `HOURGLASS_KERNELS` (`cubin` or `ptx`) chooses for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSource {
    Cubin,
    Ptx,
}

impl KernelSource {
    /// `HOURGLASS_KERNELS`, or `Cubin` when it is not set.
    pub fn from_env() -> Result<Self> {
        env_choice(
            "HOURGLASS_KERNELS",
            [("cubin", Self::Cubin), ("ptx", Self::Ptx)],
        )
    }
}

/// Which bf16 tensor-core attention kernels run (`kernels/attention_mma.cu`), forward and backward. `Tuned`
/// (the default): the streamed operand tiles (K and V; Q and dO for dK/dV) through shared memory with
/// cp.async and ldmatrix, where the shape allows it (d_head at most 64, head size, strides and offsets
/// multiples of 8), the simple version elsewhere. `Simple`: fragments straight from global memory, always. The
/// environment variable `HOURGLASS_ATTENTION` (`tuned` or `simple`) chooses for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnVersion {
    Simple,
    Tuned,
}

impl AttnVersion {
    /// `HOURGLASS_ATTENTION`, or `Tuned` when it is not set.
    pub fn from_env() -> Result<Self> {
        env_choice(
            "HOURGLASS_ATTENTION",
            [("tuned", Self::Tuned), ("simple", Self::Simple)],
        )
    }
}

/// The value of the environment variable `var` among `choices` (the first when it is unset); any other value
/// is an error naming the variable, the value and the choices.
fn env_choice<T: Copy, const N: usize>(var: &str, choices: [(&str, T); N]) -> Result<T> {
    let Ok(value) = std::env::var(var) else {
        return Ok(choices[0].1);
    };
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|&(_, choice)| choice)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
            Error::Cuda(format!("{var}={value:?}: expected one of {names:?}"))
        })
}

/// Which cuBLAS interface runs the GEMMs. `Lt` (the default): cuBLASLt, the bias in the epilogue, plans
/// cached per shape, falling back to `GemmEx` for a shape it has no algorithm for. `GemmEx`: cublasGemmEx,
/// the bias written by a broadcast kernel first; the simple path, kept as a check on the other. The
/// environment variable `HOURGLASS_GEMM` (`lt` or `gemmex`) chooses for `Cuda::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    Lt,
    GemmEx,
}

impl GemmPath {
    /// `HOURGLASS_GEMM`, or `Lt` when it is not set.
    pub fn from_env() -> Result<Self> {
        env_choice(
            "HOURGLASS_GEMM",
            [("lt", Self::Lt), ("gemmex", Self::GemmEx)],
        )
    }
}

/// Maps any cudarc error to ours, keeping its text.
pub(crate) fn cuda_err(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{e:?}"))
}

/// Threads per block for pointwise kernels, and a grid that covers `n` elements with grid-stride loops.
pub(crate) fn pointwise_config(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid for kernels that take eight elements a thread (16-byte bf16 vectors) over `n` elements.
pub(crate) fn vector8_config(n: usize) -> LaunchConfig {
    pointwise_config(n.div_ceil(8))
}

/// One warp per row in blocks of 8 warps, for kernels that grid-stride rows over warps (layernorm).
pub(crate) fn warp_per_row_config(rows: usize) -> LaunchConfig {
    const WARPS: u32 = 8;
    let blocks = rows.div_ceil(WARPS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (32 * WARPS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A 2-D grid over `rows` rows of `row_len` elements: x across a row, y across rows; kernels grid-stride both.
/// Each thread takes about 4 elements of a row, to amortise the per-row index arithmetic (otherwise the
/// shortening and upsampling kernels are bound by it rather than by memory).
pub(crate) fn rows_config(rows: usize, row_len: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    const PER_THREAD: usize = 4;
    LaunchConfig {
        grid_dim: (
            row_len
                .div_ceil(THREADS as usize * PER_THREAD)
                .clamp(1, 65_535) as u32,
            rows.clamp(1, 65_535) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

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
        if super::emulator::CudaSource::from_env()? == super::emulator::CudaSource::Emulator {
            super::emulator::load()?;
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
        let modules = super::modules::load(&ctx, &stream, options.kernels == KernelSource::Cubin)?;
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
                functions: modules.functions,
                kernel_images: modules.images,
                staging: Mutex::new(Staging::default()),
                attention_seeds: modules.attention_seeds,
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
        super::emulator::active()
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
    fn release_cached_memory(&self) -> Result<()> {
        let ctx = &self.inner.ctx;
        if !ctx.has_async_alloc() {
            return Ok(());
        }
        self.synchronize()?;
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

    /// The bf16 attention kernels asked for (`Tuned` runs only on the shapes it supports).
    pub fn attention_version(&self) -> AttnVersion {
        self.inner.attention
    }

    /// The GEMM path in use: `GemmEx` when asked for or when libcublasLt is missing.
    pub fn gemm_path(&self) -> GemmPath {
        match self.inner.lt {
            Some(_) => GemmPath::Lt,
            None => GemmPath::GemmEx,
        }
    }

    /// The GEMM shapes that the `Lt` path could not plan and ran through cublasGemmEx, each with the reason.
    pub fn gemm_fallbacks(&self) -> Vec<String> {
        self.inner
            .lt
            .as_ref()
            .map_or_else(Vec::new, GemmLt::fallbacks)
    }

    /// `c = op(a)·op(b) + beta·c` on row-major matrices, without copies. `a` and `b` are f32, or bf16 on the
    /// tensor cores; either way products accumulate in f32 into f32 `c` (compute type 32F).
    pub(crate) fn gemm<T: GemmElem>(
        &self,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
        c: &mut CudaSlice<f32>,
        beta: f32,
    ) -> Result<()> {
        self.gemm_bias(a, b, None, c, beta)
    }

    /// `gemm` plus `bias[n]` added to every row of `c[m, n]` (only with beta 0): in cuBLASLt's epilogue, or
    /// by a broadcast into `c` before cublasGemmEx (see `GemmPath`).
    pub(crate) fn gemm_bias<T: GemmElem>(
        &self,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
        bias: Option<&CudaSlice<f32>>,
        c: &mut CudaSlice<f32>,
        beta: f32,
    ) -> Result<()> {
        let (m, k) = a.op_dims();
        let (kb, n) = b.op_dims();
        if k != kb
            || c.len() != m * n
            || a.data.len() != a.rows * a.cols
            || b.data.len() != b.rows * b.cols
        {
            return Err(Error::Shape(format!(
                "gemm: [{m}, {k}] x [{kb}, {n}] into {} elements (operands hold {} and {})",
                c.len(),
                a.data.len(),
                b.data.len()
            )));
        }
        if let Some(bias) = bias {
            if bias.len() != n || beta != 0.0 {
                return Err(Error::Shape(format!(
                    "gemm: a bias of {} elements for {n} columns, with beta {beta} (a bias needs beta 0)",
                    bias.len()
                )));
            }
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.count_launch();
        if let Some(lt) = &self.inner.lt {
            if lt.matmul(a, b, bias, c, beta)? {
                return Ok(());
            }
        }
        let beta = match bias {
            Some(bias) => {
                let (rows, cols) = (m as i64, n as i32);
                self.broadcast_rows_f32(pointwise_config(m * n), bias, c, rows, cols)?;
                1.0
            }
            None => beta,
        };
        self.gemm_ex(a, b, c, beta)
    }

    /// `gemm` through cublasGemmEx (sizes checked by the caller): a row-major `[r, c]` buffer is cuBLAS's
    /// column-major `[c, r]`, so we ask for `cᵀ = op(b)ᵀ·op(a)ᵀ`.
    fn gemm_ex<T: GemmElem>(
        &self,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
        c: &mut CudaSlice<f32>,
        beta: f32,
    ) -> Result<()> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let (m, k) = a.op_dims();
        let n = b.op_dims().1;
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let alpha = 1.0f32;
        let stream = self.stream();
        let (a_ptr, _a_done) = a.data.device_ptr(stream);
        let (b_ptr, _b_done) = b.data.device_ptr(stream);
        let (c_ptr, _c_done) = c.device_ptr_mut(stream);
        // SAFETY: the caller checked the sizes against the buffers, which live on this context's stream (the
        // cuBLAS handle's); alpha and beta are f32 as compute type 32F requires, and outlive the call.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.inner.blas.handle(),
                op(b.transposed),
                op(a.transposed),
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                b_ptr as *const _,
                T::CUDA_TYPE,
                b.cols.max(1) as i32,
                a_ptr as *const _,
                T::CUDA_TYPE,
                a.cols.max(1) as i32,
                &beta as *const f32 as *const _,
                c_ptr as *mut _,
                cudaDataType_t::CUDA_R_32F,
                n.max(1) as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cuda_err)
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

    /// `acc[c] += Σ_r x[r, c]` for row-major `x[rows, cols]`, deterministically (`kernels/elementwise.cu`).
    pub(crate) fn col_sum_add(
        &self,
        x: &CudaSlice<f32>,
        acc: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if cols == 0 {
            return Ok(());
        }
        let (n_rows, n_cols) = (rows as i64, cols as i32);
        // The kernel's shared-memory tile assumes exactly these block dimensions (COL_SUM_COLS, COL_SUM_LANES).
        let config = LaunchConfig {
            grid_dim: (cols.div_ceil(8) as u32, 1, 1),
            block_dim: (8, 128, 1),
            shared_mem_bytes: 0,
        };
        self.col_sum_add_f32(config, x, acc, n_rows, n_cols)
    }

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

    /// Kernels and GEMMs queued on this device so far: the difference across a piece of work is how many
    /// operations the host issued for it (a captured graph replays them as one).
    pub fn launches(&self) -> u64 {
        self.inner.launches.load(Ordering::Relaxed)
    }

    pub(crate) fn count_launch(&self) {
        self.inner.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// The address of module `module`'s attention dropout-seed constant.
    pub(crate) fn attention_seed_symbol(
        &self,
        module: &str,
    ) -> Result<cudarc::driver::sys::CUdeviceptr> {
        self.inner
            .attention_seeds
            .get(module)
            .copied()
            .ok_or_else(|| Error::Cuda(format!("kernels/{module}.cu has no {ATTENTION_SEED}")))
    }

    pub(crate) fn seed_table(&self) -> MutexGuard<'_, SeedTable> {
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
        if let Some(kept) = lock(&self.inner.capture).as_mut() {
            kept.push(table.clone());
        }
        Ok(table)
    }

    fn staging(&self) -> MutexGuard<'_, Staging> {
        lock(&self.inner.staging)
    }

    /// Errors, naming `what`, while the stream is being captured: for work a graph cannot replay (a copy
    /// from pageable memory or through a recycled staging buffer, an allocation that outlives the step).
    pub(crate) fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        if lock(&self.inner.capture).is_some() {
            return Err(Error::Cuda(format!(
                "{what} inside a captured step: a graph would replay it with the values of the capture"
            )));
        }
        Ok(())
    }

    /// Queues a copy of `bytes` to device address `dst` through a pinned buffer (`staging`). Never inside a
    /// capture: the graph would keep the address of a buffer that `Staging` hands to later copies.
    pub(crate) fn upload_bytes(
        &self,
        dst: cudarc::driver::sys::CUdeviceptr,
        bytes: &[u8],
    ) -> Result<()> {
        self.refuse_while_capturing(STAGED_COPY)?;
        self.staging()
            .upload(&self.inner.ctx, self.stream(), dst, bytes)
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

/// Element types our GEMMs take as inputs: f32, and bf16 (tensor cores); cuBLAS's name for each.
pub(crate) trait GemmElem: cudarc::driver::DeviceRepr {
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType;
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType;
    const IS_BF16: bool;
}

impl GemmElem for f32 {
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F;
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_32F;
    const IS_BF16: bool = false;
}

impl GemmElem for half::bf16 {
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_16BF;
    const IS_BF16: bool = true;
}

/// A row-major matrix operand on the device: `data` holds `rows x cols` before `transposed` is applied.
pub(crate) struct GemmOperand<'a, T = f32> {
    pub data: &'a CudaSlice<T>,
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl<T> Clone for GemmOperand<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for GemmOperand<'_, T> {}

impl<T> GemmOperand<'_, T> {
    pub(crate) fn op_dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
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

impl BackendCore for Cuda {
    type Elem = f32;
    type Storage = CudaSlice<f32>;
    type Bf16Storage = CudaSlice<half::bf16>;
    type Ids = CudaSlice<u32>;
    type PendingRead = PendingRead;
    type Graph = CapturedGraph;

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda(self.inner.ordinal)
    }
    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream().alloc_zeros::<f32>(len).map_err(cuda_err)
    }
    fn available_memory(&self) -> Option<u64> {
        let (free, _total) = self.inner.ctx.mem_get_info().ok()?;
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
        self.refuse_while_capturing(STAGED_COPY)?;
        let (ptr, _done) = src.device_ptr(self.stream());
        let bytes = std::mem::size_of_val(&0f32) * src.len();
        self.staging()
            .download(&self.inner.ctx, self.stream(), ptr, bytes)
    }
    fn finish_read(&self, read: PendingRead) -> Result<Vec<f32>> {
        let bytes = self.staging().finish(read)?;
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
        *lock(&self.inner.capture) = Some(Vec::new());
        Ok(())
    }
    fn end_capture(&self) -> Result<CapturedGraph> {
        use cudarc::driver::sys::CUgraphInstantiate_flags;
        let tables = lock(&self.inner.capture).take().unwrap_or_default();
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
