// Fused multi-head attention, f32, flash-style: forward with an online softmax that keeps each row's logsumexp,
// backward in the FlashAttention-2 manner (recompute P tile by tile from q, k and the logsumexp). No Tq x Tk
// matrix ever reaches global memory, and no float atomics are used: every output element is summed by one
// thread in a fixed order, so results have the same bits on every run.
// CPU half: src/ops/attention/ (mod.rs: the maths and the layouts; cpu.rs: the reference).
//
// Layouts: out, dout [Tq, B, H*dh] (row t*B + b, columns h*dh ..); lse, D [B, H, Tq]. q sits in rows of q_stride
// floats from column q_off, k and v in one buffer kv with rows of kv_stride floats from columns k_off and v_off
// (q, k and v of self-attention side by side in one [T, B, 3*H*dh] buffer, or q alone and k, v side by side
// for cross-attention); dq, dk and dv are written in the same places of their own buffers (dq and dkv, which
// are one buffer when q and kv are).
//
// Every kernel has 128 threads in 16 row groups of 8 lanes: thread t has row group rg = t / 8 and column
// lane cg = t % 8 (the 8 lanes of a row group are consecutive lanes of one warp, so row reductions are three
// shuffles). A block keeps one tile of rows resident (queries for forward and dQ, keys for dK/dV) and streams
// tiles of the other side through shared memory. For a product of a resident tile A and a streamed tile Bt,
// thread (rg, cg) owns rows rg + 16*m of A and rows cg + 8*n of Bt, and for outputs of width dh it owns the
// columns 4*(cg + 8*u) .. +3. The head dimension is a template parameter DH in {32, 64, 128} (the runtime dh
// may be smaller: columns dh .. DH are zero in shared memory and never written out).
//
// Shared-memory tiles are [rows][DH] with their float4 chunks XOR-swizzled by (row & 7), so that both the
// row-dot products (8 different rows at the same chunk) and the row reads of the accumulations (one row, 8
// consecutive chunks) hit 32 distinct banks without padding. Every block stays within 48 KB of static shared
// memory.
#include "attention_common.cuh"

#define ATT_THREADS 128                      // src/device/cuda/kernels.rs names it too (held equal by a test)
#define ATT_LANES 8                          // column lanes per row group
#define ATT_GROUPS (ATT_THREADS / ATT_LANES) // 16 row groups
#define ATT_NEG_INF (-__int_as_float(0x7f800000))

// Whether the rows [r0, r0 + ROWS) of the other side intersect [c0, c0 + COLS) anywhere, for the whole block
// (the answer is uniform). This is also a __syncthreads(): callers rely on it to separate the previous tile's
// reads of shared memory from the next tile's writes. `rows_are_queries`: the rows are queries and the range
// is a key range (forward, dQ); otherwise the rows are keys and each query column's range is tested.
template <int ROWS, int COLS>
__device__ __forceinline__ bool block_tile_hit(bool rows_are_queries, int kind, int param, int r0, int c0,
                                               int tq, int tk) {
    bool hit = false;
    if (rows_are_queries) {
        // Queries r0 + t against keys [c0, c0 + COLS).
        for (int t = threadIdx.x; t < ROWS; t += ATT_THREADS) {
            const int2 r = row_range(kind, param, r0 + t, tq, tk);
            hit |= r.x < r.y && r.x < c0 + COLS && r.y > c0;
        }
    } else {
        // Queries c0 + t against keys [r0, r0 + ROWS).
        for (int t = threadIdx.x; t < COLS; t += ATT_THREADS) {
            const int2 r = row_range(kind, param, c0 + t, tq, tk);
            hit |= r.x < r.y && r.x < r0 + ROWS && r.y > r0;
        }
    }
    return __syncthreads_or(hit) != 0;
}

// Offset of element (r, d) in a swizzled [rows][DH] tile.
template <int DH>
__device__ __forceinline__ int swz(int r, int d) {
    return r * DH + ((((d >> 2) ^ (r & 7)) << 2) | (d & 3));
}

// dst[r][d] = src row (row0 + r), head columns hoff + d, for row0 + r < nrows and d < dh; 0 elsewhere.
// src is [nrows, B, W]; consecutive threads read consecutive columns of a row (coalesced).
template <int DH, int ROWS>
__device__ __forceinline__ void load_tile(float* __restrict__ dst, const float* __restrict__ src, int row0,
                                          int nrows, int B, int b, int W, int hoff, int dh) {
    static_assert((ROWS * DH) % ATT_THREADS == 0, "tile must split evenly over the block");
#pragma unroll 8
    for (int it = 0; it < ROWS * DH / ATT_THREADS; ++it) {
        const int e = it * ATT_THREADS + threadIdx.x;
        const int r = e / DH, d = e % DH;
        const int t = row0 + r;
        float x = 0.0f;
        if (t < nrows && d < dh) x = __ldg(src + ((long long)t * B + b) * W + hoff + d);
        dst[swz<DH>(r, d)] = x;
    }
}

// acc[m][n] = Σ_d a[rg + 16m][d] · bt[cg + 8n][d]  (a: TM*16 rows, bt: TN*8 rows, both swizzled tiles).
template <int DH, int TM, int TN>
__device__ __forceinline__ void tile_dot(const float* __restrict__ a, const float* __restrict__ bt, int rg, int cg,
                                         float (&acc)[TM][TN]) {
#pragma unroll
    for (int m = 0; m < TM; ++m)
#pragma unroll
        for (int n = 0; n < TN; ++n) acc[m][n] = 0.0f;
    // Rows rg + 16m all have (row & 7) == (rg & 7), rows cg + 8n have (row & 7) == cg.
    const int ka = rg & 7, kb = cg;
#pragma unroll 4
    for (int c4 = 0; c4 < DH / 4; ++c4) {
        float4 x[TM], y[TN];
#pragma unroll
        for (int m = 0; m < TM; ++m)
            x[m] = *reinterpret_cast<const float4*>(a + (rg + ATT_GROUPS * m) * DH + ((c4 ^ ka) << 2));
#pragma unroll
        for (int n = 0; n < TN; ++n)
            y[n] = *reinterpret_cast<const float4*>(bt + (cg + ATT_LANES * n) * DH + ((c4 ^ kb) << 2));
#pragma unroll
        for (int m = 0; m < TM; ++m)
#pragma unroll
            for (int n = 0; n < TN; ++n) {
                float s = acc[m][n];
                s = fmaf(x[m].x, y[n].x, s);
                s = fmaf(x[m].y, y[n].y, s);
                s = fmaf(x[m].z, y[n].z, s);
                s = fmaf(x[m].w, y[n].w, s);
                acc[m][n] = s;
            }
    }
}

// acc[m][u] (columns 4(cg + 8u) .. +3 of row rg + 16m) += Σ_c t[rg + 16m][c] · bt[c][those columns], over the
// TN*8 rows c of bt. Value t[row][c = s + 8n] lives in lane (row group's first lane + s) as its t[m][n]: it is
// fetched with a shuffle. All 32 lanes of every warp must call this together.
template <int DH, int TM, int TN>
__device__ __forceinline__ void tile_acc(const float (&t)[TM][TN], const float* __restrict__ bt, int cg,
                                         float4 (&acc)[TM][DH / 32]) {
    constexpr int U = DH / 32;
    const int group_lane0 = (threadIdx.x & 31) & ~(ATT_LANES - 1);
#pragma unroll
    for (int n = 0; n < TN; ++n) {
#pragma unroll
        for (int s = 0; s < ATT_LANES; ++s) {
            const int c = s + ATT_LANES * n; // (c & 7) == s
            float tv[TM];
#pragma unroll
            for (int m = 0; m < TM; ++m) tv[m] = __shfl_sync(0xffffffffu, t[m][n], group_lane0 + s);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float4 y = *reinterpret_cast<const float4*>(bt + c * DH + (((cg + ATT_LANES * u) ^ s) << 2));
#pragma unroll
                for (int m = 0; m < TM; ++m) {
                    acc[m][u].x = fmaf(tv[m], y.x, acc[m][u].x);
                    acc[m][u].y = fmaf(tv[m], y.y, acc[m][u].y);
                    acc[m][u].z = fmaf(tv[m], y.z, acc[m][u].z);
                    acc[m][u].w = fmaf(tv[m], y.w, acc[m][u].w);
                }
            }
        }
    }
}

// dst row (row, columns hoff + 4(cg + 8u) .. +3) = factor · acc[u], for the columns < dh.
template <int DH>
__device__ __forceinline__ void store_row(float* __restrict__ dst, long long row_off, int cg, int dh,
                                          const float4 (&acc)[DH / 32], float factor) {
#pragma unroll
    for (int u = 0; u < DH / 32; ++u) {
        const int c = 4 * (cg + ATT_LANES * u);
        const float v[4] = {acc[u].x * factor, acc[u].y * factor, acc[u].z * factor, acc[u].w * factor};
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (c + e < dh) dst[row_off + c + e] = v[e];
    }
}

__device__ __forceinline__ float max_over_row_group(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
}

__device__ __forceinline__ float sum_over_row_group(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v + __shfl_xor_sync(0xffffffffu, v, 4);
}

// ---------------------------------------------------------------------------------------------------------------
// Forward. Block (Q tile of BQ queries, b*H + h). SEP: K and V get separate buffers (else V reuses K's after
// the scores are done). Shared memory: (BQ + (SEP ? 2 : 1) * BK) * DH floats.
template <int DH, int BQ, int BK, bool SEP>
__device__ __forceinline__ void attention_fwd(const float* __restrict__ q, const float* __restrict__ kv,
                                              float* __restrict__ out, float* __restrict__ lse, ATT_PARAMS) {
    constexpr int TM = BQ / ATT_GROUPS, TN = BK / ATT_LANES, U = DH / 32;
    static_assert(TM * ATT_GROUPS == BQ && TN * ATT_LANES == BK, "tile sizes");
    __shared__ __align__(16) float smem[(BQ + (SEP ? 2 : 1) * BK) * DH];
    float* q_s = smem;
    float* k_s = smem + BQ * DH;
    float* v_s = SEP ? k_s + BK * DH : k_s;

    const int tid = threadIdx.x, cg = tid % ATT_LANES, rg = tid / ATT_LANES;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int W = H * dh, hoff = h * dh;
    const float *k = kv + k_off, *v = kv + v_off;
    // Highest Q tiles first: under a causal mask they are the longest, so the short ones fill the tail.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;

    load_tile<DH, BQ>(q_s, q + q_off, q0, tq, B, b, q_stride, hoff, dh);

    int lo[TM], hi[TM];
    float row_max[TM], row_sum[TM]; // row_sum: this lane's part of the row's Σ exp(s - row_max)
    float4 o[TM][U];
#pragma unroll
    for (int m = 0; m < TM; ++m) {
        const int2 r = row_range(mask_kind, mask_param, q0 + rg + ATT_GROUPS * m, tq, tk);
        lo[m] = r.x;
        hi[m] = r.y;
        row_max[m] = ATT_NEG_INF;
        row_sum[m] = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) o[m][u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }

    for (int k0 = 0; k0 < tk; k0 += BK) {
        if (!block_tile_hit<BQ, BK>(true, mask_kind, mask_param, q0, k0, tq, tk)) continue;
        load_tile<DH, BK>(k_s, k, k0, tk, B, b, kv_stride, hoff, dh);
        if (SEP) load_tile<DH, BK>(v_s, v, k0, tk, B, b, kv_stride, hoff, dh);
        __syncthreads();

        float s[TM][TN];
        tile_dot<DH, TM, TN>(q_s, k_s, rg, cg, s);
#pragma unroll
        for (int m = 0; m < TM; ++m) {
            float tile_max = ATT_NEG_INF;
#pragma unroll
            for (int n = 0; n < TN; ++n) {
                const int j = k0 + cg + ATT_LANES * n;
                s[m][n] = (j >= lo[m] && j < hi[m]) ? s[m][n] * scale : ATT_NEG_INF;
                tile_max = fmaxf(tile_max, s[m][n]);
            }
            const float new_max = fmaxf(row_max[m], max_over_row_group(tile_max));
            // Nothing visible yet: no rescale, and every p below is 0 (avoids -inf - -inf).
            const float alpha = new_max == ATT_NEG_INF ? 1.0f : expf(row_max[m] - new_max);
            row_max[m] = new_max;
            const long long drop_base = ((long long)bh * tq + (q0 + rg + ATT_GROUPS * m)) * tk;
            float part = 0.0f;
#pragma unroll
            for (int n = 0; n < TN; ++n) {
                float p = s[m][n] == ATT_NEG_INF ? 0.0f : expf(s[m][n] - new_max);
                part += p;
                // The normaliser excludes dropout; the output takes P ∘ drop.
                if (use_dropout && p != 0.0f)
                    p *= dropout_factor(attention_dropout_seed, (uint64_t)(drop_base + k0 + cg + ATT_LANES * n), threshold,
                                        drop_scale);
                s[m][n] = p;
            }
            row_sum[m] = row_sum[m] * alpha + part;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                o[m][u].x *= alpha;
                o[m][u].y *= alpha;
                o[m][u].z *= alpha;
                o[m][u].w *= alpha;
            }
        }
        if (!SEP) {
            __syncthreads(); // every thread is done reading K
            load_tile<DH, BK>(v_s, v, k0, tk, B, b, kv_stride, hoff, dh);
            __syncthreads();
        }
        tile_acc<DH, TM, TN>(s, v_s, cg, o);
    }

#pragma unroll
    for (int m = 0; m < TM; ++m) {
        const float l = sum_over_row_group(row_sum[m]);
        const int i = q0 + rg + ATT_GROUPS * m;
        if (i < tq) {
            // l >= 1 when the row sees any key (its maximum contributes exp(0)); 0 when it sees none.
            const bool any = l > 0.0f;
            store_row<DH>(out, ((long long)i * B + b) * W + hoff, cg, dh, o[m], any ? 1.0f / l : 0.0f);
            if (cg == 0) lse[(long long)bh * tq + i] = any ? row_max[m] + logf(l) : 0.0f;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward, step 1: D[b, h, i] = dO_i · O_i. One warp per row, rows grid-strided over warps.
extern "C" __global__ void attention_bwd_dot_f32(const float* __restrict__ dout, const float* __restrict__ out,
                                                 float* __restrict__ dvec, int B, int H, int tq, int dh) {
    const int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    const long long rows = (long long)B * H * tq;
    const int W = H * dh;
    for (long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows;
         row += (long long)gridDim.x * warps_per_block) {
        const long long bh = row / tq;
        const int i = (int)(row % tq), b = (int)(bh / H), h = (int)(bh % H);
        const long long off = ((long long)i * B + b) * W + (long long)h * dh;
        float s = 0.0f;
        for (int d = lane; d < dh; d += 32) s = fmaf(dout[off + d], out[off + d], s);
        s = warp_sum(s);
        if (lane == 0) dvec[row] = s;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward, step 2: dK and dV. Block (K tile of BK keys, b*H + h); K and V stay in shared memory, Q and dO
// tiles stream (SEP: separate buffers; else one buffer holding Q, then dO, then Q again). Thread (rg, cg) owns
// keys rg + 16m and, per Q tile, queries cg + 8n; dK, dV accumulate in registers.
// Shared memory: (2 * BK + (SEP ? 2 : 1) * BQ) * DH floats.
template <int DH, int BK, int BQ, bool SEP>
__device__ __forceinline__ void attention_bwd_dkv(const float* __restrict__ q, const float* __restrict__ kv,
                                                  const float* __restrict__ dout, const float* __restrict__ lse,
                                                  const float* __restrict__ dvec, float* __restrict__ dkv,
                                                  ATT_PARAMS) {
    constexpr int TM = BK / ATT_GROUPS, TN = BQ / ATT_LANES, U = DH / 32;
    static_assert(TM * ATT_GROUPS == BK && TN * ATT_LANES == BQ, "tile sizes");
    __shared__ __align__(16) float smem[(2 * BK + (SEP ? 2 : 1) * BQ) * DH];
    float* k_s = smem;
    float* v_s = smem + BK * DH;
    float* q_s = smem + 2 * BK * DH;
    float* do_s = SEP ? q_s + BQ * DH : q_s;

    const int tid = threadIdx.x, cg = tid % ATT_LANES, rg = tid / ATT_LANES;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int W = H * dh, hoff = h * dh;
    const int k0 = blockIdx.x * BK;
    const float* q_at = q + q_off;

    load_tile<DH, BK>(k_s, kv + k_off, k0, tk, B, b, kv_stride, hoff, dh);
    load_tile<DH, BK>(v_s, kv + v_off, k0, tk, B, b, kv_stride, hoff, dh);

    float4 dk_acc[TM][U], dv_acc[TM][U];
#pragma unroll
    for (int m = 0; m < TM; ++m)
#pragma unroll
        for (int u = 0; u < U; ++u) {
            dk_acc[m][u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            dv_acc[m][u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }

    for (int q0 = 0; q0 < tq; q0 += BQ) {
        if (!block_tile_hit<BK, BQ>(false, mask_kind, mask_param, k0, q0, tq, tk)) continue;
        load_tile<DH, BQ>(q_s, q_at, q0, tq, B, b, q_stride, hoff, dh);
        if (SEP) load_tile<DH, BQ>(do_s, dout, q0, tq, B, b, W, hoff, dh);

        // This thread's query columns: their key ranges, logsumexp and D (rows past tq see nothing).
        int lo[TN], hi[TN];
        float row_lse[TN], row_d[TN];
#pragma unroll
        for (int n = 0; n < TN; ++n) {
            const int i = q0 + cg + ATT_LANES * n;
            const int2 r = row_range(mask_kind, mask_param, i, tq, tk);
            lo[n] = r.x;
            hi[n] = r.y;
            row_lse[n] = i < tq ? lse[(long long)bh * tq + i] : 0.0f;
            row_d[n] = i < tq ? dvec[(long long)bh * tq + i] : 0.0f;
        }
        __syncthreads();

        // P^T[j][i] = exp(k_j · q_i · scale - lse_i) where visible.
        float p[TM][TN];
        tile_dot<DH, TM, TN>(k_s, q_s, rg, cg, p);
#pragma unroll
        for (int m = 0; m < TM; ++m) {
            const int j = k0 + rg + ATT_GROUPS * m;
#pragma unroll
            for (int n = 0; n < TN; ++n)
                p[m][n] = (j >= lo[n] && j < hi[n]) ? expf(p[m][n] * scale - row_lse[n]) : 0.0f;
        }
        if (!SEP) {
            __syncthreads(); // every thread is done reading Q
            load_tile<DH, BQ>(do_s, dout, q0, tq, B, b, W, hoff, dh);
            __syncthreads();
        }

        // dP^T[j][i] = v_j · dO_i; dS = P ∘ (dP ∘ drop − D_i); p becomes P ∘ drop.
        float ds[TM][TN];
        tile_dot<DH, TM, TN>(v_s, do_s, rg, cg, ds);
#pragma unroll
        for (int m = 0; m < TM; ++m) {
            const int j = k0 + rg + ATT_GROUPS * m;
#pragma unroll
            for (int n = 0; n < TN; ++n) {
                float f = 1.0f;
                if (use_dropout && p[m][n] != 0.0f) {
                    const long long idx = ((long long)bh * tq + (q0 + cg + ATT_LANES * n)) * tk + j;
                    f = dropout_factor(attention_dropout_seed, (uint64_t)idx, threshold, drop_scale);
                }
                ds[m][n] = p[m][n] * (ds[m][n] * f - row_d[n]);
                p[m][n] *= f;
            }
        }
        tile_acc<DH, TM, TN>(p, do_s, cg, dv_acc); // dV_j += Σ_i (P ∘ drop)_ij dO_i
        if (!SEP) {
            __syncthreads(); // every thread is done reading dO
            load_tile<DH, BQ>(q_s, q_at, q0, tq, B, b, q_stride, hoff, dh);
            __syncthreads();
        }
        tile_acc<DH, TM, TN>(ds, q_s, cg, dk_acc); // dK_j += Σ_i dS_ij Q_i  (times scale below)
    }

#pragma unroll
    for (int m = 0; m < TM; ++m) {
        const int j = k0 + rg + ATT_GROUPS * m;
        if (j < tk) {
            const long long off = ((long long)j * B + b) * kv_stride + hoff;
            store_row<DH>(dkv + k_off, off, cg, dh, dk_acc[m], scale);
            store_row<DH>(dkv + v_off, off, cg, dh, dv_acc[m], 1.0f);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward, step 3: dQ. Block (Q tile of BQ queries, b*H + h); Q and dO stay in shared memory, K and V tiles
// stream (SEP: separate buffers; else one buffer holding K, then V, then K again). dQ accumulates in registers.
// Shared memory: (2 * BQ + (SEP ? 2 : 1) * BK) * DH floats.
template <int DH, int BQ, int BK, bool SEP>
__device__ __forceinline__ void attention_bwd_dq(const float* __restrict__ q, const float* __restrict__ kv,
                                                 const float* __restrict__ dout, const float* __restrict__ lse,
                                                 const float* __restrict__ dvec, float* __restrict__ dq,
                                                 ATT_PARAMS) {
    constexpr int TM = BQ / ATT_GROUPS, TN = BK / ATT_LANES, U = DH / 32;
    static_assert(TM * ATT_GROUPS == BQ && TN * ATT_LANES == BK, "tile sizes");
    __shared__ __align__(16) float smem[(2 * BQ + (SEP ? 2 : 1) * BK) * DH];
    float* q_s = smem;
    float* do_s = smem + BQ * DH;
    float* k_s = smem + 2 * BQ * DH;
    float* v_s = SEP ? k_s + BK * DH : k_s;

    const int tid = threadIdx.x, cg = tid % ATT_LANES, rg = tid / ATT_LANES;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int W = H * dh, hoff = h * dh;
    const float *k = kv + k_off, *v = kv + v_off;
    // Highest Q tiles first: under a causal mask they are the longest, so the short ones fill the tail.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;

    load_tile<DH, BQ>(q_s, q + q_off, q0, tq, B, b, q_stride, hoff, dh);
    load_tile<DH, BQ>(do_s, dout, q0, tq, B, b, W, hoff, dh);

    int lo[TM], hi[TM];
    float row_lse[TM], row_d[TM];
    float4 dq_acc[TM][U];
#pragma unroll
    for (int m = 0; m < TM; ++m) {
        const int i = q0 + rg + ATT_GROUPS * m;
        const int2 r = row_range(mask_kind, mask_param, i, tq, tk);
        lo[m] = r.x;
        hi[m] = r.y;
        row_lse[m] = i < tq ? lse[(long long)bh * tq + i] : 0.0f;
        row_d[m] = i < tq ? dvec[(long long)bh * tq + i] : 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) dq_acc[m][u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }

    for (int k0 = 0; k0 < tk; k0 += BK) {
        if (!block_tile_hit<BQ, BK>(true, mask_kind, mask_param, q0, k0, tq, tk)) continue;
        load_tile<DH, BK>(k_s, k, k0, tk, B, b, kv_stride, hoff, dh);
        if (SEP) load_tile<DH, BK>(v_s, v, k0, tk, B, b, kv_stride, hoff, dh);
        __syncthreads();

        // P[i][j] = exp(q_i · k_j · scale - lse_i) where visible.
        float p[TM][TN];
        tile_dot<DH, TM, TN>(q_s, k_s, rg, cg, p);
#pragma unroll
        for (int m = 0; m < TM; ++m)
#pragma unroll
            for (int n = 0; n < TN; ++n) {
                const int j = k0 + cg + ATT_LANES * n;
                p[m][n] = (j >= lo[m] && j < hi[m]) ? expf(p[m][n] * scale - row_lse[m]) : 0.0f;
            }
        if (!SEP) {
            __syncthreads(); // every thread is done reading K
            load_tile<DH, BK>(v_s, v, k0, tk, B, b, kv_stride, hoff, dh);
            __syncthreads();
        }

        // dP[i][j] = dO_i · v_j; dS = P ∘ (dP ∘ drop − D_i), in place of dP.
        float ds[TM][TN];
        tile_dot<DH, TM, TN>(do_s, v_s, rg, cg, ds);
#pragma unroll
        for (int m = 0; m < TM; ++m) {
            const long long drop_base = ((long long)bh * tq + (q0 + rg + ATT_GROUPS * m)) * tk;
#pragma unroll
            for (int n = 0; n < TN; ++n) {
                float f = 1.0f;
                if (use_dropout && p[m][n] != 0.0f)
                    f = dropout_factor(attention_dropout_seed, (uint64_t)(drop_base + k0 + cg + ATT_LANES * n), threshold,
                                       drop_scale);
                ds[m][n] = p[m][n] * (ds[m][n] * f - row_d[m]);
            }
        }
        if (!SEP) {
            __syncthreads(); // every thread is done reading V
            load_tile<DH, BK>(k_s, k, k0, tk, B, b, kv_stride, hoff, dh);
            __syncthreads();
        }
        tile_acc<DH, TM, TN>(ds, k_s, cg, dq_acc); // dQ_i += Σ_j dS_ij K_j  (times scale below)
    }

#pragma unroll
    for (int m = 0; m < TM; ++m) {
        const int i = q0 + rg + ATT_GROUPS * m;
        if (i < tq) store_row<DH>(dq + q_off, ((long long)i * B + b) * q_stride + hoff, cg, dh, dq_acc[m], scale);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points, one per head-dimension bucket (dh <= 32, <= 64, <= 128). Grids: forward and dQ
// (ceil(Tq / BQ), B*H), dK/dV (ceil(Tk / BK), B*H); 128 threads. The tile sizes are mirrored in
// src/device/cuda/kernels.rs (`ATT_TILES`, which a test holds to these lines).
//   bucket  forward (BQ, BK, SEP)   dK/dV (BK, BQ, SEP)   dQ (BQ, BK, SEP)    shared memory (KB)
//   32      64, 64, yes             64, 32, yes           64, 32, yes         24 / 24 / 24
//   64      64, 64, yes             64, 32, yes           64, 32, yes         48 / 48 / 48
//   128     64, 32, no              32, 32, no            32, 32, no          48 / 48 / 48
#define ATT_ENTRIES(D, FQ, FK, FSEP, KK, KQ, KSEP, QQ, QK, QSEP)                                                \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 3)                                                 \
        attention_fwd_d##D##_f32(const float* q, const float* kv, float* out, float* lse, ATT_PARAMS) {         \
        attention_fwd<D, FQ, FK, FSEP>(q, kv, out, lse, ATT_ARGS);                                              \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 3)                                                 \
        attention_bwd_dkv_d##D##_f32(const float* q, const float* kv, const float* dout, const float* lse,      \
                                     const float* dvec, float* dkv, ATT_PARAMS) {                               \
        attention_bwd_dkv<D, KK, KQ, KSEP>(q, kv, dout, lse, dvec, dkv, ATT_ARGS);                              \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, 3)                                                 \
        attention_bwd_dq_d##D##_f32(const float* q, const float* kv, const float* dout, const float* lse,       \
                                    const float* dvec, float* dq, ATT_PARAMS) {                                 \
        attention_bwd_dq<D, QQ, QK, QSEP>(q, kv, dout, lse, dvec, dq, ATT_ARGS);                                \
    }

ATT_ENTRIES(32, 64, 64, true, 64, 32, true, 64, 32, true)
ATT_ENTRIES(64, 64, 64, true, 64, 32, true, 64, 32, true)
ATT_ENTRIES(128, 64, 32, false, 32, 32, false, 32, 32, false)
