// Token embedding: a row gather forward, a deterministic scatter-add backward. CPU half: src/ops/embedding.rs.

// out[n, :] = table[ids[n], :]
extern "C" __global__ void embedding_fwd_f32(const float* table, const unsigned* ids, float* out, long n, int d) {
    for (long row = blockIdx.y; row < n; row += gridDim.y) {
        const float* src = table + (long)ids[row] * d;
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < d; e += gridDim.x * blockDim.x)
            out[row * d + e] = src[e];
    }
}

// dtable[v, :] += Σ_{n: ids[n] = v} dout[n, :]. Block y owns vocabulary row v and scans the ids in order, so
// the sum has the same order (and bits) on every run; no atomics. The vocabulary is small (256 bytes).
extern "C" __global__ void embedding_bwd_f32(const float* dout, const unsigned* ids, float* dtable, long n, int d,
                                             int vocab) {
    for (int v = blockIdx.y; v < vocab; v += gridDim.y) {
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < d; e += gridDim.x * blockDim.x) {
            float acc = 0.0f;
            for (long row = 0; row < n; ++row)
                if (ids[row] == (unsigned)v) acc += dout[row * d + e];
            dtable[(long)v * d + e] += acc;
        }
    }
}
