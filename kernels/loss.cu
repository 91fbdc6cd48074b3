// Fused softmax + cross-entropy, forward and backward in one pass (as llm.c's fused classifier).
// CPU half: src/ops/loss.rs.
#include "common.cuh"

// One warp per row of logits[rows, vocab]: loss[row] = logsumexp(logits) − logits[target];
// dlogits[row, j] = (softmax_j − [j == target]) · scale.
extern "C" __global__ void softmax_xent_f32(const float* logits, const unsigned* targets, float* loss,
                                            float* dlogits, long rows, int vocab, float scale) {
    const int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    for (long row = (long)blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows;
         row += (long)gridDim.x * warps_per_block) {
        const float* z = logits + row * vocab;
        float m = -INFINITY;
        for (int j = lane; j < vocab; j += 32) m = fmaxf(m, z[j]);
        m = warp_max(m);
        float sum = 0.0f;
        for (int j = lane; j < vocab; j += 32) sum += expf(z[j] - m);
        sum = warp_sum(sum);
        const unsigned t = targets[row];
        const float lse = m + logf(sum);
        if (lane == 0) loss[row] = lse - z[t];
        float* dz = dlogits + row * vocab;
        for (int j = lane; j < vocab; j += 32)
            dz[j] = (expf(z[j] - lse) - (j == (int)t ? 1.0f : 0.0f)) * scale;
    }
}
