// AdamW step, fused: gradient scaling (clipping), moments, bias correction and decoupled weight decay in one
// pass over a parameter. CPU half and the formula: src/ops/adamw.rs (PyTorch's torch.optim.AdamW).
extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long n, float lr, float beta1,
                                     float beta2, float eps, float weight_decay, float bias1, float bias2,
                                     float grad_scale) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float decayed = p[i] * (1.0f - lr * weight_decay);
        p[i] = decayed - lr * (mi / bias1) / (sqrtf(vi / bias2) + eps);
    }
}
