//! GEMMs through cuBLASLt: the bias added in the GEMM's epilogue (no broadcast pass over the output before
//! it), and one plan per shape (the matmul descriptor, the three layouts and the heuristic's algorithm) made
//! the first time the shape is seen and reused after. A shape cuBLASLt has no algorithm for is remembered as
//! such, and `Cuda::gemm` runs it through cublasGemmEx instead (the simple path, which `HOURGLASS_GEMM=gemmex`
//! forces everywhere).
//!
//! Row-major to column-major as in `Cuda::gemm`: a row-major `[r, c]` buffer is cuBLAS's column-major `[c, r]`,
//! so `C = op(a)·op(b)` is computed as `Cᵀ = op(b)ᵀ·op(a)ᵀ`: cuBLAS's A is our `b`, its B our `a`, and the
//! bias (one value per row of `Cᵀ`) is one per column of our `C`, which is what a linear layer adds.

use super::error::cuda_err;
use super::gemm_operand::{GemmElem, GemmOperand};
use crate::error::{Error, Result};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// cuBLASLt's heuristics assume operands aligned to this many bytes unless told otherwise; an operand that
/// is not goes through cublasGemmEx.
const ALIGNMENT: u64 = 256;

/// The workspace NVIDIA recommends for Hopper (and more than enough before it).
const WORKSPACE_BYTES: usize = 32 << 20;

/// What fixes a plan: the product's sizes, the operands' layouts and type, and whether a bias is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    m: usize,
    n: usize,
    k: usize,
    a_transposed: bool,
    b_transposed: bool,
    bf16: bool,
    bias: bool,
}

/// The descriptors and algorithm for one `PlanKey`. The bias pointer is the one attribute set per call.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a_layout: sys::cublasLtMatrixLayout_t,
    b_layout: sys::cublasLtMatrixLayout_t,
    c_layout: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: a plan's descriptors are host-side objects that cuBLASLt does not tie to a thread; `GemmLt` only
// touches them while holding the mutex around its plans.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this plan and is destroyed once, here. Errors cannot be reported
        // from a drop and leave nothing to clean up.
        unsafe {
            for layout in [self.a_layout, self.b_layout, self.c_layout] {
                if !layout.is_null() {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle bound to the backend's stream, its workspace, and the plans made so far.
pub(crate) struct GemmLt {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    /// An error: why cuBLASLt cannot run that key (those GEMMs go through cublasGemmEx).
    plans: Mutex<HashMap<PlanKey, std::result::Result<Plan, String>>>,
}

// SAFETY: the handle may be used from any thread (cuBLASLt handles are not thread-bound), every call goes to
// the one stream, and the plans are behind a mutex held for the whole of each call that uses one.
unsafe impl Send for GemmLt {}
// SAFETY: as above.
unsafe impl Sync for GemmLt {}

impl Drop for GemmLt {
    fn drop(&mut self) {
        if let Ok(plans) = self.plans.get_mut() {
            plans.clear();
        }
        // SAFETY: created in `new`, destroyed once, after every plan made with it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

fn lt_err(what: &str, e: lt::CublasError) -> Error {
    Error::Cuda(format!("cuBLASLt {what}: {e:?}"))
}

/// Sets one attribute of a matmul descriptor from a plain value.
///
/// # Safety
/// `desc` must be live and `T` the type cuBLASLt documents for `attr`.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    // SAFETY: the caller's promise; `value` is live for the call and its size is passed.
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            value as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    }
    .map_err(|e| lt_err("matmul attribute", e))
}

fn operation(transposed: bool) -> cudarc::cublas::sys::cublasOperation_t {
    if transposed {
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
    }
}

impl GemmLt {
    /// A handle on `stream`, or `None` when libcublasLt is not on this machine.
    pub(crate) fn new(stream: Arc<CudaStream>) -> Result<Option<Self>> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Ok(None);
        }
        let handle = lt::create_handle().map_err(|e| lt_err("create", e))?;
        // SAFETY: the workspace is scratch that cuBLASLt writes before it reads; we never read it.
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) }.map_err(cuda_err)?;
        Ok(Some(Self {
            handle,
            stream,
            workspace,
            plans: Mutex::new(HashMap::new()),
        }))
    }

    /// `c = op(a)·op(b) + bias + beta·c` (bias broadcast over rows) as `Cuda::gemm` defines the operands, sizes
    /// already checked by the caller. Returns `false`, having done nothing, where cuBLASLt cannot run it (no
    /// algorithm for the shape, or an operand not aligned as its algorithms need): the caller takes the
    /// cublasGemmEx path.
    pub(crate) fn matmul<T: GemmElem>(
        &self,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
        bias: Option<&CudaSlice<f32>>,
        c: &mut CudaSlice<f32>,
        beta: f32,
    ) -> Result<bool> {
        let (m, k) = a.op_dims();
        let n = b.op_dims().1;
        let key = PlanKey {
            m,
            n,
            k,
            a_transposed: a.transposed,
            b_transposed: b.transposed,
            bf16: T::IS_BF16,
            bias: bias.is_some(),
        };
        let stream = &self.stream;
        let (a_ptr, _a_done) = a.data.device_ptr(stream);
        let (b_ptr, _b_done) = b.data.device_ptr(stream);
        let bias_ptr = bias.map(|bias| bias.device_ptr(stream));
        let (c_ptr, _c_done) = c.device_ptr_mut(stream);
        let pointers = [
            Some(a_ptr),
            Some(b_ptr),
            bias_ptr.as_ref().map(|p| p.0),
            Some(c_ptr),
        ];
        if pointers.into_iter().flatten().any(|p| p % ALIGNMENT != 0) {
            return Ok(false);
        }
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| Error::Cuda("cuBLASLt plans: a thread panicked holding them".into()))?;
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(self.make_plan::<T>(key, a, b)?)
            }
        };
        let Ok(plan) = plan else {
            return Ok(false);
        };
        if let Some((bias_ptr, _)) = &bias_ptr {
            // SAFETY: a live descriptor of this plan; BIAS_POINTER takes a device pointer (to n f32, checked by
            // the caller as the bias of an [m, n] output).
            unsafe {
                set_desc(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &(*bias_ptr as *const c_void),
                )
            }?;
        }
        let alpha = 1.0f32;
        let (workspace, _w_done) = self.workspace.device_ptr(stream);
        // SAFETY: the plan's layouts describe exactly these buffers (its key holds their sizes and layouts,
        // checked against the buffers by the caller); alpha and beta are f32 as the f32 scale type needs;
        // everything runs on the stream the buffers belong to, and the plan stays locked until it is queued.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b_ptr as *const c_void,
                plan.a_layout,
                a_ptr as *const c_void,
                plan.b_layout,
                c_ptr as *const c_void,
                plan.c_layout,
                c_ptr as *mut c_void,
                plan.c_layout,
                &plan.algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| lt_err("matmul", e))?;
        Ok(true)
    }

    /// The shapes cuBLASLt could not plan (each with the reason), which run through cublasGemmEx instead.
    pub(crate) fn fallbacks(&self) -> Vec<String> {
        let Ok(plans) = self.plans.lock() else {
            return vec!["the plans are poisoned: a thread panicked holding them".into()];
        };
        let mut out: Vec<String> = plans
            .iter()
            .filter_map(|(key, plan)| plan.as_ref().err().map(|why| format!("{key:?}: {why}")))
            .collect();
        out.sort();
        out
    }

    /// Descriptors and the heuristic's best algorithm for `key`, or why there is none (the heuristic's
    /// status: it offered no algorithm, or refused the combination).
    fn make_plan<T: GemmElem>(
        &self,
        key: PlanKey,
        a: GemmOperand<'_, T>,
        b: GemmOperand<'_, T>,
    ) -> Result<std::result::Result<Plan, String>> {
        let layout = |dtype, rows: usize, cols: usize| {
            lt::create_matrix_layout(dtype, rows as u64, cols as u64, rows.max(1) as i64)
                .map_err(|e| lt_err("matrix layout", e))
        };
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| lt_err("matmul descriptor", e))?;
        // The plan owns each handle as soon as it exists, so an error below frees what was made.
        let mut plan = Plan {
            desc,
            a_layout: std::ptr::null_mut(),
            b_layout: std::ptr::null_mut(),
            c_layout: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // cuBLAS's A is our b, stored column-major as [b.cols, b.rows]; its B is our a; C is [n, m].
        plan.a_layout = layout(T::LT_TYPE, b.cols, b.rows)?;
        plan.b_layout = layout(T::LT_TYPE, a.cols, a.rows)?;
        plan.c_layout = layout(sys::cudaDataType::CUDA_R_32F, key.n, key.m)?;
        let epilogue = if key.bias {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
        };
        use sys::cublasLtMatmulDescAttributes_t::{
            CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB,
        };
        // SAFETY: a live descriptor; TRANSA/TRANSB take a cublasOperation_t and EPILOGUE a cublasLtEpilogue_t.
        unsafe {
            set_desc(
                plan.desc,
                CUBLASLT_MATMUL_DESC_TRANSA,
                &operation(b.transposed),
            )?;
            set_desc(
                plan.desc,
                CUBLASLT_MATMUL_DESC_TRANSB,
                &operation(a.transposed),
            )?;
            set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
        }
        let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
        let workspace = WORKSPACE_BYTES as u64;
        // SAFETY: a live preference; MAX_WORKSPACE_BYTES takes a u64. The heuristic reads live descriptors
        // and layouts; the preference is destroyed once, after it.
        let heuristic = unsafe {
            let set = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            );
            let heuristic = set.and_then(|()| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.a_layout,
                    plan.b_layout,
                    plan.c_layout,
                    plan.c_layout,
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            heuristic
        };
        Ok(match heuristic {
            Ok(found) => {
                plan.algo = found.algo;
                Ok(plan)
            }
            Err(e) => Err(format!("no cuBLASLt algorithm ({e:?})")),
        })
    }
}
