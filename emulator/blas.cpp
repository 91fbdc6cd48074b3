// The emulated cuBLAS and cuBLASLt: cublasGemmEx and cublasLtMatmul as the libraries define them (column-major
// operands, transposes, leading dimensions, f32 or bf16 inputs with f32 accumulation into f32, alpha/beta, the
// BIAS epilogue), with the libraries' status codes for refused arguments. libcublas.so and libcublasLt.so are
// empty libraries that depend on libcuda.so, so a dlsym through either finds these symbols.
//
// The declarations below are our own, matching the ABI of cuBLAS/cuBLASLt 13.0 (enum values, struct layouts);
// no CUDA header is used. Work is queued on the stream given (hgemu_stream_enqueue), where it checks every
// operand's bytes with the sanitizer, computes, and marks the output written.
//
// Arithmetic: every output element is a single f32 dot product summed in k order (acc = 0; acc += a*b, each
// product and sum rounded to f32, never fused), then alpha*acc + beta*C + bias. Blocking, vectorisation and the
// two worker threads only change which elements are computed when, never how, so results are deterministic
// and equal a naive f32 loop bit for bit. A GPU's tensor cores sum in another order: results differ from a
// GPU's in the last bits, as two GPUs' do.
#include "hgemu.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <thread>
#include <typeinfo>
#include <unordered_map>

// A fused multiply-add would change the rounding the comment above promises.
#pragma GCC optimize("fp-contract=off")

namespace {

// ---- The libraries' constants (cuBLAS 13.0) -------------------------------------------------------------

enum : int {
    ST_SUCCESS = 0,
    ST_NOT_INITIALIZED = 1,
    ST_ALLOC_FAILED = 3,
    ST_INVALID_VALUE = 7,
    ST_ARCH_MISMATCH = 8,
    ST_MAPPING_ERROR = 11,
    ST_EXECUTION_FAILED = 13,
    ST_INTERNAL_ERROR = 14,
    ST_NOT_SUPPORTED = 15,
    ST_LICENSE_ERROR = 16,
};

enum : int { OP_N = 0, OP_T = 1, OP_C = 2 };

enum : int { R_32F = 0, R_64F = 1, R_16F = 2, R_8I = 3, R_32I = 10, R_16BF = 14 };

enum : int {
    COMPUTE_16F = 64,
    COMPUTE_16F_PEDANTIC = 65,
    COMPUTE_32F = 68,
    COMPUTE_32F_PEDANTIC = 69,
    COMPUTE_64F = 70,
    COMPUTE_64F_PEDANTIC = 71,
    COMPUTE_32I = 72,
    COMPUTE_32I_PEDANTIC = 73,
    COMPUTE_32F_FAST_16F = 74,
    COMPUTE_32F_FAST_16BF = 75,
    COMPUTE_32F_FAST_TF32 = 77,
    COMPUTE_32F_EMULATED_16BFX9 = 78,
    COMPUTE_64F_EMULATED_FIXEDPOINT = 79,
};

// cublasLtMatmulDescAttributes_t
enum : int {
    DESC_COMPUTE_TYPE = 0,
    DESC_SCALE_TYPE = 1,
    DESC_POINTER_MODE = 2,
    DESC_TRANSA = 3,
    DESC_TRANSB = 4,
    DESC_TRANSC = 5,
    DESC_FILL_MODE = 6,
    DESC_EPILOGUE = 7,
    DESC_BIAS_POINTER = 8,
    DESC_BIAS_BATCH_STRIDE = 10,
    DESC_SM_COUNT_TARGET = 15,
    DESC_BIAS_DATA_TYPE = 26,
};

enum : unsigned { EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4 };
enum : int { FILL_MODE_FULL = 2 };
enum : int { POINTER_MODE_HOST = 0 };

// cublasLtMatrixLayoutAttribute_t
enum : int {
    LAYOUT_TYPE = 0,
    LAYOUT_ORDER = 1,
    LAYOUT_ROWS = 2,
    LAYOUT_COLS = 3,
    LAYOUT_LD = 4,
    LAYOUT_BATCH_COUNT = 5,
    LAYOUT_STRIDED_BATCH_OFFSET = 6,
};
enum : int { ORDER_COL = 0 };

// cublasLtMatmulPreferenceAttributes_t
enum : int {
    PREF_SEARCH_MODE = 0,
    PREF_MAX_WORKSPACE_BYTES = 1,
    PREF_REDUCTION_SCHEME_MASK = 3,
    PREF_MIN_ALIGNMENT_A_BYTES = 5,
    PREF_MIN_ALIGNMENT_B_BYTES = 6,
    PREF_MIN_ALIGNMENT_C_BYTES = 7,
    PREF_MIN_ALIGNMENT_D_BYTES = 8,
    PREF_MAX_WAVES_COUNT = 9,
    PREF_IMPL_MASK = 12,
};

// The CUresult a sanitizer finding in a GEMM returns (as a faulting kernel's would).
constexpr int CU_ERROR_ILLEGAL_ADDRESS = 700;

// The bias alignment cuBLASLt's BIAS-epilogue kernels rely on (16-byte vector loads) unless the heuristic saw
// a less aligned bias pointer when it chose the algorithm.
constexpr uint64_t BIAS_KERNEL_ALIGNMENT = 16;

const char* status_name(int status) {
    switch (status) {
    case ST_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case ST_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case ST_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case ST_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case ST_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case ST_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case ST_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case ST_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case ST_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case ST_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

const char* status_string(int status) {
    switch (status) {
    case ST_SUCCESS: return "the operation completed successfully";
    case ST_NOT_INITIALIZED: return "the library was not initialized";
    case ST_ALLOC_FAILED: return "the resource allocation failed";
    case ST_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case ST_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case ST_MAPPING_ERROR: return "an access to GPU memory space failed";
    case ST_EXECUTION_FAILED: return "the GPU program failed to execute";
    case ST_INTERNAL_ERROR: return "an internal operation failed";
    case ST_NOT_SUPPORTED: return "the functionality requested is not supported";
    case ST_LICENSE_ERROR: return "error detected trying to check the license";
    default: return "unknown error";
    }
}

// A refusal returns only a status code; the reason goes to stderr so that the caller's "INVALID_VALUE" can be
// traced to the argument.
__attribute__((format(printf, 3, 4))) int refuse(const char* api, int status, const char* fmt, ...) {
    char why[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(why, sizeof why, fmt, args);
    va_end(args);
    fprintf(stderr, "hgemu: %s refused (%s): %s\n", api, status_name(status), why);
    return status;
}

const char* type_name(int type) {
    switch (type) {
    case R_32F: return "f32";
    case R_16BF: return "bf16";
    case R_16F: return "f16";
    case R_64F: return "f64";
    case R_8I: return "i8";
    case R_32I: return "i32";
    default: return "unknown type";
    }
}

size_t type_size(int type) { return type == R_16BF ? 2 : 4; }

bool is_32f_compute(int compute) {
    return compute == COMPUTE_32F || compute == COMPUTE_32F_PEDANTIC || compute == COMPUTE_32F_FAST_16F ||
           compute == COMPUTE_32F_FAST_16BF || compute == COMPUTE_32F_FAST_TF32;
}

bool is_compute_type(int compute) {
    switch (compute) {
    case COMPUTE_16F: case COMPUTE_16F_PEDANTIC: case COMPUTE_32F: case COMPUTE_32F_PEDANTIC: case COMPUTE_64F:
    case COMPUTE_64F_PEDANTIC: case COMPUTE_32I: case COMPUTE_32I_PEDANTIC: case COMPUTE_32F_FAST_16F:
    case COMPUTE_32F_FAST_16BF: case COMPUTE_32F_FAST_TF32: case COMPUTE_32F_EMULATED_16BFX9:
    case COMPUTE_64F_EMULATED_FIXEDPOINT:
        return true;
    default:
        return false;
    }
}

// Handles and descriptors are checked against the live ones of their kind, so a destroyed, foreign or
// mistyped one is refused rather than read.
std::mutex live_mutex;
std::unordered_map<const void*, const std::type_info*>& live() {
    // Never destroyed: a handle may be destroyed after static destructors ran (a process exiting with one alive).
    static auto& objects = *new std::unordered_map<const void*, const std::type_info*>;
    return objects;
}
template <class T> T* make_live() {
    T* object = new T();
    std::lock_guard<std::mutex> lock(live_mutex);
    live()[object] = &typeid(T);
    return object;
}
template <class T> T* live_as(const void* object) {
    std::lock_guard<std::mutex> lock(live_mutex);
    auto it = live().find(object);
    return it != live().end() && *it->second == typeid(T) ? static_cast<T*>(const_cast<void*>(object)) : nullptr;
}
template <class T> bool destroy_live(const void* object) {
    T* live_object = live_as<T>(object);
    if (!live_object) return false;
    {
        std::lock_guard<std::mutex> lock(live_mutex);
        live().erase(object);
    }
    delete live_object;
    return true;
}

struct BlasHandle {
    void* stream = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    int math_mode = 0;
};

struct LtHandle {
    int unused = 0;
};

struct MatmulDesc {
    int32_t compute_type = COMPUTE_32F;
    int32_t scale_type = R_32F;
    int32_t pointer_mode = POINTER_MODE_HOST;
    int32_t transa = OP_N, transb = OP_N, transc = OP_N;
    int32_t fill_mode = FILL_MODE_FULL;
    uint32_t epilogue = EPILOGUE_DEFAULT;
    const void* bias = nullptr;
    int64_t bias_batch_stride = 0;
    int32_t bias_type = -1;  // -1: D's type
    int32_t sm_count_target = 0;
};

struct Layout {
    uint32_t type = R_32F;
    int32_t order = ORDER_COL;
    uint64_t rows = 0, cols = 0;
    int64_t ld = 0;
    int32_t batch_count = 1;
    int64_t batch_stride = 0;
};

struct Preference {
    uint32_t search_mode = 0;
    uint64_t max_workspace = 0;
    uint32_t reduction_mask = 0;
    uint32_t min_alignment[4] = {256, 256, 256, 256};
    float max_waves = 0.0f;
    uint64_t impl_mask = ~uint64_t(0);
};

struct LtAlgo {
    uint64_t data[8];
};
struct LtHeuristicResult {
    LtAlgo algo;
    size_t workspace_size;
    int state;
    float waves_count;
    int reserved[4];
};
static_assert(sizeof(LtAlgo) == 64, "cublasLtMatmulAlgo_t is 8 u64");
static_assert(sizeof(LtHeuristicResult) == 96, "cublasLtMatmulHeuristicResult_t layout");

// data[0] of an algorithm our heuristic returned; data[1] the bias alignment it assumed.
constexpr uint64_t ALGO_MAGIC = 0x4847454d55414c47ull;  // "HGEMUALG"

// ---- One GEMM, after validation -------------------------------------------------------------------------

struct Operand {
    const void* data;
    int type;       // R_32F or R_16BF
    int64_t rows;   // as stored (column-major), before the transpose
    int64_t cols;
    int64_t ld;
};

struct Gemm {
    const char* api;
    bool ta, tb;  // op(A) = Aᵀ, op(B) = Bᵀ
    int64_t m, n, k;
    Operand a, b;
    const float* c;  // read only when beta != 0
    int64_t ldc;
    float* d;
    int64_t ldd;
    float alpha, beta;
    const float* bias;  // m values added to every column, or null
};

inline float load_elem(const void* base, int type, int64_t index) {
    if (type == R_32F) return static_cast<const float*>(base)[index];
    uint32_t bits = uint32_t(static_cast<const uint16_t*>(base)[index]) << 16;  // bf16 widens exactly
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// The micro-tile: MR rows of op(A) by NR columns of op(B).
constexpr int MR = 16;
constexpr int NR = 4;
constexpr int64_t NC = 96;  // op(B) columns packed at once: NC x k floats stay in L2

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));

// out[jj * MR + ii] = sum over p in order of a[p * MR + ii] * b[p * NR + jj].
__attribute__((target_clones("avx2", "default"))) void micro_kernel(int64_t k, const float* __restrict a,
                                                                      const float* __restrict b,
                                                                      float* __restrict out) {
    v8 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
    for (int64_t p = 0; p < k; ++p) {
        const v8 a0 = *reinterpret_cast<const v8u*>(a + p * MR);
        const v8 a1 = *reinterpret_cast<const v8u*>(a + p * MR + 8);
        const float* bp = b + p * NR;
        c00 += a0 * bp[0];
        c01 += a1 * bp[0];
        c10 += a0 * bp[1];
        c11 += a1 * bp[1];
        c20 += a0 * bp[2];
        c21 += a1 * bp[2];
        c30 += a0 * bp[3];
        c31 += a1 * bp[3];
    }
    const v8 tiles[8] = {c00, c01, c10, c11, c20, c21, c30, c31};
    memcpy(out, tiles, sizeof tiles);
}

struct AlignedFloats {
    float* p = nullptr;
    explicit AlignedFloats(size_t count) {
        size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
        p = static_cast<float*>(aligned_alloc(64, bytes ? bytes : 64));
    }
    ~AlignedFloats() { free(p); }
    AlignedFloats(const AlignedFloats&) = delete;
    AlignedFloats& operator=(const AlignedFloats&) = delete;
};

// D = alpha*acc + beta*C + bias for one element (C not read when beta is 0).
inline float finish(const Gemm& g, float acc, int64_t i, int64_t j) {
    float v = g.alpha * acc;
    if (g.beta != 0.0f) v = v + g.beta * g.c[i + j * g.ldc];
    if (g.bias) v = v + g.bias[i];
    return v;
}

// alpha 0 or k 0: BLAS reads neither A nor B.
void scale_only(const Gemm& g) {
    for (int64_t j = 0; j < g.n; ++j) {
        for (int64_t i = 0; i < g.m; ++i) {
            float v = g.beta != 0.0f ? g.beta * g.c[i + j * g.ldc] : 0.0f;
            if (g.bias) v = v + g.bias[i];
            g.d[i + j * g.ldd] = v;
        }
    }
}

// op(A) in panels of MR rows, p-major: ap[(panel * k + p) * MR + ii], zero past row m.
void pack_a(const Gemm& g, float* ap) {
    const int64_t panels = (g.m + MR - 1) / MR;
    for (int64_t panel = 0; panel < panels; ++panel) {
        float* dst = ap + panel * g.k * MR;
        const int64_t i0 = panel * MR, rows = std::min<int64_t>(MR, g.m - i0);
        if (!g.ta) {  // op(A)(i, p) = A[i + p*lda]: MR consecutive elements per p
            for (int64_t p = 0; p < g.k; ++p) {
                for (int64_t ii = 0; ii < MR; ++ii)
                    dst[p * MR + ii] = ii < rows ? load_elem(g.a.data, g.a.type, i0 + ii + p * g.a.ld) : 0.0f;
            }
        } else {  // op(A)(i, p) = A[p + i*lda]: a row of op(A) is consecutive
            for (int64_t ii = 0; ii < MR; ++ii) {
                for (int64_t p = 0; p < g.k; ++p)
                    dst[p * MR + ii] = ii < rows ? load_elem(g.a.data, g.a.type, p + (i0 + ii) * g.a.ld) : 0.0f;
            }
        }
    }
}

// op(B) columns [j0, j0 + cols) in groups of NR, p-major: bp[(group * k + p) * NR + jj], zero past column n.
void pack_b(const Gemm& g, int64_t j0, int64_t cols, float* bp) {
    const int64_t groups = (cols + NR - 1) / NR;
    for (int64_t group = 0; group < groups; ++group) {
        float* dst = bp + group * g.k * NR;
        for (int64_t jj = 0; jj < NR; ++jj) {
            const int64_t j = j0 + group * NR + jj;
            const bool valid = group * NR + jj < cols;
            for (int64_t p = 0; p < g.k; ++p) {
                // op(B)(p, j) = B[p + j*ldb], or B[j + p*ldb] transposed
                const int64_t index = g.tb ? j + p * g.b.ld : p + j * g.b.ld;
                dst[p * NR + jj] = valid ? load_elem(g.b.data, g.b.type, index) : 0.0f;
            }
        }
    }
}

void compute(const Gemm& g) {
    if (g.k == 0 || g.alpha == 0.0f) {
        scale_only(g);
        return;
    }
    const int64_t panels = (g.m + MR - 1) / MR;
    AlignedFloats ap(size_t(panels) * MR * g.k);
    pack_a(g, ap.p);
    const int64_t blocks = (g.n + NC - 1) / NC;
    const bool big = double(g.m) * double(g.n) * double(g.k) >= double(1 << 22);
    const int threads = big && blocks > 1 && std::thread::hardware_concurrency() > 1 ? 2 : 1;
    auto work = [&](int t) {
        AlignedFloats bp(size_t(NC) * g.k);
        float tile[MR * NR];
        for (int64_t block = t; block < blocks; block += threads) {
            const int64_t j0 = block * NC, cols = std::min<int64_t>(NC, g.n - j0);
            pack_b(g, j0, cols, bp.p);
            for (int64_t panel = 0; panel < panels; ++panel) {
                const int64_t i0 = panel * MR, rows = std::min<int64_t>(MR, g.m - i0);
                for (int64_t group = 0; group * NR < cols; ++group) {
                    micro_kernel(g.k, ap.p + panel * g.k * MR, bp.p + group * g.k * NR, tile);
                    const int64_t jn = std::min<int64_t>(NR, cols - group * NR);
                    for (int64_t jj = 0; jj < jn; ++jj) {
                        const int64_t j = j0 + group * NR + jj;
                        for (int64_t ii = 0; ii < rows; ++ii)
                            g.d[i0 + ii + j * g.ldd] = finish(g, tile[jj * MR + ii], i0 + ii, j);
                    }
                }
            }
        }
    };
    if (threads == 1) {
        work(0);
    } else {  // each thread owns whole columns of D: the split cannot change a value
        std::thread helper(work, 1);
        work(0);
        helper.join();
    }
}

// ---- Sanitizer checks of one operand, on the stream's worker ----------------------------------------------

// [p, p + span): a column-major rows x cols matrix with leading dimension ld.
size_t span_bytes(int64_t rows, int64_t cols, int64_t ld, size_t elem) {
    if (rows == 0 || cols == 0) return 0;
    return (size_t(cols - 1) * size_t(ld) + size_t(rows)) * elem;
}

int report(const Gemm& g, const char* verb, const char* operand, const void* p, size_t bytes, const char* shape,
           const char* detail, char* msg, size_t msg_len) {
    // detail is "<check>: <what the sanitizer found>": keep the check first, as every finding reads.
    const char* colon = strstr(detail, ": ");
    std::string check = colon ? std::string(detail, colon - detail) : std::string("memcheck");
    const char* rest = colon ? colon + 2 : detail;
    snprintf(msg, msg_len, "%s: %s %s %s [%p, +%zu bytes) (%s): %s", check.c_str(), g.api, verb, operand, p, bytes,
             shape, rest);
    return CU_ERROR_ILLEGAL_ADDRESS;
}

// Checks a matrix operand: the whole span inside one live allocation, and, when read, every column (not the
// gaps between columns, which are never read) written before.
int check_matrix(const Gemm& g, const char* operand, const void* p, int64_t rows, int64_t cols, int64_t ld,
                 size_t elem, int type, bool write, bool require_init, char* msg, size_t msg_len) {
    const size_t bytes = span_bytes(rows, cols, ld, elem);
    if (bytes == 0) return 0;
    char shape[128];
    snprintf(shape, sizeof shape, "%lld x %lld %s, ld %lld", (long long)rows, (long long)cols, type_name(type),
             (long long)ld);
    const char* verb = write ? "writes" : "reads";
    char detail[512];
    if (hgemu_check_range(p, bytes, write, 0, detail, sizeof detail))
        return report(g, verb, operand, p, bytes, shape, detail, msg, msg_len);
    if (!require_init) return 0;
    if (ld == rows) {
        if (hgemu_check_range(p, bytes, 0, 1, detail, sizeof detail))
            return report(g, verb, operand, p, bytes, shape, detail, msg, msg_len);
        return 0;
    }
    for (int64_t j = 0; j < cols; ++j) {
        const void* column = static_cast<const char*>(p) + size_t(j) * size_t(ld) * elem;
        if (hgemu_check_range(column, size_t(rows) * elem, 0, 1, detail, sizeof detail)) {
            char which[160];
            snprintf(which, sizeof which, "%s column %lld", operand, (long long)j);
            return report(g, verb, which, column, size_t(rows) * elem, shape, detail, msg, msg_len);
        }
    }
    return 0;
}

void mark_matrix(void* p, int64_t rows, int64_t cols, int64_t ld, size_t elem) {
    if (rows == 0 || cols == 0) return;
    if (ld == rows) {
        hgemu_mark_written(p, span_bytes(rows, cols, ld, elem));
        return;
    }
    for (int64_t j = 0; j < cols; ++j)
        hgemu_mark_written(static_cast<char*>(p) + size_t(j) * size_t(ld) * elem, size_t(rows) * elem);
}

int run(const Gemm& g, char* msg, size_t msg_len) {
    if (g.k > 0 && g.alpha != 0.0f) {
        const size_t ea = type_size(g.a.type), eb = type_size(g.b.type);
        if (int rc = check_matrix(g, "A", g.a.data, g.a.rows, g.a.cols, g.a.ld, ea, g.a.type, false, true, msg,
                                  msg_len))
            return rc;
        if (int rc = check_matrix(g, "B", g.b.data, g.b.rows, g.b.cols, g.b.ld, eb, g.b.type, false, true, msg,
                                  msg_len))
            return rc;
    }
    if (g.beta != 0.0f) {
        if (int rc = check_matrix(g, "C", g.c, g.m, g.n, g.ldc, 4, R_32F, false, true, msg, msg_len)) return rc;
    }
    if (g.bias) {
        if (int rc = check_matrix(g, "the bias", g.bias, g.m, 1, g.m, 4, R_32F, false, true, msg, msg_len))
            return rc;
    }
    if (int rc = check_matrix(g, "D", g.d, g.m, g.n, g.ldd, 4, R_32F, true, false, msg, msg_len)) return rc;
    compute(g);
    mark_matrix(g.d, g.m, g.n, g.ldd, 4);
    return 0;
}

int enqueue(void* stream, const Gemm& g) {
    int rc = hgemu_stream_enqueue(stream, g.api, [g](char* msg, size_t msg_len) { return run(g, msg, msg_len); });
    if (rc != 0)
        return refuse(g.api, ST_EXECUTION_FAILED, "queueing the GEMM on stream %p failed with CUresult %d", stream,
                      rc);
    return ST_SUCCESS;
}

// ---- Validation shared by both APIs ----------------------------------------------------------------------

bool aligned_to(const void* p, uint64_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

// A misaligned element pointer would fault on a GPU; refuse it before anything runs.
int check_pointers(const Gemm& g) {
    struct {
        const char* name;
        const void* p;
        size_t elem;
        bool used;
    } pointers[] = {
        {"A", g.a.data, type_size(g.a.type), g.k > 0 && g.alpha != 0.0f},
        {"B", g.b.data, type_size(g.b.type), g.k > 0 && g.alpha != 0.0f},
        {"C", g.c, 4, g.beta != 0.0f},
        {"D", g.d, 4, true},
    };
    for (const auto& pointer : pointers) {
        if (pointer.used && !aligned_to(pointer.p, pointer.elem))
            return refuse(g.api, ST_INVALID_VALUE, "%s pointer %p is not aligned to its %zu-byte elements",
                          pointer.name, pointer.p, pointer.elem);
    }
    return ST_SUCCESS;
}

// The A/B/C type combinations cuBLAS accepts with a 32F compute type, and which of them we emulate.
int check_types(const char* api, int compute, int atype, int btype, int ctype) {
    if (!is_compute_type(compute)) return refuse(api, ST_INVALID_VALUE, "compute type %d is not one", compute);
    if (atype != btype)
        return refuse(api, ST_NOT_SUPPORTED, "A is %s but B is %s", type_name(atype), type_name(btype));
    const bool emulated = is_32f_compute(compute) && ctype == R_32F && (atype == R_32F || atype == R_16BF);
    if (emulated) return ST_SUCCESS;
    const bool library_has_it =
        (is_32f_compute(compute) && (atype == R_16BF || atype == R_16F) && (ctype == atype || ctype == R_32F)) ||
        (compute == COMPUTE_32F_EMULATED_16BFX9 && atype == R_32F && ctype == R_32F) ||
        (compute == COMPUTE_16F && atype == R_16F && ctype == R_16F) ||
        ((compute == COMPUTE_64F || compute == COMPUTE_64F_PEDANTIC) && atype == R_64F && ctype == R_64F) ||
        ((compute == COMPUTE_32I || compute == COMPUTE_32I_PEDANTIC) && atype == R_8I && ctype == R_32I);
    return refuse(api, ST_NOT_SUPPORTED, "%s x %s -> %s with compute type %d%s", type_name(atype), type_name(btype),
                  type_name(ctype), compute,
                  library_has_it ? " (cuBLAS has it; the emulator only has f32 or bf16 inputs into f32 with a 32F "
                                   "compute type)"
                                 : "");
}

int op_of(const char* api, const char* which, int op, bool* transposed) {
    if (op != OP_N && op != OP_T && op != OP_C)
        return refuse(api, ST_INVALID_VALUE, "%s is %d, not N, T or C", which, op);
    *transposed = op != OP_N;  // C (conjugate transpose) is T for real types
    return ST_SUCCESS;
}

BlasHandle* blas_handle(void* handle) { return live_as<BlasHandle>(handle); }

// ---- cuBLASLt problem from descriptors ------------------------------------------------------------------

int check_layout(const char* api, const char* name, const Layout* layout) {
    if (!live_as<Layout>(layout))
        return refuse(api, ST_INVALID_VALUE, "%s layout %p is not a live layout", name, layout);
    if (layout->order != ORDER_COL)
        return refuse(api, ST_NOT_SUPPORTED, "%s layout order %d (the emulator has column order only)", name,
                      layout->order);
    if (layout->batch_count != 1)
        return refuse(api, ST_NOT_SUPPORTED, "%s batch count %d (the emulator has unbatched layouts only)", name,
                      layout->batch_count);
    if (layout->rows > uint64_t(INT32_MAX) || layout->cols > uint64_t(INT32_MAX) || layout->ld > INT32_MAX)
        return refuse(api, ST_NOT_SUPPORTED, "%s layout of %llu x %llu, ld %lld is too large to emulate", name,
                      (unsigned long long)layout->rows, (unsigned long long)layout->cols, (long long)layout->ld);
    if (layout->ld < std::max<int64_t>(1, int64_t(layout->rows)))
        return refuse(api, ST_INVALID_VALUE, "%s ld %lld < max(1, rows %llu)", name, (long long)layout->ld,
                      (unsigned long long)layout->rows);
    return ST_SUCCESS;
}

// Fills g (all but pointers and scalars) from the descriptors, or refuses them as cuBLASLt would.
int lt_problem(const char* api, const MatmulDesc* desc, const Layout* la, const Layout* lb, const Layout* lc,
               const Layout* ld, Gemm* g) {
    if (!live_as<MatmulDesc>(desc)) return refuse(api, ST_INVALID_VALUE, "matmul descriptor %p is not live", desc);
    for (auto [name, layout] : {std::pair<const char*, const Layout*>{"A", la}, {"B", lb}, {"C", lc}, {"D", ld}}) {
        if (int st = check_layout(api, name, layout)) return st;
    }
    if (int st = check_types(api, desc->compute_type, int(la->type), int(lb->type), int(ld->type))) return st;
    if (lc->type != ld->type)
        return refuse(api, ST_NOT_SUPPORTED, "C is %s but D is %s", type_name(int(lc->type)),
                      type_name(int(ld->type)));
    if (desc->scale_type != R_32F)
        return refuse(api, ST_NOT_SUPPORTED, "scale type %s with a 32F compute type", type_name(desc->scale_type));
    if (desc->pointer_mode != POINTER_MODE_HOST)
        return refuse(api, ST_NOT_SUPPORTED, "pointer mode %d (the emulator has host alpha/beta only)",
                      desc->pointer_mode);
    if (desc->transc != OP_N) return refuse(api, ST_NOT_SUPPORTED, "TRANSC must be N");
    if (desc->fill_mode != FILL_MODE_FULL) return refuse(api, ST_NOT_SUPPORTED, "fill mode must be FULL");
    if (desc->epilogue != EPILOGUE_DEFAULT && desc->epilogue != EPILOGUE_BIAS)
        return refuse(api, ST_NOT_SUPPORTED, "epilogue %u (the emulator has DEFAULT and BIAS)", desc->epilogue);
    if (desc->epilogue == EPILOGUE_BIAS && desc->bias_type != -1 && desc->bias_type != int32_t(ld->type))
        return refuse(api, ST_NOT_SUPPORTED, "a %s bias for a %s D", type_name(desc->bias_type),
                      type_name(int(ld->type)));
    bool ta = false, tb = false;
    if (int st = op_of(api, "TRANSA", desc->transa, &ta)) return st;
    if (int st = op_of(api, "TRANSB", desc->transb, &tb)) return st;
    const int64_t m = int64_t(ta ? la->cols : la->rows), k = int64_t(ta ? la->rows : la->cols);
    const int64_t kb = int64_t(tb ? lb->cols : lb->rows), n = int64_t(tb ? lb->rows : lb->cols);
    if (kb != k)
        return refuse(api, ST_INVALID_VALUE, "op(A) is %lld x %lld but op(B) is %lld x %lld", (long long)m,
                      (long long)k, (long long)kb, (long long)n);
    for (auto [name, layout] : {std::pair<const char*, const Layout*>{"C", lc}, {"D", ld}}) {
        if (int64_t(layout->rows) != m || int64_t(layout->cols) != n)
            return refuse(api, ST_INVALID_VALUE, "%s is %llu x %llu, op(A)·op(B) is %lld x %lld", name,
                          (unsigned long long)layout->rows, (unsigned long long)layout->cols, (long long)m,
                          (long long)n);
    }
    *g = Gemm{};
    g->api = api;
    g->ta = ta;
    g->tb = tb;
    g->m = m;
    g->n = n;
    g->k = k;
    g->a = Operand{nullptr, int(la->type), int64_t(la->rows), int64_t(la->cols), la->ld};
    g->b = Operand{nullptr, int(lb->type), int64_t(lb->rows), int64_t(lb->cols), lb->ld};
    g->ldc = lc->ld;
    g->ldd = ld->ld;
    return ST_SUCCESS;
}

// Copies an attribute value of exactly `expected` bytes.
// A matmul descriptor's attribute as bytes: where it lives and its size (null: not emulated). One table for
// cublasLtMatmulDescSetAttribute and GetAttribute.
struct DescField {
    void* ptr;
    size_t size;
};
template <class T> DescField field_of(T* f) { return {f, sizeof(T)}; }
DescField desc_field(MatmulDesc* d, int attr) {
    switch (attr) {
    case DESC_COMPUTE_TYPE: return field_of(&d->compute_type);
    case DESC_SCALE_TYPE: return field_of(&d->scale_type);
    case DESC_POINTER_MODE: return field_of(&d->pointer_mode);
    case DESC_TRANSA: return field_of(&d->transa);
    case DESC_TRANSB: return field_of(&d->transb);
    case DESC_TRANSC: return field_of(&d->transc);
    case DESC_FILL_MODE: return field_of(&d->fill_mode);
    case DESC_EPILOGUE: return field_of(&d->epilogue);
    case DESC_BIAS_POINTER: return field_of(&d->bias);
    case DESC_BIAS_BATCH_STRIDE: return field_of(&d->bias_batch_stride);
    case DESC_BIAS_DATA_TYPE: return field_of(&d->bias_type);
    case DESC_SM_COUNT_TARGET: return field_of(&d->sm_count_target);
    default: return {nullptr, 0};
    }
}

template <class T> int set_value(const char* api, int attr, const void* buf, size_t size, T* field) {
    if (!buf || size != sizeof(T))
        return refuse(api, ST_INVALID_VALUE, "attribute %d takes %zu bytes, given %zu%s", attr, sizeof(T), size,
                      buf ? "" : " at NULL");
    memcpy(field, buf, sizeof(T));
    return ST_SUCCESS;
}

}  // namespace

extern "C" {

// ---- cuBLAS --------------------------------------------------------------------------------------------

__attribute__((visibility("default"))) int cublasCreate_v2(void** handle) {
    if (!handle) return refuse("cublasCreate_v2", ST_INVALID_VALUE, "handle is NULL");
    *handle = make_live<BlasHandle>();
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasDestroy_v2(void* handle) {
    return destroy_live<BlasHandle>(handle) ? ST_SUCCESS : ST_NOT_INITIALIZED;
}

__attribute__((visibility("default"))) int cublasSetStream_v2(void* handle, void* stream) {
    BlasHandle* h = blas_handle(handle);
    if (!h) return ST_NOT_INITIALIZED;
    h->stream = stream;
    // cuBLAS resets the workspace to its default pool whenever the stream is set.
    h->workspace = nullptr;
    h->workspace_bytes = 0;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasGetStream_v2(void* handle, void** stream) {
    BlasHandle* h = blas_handle(handle);
    if (!h) return ST_NOT_INITIALIZED;
    if (!stream) return ST_INVALID_VALUE;
    *stream = h->stream;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasSetWorkspace_v2(void* handle, void* workspace, size_t bytes) {
    BlasHandle* h = blas_handle(handle);
    if (!h) return ST_NOT_INITIALIZED;
    if (!aligned_to(workspace, 256))
        return refuse("cublasSetWorkspace_v2", ST_INVALID_VALUE, "workspace %p is not 256-byte aligned", workspace);
    if (!workspace && bytes != 0)
        return refuse("cublasSetWorkspace_v2", ST_INVALID_VALUE, "a NULL workspace of %zu bytes", bytes);
    h->workspace = workspace;
    h->workspace_bytes = bytes;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasSetMathMode(void* handle, int mode) {
    BlasHandle* h = blas_handle(handle);
    if (!h) return ST_NOT_INITIALIZED;
    const int base = mode & ~16;  // 16: CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION, a flag
    if (base != 0 && base != 1 && base != 2 && base != 3 && base != 4 && base != 8)
        return refuse("cublasSetMathMode", ST_INVALID_VALUE, "math mode %d", mode);
    h->math_mode = mode;  // f32 GEMMs stay full f32 here whatever the mode (no TF32 rounding)
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasGetMathMode(void* handle, int* mode) {
    BlasHandle* h = blas_handle(handle);
    if (!h) return ST_NOT_INITIALIZED;
    if (!mode) return ST_INVALID_VALUE;
    *mode = h->math_mode;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) const char* cublasGetStatusString(int status) {
    return status_string(status);
}

__attribute__((visibility("default"))) const char* cublasGetStatusName(int status) { return status_name(status); }

__attribute__((visibility("default"))) int cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k,
                                                        const void* alpha, const void* A, int atype, int lda,
                                                        const void* B, int btype, int ldb, const void* beta, void* C,
                                                        int ctype, int ldc, int compute, int algo) {
    const char* api = "cublasGemmEx";
    BlasHandle* h = blas_handle(handle);
    if (!h) return refuse(api, ST_NOT_INITIALIZED, "handle %p is not a live cuBLAS handle", handle);
    bool ta = false, tb = false;
    if (int st = op_of(api, "transa", transa, &ta)) return st;
    if (int st = op_of(api, "transb", transb, &tb)) return st;
    if (m < 0 || n < 0 || k < 0) return refuse(api, ST_INVALID_VALUE, "m %d, n %d, k %d", m, n, k);
    const int a_rows = ta ? k : m, b_rows = tb ? n : k;
    if (lda < std::max(1, a_rows))
        return refuse(api, ST_INVALID_VALUE, "lda %d < max(1, %d) for op %c", lda, a_rows, ta ? 'T' : 'N');
    if (ldb < std::max(1, b_rows))
        return refuse(api, ST_INVALID_VALUE, "ldb %d < max(1, %d) for op %c", ldb, b_rows, tb ? 'T' : 'N');
    if (ldc < std::max(1, m)) return refuse(api, ST_INVALID_VALUE, "ldc %d < max(1, m %d)", ldc, m);
    if (!alpha || !beta) return refuse(api, ST_INVALID_VALUE, "alpha or beta is NULL");
    if (int st = check_types(api, compute, atype, btype, ctype)) return st;
    if (!((algo >= -1 && algo <= 23) || (algo >= 99 && algo <= 115) || algo == 999))
        return refuse(api, ST_NOT_SUPPORTED, "algorithm %d", algo);
    if (m == 0 || n == 0) return ST_SUCCESS;
    Gemm g{};
    g.api = api;
    g.ta = ta;
    g.tb = tb;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = Operand{A, atype, a_rows, ta ? m : k, lda};
    g.b = Operand{B, btype, b_rows, tb ? k : n, ldb};
    g.c = static_cast<const float*>(C);
    g.ldc = ldc;
    g.d = static_cast<float*>(C);
    g.ldd = ldc;
    // Host pointer mode: alpha and beta are read now, as cuBLAS does before returning.
    memcpy(&g.alpha, alpha, sizeof(float));
    memcpy(&g.beta, beta, sizeof(float));
    if (int st = check_pointers(g)) return st;
    return enqueue(h->stream, g);
}

// ---- cuBLASLt ------------------------------------------------------------------------------------------

__attribute__((visibility("default"))) int cublasLtCreate(void** handle) {
    if (!handle) return refuse("cublasLtCreate", ST_INVALID_VALUE, "handle is NULL");
    *handle = make_live<LtHandle>();
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasLtDestroy(void* handle) {
    return destroy_live<LtHandle>(handle) ? ST_SUCCESS : ST_NOT_INITIALIZED;
}

__attribute__((visibility("default"))) const char* cublasLtGetStatusString(int status) {
    return status_string(status);
}

__attribute__((visibility("default"))) const char* cublasLtGetStatusName(int status) { return status_name(status); }

__attribute__((visibility("default"))) int cublasLtMatmulDescCreate(void** desc, int compute, int scale) {
    if (!desc) return refuse("cublasLtMatmulDescCreate", ST_INVALID_VALUE, "desc is NULL");
    MatmulDesc* d = make_live<MatmulDesc>();
    d->compute_type = compute;
    d->scale_type = scale;
    *desc = d;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasLtMatmulDescDestroy(void* desc) {
    return destroy_live<MatmulDesc>(desc) ? ST_SUCCESS : ST_INVALID_VALUE;
}

__attribute__((visibility("default"))) int cublasLtMatmulDescSetAttribute(void* desc, int attr, const void* buf,
                                                                          size_t size) {
    const char* api = "cublasLtMatmulDescSetAttribute";
    MatmulDesc* d = live_as<MatmulDesc>(desc);
    if (!d) return refuse(api, ST_INVALID_VALUE, "descriptor %p is not live", desc);
    const DescField field = desc_field(d, attr);
    if (!field.ptr) return refuse(api, ST_NOT_SUPPORTED, "matmul attribute %d is not emulated", attr);
    if (!buf || size != field.size)
        return refuse(api, ST_INVALID_VALUE, "attribute %d takes %zu bytes, given %zu%s", attr, field.size, size,
                      buf ? "" : " at NULL");
    memcpy(field.ptr, buf, field.size);
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasLtMatmulDescGetAttribute(void* desc, int attr, void* buf,
                                                                          size_t size, size_t* written) {
    const char* api = "cublasLtMatmulDescGetAttribute";
    MatmulDesc* d = live_as<MatmulDesc>(desc);
    if (!d) return refuse(api, ST_INVALID_VALUE, "descriptor %p is not live", desc);
    const DescField field = desc_field(d, attr);
    if (!field.ptr) return refuse(api, ST_NOT_SUPPORTED, "matmul attribute %d is not emulated", attr);
    // sizeInBytes 0 asks for the size; otherwise it must match and buf must be given.
    if (size == 0) {
        if (!written) return refuse(api, ST_INVALID_VALUE, "size 0 and sizeWritten NULL");
        *written = field.size;
        return ST_SUCCESS;
    }
    if (!buf || size != field.size)
        return refuse(api, ST_INVALID_VALUE, "attribute %d has %zu bytes, asked for %zu%s", attr, field.size, size,
                      buf ? "" : " into NULL");
    memcpy(buf, field.ptr, field.size);
    if (written) *written = field.size;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows,
                                                                      uint64_t cols, int64_t ld) {
    if (!layout) return refuse("cublasLtMatrixLayoutCreate", ST_INVALID_VALUE, "layout is NULL");
    Layout* l = make_live<Layout>();
    l->type = uint32_t(type);
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    *layout = l;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasLtMatrixLayoutDestroy(void* layout) {
    return destroy_live<Layout>(layout) ? ST_SUCCESS : ST_INVALID_VALUE;
}

__attribute__((visibility("default"))) int cublasLtMatrixLayoutSetAttribute(void* layout, int attr, const void* buf,
                                                                            size_t size) {
    const char* api = "cublasLtMatrixLayoutSetAttribute";
    Layout* l = live_as<Layout>(layout);
    if (!l) return refuse(api, ST_INVALID_VALUE, "layout %p is not live", layout);
    switch (attr) {
    case LAYOUT_TYPE: return set_value(api, attr, buf, size, &l->type);
    case LAYOUT_ORDER: return set_value(api, attr, buf, size, &l->order);
    case LAYOUT_ROWS: return set_value(api, attr, buf, size, &l->rows);
    case LAYOUT_COLS: return set_value(api, attr, buf, size, &l->cols);
    case LAYOUT_LD: return set_value(api, attr, buf, size, &l->ld);
    case LAYOUT_BATCH_COUNT: return set_value(api, attr, buf, size, &l->batch_count);
    case LAYOUT_STRIDED_BATCH_OFFSET: return set_value(api, attr, buf, size, &l->batch_stride);
    default: return refuse(api, ST_NOT_SUPPORTED, "layout attribute %d is not emulated", attr);
    }
}

__attribute__((visibility("default"))) int cublasLtMatmulPreferenceCreate(void** pref) {
    if (!pref) return refuse("cublasLtMatmulPreferenceCreate", ST_INVALID_VALUE, "pref is NULL");
    *pref = make_live<Preference>();
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasLtMatmulPreferenceDestroy(void* pref) {
    return destroy_live<Preference>(pref) ? ST_SUCCESS : ST_INVALID_VALUE;
}

__attribute__((visibility("default"))) int cublasLtMatmulPreferenceSetAttribute(void* pref, int attr,
                                                                                const void* buf, size_t size) {
    const char* api = "cublasLtMatmulPreferenceSetAttribute";
    Preference* p = live_as<Preference>(pref);
    if (!p) return refuse(api, ST_INVALID_VALUE, "preference %p is not live", pref);
    switch (attr) {
    case PREF_SEARCH_MODE: return set_value(api, attr, buf, size, &p->search_mode);
    case PREF_MAX_WORKSPACE_BYTES: return set_value(api, attr, buf, size, &p->max_workspace);
    case PREF_REDUCTION_SCHEME_MASK: return set_value(api, attr, buf, size, &p->reduction_mask);
    case PREF_MIN_ALIGNMENT_A_BYTES: return set_value(api, attr, buf, size, &p->min_alignment[0]);
    case PREF_MIN_ALIGNMENT_B_BYTES: return set_value(api, attr, buf, size, &p->min_alignment[1]);
    case PREF_MIN_ALIGNMENT_C_BYTES: return set_value(api, attr, buf, size, &p->min_alignment[2]);
    case PREF_MIN_ALIGNMENT_D_BYTES: return set_value(api, attr, buf, size, &p->min_alignment[3]);
    case PREF_MAX_WAVES_COUNT: return set_value(api, attr, buf, size, &p->max_waves);
    case PREF_IMPL_MASK: return set_value(api, attr, buf, size, &p->impl_mask);
    default: return refuse(api, ST_INVALID_VALUE, "preference attribute %d", attr);
    }
}

// One algorithm (needing no workspace) for every problem the emulator can run; a refused problem returns the
// status cuBLASLt would.
__attribute__((visibility("default"))) int cublasLtMatmulAlgoGetHeuristic(void* handle, void* desc, void* adesc,
                                                                          void* bdesc, void* cdesc, void* ddesc,
                                                                          void* pref, int requested, void* results,
                                                                          int* returned) {
    const char* api = "cublasLtMatmulAlgoGetHeuristic";
    if (!live_as<LtHandle>(handle))
        return refuse(api, ST_NOT_INITIALIZED, "handle %p is not a live cuBLASLt handle", handle);
    if (requested <= 0 || !results || !returned)
        return refuse(api, ST_INVALID_VALUE, "requestedAlgoCount %d, results %p, returnAlgoCount %p", requested,
                      results, static_cast<void*>(returned));
    if (!live_as<Preference>(pref)) return refuse(api, ST_INVALID_VALUE, "preference %p is not live", pref);
    Gemm g{};
    if (int st = lt_problem(api, static_cast<MatmulDesc*>(desc), static_cast<Layout*>(adesc),
                            static_cast<Layout*>(bdesc), static_cast<Layout*>(cdesc), static_cast<Layout*>(ddesc),
                            &g))
        return st;
    const MatmulDesc* d = static_cast<const MatmulDesc*>(desc);
    // The algorithm assumes the bias alignment it sees now (cuBLASLt reads the pointer's value for that).
    uint64_t bias_alignment = BIAS_KERNEL_ALIGNMENT;
    if (d->bias) {
        while (bias_alignment > 1 && !aligned_to(d->bias, bias_alignment)) bias_alignment /= 2;
    }
    LtHeuristicResult result{};
    result.algo.data[0] = ALGO_MAGIC;
    result.algo.data[1] = bias_alignment;
    result.workspace_size = 0;
    result.state = ST_SUCCESS;
    result.waves_count = 1.0f;
    memcpy(results, &result, sizeof result);
    *returned = 1;
    return ST_SUCCESS;
}

__attribute__((visibility("default"))) int cublasLtMatmul(void* handle, void* desc, const void* alpha,
                                                          const void* A, void* adesc, const void* B, void* bdesc,
                                                          const void* beta, const void* C, void* cdesc, void* D,
                                                          void* ddesc, const void* algo, void* /*workspace*/,
                                                          size_t /*workspace_bytes*/, void* stream) {
    const char* api = "cublasLtMatmul";
    if (!live_as<LtHandle>(handle))
        return refuse(api, ST_NOT_INITIALIZED, "handle %p is not a live cuBLASLt handle", handle);
    // The workspace goes unused: the emulated algorithm needs none (its heuristic said workspace 0).
    Gemm g{};
    if (int st = lt_problem(api, static_cast<MatmulDesc*>(desc), static_cast<Layout*>(adesc),
                            static_cast<Layout*>(bdesc), static_cast<Layout*>(cdesc), static_cast<Layout*>(ddesc),
                            &g))
        return st;
    const MatmulDesc* d = static_cast<const MatmulDesc*>(desc);
    if (!alpha || !beta) return refuse(api, ST_INVALID_VALUE, "alpha or beta is NULL");
    // NULL: cuBLASLt runs its own heuristic, which sees the bias pointer as it is now.
    uint64_t bias_alignment = 4;
    if (algo) {
        LtAlgo chosen;
        memcpy(&chosen, algo, sizeof chosen);
        if (chosen.data[0] != ALGO_MAGIC)
            return refuse(api, ST_INVALID_VALUE, "algo %p did not come from cublasLtMatmulAlgoGetHeuristic", algo);
        bias_alignment = std::max<uint64_t>(4, chosen.data[1]);
    }
    if (C == D && cdesc != ddesc) {
        const Layout *lc = static_cast<Layout*>(cdesc), *ld = static_cast<Layout*>(ddesc);
        if (lc->ld != ld->ld || lc->type != ld->type)
            return refuse(api, ST_INVALID_VALUE, "in place (C == D) with different C and D layouts");
    }
    g.a.data = A;
    g.b.data = B;
    g.c = static_cast<const float*>(C);
    g.d = static_cast<float*>(D);
    memcpy(&g.alpha, alpha, sizeof(float));
    memcpy(&g.beta, beta, sizeof(float));
    if (d->epilogue == EPILOGUE_BIAS) {
        if (!d->bias) return refuse(api, ST_INVALID_VALUE, "epilogue BIAS with a NULL bias pointer");
        if (!aligned_to(d->bias, bias_alignment))
            return refuse(api, ST_INVALID_VALUE,
                          "bias pointer %p is not %llu-byte aligned, as the algorithm chosen for it requires",
                          d->bias, (unsigned long long)bias_alignment);
        g.bias = static_cast<const float*>(d->bias);
    }
    if (g.m == 0 || g.n == 0) return ST_SUCCESS;
    if (int st = check_pointers(g)) return st;
    return enqueue(stream, g);
}

}  // extern "C"
