// What every attention kernel shares (kernels/attention.cu: f32 on the SIMT cores; kernels/attention_mma.cu:
// bf16 on the tensor cores): the masks' key ranges and the scalar arguments after the tensors.
#pragma once
#include "common.cuh"

// The numbers the host names too (src/device/cuda/kernels.rs, `cu_constants!`: a test holds each to its #define here).
// The mask kinds, as AttnMask::code() passes them.
#define ATT_MASK_CAUSAL 0
#define ATT_MASK_FULL 1
#define ATT_MASK_FUNNEL 2
#define ATT_MASK_WINDOW 3
#define ATT_MASK_UP_CAUSAL 4
#define ATT_MASK_UP_WINDOW 5
// CUDA's limit on gridDim.y. Every attention grid is (row tiles, B·H): blockIdx.y is the (batch, head), with no
// grid-stride loop over it, so one launch takes at most this many of them (the host refuses more).
#define GRID_Y_MAX 65535

// The half-open key range [lo, hi) that query i sees out of tk keys: the mirror of AttnMask::key_range in
// src/ops/attention/mod.rs, for the (kind, param) of AttnMask::code(). New mask kinds are new cases here and there.
__device__ __forceinline__ int2 mask_range(int kind, int param, int i, int tk) {
    const int k = param;
    switch (kind) {
    case ATT_MASK_CAUSAL: // keys 0..=i
        return make_int2(0, min(i + 1, tk));
    case ATT_MASK_FULL:
        return make_int2(0, tk);
    case ATT_MASK_FUNNEL: // attention shortening by k: every key up to the end of the query's window
        return make_int2(0, min((i + 1) * k, tk));
    case ATT_MASK_WINDOW: // per-window shortening: the query's own window
        return make_int2(min(i * k, tk), min((i + 1) * k, tk));
    case ATT_MASK_UP_CAUSAL: // attention upsampling by k: shortened keys 0..=i/k
        return make_int2(0, min(i / k + 1, tk));
    case ATT_MASK_UP_WINDOW: // per-window upsampling: shortened key i/k only
        return make_int2(min(i / k, tk), min(i / k + 1, tk));
    default: // unknown kinds see nothing (the host only passes the codes above)
        return make_int2(0, 0);
    }
}

// mask_range clamped to [0, tk), and empty for rows past the end (i >= tq).
__device__ __forceinline__ int2 row_range(int kind, int param, int i, int tq, int tk) {
    if (i >= tq) return make_int2(0, 0);
    const int2 r = mask_range(kind, param, i, tk);
    return make_int2(max(r.x, 0), min(r.y, tk));
}

// The dropout seed of the launch that follows, a module constant: the host copies it there from the seed
// table on the stream just before the launch (src/device/cuda/seeds.rs), so a captured step reads each step's seed,
// and the kernels use it as they would a parameter (a constant-bank operand: a seed loaded into registers
// costs the tiled kernels spills).
__constant__ unsigned long long attention_dropout_seed;

// Arguments every attention kernel takes after its tensors (src/device/cuda/kernels.rs: AttnParams). scale_log2 =
// scale·log2(e), computed in f64 on the host (the bf16 kernels' exp2 form of the softmax).
#define ATT_PARAMS                                                                                              \
    int B, int H, int tq, int tk, int dh, float scale, int mask_kind, int mask_param, unsigned int threshold,  \
        float drop_scale, int use_dropout, int q_stride, int q_off, int kv_stride, int k_off, int v_off,       \
        float scale_log2
#define ATT_ARGS                                                                                                \
    B, H, tq, tk, dh, scale, mask_kind, mask_param, threshold, drop_scale, use_dropout, q_stride, q_off,        \
        kv_stride, k_off, v_off, scale_log2

