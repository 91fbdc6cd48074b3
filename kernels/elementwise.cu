// Pointwise kernels: residual add, gradient accumulation, bias broadcast, bias-gradient column sums, ReLU,
// dropout and scaling in place (gradient clipping).
// CPU halves: src/device/cpu.rs (add, add_assign), src/ops/linear.rs (bias), src/ops/elementwise.rs.
#include "common.cuh"

extern "C" __global__ void add_f32(const float* a, const float* b, float* out, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

extern "C" __global__ void add_assign_f32(float* acc, const float* x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        acc[i] += x[i];
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

extern "C" __global__ void relu_fwd_f32(const float* x, float* y, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

// dx = dy where the forward output y > 0, else 0.
extern "C" __global__ void relu_bwd_f32(const float* y, const float* dy, float* dx, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// out[i] = x[i] · factor(i). The mask is a function of (seed, linear index i) alone, the same Philox stream as
// src/rng.rs, so backward regenerates it (same call on the gradient) and it matches the CPU bit for bit.
extern "C" __global__ void dropout_f32(const float* x, float* out, long n, unsigned long long seed,
                                       unsigned int threshold, float scale) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = x[i] * dropout_factor(seed, (uint64_t)i, threshold, scale);
}

// x[i] *= factor, in place: one IEEE multiply, the same as the CPU half's f32 product bit for bit.
extern "C" __global__ void scale_f32(float* x, long n, float factor) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        x[i] *= factor;
}
