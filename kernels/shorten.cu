// ShiftRight(shift) fused with AvgPoolShortening(factor) over x[seq, row] (row = batch · d), f32.
// CPU half: src/ops/shorten.rs. Sequence positions are grid-strided over blockIdx.y and the elements of a
// position over x, so no element needs a 64-bit division.
#include "common.cuh"

// 1/count in f32 (IEEE division): the same bits as the CPU half's `1.0 / count as f64` rounded to f32 for every
// count below 200 000.
__device__ __forceinline__ float inv_count(long count) { return 1.0f / (float)count; }

// out[s] = Σ_{t in [s·factor, min(s·factor + factor, seq)), t ≥ shift} x[t - shift] / count. The last window
// may be partial (ceil mode) and averages only the rows present.
extern "C" __global__ void shorten_fwd_f32(const float* x, float* out, long seq, long row, int factor, long shift) {
    const long short_len = (seq + factor - 1) / factor;
    for (long s = blockIdx.y; s < short_len; s += gridDim.y) {
        const long lo = s * factor, hi = min(lo + factor, seq);
        const float inv = inv_count(hi - lo);
        for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < row; j += (long)gridDim.x * blockDim.x) {
            float acc = 0.0f;
            // __fmul_rn keeps the product out of an FMA: the same roundings as the CPU's `o += v * inv`.
            for (long t = max(lo, shift); t < hi; ++t) acc += __fmul_rn(x[(t - shift) * row + j], inv);
            out[s * row + j] = acc;
        }
    }
}

// dx[t] = dout[(t + shift) / factor] / count of that window, or 0 where t + shift falls past the end.
extern "C" __global__ void shorten_bwd_f32(const float* dout, float* dx, long seq, long row, int factor,
                                           long shift) {
    for (long t = blockIdx.y; t < seq; t += gridDim.y) {
        const long shifted = t + shift;
        const long s = shifted / factor;
        const bool inside = shifted < seq;
        const float inv = inside ? inv_count(min(s * factor + factor, seq) - s * factor) : 0.0f;
        for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < row; j += (long)gridDim.x * blockDim.x)
            dx[t * row + j] = inside ? dout[s * row + j] * inv : 0.0f;
    }
}
