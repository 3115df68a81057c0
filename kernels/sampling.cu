// Token selection on the GPU, so a greedy step copies back T ids instead of T x V logits.
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

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
argmax_share(const float* __restrict__ logits, float* __restrict__ best_value, int* __restrict__ best_index, int V) {
    pdl_begin();
    const int r = blockIdx.y, S = gridDim.x;
    const int share = (V + S - 1) / S;
    const int begin = blockIdx.x * share, end = min(V, begin + share);
    const float* row = logits + (long long)r * V;
    float value = 0.0f;
    int index = NO_INDEX;
    for (int base = begin + threadIdx.x; base < end; base += ARGMAX_UNROLL * ARGMAX_THREADS) {
        float x[ARGMAX_UNROLL];
        #pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; ++u) {  // every load issued before the first compare
            const int v = base + u * ARGMAX_THREADS;
            x[u] = v < end ? row[v] : 0.0f;
        }
        #pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; ++u) {  // ascending v within the thread: the first max stays
            const int v = base + u * ARGMAX_THREADS;
            if (v < end && argmax_beats(x[u], v, value, index)) { value = x[u]; index = v; }
        }
    }
    argmax_warp(value, index);
    __shared__ float warp_value[ARGMAX_THREADS / 32];
    __shared__ int warp_index[ARGMAX_THREADS / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { warp_value[warp] = value; warp_index[warp] = index; }
    __syncthreads();
    if (warp == 0) {
        value = lane < ARGMAX_THREADS / 32 ? warp_value[lane] : 0.0f;
        index = lane < ARGMAX_THREADS / 32 ? warp_index[lane] : NO_INDEX;
        argmax_warp(value, index);
        if (lane == 0) {
            best_value[r * S + blockIdx.x] = value;
            best_index[r * S + blockIdx.x] = index;
        }
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

// sample_rows: one token per selected row from the target distribution p of the sampling settings
//   z = logits[rows[r], :] / temperature[r];  p = softmax(z)
//   keep v iff p_v >= tau = max(tau_k, tau_p, min_p[r] * max p), where
//     tau_k = the top_k[r]-th largest p (0 = off),  tau_p = the largest t with sum(p >= t) >= top_p[r]
//     (top-k, top-p and min-p are each computed on p and intersected, as in sampling.target_distribution)
//   token = first v (in index order) whose running sum of kept p exceeds u[r] * sum(kept p)
//   u[r] in [0, 1) is drawn on the host from the request's own seeded generator, so a seed
//   reproduces its samples and the NumPy backend draws the very same tokens.
// logits float [R_all, V]; settings float64 [R, 6]: row, temperature, top_k, top_p, min_p, u (one upload; in
// double as the reference reads them: top_p = 0.999 as a float is 1.3e-8 larger, which at V = 49k moved the cut
// by a token); probs float [R, V] scratch; tokens int32 [R].  grid (R), block 1024.
// The block works on e_v = exp(z_v - max z) = p_v / max p (no normalising pass; max e = 1). Thresholds are
// exact order statistics by radix select on e's bits (positive floats order as their bits): 3 rounds of
// 10-11 bits, each one pass over the row building a histogram of the values still matching the prefix, then
// a scan for the bin where the running count (top-k) or mass (top-p) from the top reaches the goal.
// Masses are summed in 2^-40 fixed point with integer atomics, so the result does not depend on the order
// the threads add in (a seed reproduces its token). About 10 passes in all; bisection took 85. On an H100,
// one row with top-k 50 and top-p 0.9: 70 µs at V = 49152, 157 µs at V = 128256 (the bisection version took
// 0.6 and 3.2 ms a call: notes/sampling_h100.log); one block reads the row at one SM's pace, ~20 µs a pass.
// NumPy reference: minispec.sampling.sample_from(target_distribution(...), u). Tests: test_cuda_kernels.py.
#define SAMPLE_THREADS 1024
#define RADIX_BINS 2048
#define MASS_ONE 1099511627776.0  // 2^40: e in (0, 1] as a fixed-point integer; V e's sum below 2^57

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

// f(v, x[v]) for this thread's share of x[0..V): 12 loads in flight per thread before the first f (one block
// reads the row, so a pass is bound by its loads' latency: one at a time, a 128k row took 75 µs a pass).
#define ROW_UNROLL 12
template <typename F>
__device__ __forceinline__ void for_each_in_row(const float* __restrict__ x, int V, F f) {
    for (int base = threadIdx.x; base < V; base += ROW_UNROLL * blockDim.x) {
        float values[ROW_UNROLL];
        #pragma unroll
        for (int u = 0; u < ROW_UNROLL; u++) {
            const int v = base + u * blockDim.x;
            values[u] = v < V ? x[v] : 0.0f;
        }
        #pragma unroll
        for (int u = 0; u < ROW_UNROLL; u++) {
            const int v = base + u * blockDim.x;
            if (v < V) f(v, values[u]);
        }
    }
}

// A bin's mass is kept as four 10-bit digit sums of the 40-bit fixed-point masses, each in its own 32-bit
// histogram: shared-memory atomics are native at 32 bits (a 64-bit add is a compare-and-swap loop, which
// contended bins turn into the pass's whole cost), a digit sum over V <= 2^22 values stays below 2^32, and
// the small e of the long tail have zero high digits, so they cost fewer adds.
struct RadixShared {
    unsigned int digits[4][RADIX_BINS];  // counts in digits[0] when selecting by count
    unsigned long long warp_sums[32];
    unsigned long long above;
    int bin;
};

__device__ __forceinline__ unsigned long long bin_total(const RadixShared& sh, int b, bool by_mass) {
    if (!by_mass) return sh.digits[0][b];
    return (unsigned long long)sh.digits[0][b] + ((unsigned long long)sh.digits[1][b] << 10) +
           ((unsigned long long)sh.digits[2][b] << 20) + ((unsigned long long)sh.digits[3][b] << 30);
}

// Bins in descending order: the bin where the running total first reaches `need` (and the total of the bins
// above it), or bin -1 when all of them together stay below. Block-wide; every thread gets the answer.
__device__ int find_crossing(RadixShared& sh, int bins, bool by_mass, unsigned long long need, unsigned long long& above) {
    const int per = (bins + blockDim.x - 1) / blockDim.x;  // bins per thread, highest first
    unsigned long long mine = 0;
    for (int j = 0; j < per; j++) {
        int pos = threadIdx.x * per + j;
        if (pos < bins) mine += bin_total(sh, bins - 1 - pos, by_mass);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    unsigned long long inclusive = mine;
    for (int offset = 1; offset < 32; offset <<= 1) {
        unsigned long long other = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += other;
    }
    if (lane == 31) sh.warp_sums[warp] = inclusive;
    if (threadIdx.x == 0) sh.bin = -1;
    __syncthreads();
    if (warp == 0) {
        unsigned long long total = lane < blockDim.x / 32 ? sh.warp_sums[lane] : 0;
        for (int offset = 1; offset < 32; offset <<= 1) {
            unsigned long long other = __shfl_up_sync(0xffffffffu, total, offset);
            if (lane >= offset) total += other;
        }
        sh.warp_sums[lane] = total;  // inclusive over warps
    }
    __syncthreads();
    inclusive += warp > 0 ? sh.warp_sums[warp - 1] : 0;
    unsigned long long running = inclusive - mine;
    if (running < need && need <= inclusive) {  // exactly one thread holds the crossing
        for (int j = 0; j < per; j++) {
            int b = bins - 1 - (threadIdx.x * per + j);
            unsigned long long here = bin_total(sh, b, by_mass);
            if (running + here >= need) { sh.bin = b; sh.above = running; break; }
            running += here;
        }
    }
    __syncthreads();
    above = sh.above;
    int bin = sh.bin;
    __syncthreads();  // the next round may clear the histograms and bin
    return bin;
}

// The bits of the e (an order statistic of e[0..V)) where the count (by_mass false: each e counts 1) or the
// fixed-point mass from the top first reaches `need`; 0 when the goal is never reached.
__device__ unsigned int radix_select(const float* __restrict__ e, int V, bool by_mass, unsigned long long need, RadixShared& sh) {
    const int shifts[3] = {21, 10, 0}, widths[3] = {10, 11, 10};  // bit 31 (the sign) is 0
    unsigned int prefix = 0, mask = 0;
    #pragma unroll
    for (int round = 0; round < 3; round++) {
        const int shift = shifts[round], bins = 1 << widths[round];
        for (int b = threadIdx.x; b < bins; b += blockDim.x) {
            sh.digits[0][b] = 0;
            if (by_mass) sh.digits[1][b] = sh.digits[2][b] = sh.digits[3][b] = 0;
        }
        __syncthreads();
        for_each_in_row(e, V, [&](int, float x) {
            unsigned int bits = __float_as_uint(x);
            if ((bits & mask) == prefix) {
                const int b = (bits >> shift) & (bins - 1);
                if (!by_mass) {
                    atomicAdd(&sh.digits[0][b], 1u);
                } else {
                    unsigned long long m = (unsigned long long)((double)x * MASS_ONE);
                    #pragma unroll
                    for (int d = 0; d < 4; d++) {
                        unsigned int digit = (unsigned int)(m >> (10 * d)) & (d == 3 ? 0x7ffu : 0x3ffu);  // m <= 2^40
                        if (digit) atomicAdd(&sh.digits[d][b], digit);
                    }
                }
            }
        });
        __syncthreads();
        unsigned long long above;
        int bin = find_crossing(sh, bins, by_mass, need, above);
        if (bin < 0) return 0u;
        need -= above;
        prefix |= (unsigned int)bin << shift;
        mask |= (unsigned int)(bins - 1) << shift;
    }
    return prefix;
}

// p_out[v] = e_v if kept else 0 for one row (block-wide); returns the kept mass (in e units).
__device__ float target_probs(const float* __restrict__ row, float* __restrict__ p_out, int V, double temperature,
                              int top_k, double top_p, double min_p, float* scratch, RadixShared& sh) {
    float local_max = -__int_as_float(0x7f800000);
    for_each_in_row(row, V, [&](int, float x) { local_max = fmaxf(local_max, x); });
    const double inv_t = 1.0 / temperature, z_max = (double)block_reduce(local_max, true, scratch) * inv_t;
    unsigned long long local_mass = 0;
    for_each_in_row(row, V, [&](int v, float x) {
        // z - max z in double, as the reference divides: at top_p near 1 the cut falls among tokens of p ~ 1e-6
        // of the mass, and a float z's error (|z| ulp, the same sign for neighbours) moved the cut by a token;
        // exp itself in float (a double exp per logit is most of the kernel's time on one SM)
        float e = expf((float)fma((double)x, inv_t, -z_max));
        p_out[v] = e;
        local_mass += (unsigned long long)((double)e * MASS_ONE);
    });
    __syncthreads();  // every e is in p_out before the passes below read other threads' entries
    float tau = (float)min_p;  // min_p * max p, and max e = 1
    if (top_k > 0 && top_k < V) tau = fmaxf(tau, __uint_as_float(radix_select(p_out, V, false, (unsigned long long)top_k, sh)));
    if (top_p < 1.0) {
        // the total mass in the same fixed point, summed exactly (integer adds commute)
        for (int offset = 16; offset > 0; offset >>= 1) local_mass += __shfl_xor_sync(0xffffffffu, local_mass, offset);
        if (threadIdx.x == 0) sh.above = 0;
        __syncthreads();
        if (threadIdx.x % 32 == 0) atomicAdd(&sh.above, local_mass);
        __syncthreads();
        unsigned long long total = sh.above;
        __syncthreads();
        unsigned long long need = (unsigned long long)ceil(top_p * (double)total);
        tau = fmaxf(tau, __uint_as_float(radix_select(p_out, V, true, need > 0 ? need : 1ull, sh)));
    }
    float kept = 0.0f;
    for_each_in_row(p_out, V, [&](int v, float e) {
        float p = e >= tau ? e : 0.0f;
        p_out[v] = p;
        kept += p;
    });
    return block_reduce(kept, false, scratch);
}

// Sum of p over [begin, end) by one warp, lanes strided, 12 loads in flight per lane (a fixed order: the same
// bits every run); also the last v with p > 0 there (-1 if none).
__device__ float warp_range_sum(const float* __restrict__ p, int begin, int end, int& last) {
    const int lane = threadIdx.x % 32;
    float sum = 0.0f;
    last = -1;
    for (int base = begin + lane; base < end; base += 32 * ROW_UNROLL) {
        float x[ROW_UNROLL];
        #pragma unroll
        for (int u = 0; u < ROW_UNROLL; u++) x[u] = base + 32 * u < end ? p[base + 32 * u] : 0.0f;
        #pragma unroll
        for (int u = 0; u < ROW_UNROLL; u++) {
            sum += x[u];
            if (x[u] > 0.0f) last = base + 32 * u;
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        last = max(last, __shfl_xor_sync(0xffffffffu, last, offset));
    }
    return sum;
}

// The first v (index order) whose running sum of p exceeds u * (sum of p); the last v with p > 0 when rounding
// leaves the target past the end; 0 when no p > 0 (NaN or -inf logits). Two rounds narrow the range: the row (then the chunk found) is cut into one
// chunk per warp, each warp sums its chunk, and thread 0 finds the chunk where the running sum passes the
// target; then one warp scans that last chunk (about 128 values at Llama 3's vocabulary) 32 at a time.
__device__ int sample_index(const float* __restrict__ p, int V, double u, float* warp_sum) {
    __shared__ int range_begin, range_end, last_kept, warp_last[32];
    __shared__ float before, target;
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int begin = 0, end = V;
    for (int round = 0; round < 2; round++) {
        const int C = ((end - begin + warps - 1) / warps + 31) / 32 * 32;
        const int chunk_begin = min(end, begin + warp * C), chunk_end = min(end, chunk_begin + C);
        int last;
        float sum = warp_range_sum(p, chunk_begin, chunk_end, last);
        if (lane == 0) { warp_sum[warp] = sum; warp_last[warp] = last; }
        __syncthreads();
        if (threadIdx.x == 0) {
            if (round == 0) {
                float total = 0.0f;
                last_kept = -1;
                for (int w = 0; w < warps; w++) { total += warp_sum[w]; last_kept = max(last_kept, warp_last[w]); }
                target = (float)(u * total);
                before = 0.0f;
            }
            float running = before;
            range_begin = range_end = end;  // not found: the scan below finds nothing
            for (int w = 0; w < warps; w++) {
                if (warp_sum[w] > 0.0f && running + warp_sum[w] > target) {
                    range_begin = min(end, begin + w * C);
                    range_end = min(end, range_begin + C);
                    break;
                }
                running += warp_sum[w];
            }
            before = running;
        }
        __syncthreads();
        begin = range_begin;
        end = range_end;
    }
    __shared__ int found;
    if (threadIdx.x == 0) found = -1;
    __syncthreads();
    if (warp == 0) {
        float running = before;
        for (int base = begin; base < end; base += 32) {
            float x = base + lane < end ? p[base + lane] : 0.0f;
            float inclusive = x;
            for (int offset = 1; offset < 32; offset <<= 1) {
                float other = __shfl_up_sync(0xffffffffu, inclusive, offset);
                if (lane >= offset) inclusive += other;
            }
            unsigned int crossed = __ballot_sync(0xffffffffu, x > 0.0f && running + inclusive > target);
            if (crossed) {
                if (lane == __ffs(crossed) - 1) found = base + lane;
                break;
            }
            running += __shfl_sync(0xffffffffu, inclusive, 31);
        }
    }
    __syncthreads();
    // nothing kept at all (a row of NaN or -inf logits): token 0, so that a step ahead still reads a valid id
    int token = found >= 0 ? found : max(last_kept, 0);
    __syncthreads();
    return token;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows(const float* __restrict__ logits, const double* __restrict__ settings,
                                                                         float* __restrict__ probs, int* __restrict__ tokens, int V) {
    pdl_begin();
    __shared__ float scratch[32];
    __shared__ float warp_sum[SAMPLE_THREADS / 32];
    __shared__ RadixShared radix;
    const int r = blockIdx.x;
    const double* s = settings + 6 * r;  // row, temperature, top_k, top_p, min_p, u
    float* p = probs + (long long)r * V;
    target_probs(logits + (long long)s[0] * V, p, V, s[1], (int)s[2], s[3], s[4], scratch, radix);
    int token = sample_index(p, V, s[5], warp_sum);
    if (threadIdx.x == 0) tokens[r] = token;
}

// verify_tree: lossless sampled verification of one tree of deterministic candidates (n-gram, top-k trees),
// so a step copies back only the accepted path and the bonus token.
//   From the root: r = p(node) (after the filters); try the node's children in order, accepting child c
//   when u < r(c) / sum(r), else r(c) = 0; if none is accepted the bonus is drawn from r (inverse CDF).
//   Uniforms u[0 .. T] are drawn on the host from the request's generator and used in order.
// logits float [R, V] (the tree's rows start at row0); parents, tokens int32 [T]; uniforms float64 [T + 1];
// probs float [V] scratch; out int32 [T + 2]: out[0] = path length, out[1] = bonus, out[2..] = path nodes.
// grid (1), block 1024. NumPy reference: minispec.verify.verify_sampled. Tests: tests/test_cuda_kernels.py.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) verify_tree(const float* __restrict__ logits, int row0, int T, const int* __restrict__ parents,
                                       const int* __restrict__ tokens, double temperature, int top_k, double top_p, double min_p,
                                       const double* __restrict__ uniforms, float* __restrict__ probs, int* __restrict__ out, int V) {
    pdl_begin();
    __shared__ float scratch[32];
    __shared__ float warp_sum[SAMPLE_THREADS / 32];
    __shared__ RadixShared radix;
    __shared__ int accepted;
    int node = 0, length = 1, next_uniform = 0;
    if (threadIdx.x == 0) out[2] = 0;
    while (true) {
        float mass = target_probs(logits + (long long)(row0 + node) * V, probs, V, temperature, top_k, top_p, min_p, scratch, radix);
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
    int bonus = sample_index(probs, V, uniforms[next_uniform], warp_sum);
    if (threadIdx.x == 0) {
        out[0] = length;
        out[1] = bonus;
    }
}
