// Token selection on the GPU, so a greedy step copies back T ids instead of T x V logits.
//
// argmax_rows: ids[r] = argmax_v logits[r, v] (first index on ties, like numpy.argmax)
//   logits float [R, V], ids int32 [R].  grid (R), block 256; block-wide (value, index) reduction.
// NumPy reference: numpy.argmax. Tests: tests/test_cuda_kernels.py.

extern "C" __global__ void argmax_rows(const float* __restrict__ logits, int* __restrict__ ids, int V) {
    __shared__ float best_value[256];
    __shared__ int best_index[256];
    const float* row = logits + (long long)blockIdx.x * V;
    float value = -__int_as_float(0x7f800000);
    int index = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float x = row[v];
        if (x > value) { value = x; index = v; }  // strided scan: the first max of this thread's share
    }
    best_value[threadIdx.x] = value;
    best_index[threadIdx.x] = index;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            float other = best_value[threadIdx.x + stride];
            int other_index = best_index[threadIdx.x + stride];
            if (other > best_value[threadIdx.x] || (other == best_value[threadIdx.x] && other_index < best_index[threadIdx.x])) {
                best_value[threadIdx.x] = other;
                best_index[threadIdx.x] = other_index;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = best_index[0];
}

// sample_rows: one token per selected row from the target distribution p of the sampling settings
//   z = logits[rows[r], :] / temperature[r];  p = softmax(z)
//   keep v iff p_v >= tau = max(tau_k, tau_p, min_p[r] * max p), where
//     tau_k = the top_k[r]-th largest p (0 = off),  tau_p = the largest t with sum(p >= t) >= top_p[r]
//     (top-k, top-p and min-p are each computed on p and intersected, as in sampling.target_distribution)
//   token = first v (in index order) whose running sum of kept p exceeds u[r] * sum(kept p)
//   u[r] in [0, 1) is drawn on the host from the request's own seeded generator, so a seed
//   reproduces its samples and the NumPy backend draws the very same tokens.
// logits float [R_all, V]; rows int32 [R]; temperature, top_p, min_p float [R]; top_k int32 [R];
// u float64 [R]; tokens int32 [R].  grid (R), block 512.  Thresholds by bisection (40 steps).
// NumPy reference: minispec.sampling.sample_from(target_distribution(...), u). Tests: test_cuda_kernels.py.
#define SAMPLE_THREADS 512

__device__ float block_reduce(float value, bool take_max, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_xor_sync(0xffffffff, value, offset);
        value = take_max ? fmaxf(value, other) : value + other;
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    if (warp == 0) {
        value = lane < blockDim.x / 32 ? scratch[lane] : (take_max ? -__int_as_float(0x7f800000) : 0.0f);
        for (int offset = 16; offset > 0; offset >>= 1) {
            float other = __shfl_xor_sync(0xffffffff, value, offset);
            value = take_max ? fmaxf(value, other) : value + other;
        }
        if (lane == 0) scratch[0] = value;
    }
    __syncthreads();
    return scratch[0];
}

extern "C" __global__ void sample_rows(const float* __restrict__ logits, const int* __restrict__ rows,
                                       const float* __restrict__ temperature, const int* __restrict__ top_k,
                                       const float* __restrict__ top_p, const float* __restrict__ min_p,
                                       const double* __restrict__ u, int* __restrict__ tokens, int V) {
    __shared__ float scratch[32];
    __shared__ float chunk_sum[SAMPLE_THREADS];
    const float* row = logits + (long long)rows[blockIdx.x] * V;
    float inv_t = 1.0f / temperature[blockIdx.x];
    float local_max = -__int_as_float(0x7f800000);
    for (int v = threadIdx.x; v < V; v += blockDim.x) local_max = fmaxf(local_max, row[v] * inv_t);
    float z_max = block_reduce(local_max, true, scratch);
    float local_sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) local_sum += __expf(row[v] * inv_t - z_max);
    float total = block_reduce(local_sum, false, scratch);
    // p_v = exp(z_v - z_max) / total; max p = 1 / total
    float tau = min_p[blockIdx.x] / total;
    int k = top_k[blockIdx.x];
    if (k > 0 && k < V) {
        float lo = 0.0f, hi = 1.0f / total;
        for (int step = 0; step < 40; step++) {
            float mid = 0.5f * (lo + hi), count = 0.0f;
            for (int v = threadIdx.x; v < V; v += blockDim.x) count += __expf(row[v] * inv_t - z_max) / total >= mid;
            if (block_reduce(count, false, scratch) >= k) lo = mid; else hi = mid;
        }
        tau = fmaxf(tau, lo);
    }
    if (top_p[blockIdx.x] < 1.0f) {
        float lo = 0.0f, hi = 1.0f / total;
        for (int step = 0; step < 40; step++) {
            float mid = 0.5f * (lo + hi), mass = 0.0f;
            for (int v = threadIdx.x; v < V; v += blockDim.x) {
                float p = __expf(row[v] * inv_t - z_max) / total;
                mass += p >= mid ? p : 0.0f;
            }
            if (block_reduce(mass, false, scratch) >= top_p[blockIdx.x]) lo = mid; else hi = mid;
        }
        tau = fmaxf(tau, lo);
    }
    // inverse CDF over kept tokens in index order: thread t owns the contiguous chunk [t * C, (t + 1) * C)
    int C = (V + blockDim.x - 1) / blockDim.x, begin = threadIdx.x * C, end = min(V, begin + C);
    float mine = 0.0f;
    for (int v = begin; v < end; v++) {
        float p = __expf(row[v] * inv_t - z_max) / total;
        mine += p >= tau ? p : 0.0f;
    }
    chunk_sum[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        float running = 0.0f;
        for (int t = 0; t < blockDim.x; t++) { float s = chunk_sum[t]; chunk_sum[t] = running; running += s; }
        scratch[0] = running;  // kept mass
        tokens[blockIdx.x] = -1;
    }
    __syncthreads();
    float target = (float)(u[blockIdx.x] * scratch[0]);
    float running = chunk_sum[threadIdx.x];
    int last_kept = -1;
    for (int v = begin; v < end; v++) {
        float p = __expf(row[v] * inv_t - z_max) / total;
        if (p < tau) continue;
        last_kept = v;
        running += p;
        if (running > target && running - p <= target) { tokens[blockIdx.x] = v; break; }
    }
    __syncthreads();
    // rounding can leave u * mass past the last sum: take the last kept token
    __shared__ int fallback;
    if (threadIdx.x == 0) fallback = -1;
    __syncthreads();
    if (last_kept >= 0) atomicMax(&fallback, last_kept);
    __syncthreads();
    if (threadIdx.x == 0 && tokens[blockIdx.x] < 0) tokens[blockIdx.x] = fallback;
}
