// LayerNorm over the last dimension of x[rows, d], f32 (biased variance, eps 1e-5). CPU half and the maths:
// src/ops/layernorm.rs. Any d works: each lane of a warp takes columns lane, lane + 32, ...
#include "common.cuh"

#define LN_EPS 1e-5f

// The LayerNorm of one row `xr` whose lane-partial sum is `lane_sum` (each lane holds columns lane, lane + 32,
// ...): two passes, mean then variance, as the CPU half (E[x²] - E[x]² would lose precision for offset inputs).
// y is f32, or bf16 for a GEMM that takes bf16 (rounded to nearest even from the f32 value, as the CPU does).
template <typename Out>
__device__ __forceinline__ void normalize_row(const float* xr, float lane_sum, const float* gamma,
                                              const float* beta, Out* yr, float* mean, float* rstd, int d,
                                              int lane) {
    const float inv_d = 1.0f / d;
    const float mu = warp_sum(lane_sum) * inv_d;
    float sq = 0.0f;
    for (int i = lane; i < d; i += 32) sq += (xr[i] - mu) * (xr[i] - mu);
    const float rs = 1.0f / sqrtf(warp_sum(sq) * inv_d + LN_EPS);
    for (int i = lane; i < d; i += 32) yr[i] = to_out<Out>((xr[i] - mu) * rs * gamma[i] + beta[i]);
    if (lane == 0) {
        *mean = mu;
        *rstd = rs;
    }
}

// One warp per row, rows grid-strided over warps (so `row` is warp-uniform and the shuffles see all lanes).
template <typename Out>
__device__ void layernorm_fwd(const float* x, const float* gamma, const float* beta, Out* y, float* mean,
                              float* rstd, long rows, int d) {
    const int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    for (long row = (long)blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows;
         row += (long)gridDim.x * warps_per_block) {
        const float* xr = x + row * d;
        float sum = 0.0f;
        for (int i = lane; i < d; i += 32) sum += xr[i];
        normalize_row(xr, sum, gamma, beta, y + row * d, mean + row, rstd + row, d, lane);
    }
}

extern "C" __global__ void layernorm_fwd_f32(const float* x, const float* gamma, const float* beta, float* y,
                                             float* mean, float* rstd, long rows, int d) {
    layernorm_fwd(x, gamma, beta, y, mean, rstd, rows, d);
}

extern "C" __global__ void layernorm_fwd_bf16(const float* x, const float* gamma, const float* beta,
                                              __nv_bfloat16* y, float* mean, float* rstd, long rows, int d) {
    layernorm_fwd(x, gamma, beta, y, mean, rstd, rows, d);
}

// The residual add before a pre-norm sublayer and its LayerNorm in one pass: s = x + dropout(branch) (written
// out: the residual stream goes on), y = LayerNorm(s). Dropout as dropout_f32 (element index row·d + column),
// off when use_dropout is 0. The same products and sums as dropout, add and LayerNorm one after another.
template <typename Out>
__device__ void residual_layernorm_fwd(const float* x, const float* branch, float* s, const float* gamma,
                                       const float* beta, Out* y, float* mean, float* rstd, long rows, int d,
                                       unsigned long long seed, unsigned int threshold, float scale,
                                       int use_dropout) {
    const int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    for (long row = (long)blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows;
         row += (long)gridDim.x * warps_per_block) {
        const float *xr = x + row * d, *br = branch + row * d;
        float* sr = s + row * d;
        float sum = 0.0f;
        for (int i = lane; i < d; i += 32) {
            float b = br[i];
            if (use_dropout) b *= dropout_factor(seed, (uint64_t)(row * d + i), threshold, scale);
            const float v = xr[i] + b;
            sr[i] = v;  // read back below by this same lane only
            sum += v;
        }
        normalize_row(sr, sum, gamma, beta, y + row * d, mean + row, rstd + row, d, lane);
    }
}

extern "C" __global__ void residual_layernorm_fwd_f32(const float* x, const float* branch, float* s,
                                                      const float* gamma, const float* beta, float* y,
                                                      float* mean, float* rstd, long rows, int d,
                                                      const unsigned long long* seed, unsigned int threshold,
                                                      float scale, int use_dropout) {
    residual_layernorm_fwd(x, branch, s, gamma, beta, y, mean, rstd, rows, d, read_seed(seed, use_dropout),
                           threshold, scale, use_dropout);
}

extern "C" __global__ void residual_layernorm_fwd_bf16(const float* x, const float* branch, float* s,
                                                       const float* gamma, const float* beta, __nv_bfloat16* y,
                                                       float* mean, float* rstd, long rows, int d,
                                                       const unsigned long long* seed, unsigned int threshold,
                                                       float scale, int use_dropout) {
    residual_layernorm_fwd(x, branch, s, gamma, beta, y, mean, rstd, rows, d, read_seed(seed, use_dropout),
                           threshold, scale, use_dropout);
}

// One row's backward, by one warp: dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)) with g = dy · gamma; with
// Residual, plus dres_r (the gradient that reached the sublayer's input around it), in the same pass; with
// Accumulate, also each column's dy · x̂ and dy added to acc_dg and acc_db (the warp's own sums).
template <bool Residual, bool Accumulate>
__device__ __forceinline__ void layernorm_row_bwd(const float* xr, const float* dyr, const float* gamma, float mu,
                                                  float rs, const float* dres_r, float* dxr, float* acc_dg,
                                                  float* acc_db, int d, int lane) {
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int i = lane; i < d; i += 32) {
        const float x_hat = (xr[i] - mu) * rs;
        const float g = dyr[i] * gamma[i];
        sum_g += g;
        sum_gx += g * x_hat;
        if (Accumulate) {
            acc_dg[i] += dyr[i] * x_hat;
            acc_db[i] += dyr[i];
        }
    }
    const float inv_d = 1.0f / d;
    const float mean_g = warp_sum(sum_g) * inv_d, mean_gx = warp_sum(sum_gx) * inv_d;
    for (int i = lane; i < d; i += 32) {
        const float g = rs * (dyr[i] * gamma[i] - mean_g - (xr[i] - mu) * rs * mean_gx);
        dxr[i] = Residual ? g + dres_r[i] : g;
    }
}

// dx alone, one warp per row (rows grid-strided): for rows too wide for layernorm_bwd_fused.
template <bool Residual>
__device__ void layernorm_bwd_dx(const float* x, const float* gamma, const float* mean, const float* rstd,
                                 const float* dy, const float* dres, float* dx, long rows, int d) {
    const int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    for (long row = (long)blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows;
         row += (long)gridDim.x * warps_per_block)
        layernorm_row_bwd<Residual, false>(x + row * d, dy + row * d, gamma, mean[row], rstd[row],
                                           Residual ? dres + row * d : nullptr, dx + row * d, nullptr, nullptr,
                                           d, lane);
}

extern "C" __global__ void layernorm_bwd_dx_f32(const float* x, const float* gamma, const float* mean,
                                                const float* rstd, const float* dy, float* dx, long rows, int d) {
    layernorm_bwd_dx<false>(x, gamma, mean, rstd, dy, nullptr, dx, rows, d);
}

extern "C" __global__ void layernorm_bwd_dx_residual_f32(const float* x, const float* gamma, const float* mean,
                                                         const float* rstd, const float* dy, const float* dres,
                                                         float* dx, long rows, int d) {
    layernorm_bwd_dx<true>(x, gamma, mean, rstd, dy, dres, dx, rows, d);
}

// The whole backward in one kernel: dx (plus dres with Residual) as layernorm_bwd_dx, and dgamma += Σ dy·x̂,
// dbeta += Σ dy. Each warp takes rows warp, warp + all warps, ... and sums its rows' terms per column in its
// own slice of shared memory (acc[warp][2][d], no atomics); the block adds its warps' slices in warp order
// into part[block][2][d]; the last block to finish (a ticket taken after a fence) adds the blocks' partials in
// block order into dgamma and dbeta and resets the ticket. The grid and block sizes depend only on (rows, d)
// and the compiled kernel's static shared memory, so every sum has the same order on every run. Needs
// 8·d·(warps per block) bytes of dynamic shared memory beside the static `last` flag (16 bytes with nvcc 13):
// the launcher sizes the block from the function's static size so that the two fit in the 48 KiB a launch
// gets (`fused_warps` in src/ops/layernorm.rs), and keeps the kernels below for widths where not even one
// warp's sums fit.
template <bool Residual>
__device__ void layernorm_bwd_fused(const float* x, const float* gamma, const float* mean, const float* rstd,
                                    const float* dy, const float* dres, float* dx, float* part, float* dgamma,
                                    float* dbeta, unsigned* ticket, long rows, int d) {
    extern __shared__ float acc[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps_per_block = blockDim.x / 32;
    float* acc_dg = acc + (long)warp * 2 * d;
    float* acc_db = acc_dg + d;
    for (int i = lane; i < d; i += 32) acc_dg[i] = acc_db[i] = 0.0f;
    for (long row = (long)blockIdx.x * warps_per_block + warp; row < rows; row += (long)gridDim.x * warps_per_block)
        layernorm_row_bwd<Residual, true>(x + row * d, dy + row * d, gamma, mean[row], rstd[row],
                                          Residual ? dres + row * d : nullptr, dx + row * d, acc_dg, acc_db, d,
                                          lane);
    __syncthreads();
    float* block_part = part + (long)blockIdx.x * 2 * d;
    for (int i = threadIdx.x; i < 2 * d; i += blockDim.x) {
        float total = 0.0f;
        for (int w = 0; w < warps_per_block; ++w) total += acc[(long)w * 2 * d + i];
        block_part[i] = total;
    }
    __threadfence();  // this block's partials are visible to every block before its ticket is
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = threadIdx.x; i < 2 * d; i += blockDim.x) {
        float total = 0.0f;
        // __ldcg: read through L2, where the other blocks' partials are (not a stale L1 line).
        for (unsigned b = 0; b < gridDim.x; ++b) total += __ldcg(part + (long)b * 2 * d + i);
        if (i < d) dgamma[i] += total;
        else dbeta[i - d] += total;
    }
    if (threadIdx.x == 0) *ticket = 0;
}

extern "C" __global__ void layernorm_bwd_f32(const float* x, const float* gamma, const float* mean,
                                             const float* rstd, const float* dy, float* dx, float* part,
                                             float* dgamma, float* dbeta, unsigned* ticket, long rows, int d) {
    layernorm_bwd_fused<false>(x, gamma, mean, rstd, dy, nullptr, dx, part, dgamma, dbeta, ticket, rows, d);
}

extern "C" __global__ void layernorm_bwd_residual_f32(const float* x, const float* gamma, const float* mean,
                                                      const float* rstd, const float* dy, const float* dres,
                                                      float* dx, float* part, float* dgamma, float* dbeta,
                                                      unsigned* ticket, long rows, int d) {
    layernorm_bwd_fused<true>(x, gamma, mean, rstd, dy, dres, dx, part, dgamma, dbeta, ticket, rows, d);
}

// The blocks of layernorm_bwd_params_partial_f32: LN_PARAM_COLS columns (blockDim.x), at most LN_PARAM_MAX_LANES
// row lanes (blockDim.y). src/device/cuda/kernels.rs names them too (a test holds them equal).
#define LN_PARAM_COLS 32
#define LN_PARAM_MAX_LANES 32

// Partial dgamma = Σ dy·x̂ and dbeta = Σ dy over chunks of `rows_per_chunk` rows: part[chunk, c]. Block
// (LN_PARAM_COLS columns, blockDim.y ≤ LN_PARAM_MAX_LANES row lanes); row lanes are added in a fixed order, and
// col_sum_add_f32 then adds the chunks in order, so the result has the same bits on every run (no float atomics).
extern "C" __global__ void layernorm_bwd_params_partial_f32(const float* x, const float* mean, const float* rstd,
                                                            const float* dy, float* part_dg, float* part_db,
                                                            long rows, int d, int rows_per_chunk) {
    __shared__ float lane_dg[LN_PARAM_MAX_LANES][LN_PARAM_COLS], lane_db[LN_PARAM_MAX_LANES][LN_PARAM_COLS];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * LN_PARAM_COLS + tx;
    const long chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
    for (long chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
        const long end = min(rows, (chunk + 1) * rows_per_chunk);
        float dg = 0.0f, db = 0.0f;
        if (c < d) {
            for (long r = chunk * rows_per_chunk + ty; r < end; r += blockDim.y) {
                const float g = dy[r * d + c];
                dg += g * ((x[r * d + c] - mean[r]) * rstd[r]);
                db += g;
            }
        }
        lane_dg[ty][tx] = dg;
        lane_db[ty][tx] = db;
        __syncthreads();
        if (ty == 0 && c < d) {
            float tg = 0.0f, tb = 0.0f;
            for (int y = 0; y < blockDim.y; ++y) {
                tg += lane_dg[y][tx];
                tb += lane_db[y][tx];
            }
            part_dg[chunk * d + c] = tg;
            part_db[chunk * d + c] = tb;
        }
        __syncthreads();  // the next chunk reuses lane_dg / lane_db
    }
}
