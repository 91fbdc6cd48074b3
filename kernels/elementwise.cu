// Pointwise kernels: residual add, gradient accumulation, bias broadcast and bias-gradient column sums.
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

// acc[c] += Σ_r x[r, c]. One thread per column, rows in a fixed order: deterministic, coalesced across
// threads of a warp (adjacent columns).
extern "C" __global__ void col_sum_add_f32(const float* x, float* acc, long rows, int cols) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (long r = 0; r < rows; ++r) s += x[r * cols + c];
    acc[c] += s;
}
