// Rotary position embedding (RoPE, half-split pairing as in GPT-NeoX / LLaMA) over x[seq, batch, heads·d_head],
// f32. CPU half and the scheme: src/ops/rotary.rs.
//
// Pair i < d_head/2 of every head at position t is (x[i], x[i + d_head/2]), rotated by sign·t·θ_i with
// θ_i = 10000^(−2i/d_head): (a, b) → (a·c − b·s, a·s + b·c), c = cos, s = sign·sin. sign = +1 is forward,
// −1 backward (the transpose). The angle, its cosine and sine are computed in double and only then rounded to
// f32, as on the CPU: once per (position, pair) into a table (rotary_table_f32), which every head and batch
// row then reads, not once per element. The products are __fmul_rn so that no FMA contraction changes the
// roundings (the CPU computes a·c − b·s in f32 with two rounded products).

// table[2·(t·half + i)] = c, table[2·(t·half + i) + 1] = s, for t < seq and i < half = d_head/2, of the angle
// at position first + t (first > 0: the new rows of incremental decoding).
extern "C" __global__ void rotary_table_f32(float* table, long seq, long first, int d_head, double sign) {
    const int half = d_head / 2;
    for (long k = blockIdx.x * (long)blockDim.x + threadIdx.x; k < seq * half; k += (long)gridDim.x * blockDim.x) {
        const long t = k / half;
        const int i = (int)(k - t * half);
        const double inv_freq = pow(10000.0, -(double)(2 * i) / (double)d_head);
        double sn, cs;
        sincos((double)(first + t) * inv_freq, &sn, &cs);
        table[2 * k] = (float)cs;
        table[2 * k + 1] = (float)(sign * sn);
    }
}

// In place: heads 0..rotated of each of the batch rows (row_heads heads each) of every position. Positions are
// grid-strided over blockIdx.y and the rotated pairs (batch · rotated · d_head/2 of them) over x.
extern "C" __global__ void rotary_f32(float* x, const float* __restrict__ table, long seq, long batch,
                                      int row_heads, int rotated, int d_head) {
    const int half = d_head / 2;
    const long row = batch * row_heads * d_head;  // elements per position
    const long row_pairs = batch * rotated * half;
    for (long t = blockIdx.y; t < seq; t += gridDim.y) {
        for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < row_pairs;
             j += (long)gridDim.x * blockDim.x) {
            const long head = j / half;  // batch row · rotated + head
            const int i = (int)(j - head * half);
            const long b = head / rotated, hh = head - b * rotated;
            const float c = table[2 * (t * half + i)], s = table[2 * (t * half + i) + 1];
            const long ia = t * row + (b * row_heads + hh) * d_head + i, ib = ia + half;
            const float a = x[ia], bv = x[ib];
            x[ia] = __fmul_rn(a, c) - __fmul_rn(bv, s);
            x[ib] = __fmul_rn(a, s) + __fmul_rn(bv, c);
        }
    }
}
