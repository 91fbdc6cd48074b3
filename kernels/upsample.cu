// NaiveUpSampling(factor) fused with the residual add over [seq, row] (row = batch · d), f32.
// CPU half: src/ops/upsample.rs. Sequence positions are grid-strided over blockIdx.y and the elements of a
// position over x, so no element needs a 64-bit division.
#include "common.cuh"

// y[t] = x[t] + coarse[t / factor].
extern "C" __global__ void upsample_add_fwd_f32(const float* x, const float* coarse, float* y, long seq, long row,
                                                int factor) {
    for (long t = blockIdx.y; t < seq; t += gridDim.y) {
        const float* cr = coarse + (t / factor) * row;
        for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < row; j += (long)gridDim.x * blockDim.x)
            y[t * row + j] = x[t * row + j] + cr[j];
    }
}

// dcoarse[s] = Σ dy[t] over t in [s·factor, min(s·factor + factor, seq)), added in t order like the CPU half.
extern "C" __global__ void upsample_bwd_f32(const float* dy, float* dcoarse, long seq, long row, int factor) {
    const long short_len = (seq + factor - 1) / factor;
    for (long s = blockIdx.y; s < short_len; s += gridDim.y) {
        const long lo = s * factor, hi = min(lo + factor, seq);
        for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < row; j += (long)gridDim.x * blockDim.x) {
            float acc = 0.0f;
            for (long t = lo; t < hi; ++t) acc += dy[t * row + j];
            dcoarse[s * row + j] = acc;
        }
    }
}
