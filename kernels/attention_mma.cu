// Attention on the tensor cores, bf16 operands with f32 accumulation (mma.sync m16n8k16, sm_80 and newer):
// forward, and backward as a dK/dV kernel (warps own keys) and a dQ kernel (warps own queries), deterministic
// and without atomics. Two versions: the simple one, written to be checked before it is tuned (every fragment
// loaded from global memory straight into registers, no shared memory, cp.async or ldmatrix, so the layouts
// can be read off the PTX ISA's fragment tables), and the tuned one further down (`_tuned` kernels). Rounding
// points (bf16 operands, probabilities rounded per key tile of MMA_KEY_TILE), layouts and the CPU reference:
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

// MMA_WARPS, MMA_ROWS and MMA_KEY_TILE: src/device/cuda/kernels.rs names them too (a test holds them equal); the CPU
// reference's BF16_KEY_TILE (src/ops/attention/mod.rs) is MMA_KEY_TILE.
#define MMA_WARPS 4
#define MMA_ROWS 16
#define MMA_KEY_TILE 64
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

// A fragment of M's rows r0.. and columns c0.. (M row-major: rows are the product's rows).
template <class M>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const M& m, int r0, int c0, int g, int t) {
    a[0] = pack_bits(m.at(r0 + g, c0 + 2 * t), m.at(r0 + g, c0 + 2 * t + 1));
    a[1] = pack_bits(m.at(r0 + g + 8, c0 + 2 * t), m.at(r0 + g + 8, c0 + 2 * t + 1));
    a[2] = pack_bits(m.at(r0 + g, c0 + 2 * t + 8), m.at(r0 + g, c0 + 2 * t + 9));
    a[3] = pack_bits(m.at(r0 + g + 8, c0 + 2 * t + 8), m.at(r0 + g + 8, c0 + 2 * t + 9));
}

// B fragment with B(k, n) = M(n, k): M's rows are the product's columns (K in Q·Kᵀ). k0 is a column of M, n0
// a row.
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

// The A fragments of a warp's 16 rows of M, all DH columns: kept in registers, or (RESIDENT false: d_head 128,
// where keeping them all spills; which ones stay is chosen per kernel by ptxas's report) loaded again wherever
// they are used.
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

// Whether both of this lane's rows see every key of [k0, k0 + n).
__device__ __forceinline__ bool sees_all(const int (&lo)[2], const int (&hi)[2], int k0, int n) {
    return lo[0] <= k0 && hi[0] >= k0 + n && lo[1] <= k0 && hi[1] >= k0 + n;
}

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
// MMA_KEY_TILE keys): masked (MASKED false: a tile every row of the warp sees whole, with no masking code) and
// scaled to log2 units, each row's maximum m updated, O and the row sums l rescaled, and s turned into the
// probabilities relative to the new maximum (summed into l unrounded) times their dropout factors, ready to be
// rounded for P·V. Element e of a C tile is row e / 2.
template <int DH, bool MASKED>
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
            s[nt][e] = (!MASKED || (j >= lo[row] && j < hi[row])) ? s[nt][e] * scale_log2 : MMA_NEG_INF;
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
                f = dropout_factor_pair(attention_dropout_seed, ((unsigned long long)bh * tq + i) * tk + j, threshold, drop_scale);
            s[nt][2 * row] = p[0] * f.x;
            s[nt][2 * row + 1] = p[1] * f.y;
        }
}

// Writes this lane's part of row `row` (0: g, 1: g + 8) of C tiles acc, times factor, to dst's columns
// c0 + 8·dt + 2t, +1 (those below dh).
template <int DT>
__device__ __forceinline__ void store_c_row(float* dst, const float (&acc)[DT][4], int row, int c0, int t, int dh,
                                            float factor) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            const int col = c0 + dt * 8 + 2 * t + c;
            if (col < dh) dst[col] = acc[dt][2 * row + c] * factor;
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
        store_c_row(out + ((long long)i * B + b) * W + h * dh, o, row, 0, t, dh, inv);
        if (t == 0) lse[(long long)bh * tq + i] = sum > 0.0f ? (m[row] + log2f(sum)) * MMA_LN2 : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Staging: the simple version reads B operands straight from global memory; the tuned one copies each tile of
// MMA_KEY_TILE rows (keys, or queries for dK/dV) once per block into shared memory with cp.async (16-byte
// chunks, rows XOR-swizzled by chunk so that ldmatrix's eight row addresses hit distinct banks),
// double-buffered (the next tile's copy overlaps this tile's products), and reads it with ldmatrix. The kernel
// bodies are written once against a B-operand source with two methods (`Tiles::rows`) and use either.

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
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

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row, bool trans) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

// B operands from one head's rows in global memory (row indices absolute).
struct GlobalRows {
    Bf16Head m;
    int g, t;
    // B(k, n) = M(row n, column k): rows n0 .., columns k0 ...
    __device__ __forceinline__ void b_rows(uint32_t (&b)[2], int k0, int n0) const { frag_b_rows(b, m, k0, n0, g, t); }
    // B(k, n) = M(row k, column n): rows k0 .., columns n0 ...
    __device__ __forceinline__ void b_cols(uint32_t (&b)[2], int k0, int n0) const { frag_b_cols(b, m, k0, n0, g, t); }
};

// The same from a staged tile whose first row is `start` (row indices absolute, within the tile).
template <int DH>
struct TileRows {
    const uint4* tile;
    int start, lane;
    __device__ __forceinline__ void b_rows(uint32_t (&b)[2], int k0, int n0) const {
        // Matrices (rows n0 .. +7, chunk k0 / 8) and (the same rows, the next chunk): lanes 0-7 and 8-15.
        ldmatrix_x2(b, tile + tile_chunk<DH>(n0 - start + lane % 8, k0 / 8 + (lane / 8) % 2), false);
    }
    __device__ __forceinline__ void b_cols(uint32_t (&b)[2], int k0, int n0) const {
        // Transposed matrices (rows k0 .. +7, chunk n0 / 8) and (rows k0 + 8 .. +15, the same chunk).
        ldmatrix_x2(b, tile + tile_chunk<DH>(k0 - start + lane % 16, n0 / 8), true);
    }
};

// N operands' tiles of MMA_KEY_TILE rows streamed through shared memory, STAGES buffers each.
template <int DH, int STAGES, int N>
struct TileStream {
    static constexpr int CHUNKS = MMA_KEY_TILE * DH / 8;
    uint4* bufs;  // [STAGES][N][CHUNKS]
    Bf16Head src[N];
    int stage;
    __device__ __forceinline__ uint4* tile(int s, int n) const { return bufs + (s * N + n) * CHUNKS; }
    __device__ __forceinline__ void fetch(int s, int r0) const {
#pragma unroll
        for (int n = 0; n < N; ++n) load_key_tile<DH>(tile(s, n), src[n], r0);
    }
    // Before the loop over tiles first, first + MMA_KEY_TILE, .. < end.
    __device__ __forceinline__ void begin(int first, int end) {
        stage = 0;
        if (first < end) fetch(0, first);
        cp_async_commit();
    }
    // At the top of tile r0's iteration: the next tile's copy issued (two stages), this one's awaited.
    __device__ __forceinline__ void enter(int r0, int end) {
        if (STAGES > 1 && r0 + MMA_KEY_TILE < end) fetch(1 - stage, r0 + MMA_KEY_TILE);
        cp_async_commit();
        cp_async_wait<STAGES - 1>();
        __syncthreads();
    }
    // At the bottom: every warp is done with this stage before a copy overwrites it.
    __device__ __forceinline__ void leave(int r0, int end) {
        __syncthreads();
        if (STAGES == 1 && r0 + MMA_KEY_TILE < end) fetch(0, r0 + MMA_KEY_TILE);
        stage = STAGES - 1 - stage;
    }
    __device__ __forceinline__ TileRows<DH> rows(int n, int r0) const { return {tile(stage, n), r0, (int)(threadIdx.x % 32)}; }
};

// The tiles of two operands' rows that a kernel walks (r0 = first, first + MMA_KEY_TILE, .. < end), as
// B-operand sources: straight from global memory, or (STAGED) through a TileStream in shared memory. A loop
// calls begin, then enter / rows / leave for each tile, then finish.
template <int DH, bool STAGED>
struct Tiles {
    TileStream<DH, 2, 2> stream;
    __device__ __forceinline__ Tiles(const Bf16Head& a, const Bf16Head& b, uint4* smem, int, int)
        : stream{smem, {a, b}, 0} {}
    __device__ __forceinline__ void begin(int first, int end) { stream.begin(first, end); }
    __device__ __forceinline__ void enter(int r0, int end) { stream.enter(r0, end); }
    __device__ __forceinline__ void leave(int r0, int end) { stream.leave(r0, end); }
    __device__ __forceinline__ void finish() { cp_async_wait<0>(); }
    // Operand n (0 or 1) of tile r0.
    __device__ __forceinline__ TileRows<DH> rows(int n, int r0) const { return stream.rows(n, r0); }
};

template <int DH>
struct Tiles<DH, false> {
    Bf16Head a, b;
    int g, t;
    __device__ __forceinline__ Tiles(const Bf16Head& a_, const Bf16Head& b_, uint4*, int g_, int t_)
        : a(a_), b(b_), g(g_), t(t_) {}
    __device__ __forceinline__ void begin(int, int) {}
    __device__ __forceinline__ void enter(int, int) {}
    __device__ __forceinline__ void leave(int, int) {}
    __device__ __forceinline__ void finish() {}
    __device__ __forceinline__ GlobalRows rows(int n, int) const { return {n == 0 ? a : b, g, t}; }
};

// Shared memory of a staged kernel: two operands, two stages (16 KB at d 32, 32 KB at d 64).
#define MMA_STAGED_SMEM(DH) (2 * 2 * MMA_KEY_TILE * (DH) / 8)

// The block-wide [lo, hi) of the rows' ranges [lo_row, hi_row) (empty rows excluded), tile-aligned below.
__device__ __forceinline__ int2 block_span(int lo, int hi) {
    __shared__ int span[2];
    if (threadIdx.x == 0) {
        span[0] = INT_MAX;
        span[1] = 0;
    }
    __syncthreads();
    if (lo < hi) {
        atomicMin(&span[0], lo);
        atomicMax(&span[1], hi);
    }
    __syncthreads();
    const int2 r = make_int2(span[0] / MMA_KEY_TILE * MMA_KEY_TILE, span[1]);
    __syncthreads();
    return r;
}

// The key tiles a block walks: for staged kernels the union of its warps' spans (every warp must take part
// in every tile's copy), for the simple ones the warp's own span (tile-aligned below).
template <bool STAGED>
__device__ __forceinline__ int2 tile_span(int2 warp_span, int lane) {
    if constexpr (STAGED)
        return block_span(lane == 0 ? warp_span.x : 0, lane == 0 ? warp_span.y : 0);
    else
        return make_int2(warp_span.x / MMA_KEY_TILE * MMA_KEY_TILE, warp_span.y);
}

// ---------------------------------------------------------------------------------------------------------------
// Forward: a warp's 16 queries against key tiles of MMA_KEY_TILE, online softmax in exp2 form; O and the row
// sums accumulate in f32, the probabilities enter P·V rounded to bf16. The block walks the union of its rows'
// key ranges; a tile outside a warp's own rows is fully masked for it and changes nothing.
template <int DH, bool STAGED>
__device__ __forceinline__ void attention_mma_fwd(const __nv_bfloat16* q, const __nv_bfloat16* kv,
                                                  float* __restrict__ out, float* __restrict__ lse, uint4* smem,
                                                  ATT_PARAMS) {
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
    const int2 wspan = warp_key_span(lo, hi);
    const int2 span = tile_span<STAGED>(wspan, lane);

    const RowFrags<DH, (DH <= 64), Bf16Head> qf(heads.q, r0, g, t);
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float m[2] = {MMA_NEG_INF, MMA_NEG_INF}, l[2] = {0.0f, 0.0f};  // l: this lane's part of the row sum

    Tiles<DH, STAGED> tiles(heads.k, heads.v, smem, g, t);
    tiles.begin(span.x, span.y);
    for (int k0 = span.x; k0 < span.y; k0 += MMA_KEY_TILE) {
        tiles.enter(k0, span.y);
        const auto K = tiles.rows(0, k0), V = tiles.rows(1, k0);
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                uint32_t qa[4], bk[2];
                qf.get(kc, qa);
                K.b_rows(bk, kc * 16, k0 + nt * 8);
                mma_bf16(s[nt], qa, bk);
            }
        }
        // Tiles are empty (not walked), full (every row of the warp sees every key: no masking code) or partial.
        if (__all_sync(0xffffffffu, sees_all(lo, hi, k0, MMA_KEY_TILE)))
            online_softmax_tile<DH, false>(s, lo, hi, k0, r0, g, t, bh, m, l, o, ATT_ARGS);
        else
            online_softmax_tile<DH, true>(s, lo, hi, k0, r0, g, t, bh, m, l, o, ATT_ARGS);
#pragma unroll
        for (int kk = 0; kk < MMA_KEY_TILE / 16; ++kk) {
            uint32_t pa[4];
            frag_a_from_c(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                uint32_t bv[2];
                V.b_cols(bv, k0 + kk * 16, dt * 8);
                mma_bf16(o[dt], pa, bv);
            }
        }
        tiles.leave(k0, span.y);
    }
    tiles.finish();
    store_forward<DH>(o, m, l, out, lse, r0, g, t, b, h, bh, B, H, tq, dh);
}

// The backward's two score-sized products over all DH columns, 16 rows by the 16 columns n0 .. n0 + 15:
// x = A·Bᵀ and y = C·Dᵀ, with A, C a warp's row fragments and B, D rows of a B-operand source (dK/dV:
// Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ; dQ: S = Q·Kᵀ and dP = dO·Vᵀ).
template <int DH, class RowsA, class SourceB, class RowsC, class SourceD>
__device__ __forceinline__ void paired_products(float (&x)[2][4], const RowsA& a_rows, const SourceB& b_src,
                                                float (&y)[2][4], const RowsC& c_rows, const SourceD& d_src,
                                                int n0) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) x[nt][e] = y[nt][e] = 0.0f;
#pragma unroll
        for (int kc = 0; kc < DH / 16; ++kc) {
            uint32_t a[4], b[2];
            a_rows.get(kc, a);
            b_src.b_rows(b, kc * 16, n0 + nt * 8);
            mma_bf16(x[nt], a, b);
            c_rows.get(kc, a);
            d_src.b_rows(b, kc * 16, n0 + nt * 8);
            mma_bf16(y[nt], a, b);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward's dropout mask, made once for both tuned backward kernels: bit k of word w of row r
// (= (b·H + h)·Tq + i) is whether probability (r, 32w + k) is kept. Each thread makes one word from the four words of every Philox
// block it covers (about 8 calls for 32 elements; the CPU's `DropoutMask::factor` draws the same bits).
extern "C" __global__ void attention_keep_bits(unsigned* __restrict__ keep, long rows, int tk,
                                               const unsigned long long* seed_ptr, unsigned threshold) {
    const unsigned long long seed = *seed_ptr;
    const int words = (tk + 31) / 32;
    for (long w = blockIdx.x * (long)blockDim.x + threadIdx.x; w < rows * words; w += (long)gridDim.x * blockDim.x) {
        const long row = w / words;
        const int j0 = (int)(w - row * words) * 32;
        unsigned bits = 0;
        uint4 block = make_uint4(0, 0, 0, 0);
        unsigned long long current = ~0ull;
        for (int k = 0; k < 32 && j0 + k < tk; ++k) {
            const unsigned long long n = (unsigned long long)row * tk + j0 + k;
            if (n >> 2 != current) {
                current = n >> 2;
                block = philox4(seed, current);
            }
            bits |= (unsigned)(word(block, (int)(n & 3)) >= threshold) << k;
        }
        keep[w] = bits;
    }
}

// The backward's dropout factor of probability p = P(i, j) of head bh (1 without dropout; p = 0 needs none):
// from attention_keep_bits's mask in the tuned kernels; in the simple ones from Philox, one call per element
// (in their registers the mask's loads cost spills at d 32 and 128, where Philox's arithmetic does not).
template <bool FROM_BITS>
__device__ __forceinline__ float dropout_of(float p, const unsigned* keep, int bh, int i, int j, ATT_PARAMS) {
    if (!use_dropout || p == 0.0f) return 1.0f;
    const unsigned long long row = (unsigned long long)bh * tq + i;
    if constexpr (FROM_BITS)
        return (keep[row * ((tk + 31) / 32) + j / 32] >> (j % 32)) & 1u ? drop_scale : 0.0f;
    else
        return dropout_factor(attention_dropout_seed, row * tk + j, threshold, drop_scale);
}

// ---------------------------------------------------------------------------------------------------------------
// Backward, dK and dV: a warp's 16 keys against the queries that see the block's keys, in tiles of
// MMA_KEY_TILE (16 at a time). With P recomputed from the log-sum-exp: dV += (P ∘ drop)ᵀ·dO, dPᵀ = V·dOᵀ,
// dS = P ∘ (dP ∘ drop − D), dK += dSᵀ·Q (times the scale at the end). dO comes rounded to bf16. The output
// columns go in slices of at most MMA_OUT_COLS (d_head 128: two passes over the queries, P and dS
// recomputed), so that the accumulators fit in registers beside K's and V's fragments.
template <int DH, bool STAGED>
__device__ __forceinline__ void attention_mma_bwd_dkv(const __nv_bfloat16* q, const __nv_bfloat16* kv,
                                                      const __nv_bfloat16* dout, const float* __restrict__ lse,
                                                      const float* __restrict__ dvec,
                                                      const unsigned* __restrict__ keep, float* __restrict__ dkv,
                                                      uint4* smem, ATT_PARAMS) {
    constexpr int OUT = DH < MMA_OUT_COLS ? DH : MMA_OUT_COLS, DT = OUT / 8;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, warp = threadIdx.x / 32;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const Heads heads(q, kv, b, h, ATT_ARGS);
    const int W = H * dh;
    const Bf16Head dO = {dout + (long long)b * W + h * dh, (long long)B * W, tq, dh};
    const int jb = blockIdx.x * (MMA_WARPS * MMA_ROWS), j0 = jb + warp * MMA_ROWS;
    const RowFrags<DH, (DH <= 64), Bf16Head> kf(heads.k, j0, g, t), vf(heads.v, j0, g, t);

    // The queries that see any of the block's keys: contiguous, as every mask's key range only moves
    // forward with the query.
    int first = INT_MAX, last = 0;
    for (int i = threadIdx.x; i < tq; i += MMA_WARPS * 32) {
        const int2 r = row_range(mask_kind, mask_param, i, tq, tk);
        if (r.x < r.y && r.x < jb + MMA_WARPS * MMA_ROWS && r.y > jb) {
            first = min(first, i);
            last = max(last, i + 1);
        }
    }
    // (Staged only: the simple kernel walks every query tile, its warps skipping what they do not see; the
    // block-wide span costs it registers.)
    const int2 span = STAGED ? block_span(first, last) : make_int2(0, tq);

    for (int c0 = 0; c0 < DH; c0 += OUT) {
        float dk[DT][4], dv[DT][4];
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.0f;

        Tiles<DH, STAGED> tiles(heads.q, dO, smem, g, t);
        tiles.begin(span.x, span.y);
        for (int q0 = span.x; q0 < span.y; q0 += MMA_KEY_TILE) {
            tiles.enter(q0, span.y);
            const auto Q = tiles.rows(0, q0), DO = tiles.rows(1, q0);
            // One 16-query slice at a time (unrolling these would hold four slices' registers at once).
#pragma unroll 1
            for (int i0 = q0; i0 < q0 + MMA_KEY_TILE; i0 += 16) {
                // Skip 16 queries that see none of this warp's keys (lanes 0..15 test one query each).
                bool hit = false;
                if (lane < 16) {
                    const int2 r = row_range(mask_kind, mask_param, i0 + lane, tq, tk);
                    hit = r.x < r.y && r.x < j0 + MMA_ROWS && r.y > j0;
                }
                if (!__any_sync(0xffffffffu, hit)) continue;

                float st[2][4], dpt[2][4];
                paired_products<DH>(st, kf, Q, dpt, vf, DO, i0);
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
                            const float f = dropout_of<STAGED>(p, keep, bh, i, j, ATT_ARGS);
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
                    DO.b_cols(bd, i0, c0 + dt * 8);
                    mma_bf16(dv[dt], pa, bd);
                    Q.b_cols(bq, i0, c0 + dt * 8);
                    mma_bf16(dk[dt], sa, bq);
                }
            }
            tiles.leave(q0, span.y);
        }
        tiles.finish();

#pragma unroll
        for (int row = 0; row < 2; ++row) {
            const int j = j0 + g + 8 * row;
            if (j >= tk) continue;
            const long long at = ((long long)j * B + b) * kv_stride + h * dh;
            store_c_row(dkv + k_off + at, dk, row, c0, t, dh, scale);
            store_c_row(dkv + v_off + at, dv, row, c0, t, dh, 1.0f);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward, dQ: a warp's 16 queries against the block's key tiles of MMA_KEY_TILE (16 keys at a time):
// dP = dO·Vᵀ, dS = P ∘ (dP ∘ drop − D), dQ += dS·K (times the scale at the end); output columns in slices of
// at most MMA_OUT_COLS, as dK/dV.
template <int DH, bool STAGED>
__device__ __forceinline__ void attention_mma_bwd_dq(const __nv_bfloat16* q, const __nv_bfloat16* kv,
                                                     const __nv_bfloat16* dout, const float* __restrict__ lse,
                                                     const float* __restrict__ dvec,
                                                     const unsigned* __restrict__ keep, float* __restrict__ dq,
                                                     uint4* smem, ATT_PARAMS) {
    constexpr int OUT = DH < MMA_OUT_COLS ? DH : MMA_OUT_COLS, DT = OUT / 8;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, warp = threadIdx.x / 32;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const Heads heads(q, kv, b, h, ATT_ARGS);
    const int W = H * dh;
    const Bf16Head dO = {dout + (long long)b * W + h * dh, (long long)B * W, tq, dh};
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
    const int2 wspan = warp_key_span(lo, hi);
    const int2 span = tile_span<STAGED>(wspan, lane);

    const RowFrags<DH, true, Bf16Head> qf(heads.q, r0, g, t);
    const RowFrags<DH, (DH <= 64), Bf16Head> df(dO, r0, g, t);

    for (int c0 = 0; c0 < DH; c0 += OUT) {
        float acc[DT][4];
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;

        Tiles<DH, STAGED> tiles(heads.k, heads.v, smem, g, t);
        tiles.begin(span.x, span.y);
        for (int kt = span.x; kt < span.y; kt += MMA_KEY_TILE) {
            tiles.enter(kt, span.y);
            const auto K = tiles.rows(0, kt), V = tiles.rows(1, kt);
            // One 16-key slice at a time (unrolling these would hold four slices' registers at once).
#pragma unroll 1
            for (int k0 = kt; k0 < kt + MMA_KEY_TILE; k0 += 16) {
                if (k0 + 16 <= wspan.x || k0 >= wspan.y) continue;  // none of this warp's rows sees these keys
                // A slice every row sees whole needs no mask.
                const bool full = __all_sync(0xffffffffu, sees_all(lo, hi, k0, 16));
                float s[2][4], dp[2][4];
                paired_products<DH>(s, qf, K, dp, df, V, k0);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int row = e / 2, i = r0 + g + 8 * row, j = k0 + nt * 8 + 2 * t + (e & 1);
                        const bool visible = full || (j >= lo[row] && j < hi[row]);
                        const float p = visible ? exp2f(s[nt][e] * scale_log2 - lse2[row]) : 0.0f;
                        const float f = dropout_of<STAGED>(p, keep, bh, i, j, ATT_ARGS);
                        dp[nt][e] = p * (dp[nt][e] * f - d_row[row]);  // dS
                    }
                uint32_t sa[4];
                frag_a_from_c(sa, dp[0], dp[1]);
#pragma unroll
                for (int dt = 0; dt < DT; ++dt) {
                    uint32_t bk[2];
                    K.b_cols(bk, k0, c0 + dt * 8);
                    mma_bf16(acc[dt], sa, bk);
                }
            }
            tiles.leave(kt, span.y);
        }
        tiles.finish();

#pragma unroll
        for (int row = 0; row < 2; ++row) {
            const int i = r0 + g + 8 * row;
            if (i >= tq) continue;
            store_c_row(dq + q_off + ((long long)i * B + b) * q_stride + h * dh, acc, row, c0, t, dh, scale);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points. The simple version for every head-dimension bucket (dh <= 32, <= 64, <= 128; columns past dh
// are zeros in the fragments); the tuned (staged) one for d 32 and 64, where its tiles fit in 48 KB of static
// shared memory beside the registers (d 128 keeps the simple one). 128 threads (MMA_WARPS warps of MMA_ROWS
// rows); grids in src/ops/attention/cuda.rs. dout is dO rounded to bf16.
#define MMA_ENTRIES(D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                                 \
        attention_mma_fwd_d##D##_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* out, float* lse, \
                                      ATT_PARAMS) {                                                             \
        attention_mma_fwd<D, false>(q, kv, out, lse, nullptr, ATT_ARGS);                                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                                 \
        attention_mma_bwd_dkv_d##D##_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv,                     \
                                          const __nv_bfloat16* dout, const float* lse, const float* dvec,       \
                                          const unsigned* keep, float* dkv, ATT_PARAMS) {                       \
        attention_mma_bwd_dkv<D, false>(q, kv, dout, lse, dvec, keep, dkv, nullptr, ATT_ARGS);                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                                 \
        attention_mma_bwd_dq_d##D##_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv,                      \
                                         const __nv_bfloat16* dout, const float* lse, const float* dvec,        \
                                         const unsigned* keep, float* dq, ATT_PARAMS) {                         \
        attention_mma_bwd_dq<D, false>(q, kv, dout, lse, dvec, keep, dq, nullptr, ATT_ARGS);                     \
    }

MMA_ENTRIES(32)
MMA_ENTRIES(64)
MMA_ENTRIES(128)

// The tuned entry points, written out (the ENTRIES macros' instances are every bucket).
#define MMA_TUNED(D, KERNEL, ...)                                                                              \
    __shared__ __align__(16) uint4 smem[MMA_STAGED_SMEM(D)];                                                   \
    KERNEL<D, true>(__VA_ARGS__, smem, ATT_ARGS);
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_fwd_tuned_d32_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* out, float* lse,
                                     ATT_PARAMS) {
    MMA_TUNED(32, attention_mma_fwd, q, kv, out, lse)
}
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_fwd_tuned_d64_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* out, float* lse,
                                     ATT_PARAMS) {
    MMA_TUNED(64, attention_mma_fwd, q, kv, out, lse)
}
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_bwd_dkv_tuned_d32_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, const __nv_bfloat16* dout,
                                         const float* lse, const float* dvec, const unsigned* keep, float* dkv,
                                         ATT_PARAMS) {
    MMA_TUNED(32, attention_mma_bwd_dkv, q, kv, dout, lse, dvec, keep, dkv)
}
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_bwd_dkv_tuned_d64_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, const __nv_bfloat16* dout,
                                         const float* lse, const float* dvec, const unsigned* keep, float* dkv,
                                         ATT_PARAMS) {
    MMA_TUNED(64, attention_mma_bwd_dkv, q, kv, dout, lse, dvec, keep, dkv)
}
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_bwd_dq_tuned_d32_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, const __nv_bfloat16* dout,
                                        const float* lse, const float* dvec, const unsigned* keep, float* dq,
                                        ATT_PARAMS) {
    MMA_TUNED(32, attention_mma_bwd_dq, q, kv, dout, lse, dvec, keep, dq)
}
extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_bwd_dq_tuned_d64_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, const __nv_bfloat16* dout,
                                        const float* lse, const float* dvec, const unsigned* keep, float* dq,
                                        ATT_PARAMS) {
    MMA_TUNED(64, attention_mma_bwd_dq, q, kv, dout, lse, dvec, keep, dq)
}
