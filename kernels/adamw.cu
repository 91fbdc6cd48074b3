// AdamW step, fused: gradient scaling (clipping), moments, bias correction and decoupled weight decay in one
// pass over the parameters. CPU half and the formula: src/ops/adamw.rs (PyTorch's torch.optim.AdamW).

#include "common.cuh"

// A training step's state (src/ops/adamw.rs: `state`): the host's values for the step, then what the step
// computes. AdamW reads its learning rate, bias corrections and gradient scale here, not from its arguments,
// so that one captured step serves every step.
#define STATE_LR 0
#define STATE_BIAS1 1
#define STATE_BIAS2 2
#define STATE_MAX_NORM 3
#define STATE_GRAD_SCALE 4
#define STATE_SKIP 5
#define STATE_SUM_SQUARES 6
#define STATE_LOSSES 7

// After the losses and the sum of squared gradients are in: raises the skip flag (for good: it is never
// lowered) when any of them is not finite, so that AdamW leaves the parameters as they were, and sets the
// clipping factor max_norm / norm when the norm exceeds max_norm > 0 (src/train/clip.rs), else 1. One thread.
extern "C" __global__ void step_guard_f32(float* state, int losses) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const double norm = sqrt((double)state[STATE_SUM_SQUARES]);
    bool finite = isfinite(norm);
    for (int m = 0; m < losses; ++m) finite = finite && isfinite(state[STATE_LOSSES + m]);
    if (!finite) state[STATE_SKIP] = 1.0f;
    const double max_norm = (double)state[STATE_MAX_NORM];
    state[STATE_GRAD_SCALE] = (max_norm > 0.0 && finite && norm > max_norm) ? (float)(max_norm / norm) : 1.0f;
}

// Every parameter tensor of a model in one launch. `tensors` holds ADAMW_WORDS words per tensor: the device
// addresses of p, g, m, v and of p's bf16 copy (0: none; written with the updated p rounded, the operand of
// the next bf16 forward), its length, and its weight decay (f32 bits). Tensor t is cut into chunks of
// ADAMW_CHUNK elements numbered from chunk_starts[t] (chunk_starts[count] = all chunks); a block takes a
// chunk, finds its tensor by binary search, and updates it. The step's scalars come from `state`; with its
// skip flag up nothing changes.
#define ADAMW_WORDS 7
#define ADAMW_CHUNK 4096
extern "C" __global__ void adamw_multi_f32(const unsigned long long* tensors, const long* chunk_starts, int count,
                                           const float* state, float beta1, float beta2, float eps) {
    if (state[STATE_SKIP] != 0.0f) return;
    const float lr = state[STATE_LR], bias1 = state[STATE_BIAS1], bias2 = state[STATE_BIAS2];
    const float grad_scale = state[STATE_GRAD_SCALE];
    const long chunks = chunk_starts[count];
    for (long c = blockIdx.x; c < chunks; c += gridDim.x) {
        int lo = 0, hi = count - 1;  // the last tensor whose first chunk is at or before c
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (chunk_starts[mid] <= c) lo = mid;
            else hi = mid - 1;
        }
        const unsigned long long* t = tensors + (long)ADAMW_WORDS * lo;
        float* p = reinterpret_cast<float*>(t[0]);
        const float* g = reinterpret_cast<const float*>(t[1]);
        float* m = reinterpret_cast<float*>(t[2]);
        float* v = reinterpret_cast<float*>(t[3]);
        __nv_bfloat16* p_bf16 = reinterpret_cast<__nv_bfloat16*>(t[4]);
        const long n = (long)t[5];
        const float weight_decay = __uint_as_float((unsigned)t[6]);
        const long begin = (c - chunk_starts[lo]) * ADAMW_CHUNK, end = min(n, begin + ADAMW_CHUNK);
        for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
            const float gi = g[i] * grad_scale;
            const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
            const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            const float decayed = p[i] * (1.0f - lr * weight_decay);
            const float updated = decayed - lr * (mi / bias1) / (sqrtf(vi / bias2) + eps);
            p[i] = updated;
            if (p_bf16) p_bf16[i] = __float2bfloat16_rn(updated);
        }
    }
}
