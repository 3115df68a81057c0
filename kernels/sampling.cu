// Token selection on the GPU, so a greedy step copies back T ids instead of T x V logits: argmax and top-k
// log-probabilities here, the sampled draws in sampling_draw.cu.
//
// argmax (argmax_share, then argmax_merge): ids[r] = argmax_v logits[r, v] in numpy.argmax's order: NaN above every number (the first NaN
//   wins, so a step that went NaN still feeds the next one a valid id), then the value, then the lower index.
//   Two launches, so that a decode step's one row of 128k logits is read by many SMs at once (one block per
//   row reads it at one SM's latency-bound pace: 200 µs for Llama-3's vocabulary, a twentieth of the step):
//   argmax_share  grid (S, R), block 256: block s scans the s-th share of row r, 8 loads in flight per
//                 thread, and writes its best (value, index) to best_value/best_index [R, S];
//   argmax_merge  grid (R), block 32: one warp picks each row's best of its S shares.
//   logits float [R, V], ids int32 [R].
// NumPy reference: numpy.argmax. Tests: tests/test_cuda_kernels.py.

#include "pdl.cuh"
#define NO_INDEX 0x7fffffff  // no candidate yet
#define ARGMAX_THREADS 256
#define ARGMAX_UNROLL 8

__device__ __forceinline__ bool argmax_beats(float x, int i, float best, int best_i) {
    if (i == NO_INDEX) return false;
    if (best_i == NO_INDEX) return true;
    const bool x_nan = x != x, best_nan = best != best;
    if (x_nan != best_nan) return x_nan;
    if (!x_nan && x != best) return x > best;
    return i < best_i;
}

__device__ __forceinline__ void argmax_warp(float& value, int& index) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_down_sync(0xffffffffu, value, offset);
        int other_index = __shfl_down_sync(0xffffffffu, index, offset);
        if (argmax_beats(other, other_index, value, index)) { value = other; index = other_index; }
    }
}

// The best (value, index) of a block of THREADS threads in argmax's order, valid in warp 0 (every lane) when it
// returns; warp_value / warp_index: a shared slot a warp. Every thread calls it (it holds a __syncthreads).
template <int THREADS>
__device__ __forceinline__ void argmax_block(float& value, int& index, float* warp_value, int* warp_index) {
    argmax_warp(value, index);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { warp_value[warp] = value; warp_index[warp] = index; }
    __syncthreads();
    if (warp == 0) {
        value = lane < THREADS / 32 ? warp_value[lane] : 0.0f;
        index = lane < THREADS / 32 ? warp_index[lane] : NO_INDEX;
        argmax_warp(value, index);
    }
}

// Block (s, r) of a (S, R) grid of THREADS threads visits share s of row r: visit(x, v) for each of its logits,
// ascending v within a thread, ARGMAX_UNROLL loads issued before the first visit.
template <int THREADS, typename Visit>
__device__ __forceinline__ void scan_share(const float* __restrict__ logits, int V, Visit visit) {
    const int S = gridDim.x, share = (V + S - 1) / S;
    const int begin = blockIdx.x * share, end = min(V, begin + share);
    const float* row = logits + (long long)blockIdx.y * V;
    for (int base = begin + threadIdx.x; base < end; base += ARGMAX_UNROLL * THREADS) {
        float x[ARGMAX_UNROLL];
        #pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; ++u) {  // every load issued before the first visit
            const int v = base + u * THREADS;
            x[u] = v < end ? row[v] : 0.0f;
        }
        #pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; ++u) {
            const int v = base + u * THREADS;
            if (v < end) visit(x[u], v);
        }
    }
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
argmax_share(const float* __restrict__ logits, float* __restrict__ best_value, int* __restrict__ best_index, int V) {
    pdl_begin();
    const int r = blockIdx.y, S = gridDim.x;
    float value = 0.0f;
    int index = NO_INDEX;
    scan_share<ARGMAX_THREADS>(logits, V, [&](float x, int v) {  // ascending v within the thread: the first max stays
        if (argmax_beats(x, v, value, index)) { value = x; index = v; }
    });
    __shared__ float warp_value[ARGMAX_THREADS / 32];
    __shared__ int warp_index[ARGMAX_THREADS / 32];
    argmax_block<ARGMAX_THREADS>(value, index, warp_value, warp_index);
    if (threadIdx.x == 0) {
        best_value[r * S + blockIdx.x] = value;
        best_index[r * S + blockIdx.x] = index;
    }
}

extern "C" __global__ void argmax_merge(const float* __restrict__ best_value, const int* __restrict__ best_index, int* __restrict__ ids, int S) {
    pdl_begin();
    const int r = blockIdx.x;
    float value = 0.0f;
    int index = NO_INDEX;
    for (int s = threadIdx.x; s < S; s += 32) {
        if (argmax_beats(best_value[r * S + s], best_index[r * S + s], value, index)) {
            value = best_value[r * S + s];
            index = best_index[r * S + s];
        }
    }
    argmax_warp(value, index);
    if (threadIdx.x == 0) ids[r] = index == NO_INDEX ? 0 : index;
}

// top_logprobs (top_share, then top_merge): each row's k most probable tokens and their log-probabilities, so a
// draft model's greedy tree level copies back k ids and k floats a row instead of V logits, and the host does no
// softmax over the vocabulary.
//   ids[r, :]      the k largest logits of row r in argmax's order (NaN above every number, then the value, then
//                  the lower index)
//   logprobs[r, j] = logits[r, ids[r, j]] - log sum_v exp(logits[r, v])   (fp32)
//   top_share  grid (S, R), block TOP_THREADS: a thread keeps the TOP_K_MAX best of its elements (sorted, in
//              registers: a new one bubbles up from the last place) and an online (max m, sum s of exp(x - m));
//              the block's k best come out in k rounds of a block argmax over the threads' heads, the winner
//              shifting its list; (m, s) by a fixed-order reduction. Writes share_value / share_index [R, S, k]
//              and share_ml [R, S, 2].
//   top_merge  grid (R), block 32: one warp takes the k best of the S k candidates in shared memory (k rounds,
//              a taken one is marked) and merges the S (m, s) in a fixed order.
//   1 <= k <= TOP_K_MAX, S <= TOP_SHARES. logits float [R, V]; ids int32 [R, k]; logprobs float [R, k].
// NumPy reference: minispec.sampling.top_logprobs. Tests: tests/test_cuda_kernels.py.
#define TOP_K_MAX 8
#define TOP_THREADS 256
#define TOP_SHARES 64
#define NEG_INF __int_as_float(0xff800000)  // -inf (NVRTC has no math.h)

// (m, s) <- the pair of the union: s counts exp(x - m) over both sets (an empty set is (-inf, 0); NaN propagates)
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    if (m2 > m) {
        s = s * expf(m - m2) + s2;
        m = m2;
    } else if (m2 != NEG_INF) {
        s += s2 * expf(m2 - m);
    }
}

__device__ __forceinline__ void lse_warp(float& m, float& s) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float m2 = __shfl_down_sync(0xffffffffu, m, offset), s2 = __shfl_down_sync(0xffffffffu, s, offset);
        lse_merge(m, s, m2, s2);
    }
}

extern "C" __global__ void __launch_bounds__(TOP_THREADS)
top_share(const float* __restrict__ logits, float* __restrict__ share_value, int* __restrict__ share_index,
          float* __restrict__ share_ml, int V, int k) {
    pdl_begin();
    const int r = blockIdx.y, S = gridDim.x;
    float value[TOP_K_MAX], m = NEG_INF, s = 0.0f;
    int index[TOP_K_MAX];
    #pragma unroll
    for (int j = 0; j < TOP_K_MAX; j++) { value[j] = 0.0f; index[j] = NO_INDEX; }
    scan_share<TOP_THREADS>(logits, V, [&](float x, int v) {
        lse_merge(m, s, x, 1.0f);
        if (argmax_beats(x, v, value[TOP_K_MAX - 1], index[TOP_K_MAX - 1])) {
            value[TOP_K_MAX - 1] = x;
            index[TOP_K_MAX - 1] = v;
            #pragma unroll
            for (int j = TOP_K_MAX - 1; j > 0; j--) {  // bubble up: the list above it is sorted
                if (argmax_beats(value[j], index[j], value[j - 1], index[j - 1])) {
                    const float tv = value[j]; value[j] = value[j - 1]; value[j - 1] = tv;
                    const int ti = index[j]; index[j] = index[j - 1]; index[j - 1] = ti;
                }
            }
        }
    });
    __shared__ float warp_value[TOP_THREADS / 32], warp_m[TOP_THREADS / 32], warp_s[TOP_THREADS / 32];
    __shared__ int warp_index[TOP_THREADS / 32];
    __shared__ int round_index;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long out = ((long long)r * S + blockIdx.x) * k;
    lse_warp(m, s);
    if (lane == 0) { warp_m[warp] = m; warp_s[warp] = s; }
    for (int j = 0; j < k; j++) {  // round j: the best head of all threads' lists
        float best = value[0];
        int best_index = index[0];
        argmax_block<TOP_THREADS>(best, best_index, warp_value, warp_index);
        if (warp == 0) {
            if (lane == 0) {
                round_index = best_index;
                share_value[out + j] = best;
                share_index[out + j] = best_index;
            }
            if (j == 0) {  // the block's (m, s), warps in order
                m = lane < TOP_THREADS / 32 ? warp_m[lane] : NEG_INF;
                s = lane < TOP_THREADS / 32 ? warp_s[lane] : 0.0f;
                lse_warp(m, s);
                if (lane == 0) {
                    share_ml[((long long)r * S + blockIdx.x) * 2] = m;
                    share_ml[((long long)r * S + blockIdx.x) * 2 + 1] = s;
                }
            }
        }
        __syncthreads();
        if (round_index != NO_INDEX && index[0] == round_index) {  // the winner's next element moves up
            #pragma unroll
            for (int i = 0; i < TOP_K_MAX - 1; i++) { value[i] = value[i + 1]; index[i] = index[i + 1]; }
            value[TOP_K_MAX - 1] = 0.0f;
            index[TOP_K_MAX - 1] = NO_INDEX;
        }
    }
}

extern "C" __global__ void top_merge(const float* __restrict__ share_value, const int* __restrict__ share_index,
                                     const float* __restrict__ share_ml, int* __restrict__ ids, float* __restrict__ logprobs,
                                     int S, int k) {
    pdl_begin();
    __shared__ float candidate_value[TOP_SHARES * TOP_K_MAX];
    __shared__ int candidate_index[TOP_SHARES * TOP_K_MAX];
    const int r = blockIdx.x, lane = threadIdx.x, C = S * k;
    for (int c = lane; c < C; c += 32) {
        candidate_value[c] = share_value[(long long)r * C + c];
        candidate_index[c] = share_index[(long long)r * C + c];
    }
    float m = NEG_INF, s = 0.0f;
    for (int q = lane; q < S; q += 32) lse_merge(m, s, share_ml[((long long)r * S + q) * 2], share_ml[((long long)r * S + q) * 2 + 1]);
    lse_warp(m, s);
    const float lse = __shfl_sync(0xffffffffu, m + logf(s), 0);
    __syncwarp();
    for (int j = 0; j < k; j++) {
        float best = 0.0f;
        int best_index = NO_INDEX, slot = -1;
        for (int c = lane; c < C; c += 32) {
            if (argmax_beats(candidate_value[c], candidate_index[c], best, best_index)) {
                best = candidate_value[c];
                best_index = candidate_index[c];
                slot = c;
            }
        }
        float round = best;
        int round_index = best_index;
        argmax_warp(round, round_index);
        round = __shfl_sync(0xffffffffu, round, 0);
        round_index = __shfl_sync(0xffffffffu, round_index, 0);
        if (round_index != NO_INDEX && best_index == round_index) candidate_index[slot] = NO_INDEX;  // taken
        if (lane == 0) {
            ids[r * k + j] = round_index == NO_INDEX ? 0 : round_index;
            logprobs[r * k + j] = round_index == NO_INDEX ? NEG_INF : round - lse;
        }
        __syncwarp();
    }
}
