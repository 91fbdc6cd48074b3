// Toy kernels for emulator/tests/runtime_selftest.cpp: one correct reduction, and one planted defect per check
// of the runtime's sanitizer. Plain CUDA; the self-test builds them through transform.rs and the shim.
#include <stdint.h>

#define THREADS 256

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// out[block] = Σ x[block·THREADS ..], by a shared-memory tree down to one warp, then shuffles.
template <bool SYNC>
__device__ void block_sum(const float* x, float* out, int n) {
    __shared__ float s[THREADS];
    const int t = threadIdx.x, i = blockIdx.x * THREADS + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int half = THREADS / 2; half >= 32; half /= 2) {
        if (t < half) s[t] += s[t + half];
        if (SYNC || half != 64) __syncthreads();  // the planted race: no barrier after the 64-wide step
    }
    if (t < 32) {
        const float v = warp_sum(s[t]);
        if (t == 0) out[blockIdx.x] = v;
    }
}

extern "C" __global__ void __launch_bounds__(THREADS) sum_f32(const float* x, float* out, int n) {
    block_sum<true>(x, out, n);
}

extern "C" __global__ void __launch_bounds__(THREADS) sum_missing_sync_f32(const float* x, float* out, int n) {
    block_sum<false>(x, out, n);
}

// y[i] = 2·x[i] for i < n, but with the bound test off by the block: writes past the end.
extern "C" __global__ void scale_oob_f32(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i];
    else y[i] = 0.0f;
}

// y[i] = x[i]: reads whatever x holds (the self-test leaves x unwritten).
extern "C" __global__ void copy_f32(const float* x, float* y, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) y[i] = x[i];
}

// Threads below 16 leave before the barrier the others wait at.
extern "C" __global__ void early_exit_f32(float* y) {
    __shared__ float s[64];
    if (threadIdx.x < 16) return;
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = s[63 - threadIdx.x];
}

// Lane 31 leaves before the warp's shuffle.
extern "C" __global__ void shuffle_after_exit_f32(float* y) {
    if (threadIdx.x % 32 == 31) return;
    y[threadIdx.x] = warp_sum(1.0f);
}

// Dynamic shared memory: each thread writes its slot, then reads its neighbour's (one past the launch's size
// for the last thread when `overrun`).
extern "C" __global__ void dynamic_neighbour_f32(float* y, int overrun) {
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    const unsigned j = threadIdx.x + 1 < blockDim.x || overrun ? threadIdx.x + 1 : 0;
    y[threadIdx.x] = dyn[j];
}

// Shared atomics from every thread (never a race), a ballot and a block-wide OR.
extern "C" __global__ void atomics_and_votes(unsigned* out) {
    __shared__ unsigned count, low;
    if (threadIdx.x == 0) {
        count = 0;
        low = 0xffffffffu;
    }
    __syncthreads();
    atomicAdd(&count, 1u);
    atomicMin(&low, threadIdx.x + 7);
    const unsigned ballot = __ballot_sync(0xffffffffu, threadIdx.x % 3 == 0);
    const int any_big = __syncthreads_or(threadIdx.x == blockDim.x - 1);
    const int total = __reduce_add_sync(0xffffffffu, 1u);
    if (threadIdx.x == 0) {
        out[0] = count;
        out[1] = low;
        out[2] = ballot;
        out[3] = (unsigned)any_big;
        out[4] = (unsigned)total;
    }
}

// A 16-byte load from an address that is only 4-byte aligned (copied whole: the host build keeps one access).
extern "C" __global__ void misaligned_f32x4(const float* x, float* y) {
    reinterpret_cast<float4*>(y)[threadIdx.x] = *reinterpret_cast<const float4*>(x + 1);
}

// 2D block and grid coordinates, and a module variable read as a kernel parameter would be.
__constant__ unsigned long long selftest_seed;
extern "C" __global__ void coordinates(unsigned* out) {
    const unsigned block = blockIdx.y * gridDim.x + blockIdx.x;
    const unsigned t = threadIdx.y * blockDim.x + threadIdx.x;
    out[block * blockDim.x * blockDim.y + t] = (unsigned)selftest_seed + block * 1000 + threadIdx.y * 100 + threadIdx.x;
}
