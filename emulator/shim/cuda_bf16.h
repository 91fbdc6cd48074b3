// bf16 for the host build of the kernels (emulator/shim/cuda_shim.h): the storage types and the conversions
// the kernels use, with CUDA's rounding (to nearest, ties to even; a NaN becomes the canonical NaN 0x7fff).
#pragma once
#include <stdint.h>
#include <string.h>

#include "cuda_shim.h"  // float2 (a no-op inside the shim, which includes this header after its vector types)

struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(unsigned short)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
// Toward zero: the upper half (a NaN stays a NaN).
inline __nv_bfloat16 __float2bfloat16_rz(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
    return __nv_bfloat16{(unsigned short)(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b) {
    const uint32_t u = (uint32_t)b.__x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16{x}; }
inline short __bfloat16_as_short(__nv_bfloat16 b) { return (short)b.__x; }
inline __nv_bfloat16 __short_as_bfloat16(short x) { return __nv_bfloat16{(unsigned short)x}; }

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __floats2bfloat162_rn(f, f); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return __nv_bfloat162{lo, hi}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 p) { return p.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 p) { return p.y; }
inline float __low2float(__nv_bfloat162 p) { return __bfloat162float(p.x); }
inline float __high2float(__nv_bfloat162 p) { return __bfloat162float(p.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 p) { return float2{__bfloat162float(p.x), __bfloat162float(p.y)}; }
