// Deterministic sum of squares (the global gradient norm), in two stages with a fixed order of additions.
// CPU half and the scheme: src/ops/reduce.rs.
//
// Stage 1: a tensor of n floats gets gridDim.x blocks (a function of n alone, chosen on the host); thread t of
// block b sums x[i]² in double for i = b·blockDim + t, then every gridDim·blockDim further; the block's threads
// are combined by a tree of fixed shape in shared memory into partial[offset + b].
// Stage 2: one block sums the partials the same way (thread-strided, then the tree) into out[0], or into an
// f32 slot of a training step's state.
#define REDUCE_THREADS 256

// Sums the block's values in `s` (REDUCE_THREADS of them) by a fixed tree; the result is s[0].
__device__ __forceinline__ void block_tree_sum(double* s) {
    const int t = threadIdx.x;
    for (int half = REDUCE_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) s[t] += s[t + half];
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
    sum_squares_stage1_f32(const float* x, long n, double* partial, long offset) {
    __shared__ double s[REDUCE_THREADS];
    double acc = 0.0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const double v = (double)x[i];
        acc += v * v;
    }
    s[threadIdx.x] = acc;
    block_tree_sum(s);
    if (threadIdx.x == 0) partial[offset + blockIdx.x] = s[0];
}

// Stage 2's sum of partial[0..n), by one block; every thread returns it.
__device__ __forceinline__ double sum_of_partials(const double* partial, long n) {
    __shared__ double s[REDUCE_THREADS];
    double acc = 0.0;
    for (long i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    s[threadIdx.x] = acc;
    block_tree_sum(s);
    return s[0];
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
    sum_squares_stage2_f64(const double* partial, long n, double* out) {
    const double total = sum_of_partials(partial, n);
    if (threadIdx.x == 0) out[0] = total;
}

// Stage 2 into slot `index` of a training step's state (src/train/device_step.rs), rounded to f32.
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
    sum_squares_stage2_into_f32(const double* partial, long n, float* out, long index) {
    const double total = sum_of_partials(partial, n);
    if (threadIdx.x == 0) out[index] = (float)total;
}

// out[index] = mean of x[0..n) (a micro-batch's loss), summed in double by one block in a fixed order.
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) mean_into_f32(const float* x, long n, float* out,
                                                                          long index) {
    __shared__ double s[REDUCE_THREADS];
    double acc = 0.0;
    for (long i = threadIdx.x; i < n; i += blockDim.x) acc += (double)x[i];
    s[threadIdx.x] = acc;
    block_tree_sum(s);
    if (threadIdx.x == 0) out[index] = (float)(s[0] * (1.0 / (double)n));
}
