// Self-test of the emulated cuBLAS / cuBLASLt (emulator/blas.cpp): cublasGemmEx and cublasLtMatmul against a
// naive loop (bit for bit against the same f32 sum in k order, and within the f32 rounding bound of a float64
// sum) for every transpose pair, leading dimensions larger than the rows, f32 and bf16, alpha/beta, beta 0 over
// NaN, the bias epilogue, in place and out of place; every refused argument's status code; and the sanitizer
// findings a GEMM reports (each run in a child process, since a finding is sticky for the context).
//
// Two builds, from the repository root:
//   with stand-ins for the driver (blas.cpp alone; no other part of the emulator needed):
//     g++ -std=c++17 -O2 -pthread -Wall -Wextra -Iemulator -DBLAS_SELFTEST_STUBS emulator/blas.cpp
//         emulator/tests/blas_selftest.cpp -o /tmp/blas_selftest && /tmp/blas_selftest
//   against the emulator's libcuda.so (DIR: the build's emulator directory, which holds libcuda.so):
//     g++ -std=c++17 -O2 -pthread -Wall -Wextra -Iemulator emulator/tests/blas_selftest.cpp
//         -o /tmp/blas_selftest -L"$DIR" -lcuda -Wl,-rpath,"$DIR" && /tmp/blas_selftest
// `/tmp/blas_selftest bench` also times a few model-sized GEMMs.
#include "hgemu.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <string>
#include <vector>

// The reference sums exactly as the library promises: never a fused multiply-add.
#pragma GCC optimize("fp-contract=off")

extern "C" {
typedef unsigned long long CUdeviceptr;
int cuInit(unsigned flags);
int cuDeviceGet(int* device, int ordinal);
int cuDevicePrimaryCtxRetain(void** ctx, int device);
int cuCtxSetCurrent(void* ctx);
int cuMemAlloc_v2(CUdeviceptr* p, size_t bytes);
int cuMemFree_v2(CUdeviceptr p);
int cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes);
int cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes);
int cuCtxSynchronize(void);

int cublasCreate_v2(void** handle);
int cublasDestroy_v2(void* handle);
int cublasSetStream_v2(void* handle, void* stream);
int cublasSetWorkspace_v2(void* handle, void* workspace, size_t bytes);
int cublasSetMathMode(void* handle, int mode);
const char* cublasGetStatusString(int status);
const char* cublasGetStatusName(int status);
int cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* A,
                 int atype, int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype, int ldc,
                 int compute, int algo);

int cublasLtCreate(void** handle);
int cublasLtDestroy(void* handle);
const char* cublasLtGetStatusString(int status);
int cublasLtMatmulDescCreate(void** desc, int compute, int scale);
int cublasLtMatmulDescDestroy(void* desc);
int cublasLtMatmulDescSetAttribute(void* desc, int attr, const void* buf, size_t size);
int cublasLtMatmulDescGetAttribute(void* desc, int attr, void* buf, size_t size, size_t* written);
int cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld);
int cublasLtMatrixLayoutDestroy(void* layout);
int cublasLtMatrixLayoutSetAttribute(void* layout, int attr, const void* buf, size_t size);
int cublasLtMatmulPreferenceCreate(void** pref);
int cublasLtMatmulPreferenceDestroy(void* pref);
int cublasLtMatmulPreferenceSetAttribute(void* pref, int attr, const void* buf, size_t size);
int cublasLtMatmulAlgoGetHeuristic(void* handle, void* desc, void* a, void* b, void* c, void* d, void* pref,
                                   int requested, void* results, int* returned);
int cublasLtMatmul(void* handle, void* desc, const void* alpha, const void* A, void* adesc, const void* B,
                   void* bdesc, const void* beta, const void* C, void* cdesc, void* D, void* ddesc, const void* algo,
                   void* workspace, size_t workspace_bytes, void* stream);
}

#ifdef BLAS_SELFTEST_STUBS
// ---- Stand-ins for driver.cpp / runtime.cpp: streams run work at once; a region table for the checks -----
#include <map>
#include <mutex>

namespace stub {
struct Region {
    size_t size;
    std::vector<bool> written;
};
std::mutex mutex;
std::map<uintptr_t, Region> regions;
int sticky = 0;
}  // namespace stub

extern "C" {
void hgemu_region_add(void* base, size_t size, int kind, const char*) {
    std::lock_guard<std::mutex> lock(stub::mutex);
    stub::regions[uintptr_t(base)] = stub::Region{size, std::vector<bool>(size, kind != HG_REGION_DEVICE)};
}
void hgemu_region_remove(void* base) {
    std::lock_guard<std::mutex> lock(stub::mutex);
    stub::regions.erase(uintptr_t(base));
}
void hgemu_mark_written(const void* p, size_t n) {
    std::lock_guard<std::mutex> lock(stub::mutex);
    auto it = stub::regions.upper_bound(uintptr_t(p));
    if (it == stub::regions.begin()) return;
    --it;
    for (size_t i = uintptr_t(p) - it->first; i < uintptr_t(p) - it->first + n && i < it->second.size; ++i)
        it->second.written[i] = true;
}
int hgemu_check_range(const void* p, size_t n, int, int require_init, char* msg, size_t msg_len) {
    std::lock_guard<std::mutex> lock(stub::mutex);
    auto it = stub::regions.upper_bound(uintptr_t(p));
    if (it == stub::regions.begin() || uintptr_t(p) + n > (--it)->first + it->second.size) {
        snprintf(msg, msg_len, "memcheck: not inside one live allocation");
        return 1;
    }
    if (require_init) {
        for (size_t i = uintptr_t(p) - it->first; i < uintptr_t(p) - it->first + n; ++i) {
            if (!it->second.written[i]) {
                snprintf(msg, msg_len, "initcheck: byte %zu of a %zu-byte allocation was never written", i,
                         it->second.size);
                return 1;
            }
        }
    }
    return 0;
}
int cuInit(unsigned) { return 0; }
int cuDeviceGet(int* device, int) { return *device = 0, 0; }
int cuDevicePrimaryCtxRetain(void** ctx, int) { return *ctx = &stub::sticky, 0; }
int cuCtxSetCurrent(void*) { return 0; }
int cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    void* base = aligned_alloc(256, (bytes + 255) / 256 * 256);
    hgemu_region_add(base, bytes, HG_REGION_DEVICE, "cuMemAlloc");
    *p = CUdeviceptr(base);
    return 0;
}
int cuMemFree_v2(CUdeviceptr p) {
    hgemu_region_remove(reinterpret_cast<void*>(p));  // kept allocated, so a later access is a clean finding
    return 0;
}
int cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    memcpy(reinterpret_cast<void*>(dst), src, bytes);
    hgemu_mark_written(reinterpret_cast<void*>(dst), bytes);
    return 0;
}
int cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    memcpy(dst, reinterpret_cast<void*>(src), bytes);
    return stub::sticky;
}
int cuCtxSynchronize(void) { return stub::sticky; }
}
// C++ linkage, as hgemu.h declares it.
int hgemu_stream_enqueue(void*, const char* what, std::function<int(char*, size_t)> work) {
    if (stub::sticky) return stub::sticky;
    char msg[1024] = "";
    if (int rc = work(msg, sizeof msg)) {
        fprintf(stderr, "%s failed: %s\n", what, msg);
        stub::sticky = rc;
    }
    return 0;
}
#endif

namespace {

enum { N = 0, T = 1 };
enum { R_32F = 0, R_16BF = 14, R_64F = 1 };
enum { COMPUTE_32F = 68, COMPUTE_64F = 70, COMPUTE_32F_FAST_TF32 = 77 };
enum { GEMM_DEFAULT = -1 };
enum { ST_OK = 0, ST_NOT_INITIALIZED = 1, ST_INVALID_VALUE = 7, ST_NOT_SUPPORTED = 15 };
enum { DESC_TRANSA = 3, DESC_TRANSB = 4, DESC_EPILOGUE = 7, DESC_BIAS_POINTER = 8, DESC_SCALE_TYPE = 1 };
enum { EPILOGUE_DEFAULT = 1, EPILOGUE_RELU = 2, EPILOGUE_BIAS = 4 };
enum { LAYOUT_ORDER = 1, PREF_MAX_WORKSPACE_BYTES = 1 };

int failures = 0, checks = 0;

__attribute__((format(printf, 2, 3))) void expect(bool ok, const char* fmt, ...) {
    ++checks;
    if (ok) return;
    ++failures;
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);
}

void check_cu(int rc, const char* what) {
    if (rc != 0) {
        fprintf(stderr, "FAIL: %s returned CUresult %d\n", what, rc);
        exit(2);
    }
}

void init_device() {
    int device = 0;
    void* ctx = nullptr;
    check_cu(cuInit(0), "cuInit");
    check_cu(cuDeviceGet(&device, 0), "cuDeviceGet");
    check_cu(cuDevicePrimaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain");
    check_cu(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
}

uint64_t rng_state = 0x9e3779b97f4a7c15ull;
float uniform() {  // in [-1, 1)
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return float(int64_t(rng_state >> 40) - (1 << 23)) / float(1 << 23);
}

uint16_t to_bf16(float x) {  // round to nearest even (finite inputs)
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}
float from_bf16(uint16_t h) {
    uint32_t bits = uint32_t(h) << 16;
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

// A column-major matrix on the device and its values (as the library sees them) on the host.
struct Matrix {
    int type, rows, cols, ld;
    std::vector<float> values;  // ld x cols; entries past `rows` are padding
    CUdeviceptr dev = 0;
    float at(int i, int j) const { return values[size_t(i) + size_t(j) * ld]; }
    size_t elem() const { return type == R_16BF ? 2 : 4; }
    size_t bytes() const { return size_t(ld) * cols * elem(); }
};

Matrix make_matrix(int type, int rows, int cols, int ld, float fill = NAN) {
    Matrix m{type, rows, cols, ld, std::vector<float>(size_t(ld) * cols, fill)};
    for (int j = 0; j < cols; ++j) {
        for (int i = 0; i < rows; ++i) {
            float v = uniform();
            m.values[size_t(i) + size_t(j) * ld] = type == R_16BF ? from_bf16(to_bf16(v)) : v;
        }
    }
    check_cu(cuMemAlloc_v2(&m.dev, std::max<size_t>(m.bytes(), 1)), "cuMemAlloc");
    if (type == R_16BF) {
        std::vector<uint16_t> raw(m.values.size());
        for (size_t i = 0; i < raw.size(); ++i) raw[i] = isnan(m.values[i]) ? 0x7fc0 : to_bf16(m.values[i]);
        check_cu(cuMemcpyHtoD_v2(m.dev, raw.data(), m.bytes()), "cuMemcpyHtoD");
    } else {
        check_cu(cuMemcpyHtoD_v2(m.dev, m.values.data(), m.bytes()), "cuMemcpyHtoD");
    }
    return m;
}

void* ptr(CUdeviceptr p) { return reinterpret_cast<void*>(p); }

struct Case {
    const char* api;  // "GemmEx" or "Lt"
    int type, ta, tb, m, n, k, pad;
    float alpha, beta;
    bool bias, in_place;
};

// D (m x n) as the library defines it: the f32 sum in k order, and a float64 sum with its rounding bound.
void reference(const Case& c, const Matrix& a, const Matrix& b, const Matrix& cm, const std::vector<float>& bias,
               std::vector<float>* exact, std::vector<double>* wide, std::vector<double>* bound) {
    for (int j = 0; j < c.n; ++j) {
        for (int i = 0; i < c.m; ++i) {
            float acc = 0.0f;
            double sum = 0.0, magnitude = 0.0;
            for (int p = 0; p < c.k; ++p) {
                const float x = c.ta ? a.at(p, i) : a.at(i, p), y = c.tb ? b.at(j, p) : b.at(p, j);
                acc += x * y;
                sum += double(x) * y;
                magnitude += fabs(double(x) * y);
            }
            float v;
            double w = double(c.alpha) * sum, size = fabs(double(c.alpha)) * magnitude;
            if (c.alpha == 0.0f || c.k == 0) {
                v = c.beta != 0.0f ? c.beta * cm.at(i, j) : 0.0f;
            } else {
                v = c.alpha * acc;
                if (c.beta != 0.0f) v = v + c.beta * cm.at(i, j);
            }
            if (c.beta != 0.0f) w += double(c.beta) * cm.at(i, j), size += fabs(double(c.beta) * cm.at(i, j));
            if (c.bias) v = v + bias[i], w += bias[i], size += fabs(bias[i]);
            (*exact)[size_t(i) + size_t(j) * c.m] = v;
            (*wide)[size_t(i) + size_t(j) * c.m] = w;
            (*bound)[size_t(i) + size_t(j) * c.m] = (c.k + 4) * ldexp(size, -24) + 1e-30;
        }
    }
}

// The crate's cuBLASLt sequence: descriptor, layouts, preference, heuristic, matmul.
int lt_matmul(void* lt, int type, int ta, int tb, const Matrix& a, const Matrix& b, const void* bias, float alpha,
              float beta, CUdeviceptr c, int ldc, CUdeviceptr d, int ldd, int m, int n) {
    void *desc, *la, *lb, *lc, *ld, *pref;
    cublasLtMatmulDescCreate(&desc, COMPUTE_32F, R_32F);
    const int epilogue = bias ? EPILOGUE_BIAS : EPILOGUE_DEFAULT;
    cublasLtMatmulDescSetAttribute(desc, DESC_TRANSA, &ta, 4);
    cublasLtMatmulDescSetAttribute(desc, DESC_TRANSB, &tb, 4);
    cublasLtMatmulDescSetAttribute(desc, DESC_EPILOGUE, &epilogue, 4);
    cublasLtMatrixLayoutCreate(&la, type, a.rows, a.cols, a.ld);
    cublasLtMatrixLayoutCreate(&lb, type, b.rows, b.cols, b.ld);
    cublasLtMatrixLayoutCreate(&lc, R_32F, m, n, ldc);
    cublasLtMatrixLayoutCreate(&ld, R_32F, m, n, ldd);
    cublasLtMatmulPreferenceCreate(&pref);
    const uint64_t workspace = 32 << 20;
    cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE_BYTES, &workspace, 8);
    unsigned char result[96];
    int count = 0;
    int st = cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, ld, pref, 1, result, &count);
    if (st == ST_OK) {
        expect(count == 1, "heuristic returned %d algorithms", count);
        int state;
        size_t workspace_size;
        memcpy(&workspace_size, result + 64, 8);
        memcpy(&state, result + 72, 4);
        expect(state == ST_OK && workspace_size == 0, "heuristic result: state %d, workspace %zu", state,
               workspace_size);
        if (bias) cublasLtMatmulDescSetAttribute(desc, DESC_BIAS_POINTER, &bias, 8);
        st = cublasLtMatmul(lt, desc, &alpha, ptr(a.dev), la, ptr(b.dev), lb, &beta, ptr(c), lc, ptr(d), ld, result,
                            nullptr, 0, nullptr);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    for (void* layout : {la, lb, lc, ld}) cublasLtMatrixLayoutDestroy(layout);
    cublasLtMatmulDescDestroy(desc);
    return st;
}

void run_case(void* blas, void* lt, const Case& c) {
    const bool bf16 = c.type == R_16BF;
    Matrix a = c.ta ? make_matrix(c.type, c.k, c.m, c.k + c.pad) : make_matrix(c.type, c.m, c.k, c.m + c.pad);
    Matrix b = c.tb ? make_matrix(c.type, c.n, c.k, c.n + c.pad) : make_matrix(c.type, c.k, c.n, c.k + c.pad);
    // With beta 0, C holds NaN, which must not reach D.
    Matrix cm = make_matrix(R_32F, c.m, c.n, c.m + c.pad);
    if (c.beta == 0.0f) {
        for (float& v : cm.values) v = NAN;
        check_cu(cuMemcpyHtoD_v2(cm.dev, cm.values.data(), cm.bytes()), "cuMemcpyHtoD");
    }
    std::vector<float> bias(c.m);
    for (float& v : bias) v = uniform();
    CUdeviceptr bias_dev = 0;
    if (c.bias) {
        check_cu(cuMemAlloc_v2(&bias_dev, c.m * 4), "cuMemAlloc");
        check_cu(cuMemcpyHtoD_v2(bias_dev, bias.data(), c.m * 4), "cuMemcpyHtoD");
    }
    CUdeviceptr d = cm.dev;
    const int ldd = c.in_place ? cm.ld : c.m + 1;
    if (!c.in_place) check_cu(cuMemAlloc_v2(&d, size_t(ldd) * c.n * 4), "cuMemAlloc");

    int st;
    if (strcmp(c.api, "GemmEx") == 0) {
        st = cublasGemmEx(blas, c.ta, c.tb, c.m, c.n, c.k, &c.alpha, ptr(a.dev), c.type, a.ld, ptr(b.dev), c.type,
                          b.ld, &c.beta, ptr(cm.dev), R_32F, cm.ld, COMPUTE_32F, GEMM_DEFAULT);
    } else {
        st = lt_matmul(lt, c.type, c.ta, c.tb, a, b, c.bias ? ptr(bias_dev) : nullptr, c.alpha, c.beta, cm.dev,
                       cm.ld, d, ldd, c.m, c.n);
    }
    char name[160];
    snprintf(name, sizeof name, "%s %s op(A)=%c op(B)=%c m=%d n=%d k=%d pad=%d alpha=%g beta=%g%s%s", c.api,
             bf16 ? "bf16" : "f32", c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', c.m, c.n, c.k, c.pad, c.alpha, c.beta,
             c.bias ? " bias" : "", c.in_place ? "" : " C!=D");
    expect(st == ST_OK, "%s: status %d", name, st);
    check_cu(cuCtxSynchronize(), name);
    std::vector<float> got(size_t(ldd) * c.n);
    check_cu(cuMemcpyDtoH_v2(got.data(), d, got.size() * 4), "cuMemcpyDtoH");
    std::vector<float> exact(size_t(c.m) * c.n);
    std::vector<double> wide(exact.size()), bound(exact.size());
    reference(c, a, b, cm, bias, &exact, &wide, &bound);
    int bad_bits = 0, bad_bound = 0;
    for (int j = 0; j < c.n; ++j) {
        for (int i = 0; i < c.m; ++i) {
            const float g = got[size_t(i) + size_t(j) * ldd];
            const size_t r = size_t(i) + size_t(j) * c.m;
            if (memcmp(&g, &exact[r], 4) != 0 && bad_bits++ == 0)
                fprintf(stderr, "  %s: D(%d,%d) = %.9g, the f32 sum in k order is %.9g\n", name, i, j, g, exact[r]);
            if (!(fabs(double(g) - wide[r]) <= bound[r]) && bad_bound++ == 0)
                fprintf(stderr, "  %s: D(%d,%d) = %.9g, float64 gives %.12g (bound %.3g)\n", name, i, j, g, wide[r],
                        bound[r]);
        }
    }
    expect(bad_bits == 0, "%s: %d elements differ from the f32 sum in k order", name, bad_bits);
    expect(bad_bound == 0, "%s: %d elements outside the f32 rounding bound", name, bad_bound);
    cuMemFree_v2(a.dev);
    cuMemFree_v2(b.dev);
    cuMemFree_v2(cm.dev);
    if (!c.in_place) cuMemFree_v2(d);
    if (bias_dev) cuMemFree_v2(bias_dev);
}

void numerical_tests(void* blas, void* lt) {
    struct Shape {
        int m, n, k, pad;
    } shapes[] = {{1, 1, 1, 0}, {37, 29, 53, 3}, {64, 200, 128, 0}, {300, 250, 100, 5}, {17, 5, 0, 1}};
    int cases = 0;
    for (const char* api : {"GemmEx", "Lt"}) {
        for (int type : {int(R_32F), int(R_16BF)}) {
            for (int ta : {N, T}) {
                for (int tb : {N, T}) {
                    for (const Shape& s : shapes) {
                        const bool lt_api = strcmp(api, "Lt") == 0;
                        run_case(blas, lt, {api, type, ta, tb, s.m, s.n, s.k, s.pad, 1.0f, 0.0f, lt_api, true});
                        run_case(blas, lt, {api, type, ta, tb, s.m, s.n, s.k, s.pad, 0.5f, 1.0f, false, true});
                        cases += 2;
                    }
                }
            }
        }
        run_case(blas, lt, {api, R_32F, N, T, 33, 40, 20, 2, 0.0f, 2.0f, false, true});  // alpha 0: A, B unread
        run_case(blas, lt, {api, R_32F, T, N, 33, 40, 20, 2, -1.5f, 0.25f, false, true});
        cases += 2;
    }
    run_case(blas, lt, {"Lt", R_16BF, T, N, 70, 45, 64, 1, 1.0f, 0.0f, true, false});  // C != D, bias
    run_case(blas, lt, {"Lt", R_32F, N, N, 70, 45, 64, 0, 1.0f, 1.0f, true, false});   // bias with beta 1
    cases += 2;
    printf("numerical: %d cases\n", cases);
}

// cuBLAS's and cuBLASLt's status codes for refused arguments, returned before anything runs.
void refusal_tests(void* blas, void* lt) {
    const float one = 1.0f, zero = 0.0f;
    Matrix a = make_matrix(R_32F, 8, 8, 8), b = make_matrix(R_32F, 8, 8, 8), c = make_matrix(R_32F, 8, 8, 8);
    void *pa = ptr(a.dev), *pb = ptr(b.dev), *pc = ptr(c.dev);
    auto gemm = [&](void* h, int ta, int tb, int m, int n, int k, const void* al, const void* A, int at, int lda,
                    int bt, int ldb, int ldc, int ct, int compute, int algo) {
        return cublasGemmEx(h, ta, tb, m, n, k, al, A, at, lda, pb, bt, ldb, &zero, pc, ct, ldc, compute, algo);
    };
    struct {
        const char* what;
        int got, want;
    } gemm_ex[] = {
        {"NULL handle", gemm(nullptr, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_NOT_INITIALIZED},
        {"transa 3 (CONJG)", gemm(blas, 3, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"m -1", gemm(blas, N, N, -1, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"k -1", gemm(blas, N, N, 8, 8, -1, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"lda < m (N)", gemm(blas, N, N, 8, 8, 4, &one, pa, R_32F, 7, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"lda < k (T)", gemm(blas, T, N, 4, 8, 8, &one, pa, R_32F, 7, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"lda 0 with m 0", gemm(blas, N, N, 0, 8, 8, &one, pa, R_32F, 0, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"ldb < k (N)", gemm(blas, N, N, 8, 4, 8, &one, pa, R_32F, 8, R_32F, 7, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"ldb < n (T)", gemm(blas, N, T, 8, 8, 4, &one, pa, R_32F, 8, R_32F, 7, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"ldc < m", gemm(blas, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 7, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"alpha NULL", gemm(blas, N, N, 8, 8, 8, nullptr, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"f32 A with bf16 B", gemm(blas, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_16BF, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_NOT_SUPPORTED},
        {"bf16 into bf16 (not emulated)",
         gemm(blas, N, N, 8, 8, 8, &one, pa, R_16BF, 8, R_16BF, 8, 8, R_16BF, COMPUTE_32F, -1), ST_NOT_SUPPORTED},
        {"f32 with compute 64F", gemm(blas, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_64F, -1),
         ST_NOT_SUPPORTED},
        {"compute type 12345", gemm(blas, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, 12345, -1),
         ST_INVALID_VALUE},
        {"algorithm 50", gemm(blas, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, 50),
         ST_NOT_SUPPORTED},
        {"A misaligned for f32",
         gemm(blas, N, N, 4, 4, 4, &one, static_cast<char*>(pa) + 2, R_32F, 4, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_INVALID_VALUE},
        {"32F_FAST_TF32 accepted as 32F",
         gemm(blas, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F_FAST_TF32, -1), ST_OK},
        {"m 0: nothing to do", gemm(blas, N, N, 0, 8, 8, &one, nullptr, R_32F, 1, R_32F, 8, 8, R_32F, COMPUTE_32F, -1),
         ST_OK},
    };
    for (const auto& t : gemm_ex)
        expect(t.got == t.want, "cublasGemmEx %s: status %d, want %d", t.what, t.got, t.want);

    expect(cublasSetWorkspace_v2(blas, static_cast<char*>(pa) + 64, 256) == ST_INVALID_VALUE,
           "cublasSetWorkspace_v2: a workspace not 256-byte aligned is refused");
    expect(cublasSetMathMode(blas, 7) == ST_INVALID_VALUE, "cublasSetMathMode 7 is refused");
    expect(cublasSetMathMode(nullptr, 0) == ST_NOT_INITIALIZED, "cublasSetMathMode on NULL");
    expect(strcmp(cublasGetStatusName(ST_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE") == 0, "status name");
    expect(strlen(cublasGetStatusString(ST_NOT_SUPPORTED)) > 0 && strlen(cublasLtGetStatusString(99)) > 0,
           "status strings");
    void* dead = nullptr;
    cublasCreate_v2(&dead);
    cublasDestroy_v2(dead);
    expect(gemm(dead, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, -1) == ST_NOT_INITIALIZED,
           "cublasGemmEx on a destroyed handle");
    expect(cublasDestroy_v2(dead) == ST_NOT_INITIALIZED, "cublasDestroy_v2 twice");
    expect(gemm(lt, N, N, 8, 8, 8, &one, pa, R_32F, 8, R_32F, 8, 8, R_32F, COMPUTE_32F, -1) == ST_NOT_INITIALIZED,
           "cublasGemmEx on a cuBLASLt handle");

    // cuBLASLt: one descriptor set, altered per check.
    void *desc, *la, *lb, *lc, *pref;
    cublasLtMatmulDescCreate(&desc, COMPUTE_32F, R_32F);
    cublasLtMatrixLayoutCreate(&la, R_32F, 8, 8, 8);
    cublasLtMatrixLayoutCreate(&lb, R_32F, 8, 8, 8);
    cublasLtMatrixLayoutCreate(&lc, R_32F, 8, 8, 8);
    cublasLtMatmulPreferenceCreate(&pref);
    unsigned char algo[96];
    int count = 0;
    auto heuristic = [&](void* h, int requested) {
        return cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, requested, algo, &count);
    };
    auto matmul = [&](void* h, const void* algorithm) {
        return cublasLtMatmul(h, desc, &one, pa, la, pb, lb, &zero, pc, lc, pc, lc, algorithm, nullptr, 0, nullptr);
    };
    expect(heuristic(lt, 1) == ST_OK && count == 1, "cublasLt heuristic on a valid problem");
    unsigned char good_algo[96];
    memcpy(good_algo, algo, sizeof algo);
    expect(heuristic(nullptr, 1) == ST_NOT_INITIALIZED, "cublasLt heuristic: NULL handle");
    expect(heuristic(lt, 0) == ST_INVALID_VALUE, "cublasLt heuristic: requestedAlgoCount 0");
    expect(matmul(nullptr, good_algo) == ST_NOT_INITIALIZED, "cublasLtMatmul: NULL handle");
    unsigned char zeros[96] = {};
    expect(matmul(lt, zeros) == ST_INVALID_VALUE, "cublasLtMatmul: an algorithm no heuristic returned");
    expect(cublasLtMatmulDescSetAttribute(desc, DESC_TRANSA, &one, 2) == ST_INVALID_VALUE,
           "cublasLtMatmulDescSetAttribute: wrong size");
    expect(cublasLtMatmulDescSetAttribute(la, DESC_TRANSA, &one, 4) == ST_INVALID_VALUE,
           "cublasLtMatmulDescSetAttribute on a layout");
    int got_transa = -1;
    size_t written = 0;
    expect(cublasLtMatmulDescGetAttribute(desc, DESC_TRANSA, &got_transa, 4, &written) == ST_OK && got_transa == N &&
               written == 4,
           "cublasLtMatmulDescGetAttribute TRANSA");

    const int64_t short_ld = 7, good_ld = 8;
    cublasLtMatrixLayoutSetAttribute(la, 4 /* LD */, &short_ld, 8);
    expect(heuristic(lt, 1) == ST_INVALID_VALUE, "cublasLt heuristic: lda < rows");
    expect(matmul(lt, good_algo) == ST_INVALID_VALUE, "cublasLtMatmul: lda < rows");
    cublasLtMatrixLayoutSetAttribute(la, 4, &good_ld, 8);

    const int row_order = 1, col_order = 0;
    cublasLtMatrixLayoutSetAttribute(lb, LAYOUT_ORDER, &row_order, 4);
    expect(heuristic(lt, 1) == ST_NOT_SUPPORTED, "cublasLt heuristic: row order");
    cublasLtMatrixLayoutSetAttribute(lb, LAYOUT_ORDER, &col_order, 4);

    const uint64_t rows4 = 4, rows8 = 8;
    cublasLtMatrixLayoutSetAttribute(lb, 2 /* ROWS */, &rows4, 8);
    expect(heuristic(lt, 1) == ST_INVALID_VALUE, "cublasLt heuristic: op(A) k 8, op(B) k 4");
    cublasLtMatrixLayoutSetAttribute(lb, 2, &rows8, 8);

    const int bf16 = R_16BF, f32 = R_32F;
    cublasLtMatrixLayoutSetAttribute(lb, 0 /* TYPE */, &bf16, 4);
    expect(heuristic(lt, 1) == ST_NOT_SUPPORTED, "cublasLt heuristic: f32 A with bf16 B");
    cublasLtMatrixLayoutSetAttribute(lb, 0, &f32, 4);
    cublasLtMatmulDescSetAttribute(desc, DESC_SCALE_TYPE, &bf16, 4);
    expect(heuristic(lt, 1) == ST_NOT_SUPPORTED, "cublasLt heuristic: bf16 scale type");
    cublasLtMatmulDescSetAttribute(desc, DESC_SCALE_TYPE, &f32, 4);

    const int relu = EPILOGUE_RELU, bias_epilogue = EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(desc, DESC_EPILOGUE, &relu, 4);
    expect(heuristic(lt, 1) == ST_NOT_SUPPORTED, "cublasLt heuristic: RELU epilogue (not emulated)");
    cublasLtMatmulDescSetAttribute(desc, DESC_EPILOGUE, &bias_epilogue, 4);
    expect(heuristic(lt, 1) == ST_OK, "cublasLt heuristic: BIAS with no pointer yet (the crate's order)");
    memcpy(good_algo, algo, sizeof algo);
    expect(matmul(lt, good_algo) == ST_INVALID_VALUE, "cublasLtMatmul: BIAS with a NULL bias pointer");
    const void* misaligned = static_cast<char*>(pc) + 4;
    cublasLtMatmulDescSetAttribute(desc, DESC_BIAS_POINTER, &misaligned, 8);
    expect(matmul(lt, good_algo) == ST_INVALID_VALUE,
           "cublasLtMatmul: bias 4 bytes off the 16-byte alignment the chosen algorithm assumed");
    expect(heuristic(lt, 1) == ST_OK && matmul(lt, algo) == ST_OK,
           "cublasLtMatmul: the same bias with an algorithm chosen for it");
    const void* odd = static_cast<char*>(pc) + 2;
    cublasLtMatmulDescSetAttribute(desc, DESC_BIAS_POINTER, &odd, 8);
    expect(heuristic(lt, 1) == ST_OK && matmul(lt, algo) == ST_INVALID_VALUE,
           "cublasLtMatmul: a bias not aligned to its f32 elements");
    check_cu(cuCtxSynchronize(), "refusal tests");

    cublasLtMatmulPreferenceDestroy(pref);
    for (void* layout : {la, lb, lc}) cublasLtMatrixLayoutDestroy(layout);
    cublasLtMatmulDescDestroy(desc);
    cuMemFree_v2(a.dev);
    cuMemFree_v2(b.dev);
    cuMemFree_v2(c.dev);
}

// Bytes a GEMM never reads need not be written: the gaps between columns (ld > rows) and C under beta 0.
void initcheck_negatives(void* blas) {
    const int m = 5, k = 3, n = 4, lda = 9;
    CUdeviceptr a, b, c;
    check_cu(cuMemAlloc_v2(&a, lda * k * 4), "cuMemAlloc");
    check_cu(cuMemAlloc_v2(&b, k * n * 4), "cuMemAlloc");
    check_cu(cuMemAlloc_v2(&c, m * n * 4), "cuMemAlloc");
    std::vector<float> column(m, 1.0f), bv(k * n, 2.0f);
    for (int p = 0; p < k; ++p) check_cu(cuMemcpyHtoD_v2(a + p * lda * 4, column.data(), m * 4), "cuMemcpyHtoD");
    check_cu(cuMemcpyHtoD_v2(b, bv.data(), bv.size() * 4), "cuMemcpyHtoD");
    const float one = 1.0f, zero = 0.0f;
    expect(cublasGemmEx(blas, N, N, m, n, k, &one, ptr(a), R_32F, lda, ptr(b), R_32F, k, &zero, ptr(c), R_32F, m,
                        COMPUTE_32F, -1) == ST_OK,
           "GEMM over column gaps, C unwritten under beta 0");
    // D is written now: beta 1 may read it.
    expect(cublasGemmEx(blas, N, N, m, n, k, &one, ptr(a), R_32F, lda, ptr(b), R_32F, k, &one, ptr(c), R_32F, m,
                        COMPUTE_32F, -1) == ST_OK,
           "GEMM reading the D of the one before");
    check_cu(cuCtxSynchronize(), "GEMMs over unwritten gaps and C under beta 0 (no finding expected)");
    std::vector<float> d(m * n);
    check_cu(cuMemcpyDtoH_v2(d.data(), c, d.size() * 4), "cuMemcpyDtoH");
    expect(d[0] == 12.0f && d[m * n - 1] == 12.0f, "gap GEMM result %g, want 12", d[0]);
    cuMemFree_v2(a);
    cuMemFree_v2(b);
    cuMemFree_v2(c);
}

// ---- Sanitizer findings, one child process each ----------------------------------------------------------

enum Finding { READ_PAST_A, UNWRITTEN_C, SHORT_BIAS, FREED_B, UNWRITTEN_COLUMN };

int provoke(Finding finding) {
    init_device();
    void *blas, *lt;
    cublasCreate_v2(&blas);
    cublasLtCreate(&lt);
    const int m = 24, n = 16, k = 8;
    const float one = 1.0f, zero = 0.0f;
    Matrix a = make_matrix(R_32F, m, k, m), b = make_matrix(R_32F, k, n, k), c = make_matrix(R_32F, m, n, m);
    int st = ST_OK;
    switch (finding) {
    case READ_PAST_A: {  // A holds m x k, the call reads m x (k + 1)
        st = cublasGemmEx(blas, N, N, m, n, k + 1, &one, ptr(a.dev), R_32F, m, ptr(b.dev), R_32F, k + 1, &zero,
                          ptr(c.dev), R_32F, m, COMPUTE_32F, -1);
        break;
    }
    case UNWRITTEN_C: {
        CUdeviceptr fresh;
        check_cu(cuMemAlloc_v2(&fresh, m * n * 4), "cuMemAlloc");
        st = cublasGemmEx(blas, N, N, m, n, k, &one, ptr(a.dev), R_32F, m, ptr(b.dev), R_32F, k, &one, ptr(fresh),
                          R_32F, m, COMPUTE_32F, -1);
        break;
    }
    case SHORT_BIAS: {
        CUdeviceptr bias;
        check_cu(cuMemAlloc_v2(&bias, (m - 1) * 4), "cuMemAlloc");
        std::vector<float> values(m - 1, 1.0f);
        check_cu(cuMemcpyHtoD_v2(bias, values.data(), values.size() * 4), "cuMemcpyHtoD");
        st = lt_matmul(lt, R_32F, N, N, a, b, ptr(bias), 1.0f, 0.0f, c.dev, m, c.dev, m, m, n);
        break;
    }
    case FREED_B: {
        cuMemFree_v2(b.dev);
        st = cublasGemmEx(blas, N, N, m, n, k, &one, ptr(a.dev), R_32F, m, ptr(b.dev), R_32F, k, &zero, ptr(c.dev),
                          R_32F, m, COMPUTE_32F, -1);
        break;
    }
    case UNWRITTEN_COLUMN: {  // ld > rows, every column written but the last
        const int lda = m + 3;
        CUdeviceptr partial;
        check_cu(cuMemAlloc_v2(&partial, lda * k * 4), "cuMemAlloc");
        std::vector<float> column(m, 1.0f);
        for (int p = 0; p + 1 < k; ++p)
            check_cu(cuMemcpyHtoD_v2(partial + p * lda * 4, column.data(), m * 4), "cuMemcpyHtoD");
        st = cublasGemmEx(blas, N, N, m, n, k, &one, ptr(partial), R_32F, lda, ptr(b.dev), R_32F, k, &zero,
                          ptr(c.dev), R_32F, m, COMPUTE_32F, -1);
        break;
    }
    }
    if (st != ST_OK) {
        fprintf(stderr, "the GEMM was refused with status %d before it ran\n", st);
        return 3;
    }
    const int rc = cuCtxSynchronize();
    fprintf(stderr, "cuCtxSynchronize: %d\n", rc);
    return rc != 0 ? 1 : 0;
}

// Runs `provoke` in a child; the finding must fail the synchronisation and name the check, API and operand.
void expect_finding(Finding finding, const char* name, const char* message) {
    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) exit(2);
    fflush(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(pipe_fds[1], 2);
        close(pipe_fds[0]);
        _exit(provoke(finding));
    }
    close(pipe_fds[1]);
    std::string output;
    char buf[4096];
    for (ssize_t got; (got = read(pipe_fds[0], buf, sizeof buf)) > 0;) output.append(buf, size_t(got));
    close(pipe_fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const bool failed = WIFEXITED(status) && WEXITSTATUS(status) == 1;
    const bool named = output.find(message) != std::string::npos;
    expect(failed && named, "%s: want a failed synchronisation reporting \"%s\"; exit status %d, output:\n%s", name,
           message, WIFEXITED(status) ? WEXITSTATUS(status) : -1, output.c_str());
    if (failed && named) {
        const size_t at = output.find(message);
        const size_t end = output.find('\n', at);
        printf("finding %s: ...%s\n", name, output.substr(at, end - at).c_str());
    }
}

double seconds() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return double(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

void bench(void* blas) {
    struct {
        int type, ta, tb, m, n, k;
    } shapes[] = {{R_32F, N, N, 2048, 1024, 1024}, {R_16BF, T, N, 4096, 512, 1024}, {R_32F, N, T, 1024, 1024, 256}};
    for (const auto& s : shapes) {
        Matrix a = s.ta ? make_matrix(s.type, s.k, s.m, s.k) : make_matrix(s.type, s.m, s.k, s.m);
        Matrix b = s.tb ? make_matrix(s.type, s.n, s.k, s.n) : make_matrix(s.type, s.k, s.n, s.k);
        CUdeviceptr c;
        check_cu(cuMemAlloc_v2(&c, size_t(s.m) * s.n * 4), "cuMemAlloc");
        const float one = 1.0f, zero = 0.0f;
        const double start = seconds();
        cublasGemmEx(blas, s.ta, s.tb, s.m, s.n, s.k, &one, ptr(a.dev), s.type, a.ld, ptr(b.dev), s.type, b.ld, &zero,
                     ptr(c), R_32F, s.m, COMPUTE_32F, -1);
        check_cu(cuCtxSynchronize(), "bench");
        const double took = seconds() - start;
        printf("bench: %s %dx%dx%d: %.3f s, %.1f GFLOP/s\n", s.type == R_16BF ? "bf16" : "f32", s.m, s.n, s.k, took,
               2.0 * s.m * s.n * s.k / took * 1e-9);
        cuMemFree_v2(a.dev);
        cuMemFree_v2(b.dev);
        cuMemFree_v2(c);
    }
}

}  // namespace

int main(int argc, char** argv) {
    // Children first: the parent must not have started the driver's threads when it forks.
    expect_finding(READ_PAST_A, "A read past its allocation", "memcheck: cublasGemmEx reads A");
    expect_finding(UNWRITTEN_C, "C never written, beta 1", "initcheck: cublasGemmEx reads C");
    expect_finding(SHORT_BIAS, "bias one element short", "memcheck: cublasLtMatmul reads the bias");
    expect_finding(FREED_B, "B freed", "memcheck: cublasGemmEx reads B");
    expect_finding(UNWRITTEN_COLUMN, "last column of A never written", "initcheck: cublasGemmEx reads A column 7");

    init_device();
    void *blas, *lt;
    expect(cublasCreate_v2(&blas) == ST_OK && cublasLtCreate(&lt) == ST_OK, "creating the handles");
    expect(cublasSetStream_v2(blas, nullptr) == ST_OK, "cublasSetStream_v2");
    if (argc > 1 && strcmp(argv[1], "bench") == 0) bench(blas);
    numerical_tests(blas, lt);
    refusal_tests(blas, lt);
    initcheck_negatives(blas);
    cublasDestroy_v2(blas);
    cublasLtDestroy(lt);
    if (failures) {
        printf("blas selftest: %d FAILED\n", failures);
        return 1;
    }
    printf("blas selftest: all %d checks passed\n", checks);
    return 0;
}
