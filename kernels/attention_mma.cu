// Attention on the tensor cores, bf16 operands with f32 accumulation (mma.sync m16n8k16, sm_80 and newer):
// forward, and backward as a dK/dV kernel (warps own keys) and a dQ kernel (warps own queries), deterministic
// and without atomics. This is the simple version, written to be checked before it is tuned: every fragment is
// loaded from global memory (through L1/L2) straight into registers, with no shared memory, cp.async or
// ldmatrix, so the layouts can be read off the PTX ISA's fragment tables. Rounding points (bf16 operands,
// probabilities rounded per key tile of MMA_KEY_TILE), layouts and the CPU reference:
// src/ops/attention/mod.rs and cpu.rs.
//
// Fragments of mma.m16n8k16 (lane = 4·g + t): A (16x16, row-major) a0 = (g, 2t..2t+1), a1 = (g+8, 2t..),
// a2 = (g, 2t+8..), a3 = (g+8, 2t+8..); B (16x8, "col") b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g);
// C (16x8, f32) c0, c1 = (g, 2t), (g, 2t+1); c2, c3 = (g+8, 2t), (g+8, 2t+1). The two elements of a 32-bit
// register are the lower index in the lower half. A C tile pair (columns n, n+8) is an A fragment for the
// next product (the probabilities stay in registers).
//
// Blocks of MMA_WARPS warps, each warp 16 rows (queries for forward and dQ, keys for dK/dV); grid
// (ceil(rows / 64), B·H).
#include "attention_common.cuh"

#define MMA_WARPS 4
#define MMA_ROWS 16
#define MMA_KEY_TILE 64  // BF16_KEY_TILE in src/ops/attention/mod.rs
#define MMA_OUT_COLS 64  // the backward kernels' output columns per pass
#define MMA_NEG_INF (-__int_as_float(0x7f800000))
#define MMA_LOG2E 1.4426950408889634f
#define MMA_LN2 0.6931471805599453f

typedef unsigned short bf16_bits;

__device__ __forceinline__ uint32_t pack_bits(bf16_bits lo, bf16_bits hi) {
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

// Two f32 values rounded to bf16 (to nearest even), packed.
__device__ __forceinline__ uint32_t pack_rounded(float lo, float hi) {
    return pack_bits(__bfloat16_as_ushort(__float2bfloat16_rn(lo)), __bfloat16_as_ushort(__float2bfloat16_rn(hi)));
}

// d += a · b.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// One (batch, head) of a bf16 operand: element (t, c) of a [len, dh] matrix at p[t·step + c]; 0 outside it
// (rows past the sequence, columns past dh up to the bucket's DH).
struct Bf16Head {
    const __nv_bfloat16* p;
    long long step;
    int len, dh;
    __device__ __forceinline__ bf16_bits at(int t, int c) const {
        return (t < len && c < dh) ? __bfloat16_as_ushort(p[t * step + c]) : (bf16_bits)0;
    }
};

// The same for an f32 operand that the product takes rounded to bf16 (dO).
struct F32Head {
    const float* p;
    long long step;
    int len, dh;
    __device__ __forceinline__ bf16_bits at(int t, int c) const {
        return __bfloat16_as_ushort(__float2bfloat16_rn((t < len && c < dh) ? p[t * step + c] : 0.0f));
    }
};

// A fragment of M's rows r0.. and columns c0.. (M row-major: rows are the product's rows).
template <class M>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const M& m, int r0, int c0, int g, int t) {
    a[0] = pack_bits(m.at(r0 + g, c0 + 2 * t), m.at(r0 + g, c0 + 2 * t + 1));
    a[1] = pack_bits(m.at(r0 + g + 8, c0 + 2 * t), m.at(r0 + g + 8, c0 + 2 * t + 1));
    a[2] = pack_bits(m.at(r0 + g, c0 + 2 * t + 8), m.at(r0 + g, c0 + 2 * t + 9));
    a[3] = pack_bits(m.at(r0 + g + 8, c0 + 2 * t + 8), m.at(r0 + g + 8, c0 + 2 * t + 9));
}

// B fragment with B(k, n) = M(n, k): M's rows are the product's columns (K in Q·Kᵀ).
template <class M>
__device__ __forceinline__ void frag_b_rows(uint32_t (&b)[2], const M& m, int k0, int n0, int g, int t) {
    b[0] = pack_bits(m.at(n0 + g, k0 + 2 * t), m.at(n0 + g, k0 + 2 * t + 1));
    b[1] = pack_bits(m.at(n0 + g, k0 + 2 * t + 8), m.at(n0 + g, k0 + 2 * t + 9));
}

// B fragment with B(k, n) = M(k, n): M's rows are the summed index (V in P·V).
template <class M>
__device__ __forceinline__ void frag_b_cols(uint32_t (&b)[2], const M& m, int k0, int n0, int g, int t) {
    b[0] = pack_bits(m.at(k0 + 2 * t, n0 + g), m.at(k0 + 2 * t + 1, n0 + g));
    b[1] = pack_bits(m.at(k0 + 2 * t + 8, n0 + g), m.at(k0 + 2 * t + 9, n0 + g));
}

// The A fragments of a warp's 16 rows of M, all DH columns: kept in registers, or (RESIDENT false: d_head 128
// in the forwards and the dK/dV kernel, where keeping them spills) loaded again wherever they are used.
template <int DH, bool RESIDENT, class M>
struct RowFrags {
    uint32_t f[RESIDENT ? DH / 16 : 1][4];
    M m;
    int r0, g, t;
    __device__ __forceinline__ RowFrags(const M& m_, int r0_, int g_, int t_) : m(m_), r0(r0_), g(g_), t(t_) {
        if (RESIDENT)
#pragma unroll
            for (int kc = 0; kc < DH / 16; ++kc) frag_a(f[kc], m, r0, kc * 16, g, t);
    }
    // Columns 16·kc .. 16·kc + 15.
    __device__ __forceinline__ void get(int kc, uint32_t (&a)[4]) const {
        if (RESIDENT) {
#pragma unroll
            for (int x = 0; x < 4; ++x) a[x] = f[RESIDENT ? kc : 0][x];
        } else {
            frag_a(a, m, r0, kc * 16, g, t);
        }
    }
};

// The A fragment of the 16x16 block whose two 16x8 halves are the C tiles lo and hi, rounded to bf16.
__device__ __forceinline__ void frag_a_from_c(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack_rounded(lo[0], lo[1]);
    a[1] = pack_rounded(lo[2], lo[3]);
    a[2] = pack_rounded(hi[0], hi[1]);
    a[3] = pack_rounded(hi[2], hi[3]);
}

__device__ __forceinline__ float group_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float group_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The heads of (b, h): q, k and v in their buffers (attention_common.cuh: ATT_PARAMS' strides and offsets).
struct Heads {
    Bf16Head q, k, v;
    __device__ Heads(const __nv_bfloat16* q_buf, const __nv_bfloat16* kv, int b, int h, ATT_PARAMS) {
        q = {q_buf + q_off + (long long)b * q_stride + h * dh, (long long)B * q_stride, tq, dh};
        k = {kv + k_off + (long long)b * kv_stride + h * dh, (long long)B * kv_stride, tk, dh};
        v = {kv + v_off + (long long)b * kv_stride + h * dh, (long long)B * kv_stride, tk, dh};
    }
};

// The union of the key ranges of this warp's query rows (lane rows r and r + 8): [lo, hi), empty if none.
__device__ __forceinline__ int2 warp_key_span(const int (&lo)[2], const int (&hi)[2]) {
    int l = INT_MAX, h = 0;
#pragma unroll
    for (int e = 0; e < 2; ++e)
        if (lo[e] < hi[e]) {
            l = min(l, lo[e]);
            h = max(h, hi[e]);
        }
    return make_int2(__reduce_min_sync(0xffffffffu, l), __reduce_max_sync(0xffffffffu, h));
}

// One key tile of the forward's online softmax, on the scores s (this lane's C tiles of 16 rows by
// MMA_KEY_TILE keys): masked and scaled to log2 units, each row's maximum m updated, O and the row sums l
// rescaled, and s turned into the probabilities relative to the new maximum (summed into l unrounded) times
// their dropout factors, ready to be rounded for P·V. Element e of a C tile is row e / 2.
template <int DH>
__device__ __forceinline__ void online_softmax_tile(float (&s)[MMA_KEY_TILE / 8][4], const int (&lo)[2],
                                                    const int (&hi)[2], int k0, int r0, int g, int t, int bh,
                                                    float (&m)[2], float (&l)[2], float (&o)[DH / 8][4],
                                                    ATT_PARAMS) {
    float tile_max[2] = {MMA_NEG_INF, MMA_NEG_INF};
#pragma unroll
    for (int nt = 0; nt < MMA_KEY_TILE / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = e / 2, j = k0 + nt * 8 + 2 * t + (e & 1);
            s[nt][e] = (j >= lo[row] && j < hi[row]) ? s[nt][e] * scale_log2 : MMA_NEG_INF;
            tile_max[row] = fmaxf(tile_max[row], s[nt][e]);
        }
    float alpha[2];
#pragma unroll
    for (int row = 0; row < 2; ++row) {
        const float m_new = fmaxf(m[row], group_max(tile_max[row]));
        alpha[row] = m[row] == MMA_NEG_INF ? 1.0f : exp2f(m[row] - m_new);
        m[row] = m_new;
        l[row] *= alpha[row];
    }
#pragma unroll
    for (int dt = 0; dt < DH / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dt][e] *= alpha[e / 2];
#pragma unroll
    for (int nt = 0; nt < MMA_KEY_TILE / 8; ++nt)
#pragma unroll
        for (int row = 0; row < 2; ++row) {
            // Elements 2·row and 2·row + 1: query i, keys j and j + 1 (one Philox call for both).
            const int i = r0 + g + 8 * row, j = k0 + nt * 8 + 2 * t;
            float p[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const float x = s[nt][2 * row + c];
                p[c] = x == MMA_NEG_INF ? 0.0f : exp2f(x - m[row]);
                l[row] += p[c];
            }
            float2 f = make_float2(1.0f, 1.0f);
            if (use_dropout && (p[0] != 0.0f || p[1] != 0.0f))
                f = dropout_factor_pair(seed, ((unsigned long long)bh * tq + i) * tk + j, threshold, drop_scale);
            s[nt][2 * row] = p[0] * f.x;
            s[nt][2 * row + 1] = p[1] * f.y;
        }
}

// The forward's end: each row's output O / l and log-sum-exp (rows past tq are not written).
template <int DH>
__device__ __forceinline__ void store_forward(const float (&o)[DH / 8][4], const float (&m)[2], const float (&l)[2],
                                              float* __restrict__ out, float* __restrict__ lse, int r0, int g, int t,
                                              int b, int h, int bh, int B, int H, int tq, int dh) {
    const int W = H * dh;
#pragma unroll
    for (int row = 0; row < 2; ++row) {
        const int i = r0 + g + 8 * row;
        const float sum = group_sum(l[row]);
        if (i >= tq) continue;
        // sum >= 1 when the row sees any key (its maximum contributes exp2(0)); 0 when it sees none.
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
        for (int dt = 0; dt < DH / 8; ++dt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int col = dt * 8 + 2 * t + c;
                if (col < dh) out[((long long)i * B + b) * W + h * dh + col] = o[dt][2 * row + c] * inv;
            }
        if (t == 0) lse[(long long)bh * tq + i] = sum > 0.0f ? (m[row] + log2f(sum)) * MMA_LN2 : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward: a warp's 16 queries against key tiles of MMA_KEY_TILE, online softmax in exp2 form; O and the row
// sums accumulate in f32, the probabilities enter P·V rounded to bf16.
template <int DH>
__device__ __forceinline__ void attention_mma_fwd(const __nv_bfloat16* q, const __nv_bfloat16* kv,
                                                  float* __restrict__ out, float* __restrict__ lse, ATT_PARAMS) {
    constexpr int KC = DH / 16, DT = DH / 8, NT = MMA_KEY_TILE / 8;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, warp = threadIdx.x / 32;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const Heads heads(q, kv, b, h, ATT_ARGS);
    const int r0 = blockIdx.x * (MMA_WARPS * MMA_ROWS) + warp * MMA_ROWS;

    int lo[2], hi[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int2 r = row_range(mask_kind, mask_param, r0 + g + 8 * e, tq, tk);
        lo[e] = r.x;
        hi[e] = r.y;
    }
    const int2 span = warp_key_span(lo, hi);

    const RowFrags<DH, (DH <= 64), Bf16Head> qf(heads.q, r0, g, t);
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float m[2] = {MMA_NEG_INF, MMA_NEG_INF}, l[2] = {0.0f, 0.0f};  // l: this lane's part of the row sum

    for (int k0 = span.x / MMA_KEY_TILE * MMA_KEY_TILE; k0 < span.y; k0 += MMA_KEY_TILE) {
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                uint32_t qa[4], bk[2];
                qf.get(kc, qa);
                frag_b_rows(bk, heads.k, kc * 16, k0 + nt * 8, g, t);
                mma_bf16(s[nt], qa, bk);
            }
        }
        online_softmax_tile<DH>(s, lo, hi, k0, r0, g, t, bh, m, l, o, ATT_ARGS);
#pragma unroll
        for (int kk = 0; kk < MMA_KEY_TILE / 16; ++kk) {
            uint32_t pa[4];
            frag_a_from_c(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                uint32_t bv[2];
                frag_b_cols(bv, heads.v, k0 + kk * 16, dt * 8, g, t);
                mma_bf16(o[dt], pa, bv);
            }
        }
    }

    store_forward<DH>(o, m, l, out, lse, r0, g, t, b, h, bh, B, H, tq, dh);
}

// ---------------------------------------------------------------------------------------------------------------
// Forward, tuned (d_head up to 64): the warps and arithmetic of attention_mma_fwd (the same bits up to the order of f32 sums),
// but each 64-key tile of K and V is copied once per block into shared memory with cp.async (16-byte chunks,
// rows XOR-swizzled by chunk so that ldmatrix's eight row addresses hit distinct banks), double-buffered where
// it fits (the next tile's copy overlaps this tile's products; one stage would do for d 128), and read with
// ldmatrix (V transposed). The block walks the union of its warps' key ranges; tiles outside a warp's own
// rows are fully masked for it and change nothing. Needs dh, the strides and the offsets to be multiples of 8
// (src/ops/attention/cuda.rs falls back to the simple version otherwise).

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}

// The 16-byte chunk `chunk` (8 bf16 columns) of row `row` of a [MMA_KEY_TILE][DH] tile, swizzled.
template <int DH>
__device__ __forceinline__ int tile_chunk(int row, int chunk) {
    constexpr int CH = DH / 8, MASK = (CH < 8 ? CH : 8) - 1;
    return row * CH + (chunk ^ (row & MASK));
}

// Keys k0 .. k0 + 63 of one head's rows `src` (K or V) into a tile; rows past tk and columns past dh are zeros.
template <int DH>
__device__ __forceinline__ void load_key_tile(uint4* tile, const Bf16Head& src, int k0) {
    constexpr int CH = DH / 8;
    for (int e = threadIdx.x; e < MMA_KEY_TILE * CH; e += MMA_WARPS * 32) {
        const int r = e / CH, c = e % CH, j = k0 + r;
        const bool valid = j < src.len && c * 8 < src.dh;
        cp_async16(tile + tile_chunk<DH>(r, c), valid ? src.p + j * src.step + c * 8 : src.p, valid);
    }
}

template <int DH>
__device__ __forceinline__ void attention_mma_fwd_tuned(const __nv_bfloat16* q, const __nv_bfloat16* kv,
                                                        float* __restrict__ out, float* __restrict__ lse,
                                                        ATT_PARAMS) {
    constexpr int KC = DH / 16, DT = DH / 8, NT = MMA_KEY_TILE / 8, CH = DH / 8;
    constexpr int STAGES = DH <= 64 ? 2 : 1;
    __shared__ __align__(16) uint4 k_tiles[STAGES][MMA_KEY_TILE * CH], v_tiles[STAGES][MMA_KEY_TILE * CH];
    __shared__ int block_span[2];
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, warp = threadIdx.x / 32;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const Heads heads(q, kv, b, h, ATT_ARGS);
    const int r0 = blockIdx.x * (MMA_WARPS * MMA_ROWS) + warp * MMA_ROWS;

    int lo[2], hi[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int2 r = row_range(mask_kind, mask_param, r0 + g + 8 * e, tq, tk);
        lo[e] = r.x;
        hi[e] = r.y;
    }
    // The block's key tiles: the union of its warps' ranges.
    const int2 span = warp_key_span(lo, hi);
    if (threadIdx.x == 0) {
        block_span[0] = INT_MAX;
        block_span[1] = 0;
    }
    __syncthreads();
    if (lane == 0) {
        atomicMin(&block_span[0], span.x);
        atomicMax(&block_span[1], span.y);
    }
    __syncthreads();
    const int first = block_span[0] / MMA_KEY_TILE * MMA_KEY_TILE, end = block_span[1];

    const RowFrags<DH, (DH <= 64), Bf16Head> qf(heads.q, r0, g, t);
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float m[2] = {MMA_NEG_INF, MMA_NEG_INF}, l[2] = {0.0f, 0.0f};

    if (first < end) {
        load_key_tile<DH>(k_tiles[0], heads.k, first);
        load_key_tile<DH>(v_tiles[0], heads.v, first);
    }
    cp_async_commit();
    for (int k0 = first, stage = 0; k0 < end; k0 += MMA_KEY_TILE) {
        const bool more = STAGES > 1 && k0 + MMA_KEY_TILE < end;
        if (more) {
            load_key_tile<DH>(k_tiles[STAGES - 1 - stage], heads.k, k0 + MMA_KEY_TILE);
            load_key_tile<DH>(v_tiles[STAGES - 1 - stage], heads.v, k0 + MMA_KEY_TILE);
        }
        cp_async_commit();
        cp_async_wait<STAGES - 1>();  // this tile's group is done (with two stages the next may be in flight)
        __syncthreads();
        const uint4 *k_s = k_tiles[stage], *v_s = v_tiles[stage];

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; kc += 2) {
                // Four 8x8 matrices: keys nt·8 .. +7 by the chunks 2kc .. 2kc + 3: b of kc, then of kc + 1.
                uint32_t r[4];
                ldmatrix_x4(r, k_s + tile_chunk<DH>(nt * 8 + lane % 8, 2 * kc + lane / 8), false);
                uint32_t qa[4];
                const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                qf.get(kc, qa);
                mma_bf16(s[nt], qa, b0);
                qf.get(kc + 1, qa);
                mma_bf16(s[nt], qa, b1);
            }
        }
        online_softmax_tile<DH>(s, lo, hi, k0, r0, g, t, bh, m, l, o, ATT_ARGS);
#pragma unroll
        for (int kk = 0; kk < MMA_KEY_TILE / 16; ++kk) {
            uint32_t pa[4];
            frag_a_from_c(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dt = 0; dt < DT; dt += 2) {
                // Keys 16kk .. +15 by the chunks dt, dt + 1, transposed: b of dt, then of dt + 1.
                const int mi = lane / 8, key = kk * 16 + (mi & 1) * 8 + lane % 8;
                uint32_t r[4];
                ldmatrix_x4(r, v_s + tile_chunk<DH>(key, dt + (mi >> 1)), true);
                const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                mma_bf16(o[dt], pa, b0);
                mma_bf16(o[dt + 1], pa, b1);
            }
        }
        __syncthreads();  // every warp is done with this stage before a later copy overwrites it
        if (STAGES == 1 && k0 + MMA_KEY_TILE < end) {
            load_key_tile<DH>(k_tiles[0], heads.k, k0 + MMA_KEY_TILE);
            load_key_tile<DH>(v_tiles[0], heads.v, k0 + MMA_KEY_TILE);
        }
        stage = STAGES - 1 - stage;
    }
    cp_async_wait<0>();
    store_forward<DH>(o, m, l, out, lse, r0, g, t, b, h, bh, B, H, tq, dh);
}

// ---------------------------------------------------------------------------------------------------------------
// Backward, dK and dV: a warp's 16 keys against query tiles of 16. With P recomputed from the log-sum-exp:
// dV += (P ∘ drop)ᵀ·dO, dPᵀ = V·dOᵀ, dS = P ∘ (dP ∘ drop − D), dK += dSᵀ·Q (times the scale at the end).
// The output columns go in slices of at most MMA_OUT_COLS (d_head 128: two passes over the queries, P and dS
// recomputed), so that the accumulators fit in registers beside K's and V's fragments.
template <int DH>
__device__ __forceinline__ void attention_mma_bwd_dkv(const __nv_bfloat16* q, const __nv_bfloat16* kv,
                                                      const float* __restrict__ dout, const float* __restrict__ lse,
                                                      const float* __restrict__ dvec, float* __restrict__ dkv,
                                                      ATT_PARAMS) {
    constexpr int KC = DH / 16, OUT = DH < MMA_OUT_COLS ? DH : MMA_OUT_COLS, DT = OUT / 8;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, warp = threadIdx.x / 32;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const Heads heads(q, kv, b, h, ATT_ARGS);
    const int W = H * dh;
    const F32Head dO = {dout + (long long)b * W + h * dh, (long long)B * W, tq, dh};
    const int j0 = blockIdx.x * (MMA_WARPS * MMA_ROWS) + warp * MMA_ROWS;
    const RowFrags<DH, (DH <= 64), Bf16Head> kf(heads.k, j0, g, t), vf(heads.v, j0, g, t);

    for (int c0 = 0; c0 < DH; c0 += OUT) {
    float dk[DT][4], dv[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.0f;

    for (int i0 = 0; i0 < tq; i0 += 16) {
        // Skip query tiles that see none of this warp's keys (lanes 0..15 test one query each).
        bool hit = false;
        if (lane < 16) {
            const int2 r = row_range(mask_kind, mask_param, i0 + lane, tq, tk);
            hit = r.x < r.y && r.x < j0 + MMA_ROWS && r.y > j0;
        }
        if (!__any_sync(0xffffffffu, hit)) continue;

        float st[2][4], dpt[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                uint32_t a[4], bq[2], bd[2];
                kf.get(kc, a);
                frag_b_rows(bq, heads.q, kc * 16, i0 + nt * 8, g, t);
                mma_bf16(st[nt], a, bq);
                vf.get(kc, a);
                frag_b_rows(bd, dO, kc * 16, i0 + nt * 8, g, t);
                mma_bf16(dpt[nt], a, bd);
            }
        }
        // Element e of tile nt: key j0 + g + 8·(e / 2), query i0 + 8·nt + 2t + (e & 1).
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int i = i0 + nt * 8 + 2 * t + c;
                const int2 r = row_range(mask_kind, mask_param, i, tq, tk);
                const float lse2 = i < tq ? lse[(long long)bh * tq + i] * MMA_LOG2E : 0.0f;
                const float d_i = i < tq ? dvec[(long long)bh * tq + i] : 0.0f;
#pragma unroll
                for (int row = 0; row < 2; ++row) {
                    const int e = 2 * row + c, j = j0 + g + 8 * row;
                    const bool visible = j >= r.x && j < r.y;
                    const float p = visible ? exp2f(st[nt][e] * scale_log2 - lse2) : 0.0f;
                    float f = 1.0f;
                    if (use_dropout && p != 0.0f)
                        f = dropout_factor(seed, ((unsigned long long)bh * tq + i) * tk + j, threshold, drop_scale);
                    st[nt][e] = p * f;                       // (P ∘ drop)ᵀ
                    dpt[nt][e] = p * (dpt[nt][e] * f - d_i);  // dSᵀ
                }
            }
        uint32_t pa[4], sa[4];
        frag_a_from_c(pa, st[0], st[1]);
        frag_a_from_c(sa, dpt[0], dpt[1]);
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            uint32_t bd[2], bq[2];
            frag_b_cols(bd, dO, i0, c0 + dt * 8, g, t);
            mma_bf16(dv[dt], pa, bd);
            frag_b_cols(bq, heads.q, i0, c0 + dt * 8, g, t);
            mma_bf16(dk[dt], sa, bq);
        }
    }

#pragma unroll
    for (int row = 0; row < 2; ++row) {
        const int j = j0 + g + 8 * row;
        if (j >= tk) continue;
        float* dk_row = dkv + k_off + ((long long)j * B + b) * kv_stride + h * dh;
        float* dv_row = dkv + v_off + ((long long)j * B + b) * kv_stride + h * dh;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int col = c0 + dt * 8 + 2 * t + c;
                if (col < dh) {
                    dk_row[col] = dk[dt][2 * row + c] * scale;
                    dv_row[col] = dv[dt][2 * row + c];
                }
            }
    }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward, dQ: a warp's 16 queries against key tiles of 16: dP = dO·Vᵀ, dS = P ∘ (dP ∘ drop − D), dQ += dS·K
// (times the scale at the end); output columns in slices of at most MMA_OUT_COLS, as dK/dV.
template <int DH>
__device__ __forceinline__ void attention_mma_bwd_dq(const __nv_bfloat16* q, const __nv_bfloat16* kv,
                                                     const float* __restrict__ dout, const float* __restrict__ lse,
                                                     const float* __restrict__ dvec, float* __restrict__ dq,
                                                     ATT_PARAMS) {
    constexpr int KC = DH / 16, OUT = DH < MMA_OUT_COLS ? DH : MMA_OUT_COLS, DT = OUT / 8;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, warp = threadIdx.x / 32;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const Heads heads(q, kv, b, h, ATT_ARGS);
    const int W = H * dh;
    const F32Head dO = {dout + (long long)b * W + h * dh, (long long)B * W, tq, dh};
    const int r0 = blockIdx.x * (MMA_WARPS * MMA_ROWS) + warp * MMA_ROWS;

    int lo[2], hi[2];
    float lse2[2], d_row[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int i = r0 + g + 8 * e;
        const int2 r = row_range(mask_kind, mask_param, i, tq, tk);
        lo[e] = r.x;
        hi[e] = r.y;
        lse2[e] = i < tq ? lse[(long long)bh * tq + i] * MMA_LOG2E : 0.0f;
        d_row[e] = i < tq ? dvec[(long long)bh * tq + i] : 0.0f;
    }
    const int2 span = warp_key_span(lo, hi);

    const RowFrags<DH, true, Bf16Head> qf(heads.q, r0, g, t);
    const RowFrags<DH, true, F32Head> df(dO, r0, g, t);

    for (int c0 = 0; c0 < DH; c0 += OUT) {
    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;

    for (int k0 = span.x / 16 * 16; k0 < span.y; k0 += 16) {
        float s[2][4], dp[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                uint32_t a[4], bk[2], bv[2];
                qf.get(kc, a);
                frag_b_rows(bk, heads.k, kc * 16, k0 + nt * 8, g, t);
                mma_bf16(s[nt], a, bk);
                df.get(kc, a);
                frag_b_rows(bv, heads.v, kc * 16, k0 + nt * 8, g, t);
                mma_bf16(dp[nt], a, bv);
            }
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = e / 2, i = r0 + g + 8 * row, j = k0 + nt * 8 + 2 * t + (e & 1);
                const bool visible = j >= lo[row] && j < hi[row];
                const float p = visible ? exp2f(s[nt][e] * scale_log2 - lse2[row]) : 0.0f;
                float f = 1.0f;
                // One Philox call per element here: the pair form costs this kernel its registers at d 128.
                if (use_dropout && p != 0.0f)
                    f = dropout_factor(seed, ((unsigned long long)bh * tq + i) * tk + j, threshold, drop_scale);
                dp[nt][e] = p * (dp[nt][e] * f - d_row[row]);  // dS
            }
        uint32_t sa[4];
        frag_a_from_c(sa, dp[0], dp[1]);
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            uint32_t bk[2];
            frag_b_cols(bk, heads.k, k0, c0 + dt * 8, g, t);
            mma_bf16(acc[dt], sa, bk);
        }
    }

#pragma unroll
    for (int row = 0; row < 2; ++row) {
        const int i = r0 + g + 8 * row;
        if (i >= tq) continue;
        float* dq_row = dq + q_off + ((long long)i * B + b) * q_stride + h * dh;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int col = c0 + dt * 8 + 2 * t + c;
                if (col < dh) dq_row[col] = acc[dt][2 * row + c] * scale;
            }
    }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points, one per head-dimension bucket (dh <= 32, <= 64, <= 128; columns past dh are zeros in the
// fragments). 128 threads (MMA_WARPS warps of MMA_ROWS rows); grids in src/ops/attention/cuda.rs.
#define MMA_ENTRIES(D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                                 \
        attention_mma_fwd_d##D##_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* out, float* lse, \
                                      ATT_PARAMS) {                                                             \
        attention_mma_fwd<D>(q, kv, out, lse, ATT_ARGS);                                                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                                 \
        attention_mma_bwd_dkv_d##D##_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, const float* dout,  \
                                          const float* lse, const float* dvec, float* dkv, ATT_PARAMS) {        \
        attention_mma_bwd_dkv<D>(q, kv, dout, lse, dvec, dkv, ATT_ARGS);                                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                                 \
        attention_mma_bwd_dq_d##D##_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, const float* dout,   \
                                         const float* lse, const float* dvec, float* dq, ATT_PARAMS) {          \
        attention_mma_bwd_dq<D>(q, kv, dout, lse, dvec, dq, ATT_ARGS);                                           \
    }

MMA_ENTRIES(32)
MMA_ENTRIES(64)
MMA_ENTRIES(128)

// The tuned forward for d_head up to 64 (d 128 keeps the simple one: its O accumulators leave no room).
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_fwd_tuned_d32_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* out, float* lse,
                                     ATT_PARAMS) {
    attention_mma_fwd_tuned<32>(q, kv, out, lse, ATT_ARGS);
}
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_fwd_tuned_d64_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* out, float* lse,
                                     ATT_PARAMS) {
    attention_mma_fwd_tuned<64>(q, kv, out, lse, ATT_ARGS);
}
