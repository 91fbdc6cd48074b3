// Shared device helpers: Philox dropout stream (identical to src/rng.rs), warp reductions.
#pragma once
#include <stdint.h>
#include <cuda_bf16.h>

// An f32 result stored as the output's type: as it is, or rounded to bf16 (to nearest, ties to even, as
// half::bf16::from_f32 on the CPU) for a GEMM that takes bf16.
template <typename Out> __device__ __forceinline__ Out to_out(float v);
template <> __device__ __forceinline__ float to_out<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Philox4x32-10 of counter (block_lo, block_hi, 0, 0) under key (seed_lo, seed_hi): four words, the words of
// dropout elements 4·block .. 4·block + 3 (src/rng.rs `philox4`).
__device__ __forceinline__ uint4 philox4(uint64_t seed, uint64_t block) {
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
    return make_uint4(c0, c1, c2, c3);
}

// A dropout mask's seed, which the pointwise kernels take as a pointer to one u64 of device memory
// (src/device/cuda/seeds.rs: the host stages it there, so a captured step reads each step's seed instead of baking
// one in); read only when dropout is on, so a kernel without it never touches the pointer.
__device__ __forceinline__ unsigned long long read_seed(const unsigned long long* seed, int use_dropout) {
    return use_dropout ? *seed : 0ull;
}

__device__ __forceinline__ uint32_t word(uint4 w, int i) {
    return i == 0 ? w.x : i == 1 ? w.y : i == 2 ? w.z : w.w;
}

// Dropout factor for one word: 0 if dropped, `scale` (= 1/(1-p)) if word >= threshold (src/rng.rs).
__device__ __forceinline__ float keep_factor(uint32_t w, uint32_t threshold, float scale) {
    return w >= threshold ? scale : 0.0f;
}

// Dropout factor for element n alone (word n % 4 of block n / 4); loops over four neighbours use philox4 once.
__device__ __forceinline__ float dropout_factor(uint64_t seed, uint64_t n, uint32_t threshold, float scale) {
    return keep_factor(word(philox4(seed, n >> 2), (int)(n & 3)), threshold, scale);
}

// Dropout factors of elements n and n + 1 (a thread's two adjacent columns of an mma tile): one Philox call
// when both are in n's block of four, which is every time for even n.
__device__ __forceinline__ float2 dropout_factor_pair(uint64_t seed, uint64_t n, uint32_t threshold, float scale) {
    const uint4 block = philox4(seed, n >> 2);
    const int w = (int)(n & 3);
    const float second = w < 3 ? keep_factor(word(block, w + 1), threshold, scale)
                               : dropout_factor(seed, n + 1, threshold, scale);
    return make_float2(keep_factor(word(block, w), threshold, scale), second);
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
