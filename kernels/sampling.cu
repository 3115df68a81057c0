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
// u float64 [R]; probs float [R, V] scratch; tokens int32 [R].  grid (R), block 512.
// Thresholds by bisection (40 steps).
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

// p_out[v] = p_v if kept else 0 for one row (block-wide); returns the kept mass.
__device__ float target_probs(const float* __restrict__ row, float* __restrict__ p_out, int V, float temperature,
                              int top_k, float top_p, float min_p, float* scratch) {
    float inv_t = 1.0f / temperature;
    float local_max = -__int_as_float(0x7f800000);
    for (int v = threadIdx.x; v < V; v += blockDim.x) local_max = fmaxf(local_max, row[v] * inv_t);
    float z_max = block_reduce(local_max, true, scratch);
    float local_sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float e = __expf(row[v] * inv_t - z_max);
        p_out[v] = e;
        local_sum += e;
    }
    float total = block_reduce(local_sum, false, scratch);
    for (int v = threadIdx.x; v < V; v += blockDim.x) p_out[v] /= total;
    __syncthreads();
    float tau = min_p / total;  // max p = 1 / total
    if (top_k > 0 && top_k < V) {
        float lo = 0.0f, hi = 1.0f / total;
        for (int step = 0; step < 40; step++) {
            float mid = 0.5f * (lo + hi), count = 0.0f;
            for (int v = threadIdx.x; v < V; v += blockDim.x) count += p_out[v] >= mid;
            if (block_reduce(count, false, scratch) >= top_k) lo = mid; else hi = mid;
        }
        tau = fmaxf(tau, lo);
    }
    if (top_p < 1.0f) {
        float lo = 0.0f, hi = 1.0f / total;
        for (int step = 0; step < 40; step++) {
            float mid = 0.5f * (lo + hi), mass = 0.0f;
            for (int v = threadIdx.x; v < V; v += blockDim.x) mass += p_out[v] >= mid ? p_out[v] : 0.0f;
            if (block_reduce(mass, false, scratch) >= top_p) lo = mid; else hi = mid;
        }
        tau = fmaxf(tau, lo);
    }
    float kept = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float p = p_out[v] >= tau ? p_out[v] : 0.0f;
        p_out[v] = p;
        kept += p;
    }
    return block_reduce(kept, false, scratch);
}

// The first v (index order) whose running sum of p exceeds u * mass; thread t scans the chunk [t C, (t+1) C).
__device__ int sample_index(const float* __restrict__ p, int V, double u, float* chunk_sum, float* scratch) {
    __shared__ int found, last_kept;
    int C = (V + blockDim.x - 1) / blockDim.x, begin = threadIdx.x * C, end = min(V, begin + C);
    float mine = 0.0f;
    int my_last = -1;
    for (int v = begin; v < end; v++) {
        mine += p[v];
        if (p[v] > 0.0f) my_last = v;
    }
    chunk_sum[threadIdx.x] = mine;
    if (threadIdx.x == 0) { found = 0x7fffffff; last_kept = -1; }
    __syncthreads();
    if (threadIdx.x == 0) {
        float running = 0.0f;
        for (int t = 0; t < blockDim.x; t++) { float s = chunk_sum[t]; chunk_sum[t] = running; running += s; }
        scratch[0] = running;
    }
    __syncthreads();
    float target = (float)(u * scratch[0]), running = chunk_sum[threadIdx.x];
    for (int v = begin; v < end; v++) {
        if (p[v] <= 0.0f) continue;
        running += p[v];
        if (running > target) { atomicMin(&found, v); break; }
    }
    if (my_last >= 0) atomicMax(&last_kept, my_last);
    __syncthreads();
    int token = found == 0x7fffffff ? last_kept : found;  // rounding past the last sum: the last kept token
    __syncthreads();
    return token;
}

extern "C" __global__ void sample_rows(const float* __restrict__ logits, const int* __restrict__ rows,
                                       const float* __restrict__ temperature, const int* __restrict__ top_k,
                                       const float* __restrict__ top_p, const float* __restrict__ min_p,
                                       const double* __restrict__ u, float* __restrict__ probs, int* __restrict__ tokens, int V) {
    __shared__ float scratch[32];
    __shared__ float chunk_sum[SAMPLE_THREADS];
    int r = blockIdx.x;
    float* p = probs + (long long)r * V;
    target_probs(logits + (long long)rows[r] * V, p, V, temperature[r], top_k[r], top_p[r], min_p[r], scratch);
    int token = sample_index(p, V, u[r], chunk_sum, scratch);
    if (threadIdx.x == 0) tokens[r] = token;
}

// verify_tree: lossless sampled verification of one tree of deterministic candidates (n-gram, top-k trees),
// so a step copies back only the accepted path and the bonus token.
//   From the root: r = p(node) (after the filters); try the node's children in order, accepting child c
//   when u < r(c) / sum(r), else r(c) = 0; if none is accepted the bonus is drawn from r (inverse CDF).
//   Uniforms u[0 .. T] are drawn on the host from the request's generator and used in order.
// logits float [R, V] (the tree's rows start at row0); parents, tokens int32 [T]; uniforms float64 [T + 1];
// probs float [V] scratch; out int32 [T + 2]: out[0] = path length, out[1] = bonus, out[2..] = path nodes.
// grid (1), block 512. NumPy reference: minispec.verify.verify_sampled. Tests: tests/test_cuda_kernels.py.
extern "C" __global__ void verify_tree(const float* __restrict__ logits, int row0, int T, const int* __restrict__ parents,
                                       const int* __restrict__ tokens, float temperature, int top_k, float top_p, float min_p,
                                       const double* __restrict__ uniforms, float* __restrict__ probs, int* __restrict__ out, int V) {
    __shared__ float scratch[32];
    __shared__ float chunk_sum[SAMPLE_THREADS];
    __shared__ int accepted;
    int node = 0, length = 1, next_uniform = 0;
    if (threadIdx.x == 0) out[2] = 0;
    while (true) {
        float mass = target_probs(logits + (long long)(row0 + node) * V, probs, V, temperature, top_k, top_p, min_p, scratch);
        if (threadIdx.x == 0) {
            accepted = -1;
            for (int c = node + 1; c < T && accepted < 0; c++) {
                if (parents[c] != node) continue;
                float pc = probs[tokens[c]];
                if (uniforms[next_uniform++] * mass < pc) {
                    accepted = c;
                } else {
                    probs[tokens[c]] = 0.0f;
                    mass -= pc;
                }
            }
            scratch[1] = (float)next_uniform;
        }
        __syncthreads();
        next_uniform = (int)scratch[1];
        if (accepted < 0) break;
        node = accepted;
        if (threadIdx.x == 0) out[2 + length] = node;
        length++;
        __syncthreads();
    }
    int bonus = sample_index(probs, V, uniforms[next_uniform], chunk_sum, scratch);
    if (threadIdx.x == 0) {
        out[0] = length;
        out[1] = bonus;
    }
}
