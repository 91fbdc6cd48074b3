// Fold / unfold of sequence windows, for LinearPoolingShortening and LinearUpSampling (src/ops/window.rs has
// the CPU half and the index definitions). Pure copies; one grid row per (window s, batch b, slot r).

// out[s, b, r·D + e] = x[s·k + r − shift, b, e] when shift <= s·k + r < seq, else 0.
extern "C" __global__ void window_fold_f32(const float* x, float* out, long seq, int batch, long d, int factor,
                                           long shift, long short_len) {
    const long rows = short_len * batch * factor;
    for (long row = blockIdx.y; row < rows; row += gridDim.y) {
        const int r = (int)(row % factor);
        const long sb = row / factor;
        const int b = (int)(sb % batch);
        const long p = (sb / batch) * factor + r;
        const float* src = (p >= shift && p < seq) ? x + ((p - shift) * batch + b) * d : nullptr;
        float* dst = out + row * d;
        for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < d; e += (long)gridDim.x * blockDim.x)
            dst[e] = src ? src[e] : 0.0f;
    }
}

// The adjoint: dx[t, b, e] = g[p / k, b, (p % k)·D + e] with p = t + shift, when p < seq, else 0.
extern "C" __global__ void window_unfold_f32(const float* g, float* dx, long seq, int batch, long d, int factor,
                                             long shift) {
    const long rows = seq * batch;
    for (long row = blockIdx.y; row < rows; row += gridDim.y) {
        const long t = row / batch;
        const int b = (int)(row % batch);
        const long p = t + shift;
        const float* src = p < seq ? g + (((p / factor) * batch + b) * factor + p % factor) * d : nullptr;
        float* dst = dx + row * d;
        for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < d; e += (long)gridDim.x * blockDim.x)
            dst[e] = src ? src[e] : 0.0f;
    }
}
