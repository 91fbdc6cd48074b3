// Deterministic sum of squares (the global gradient norm), in two stages with a fixed order of additions.
// CPU half and the scheme: src/ops/reduce.rs.
//
// Stage 1 (every tensor in one launch): a tensor of n floats gets B blocks (a function of n alone, chosen on the
// host); thread t of its block b sums x[i]² in double for i = b·blockDim + t, then every B·blockDim further;
// the block's threads are combined by a tree of fixed shape in shared memory into its partial.
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

// Stage 1, every tensor in one launch: `tensors` holds each tensor's address and length, and its blocks are
// numbered from block_starts[t] (block_starts[count] = all blocks); a block finds its tensor by binary search
// and sums its grid-stride share of it.
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
    sum_squares_multi_f32(const unsigned long long* tensors, const long* block_starts, int count, double* partial) {
    __shared__ double s[REDUCE_THREADS];
    const long b = blockIdx.x;
    int lo = 0, hi = count - 1;  // the last tensor whose first block is at or before b
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (block_starts[mid] <= b) lo = mid;
        else hi = mid - 1;
    }
    const float* x = reinterpret_cast<const float*>(tensors[2 * lo]);
    const long n = (long)tensors[2 * lo + 1];
    const long first = block_starts[lo], blocks = block_starts[lo + 1] - first;
    double acc = 0.0;
    for (long i = (b - first) * (long)blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) {
        const double v = (double)x[i];
        acc += v * v;
    }
    s[threadIdx.x] = acc;
    block_tree_sum(s);
    if (threadIdx.x == 0) partial[b] = s[0];
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
