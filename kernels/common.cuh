// Shared device helpers: Philox dropout stream (identical to src/rng.rs), warp reductions.
#pragma once
#include <stdint.h>

// First output of Philox4x32-10 for counter (n_lo, n_hi, 0, 0) and key (seed_lo, seed_hi): src/rng.rs `philox`.
__device__ __forceinline__ uint32_t philox(uint64_t seed, uint64_t n) {
    uint32_t c0 = (uint32_t)n, c1 = (uint32_t)(n >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
    return c0;
}

// Dropout factor for element n: 0 if dropped, `scale` (= 1/(1-p)) if philox >= threshold (src/rng.rs).
__device__ __forceinline__ float dropout_factor(uint64_t seed, uint64_t n, uint32_t threshold, float scale) {
    return philox(seed, n) >= threshold ? scale : 0.0f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
