// Pointwise kernels: residual add, gradient accumulation, bf16 rounding and widening, bias broadcast,
// bias-gradient column sums, ReLU with dropout, dropout and scaling in place (gradient clipping).
// CPU halves: src/device/cpu.rs (add, add_assign, round_to_bf16, widen_bf16), src/ops/linear.rs (bias),
// src/ops/elementwise.rs.
#include "common.cuh"

extern "C" __global__ void add_f32(const float* a, const float* b, float* out, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

// acc[i] += x[offset + i]: gradient accumulation, from the start of x or from a slice of a stacked gradient.
extern "C" __global__ void add_assign_f32(float* acc, const float* x, long offset, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        acc[i] += x[offset + i];
}

// y = bf16(x), to nearest with ties to even (half::bf16::from_f32 on the CPU). Eight elements a thread: two
// 16-byte loads, one 16-byte store; a buffer not 16-byte aligned (never one of the pool's) goes one by one.
extern "C" __global__ void round_to_bf16_f32(const float* x, __nv_bfloat16* y, long n) {
    const long tid = blockIdx.x * (long)blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    const bool vector = ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y)) & 15) == 0;
    const long n8 = vector ? n / 8 : 0;
    for (long i = tid; i < n8; i += stride) {
        const float4 a = reinterpret_cast<const float4*>(x)[2 * i];
        const float4 b = reinterpret_cast<const float4*>(x)[2 * i + 1];
        __nv_bfloat162 packed[4] = {__floats2bfloat162_rn(a.x, a.y), __floats2bfloat162_rn(a.z, a.w),
                                    __floats2bfloat162_rn(b.x, b.y), __floats2bfloat162_rn(b.z, b.w)};
        reinterpret_cast<uint4*>(y)[i] = *reinterpret_cast<const uint4*>(packed);
    }
    for (long i = n8 * 8 + tid; i < n; i += stride) y[i] = __float2bfloat16_rn(x[i]);
}

// y = float(x), exact. Eight elements a thread, as above.
extern "C" __global__ void widen_bf16_f32(const __nv_bfloat16* x, float* y, long n) {
    const long tid = blockIdx.x * (long)blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    const bool vector = ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y)) & 15) == 0;
    const long n8 = vector ? n / 8 : 0;
    for (long i = tid; i < n8; i += stride) {
        const uint4 raw = reinterpret_cast<const uint4*>(x)[i];
        const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
        const float2 p0 = __bfloat1622float2(pairs[0]), p1 = __bfloat1622float2(pairs[1]);
        const float2 p2 = __bfloat1622float2(pairs[2]), p3 = __bfloat1622float2(pairs[3]);
        reinterpret_cast<float4*>(y)[2 * i] = make_float4(p0.x, p0.y, p1.x, p1.y);
        reinterpret_cast<float4*>(y)[2 * i + 1] = make_float4(p2.x, p2.y, p3.x, p3.y);
    }
    for (long i = n8 * 8 + tid; i < n; i += stride) y[i] = __bfloat162float(x[i]);
}

// out[r, c] = bias[c] for every row: the GEMM then accumulates x·Wᵀ on top (beta = 1).
extern "C" __global__ void broadcast_rows_f32(const float* bias, float* out, long rows, int cols) {
    long n = rows * cols;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = bias[i % cols];
}

// acc[c] += Σ_r x[r, c], deterministically. A block owns COL_SUM_COLS columns and has COL_SUM_LANES row lanes
// (blockDim = (COL_SUM_COLS, COL_SUM_LANES)): lane y sums rows y, y + COL_SUM_LANES, ... of its column, then the
// lane sums are combined by a tree of fixed shape (no atomics: the same order on every run). 8 columns are one
// 32-byte sector, so loads stay coalesced while narrow tiles give enough blocks to fill the GPU even for a few
// hundred columns.
#define COL_SUM_COLS 8
#define COL_SUM_LANES 128
extern "C" __global__ void col_sum_add_f32(const float* x, float* acc, long rows, int cols) {
    __shared__ float lane_sum[COL_SUM_LANES][COL_SUM_COLS];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * COL_SUM_COLS + tx;
    float s = 0.0f;
    if (c < cols) {
#pragma unroll 4
        for (long r = ty; r < rows; r += COL_SUM_LANES) s += x[r * cols + c];
    }
    lane_sum[ty][tx] = s;
    __syncthreads();
    for (int half = COL_SUM_LANES / 2; half > 0; half /= 2) {
        if (ty < half) lane_sum[ty][tx] += lane_sum[ty + half][tx];
        __syncthreads();
    }
    if (ty == 0 && c < cols) acc[c] += lane_sum[0][tx];
}

// Calls f(i, factor) for every element i < n with its dropout factor (src/rng.rs `factor`; unused when
// use_dropout is 0). A thread takes blocks of four neighbours: one Philox call for the four.
template <typename F>
__device__ __forceinline__ void for_each_with_dropout(long n, unsigned long long seed, unsigned int threshold,
                                                      float scale, int use_dropout, F f) {
    const long blocks = (n + 3) / 4;
    for (long b = blockIdx.x * (long)blockDim.x + threadIdx.x; b < blocks; b += (long)gridDim.x * blockDim.x) {
        const uint4 words = use_dropout ? philox4(seed, (uint64_t)b) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long i = 4 * b + j;
            if (i >= n) break;
            f(i, keep_factor(word(words, j), threshold, scale));
        }
    }
}

// y = dropout(relu(x)) (relu alone when use_dropout is 0), in f32 or rounded to bf16 for the GEMM after it:
// the same products as ReLU and then dropout, one pass.
template <typename Out>
__device__ void relu_dropout(const float* x, Out* y, long n, unsigned long long seed, unsigned int threshold,
                             float scale, int use_dropout) {
    for_each_with_dropout(n, seed, threshold, scale, use_dropout, [&](long i, float factor) {
        const float v = x[i] > 0.0f ? x[i] : 0.0f;
        y[i] = to_out<Out>(use_dropout ? v * factor : v);
    });
}

extern "C" __global__ void relu_dropout_f32(const float* x, float* y, long n, const unsigned long long* seed,
                                            unsigned int threshold, float scale, int use_dropout) {
    relu_dropout(x, y, n, read_seed(seed, use_dropout), threshold, scale, use_dropout);
}

extern "C" __global__ void relu_dropout_bf16(const float* x, __nv_bfloat16* y, long n,
                                             const unsigned long long* seed, unsigned int threshold, float scale,
                                             int use_dropout) {
    relu_dropout(x, y, n, read_seed(seed, use_dropout), threshold, scale, use_dropout);
}

// Its gradient: dx = dy · factor where x > 0 (x: the ReLU's input, or its output: both are > 0 at the same
// places), else 0.
extern "C" __global__ void relu_dropout_bwd_f32(const float* x, const float* dy, float* dx, long n,
                                                const unsigned long long* seed, unsigned int threshold, float scale,
                                                int use_dropout) {
    for_each_with_dropout(n, read_seed(seed, use_dropout), threshold, scale, use_dropout, [&](long i, float factor) {
        const float g = use_dropout ? dy[i] * factor : dy[i];
        dx[i] = x[i] > 0.0f ? g : 0.0f;
    });
}

// out[i] = x[i] · factor(i). The mask is a function of (seed, linear index i) alone, the same Philox stream as
// src/rng.rs, so backward regenerates it (same call on the gradient) and it matches the CPU bit for bit.
extern "C" __global__ void dropout_f32(const float* x, float* out, long n, const unsigned long long* seed,
                                       unsigned int threshold, float scale) {
    for_each_with_dropout(n, *seed, threshold, scale, 1, [&](long i, float factor) { out[i] = x[i] * factor; });
}

// x[i] *= factor, in place: one IEEE multiply, the same as the CPU half's f32 product bit for bit.
extern "C" __global__ void scale_f32(float* x, long n, float factor) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        x[i] *= factor;
}
