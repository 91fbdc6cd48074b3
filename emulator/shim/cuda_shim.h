// The CUDA built-ins for the host build of kernels/*.cu (force-included with -include; see emulator/hgemu.h).
//
// This code is compiled with -fsanitize=thread, so every load and store in it reaches the runtime's checks.
// Anything that must not be checked as a kernel access (the thread's coordinates, a warp collective's buffer,
// the read-modify-write of an atomic) is a call into runtime.cpp or a no_sanitize_thread function; what the
// shim reads itself is on the fiber's stack (parameters, locals), which the runtime skips.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "hgemu.h"

#ifndef HGEMU_SHIM_ABI_ONLY
// The kernels are checked by nvcc; in the host build their CUDA-only pragmas (#pragma unroll) and the
// parameters some instantiations leave unused are noise.
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif

// ---- The shim's calls into runtime.cpp (declared once here; runtime.cpp includes this part alone) ----------
extern "C" {
enum { HG_BAR_COUNT = 0, HG_BAR_AND = 1, HG_BAR_OR = 2 };
enum { HG_SHFL_IDX = 0, HG_SHFL_UP = 1, HG_SHFL_DOWN = 2, HG_SHFL_XOR = 3 };
enum { HG_VOTE_BALLOT = 0, HG_VOTE_ANY = 1, HG_VOTE_ALL = 2 };
enum {
    HG_RED_ADD = 0, HG_RED_MIN_U = 1, HG_RED_MAX_U = 2, HG_RED_MIN_S = 3, HG_RED_MAX_S = 4,
    HG_RED_AND = 5, HG_RED_OR = 6, HG_RED_XOR = 7
};
// A thread's coordinates never change while it runs, so these are `const` to the compiler.
hg_dim3 hgemu_thread_idx(void) __attribute__((const));
hg_dim3 hgemu_block_idx(void) __attribute__((const));
hg_dim3 hgemu_block_dim(void) __attribute__((const));
hg_dim3 hgemu_grid_dim(void) __attribute__((const));
// The dynamic shared memory buffer (one for the process; its size is checked per launch).
void* hgemu_dynamic_shared(void) __attribute__((const));
void hgemu_syncthreads(void);
// __syncthreads_count / _and / _or: a barrier that also reduces every thread's predicate.
int hgemu_syncthreads_op(int op, int predicate);
void hgemu_syncwarp(unsigned mask);
// shfl.sync in PTX terms: `size` bytes of *value from the lane that mode, lane_arg and width select.
void hgemu_shfl(unsigned mask, int mode, const void* value, void* result, unsigned size, int lane_arg, int width);
unsigned hgemu_vote(unsigned mask, int mode, int predicate);
unsigned hgemu_warp_reduce(unsigned mask, int op, unsigned value);
unsigned hgemu_activemask(void);
// An atomic's access: memcheck (and initcheck) as a read and a write, never racecheck (atomics do not race).
void hgemu_atomic_check(const void* p, size_t n);
// Storage for one `__shared__` declaration (its own, for the process's lifetime; poisoned at each block start).
void* hgemu_shared_static(size_t size, size_t align);
}

#ifndef HGEMU_SHIM_ABI_ONLY
#include <limits.h>
#include <math.h>
#include <string.h>

#include <cmath>
#include <type_traits>
#include <utility>

// ---- Qualifiers ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// transform.rs rewrites every `__shared__` declaration (hg_shared_static below); one it missed fails here.
#define __shared__ __shared___declaration_not_rewritten_by_transform_rs
// A module variable: registered by name (hgemu_register_global) for cuModuleGetGlobal.
#define __constant__ static
#define __managed__

// ---- Coordinates --------------------------------------------------------------------------------------------
struct uint3 {
    unsigned x, y, z;
    uint3() = default;
    constexpr uint3(unsigned x_, unsigned y_, unsigned z_) : x(x_), y(y_), z(z_) {}
    constexpr uint3(hg_dim3 d) : x(d.x), y(d.y), z(d.z) {}
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(hg_dim3 d) : x(d.x), y(d.y), z(d.z) {}
    constexpr dim3(uint3 d) : x(d.x), y(d.y), z(d.z) {}
};
#define threadIdx (hgemu_thread_idx())
#define blockIdx (hgemu_block_idx())
#define blockDim (hgemu_block_dim())
#define gridDim (hgemu_grid_dim())
#define warpSize 32

// ---- Vector types (CUDA's alignments) ----------------------------------------------------------------------
#define HG_VEC2(T, N, A) \
    struct __attribute__((aligned(A))) N##2 { T x, y; }; \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define HG_VEC3(T, N) \
    struct N##3 { T x, y, z; }; \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define HG_VEC4(T, N, A) \
    struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
HG_VEC2(int, int, 8)
HG_VEC2(unsigned, uint, 8)
HG_VEC2(float, float, 8)
HG_VEC2(double, double, 16)
HG_VEC2(long long, longlong, 16)
HG_VEC2(unsigned long long, ulonglong, 16)
HG_VEC2(short, short, 4)
HG_VEC2(unsigned short, ushort, 4)
HG_VEC3(int, int)
HG_VEC3(float, float)
HG_VEC4(int, int, 16)
HG_VEC4(unsigned, uint, 16)
HG_VEC4(float, float, 16)
HG_VEC4(short, short, 8)
HG_VEC4(unsigned short, ushort, 8)
HG_VEC4(unsigned char, uchar, 4)
HG_VEC4(signed char, char, 4)
#undef HG_VEC2
#undef HG_VEC3
#undef HG_VEC4
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3(x, y, z); }

#include "cuda_bf16.h"

// ---- min / max as CUDA overloads them: the arithmetic type both convert to --------------------------------
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    if constexpr (std::is_floating_point<T>::value) return std::fmin((T)a, (T)b);
    else return (T)a < (T)b ? (T)a : (T)b;
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    if constexpr (std::is_floating_point<T>::value) return std::fmax((T)a, (T)b);
    else return (T)a < (T)b ? (T)b : (T)a;
}

// ---- Synchronisation ---------------------------------------------------------------------------------------
inline void __syncthreads() { hgemu_syncthreads(); }
inline int __syncthreads_count(int p) { return hgemu_syncthreads_op(HG_BAR_COUNT, p != 0); }
inline int __syncthreads_and(int p) { return hgemu_syncthreads_op(HG_BAR_AND, p != 0); }
inline int __syncthreads_or(int p) { return hgemu_syncthreads_op(HG_BAR_OR, p != 0); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { hgemu_syncwarp(mask); }
// Fibers share one host thread and switch only at barriers and collectives: fences order nothing further.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    T r;
    hgemu_shfl(mask, HG_SHFL_IDX, &v, &r, sizeof(T), src, width);
    return r;
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    T r;
    hgemu_shfl(mask, HG_SHFL_UP, &v, &r, sizeof(T), (int)delta, width);
    return r;
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    T r;
    hgemu_shfl(mask, HG_SHFL_DOWN, &v, &r, sizeof(T), (int)delta, width);
    return r;
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    T r;
    hgemu_shfl(mask, HG_SHFL_XOR, &v, &r, sizeof(T), lane_mask, width);
    return r;
}
inline unsigned __ballot_sync(unsigned mask, int p) { return hgemu_vote(mask, HG_VOTE_BALLOT, p != 0); }
inline int __any_sync(unsigned mask, int p) { return (int)hgemu_vote(mask, HG_VOTE_ANY, p != 0); }
inline int __all_sync(unsigned mask, int p) { return (int)hgemu_vote(mask, HG_VOTE_ALL, p != 0); }
inline unsigned __activemask() { return hgemu_activemask(); }
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return hgemu_warp_reduce(mask, HG_RED_ADD, v); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return hgemu_warp_reduce(mask, HG_RED_MIN_U, v); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return hgemu_warp_reduce(mask, HG_RED_MAX_U, v); }
inline int __reduce_min_sync(unsigned mask, int v) { return (int)hgemu_warp_reduce(mask, HG_RED_MIN_S, (unsigned)v); }
inline int __reduce_max_sync(unsigned mask, int v) { return (int)hgemu_warp_reduce(mask, HG_RED_MAX_S, (unsigned)v); }
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return hgemu_warp_reduce(mask, HG_RED_AND, v); }
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return hgemu_warp_reduce(mask, HG_RED_OR, v); }
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return hgemu_warp_reduce(mask, HG_RED_XOR, v); }

// ---- Atomics: plain read-modify-writes (fibers never switch inside one), checked but never racing ---------
template <class T>
struct hg_same { typedef T type; };
template <class T, class F>
__attribute__((no_sanitize_thread)) inline T hg_atomic(T* p, F f) {
    hgemu_atomic_check(p, sizeof(T));
    const T old = *p;
    *p = f(old);
    return old;
}
template <class T>
inline T atomicAdd(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T o) { return (T)(o + v); }); }
template <class T>
inline T atomicSub(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T o) { return (T)(o - v); }); }
template <class T>
inline T atomicMax(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T o) { return o < v ? v : o; }); }
template <class T>
inline T atomicMin(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T o) { return v < o ? v : o; }); }
template <class T>
inline T atomicExch(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T) { return v; }); }
template <class T>
inline T atomicCAS(T* p, typename hg_same<T>::type cmp, typename hg_same<T>::type v) {
    return hg_atomic(p, [cmp, v](T o) { return o == cmp ? v : o; });
}
template <class T>
inline T atomicAnd(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T o) { return (T)(o & v); }); }
template <class T>
inline T atomicOr(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T o) { return (T)(o | v); }); }
template <class T>
inline T atomicXor(T* p, typename hg_same<T>::type v) { return hg_atomic(p, [v](T o) { return (T)(o ^ v); }); }
inline unsigned atomicInc(unsigned* p, unsigned v) { return hg_atomic(p, [v](unsigned o) { return o >= v ? 0u : o + 1; }); }
inline unsigned atomicDec(unsigned* p, unsigned v) {
    return hg_atomic(p, [v](unsigned o) { return (o == 0 || o > v) ? v : o - 1; });
}

// ---- Cached loads and stores: ordinary (checked) accesses -------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

inline size_t __cvta_generic_to_shared(const void* p) { return hgemu_shared_address(p); }

// ---- Integer and bit intrinsics ----------------------------------------------------------------------------
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

template <class To, class From>
inline To hg_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast of different sizes");
    To r;
    memcpy(&r, &v, sizeof(To));
    return r;
}
inline float __int_as_float(int x) { return hg_bits<float>(x); }
inline float __uint_as_float(unsigned x) { return hg_bits<float>(x); }
inline int __float_as_int(float x) { return hg_bits<int>(x); }
inline unsigned __float_as_uint(float x) { return hg_bits<unsigned>(x); }
inline double __longlong_as_double(long long x) { return hg_bits<double>(x); }
inline long long __double_as_longlong(double x) { return hg_bits<long long>(x); }

// ---- Floating point: IEEE operations (the build has -ffp-contract=off, so no FMA contraction) -------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
// The fast approximations: the accurate functions (results within the approximations' error bounds).
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x > 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }

// ---- __shared__ (transform.rs: `static T (*hg_shared_x)[N] = nullptr; T (&x)[N] = *hg_shared_static(..)`) --
// Not instrumented: the slot lives in the library's own data, which is no kernel-visible memory.
template <class T>
__attribute__((no_sanitize_thread)) inline T* hg_shared_static(T*& slot, size_t align) {
    if (!slot) slot = static_cast<T*>(hgemu_shared_static(sizeof(T), align > alignof(T) ? align : alignof(T)));
    return slot;
}

// ---- The registry's helpers (transform.rs writes the calls) ------------------------------------------------
template <class... A>
struct hg_sizes {
    static constexpr unsigned value[sizeof...(A) + 1] = {(unsigned)sizeof(A)..., 0u};
};
template <class... A>
constexpr const unsigned* hg_param_sizes(void (*)(A...)) { return hg_sizes<A...>::value; }
template <class... A>
constexpr unsigned hg_arity(void (*)(A...)) { return sizeof...(A); }
template <class... A, size_t... I>
inline void hg_invoke_with(void (*f)(A...), void** params, std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_cv<A>::type*>(params[I])...);
}
// cuLaunchKernel's params (copied by the runtime onto the thread's stack) into the kernel's parameters.
template <auto F>
void hg_invoke(void** params) {
    hg_invoke_with(F, params, std::make_index_sequence<hg_arity(F)>());
}

// ---- asm operands (transform.rs turns `"=r"(x)` into hg_out('r', false, (x)), `"r"(e)` into hg_in('r', (e))) --
template <class T>
inline hg_operand hg_in(char constraint, const T& v) {
    static_assert(sizeof(T) <= 8, "an asm input wider than 64 bits");
    hg_operand o = {constraint, false, true, nullptr, 0, (unsigned)sizeof(T)};
    memcpy(&o.bits, &v, sizeof(T));
    return o;
}
template <class T>
inline hg_operand hg_out(char constraint, bool inout, T& v) {
    static_assert(sizeof(T) <= 8, "an asm output wider than 64 bits");
    hg_operand o = {constraint, true, inout, &v, 0, (unsigned)sizeof(T)};
    if (inout) memcpy(&o.bits, &v, sizeof(T));
    return o;
}
#endif  // HGEMU_SHIM_ABI_ONLY
