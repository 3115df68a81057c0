// Sampled tokens on the GPU (sample_rows, specinfer_rows): the draws of sampled decoding and of SpecInfer's test,
// each row of logits spread over a thread block cluster. In a file of their own beside sampling.cu (argmax and top-k
// log-probabilities), so that a greedy run's first answer waits for the smaller compile alone (stop 65: 0.8 s of
// nvcc against 1.8 s for the two together on a 2-core machine).
#include "pdl.cuh"

// sample_rows: one token per selected row from the target distribution p of the sampling settings
//   z = logits[rows[r], :] / temperature[r];  p = softmax(z)
//   keep v iff p_v >= tau = max(tau_k, tau_p, min_p[r] * max p), where
//     tau_k = the top_k[r]-th largest p (0 = off),  tau_p = the largest t with sum(p >= t) >= top_p[r]
//     (top-k, top-p and min-p are each computed on p and intersected, as in sampling.target_distribution)
//   token = first v (in index order) whose running sum of kept p exceeds u[r] * sum(kept p)
//   u[r] in [0, 1) is the row's position's uniform under the request's key (sampling.position_uniforms), so a
//   seed reproduces its samples and the NumPy backend draws the very same tokens: given in settings (the host
//   knows the position), or, where `positions` is not null, computed here at positions[r] (position_uniform; the
//   device drafter's steps, whose positions only the plan on the device holds).
// logits float [R_all, V]; settings float64 [R, 6]: row, temperature, top_k, top_p, min_p, u (one upload; in
// double as the reference reads them: top_p = 0.999 as a float is 1.3e-8 larger, which at V = 49k moved the cut
// by a token); tokens int32 [R]; probs float [R, V] or null: the kept p of each row (e units, 0 where filtered),
// for tests; positions int32 [R] or null; key: the request's (with positions).  grid (SAMPLE_CLUSTER, R), cluster
// (SAMPLE_CLUSTER, 1, 1), block SAMPLE_THREADS, dynamic shared memory slice_len(V) floats.
// A row is cut into SAMPLE_CLUSTER slices, one a block of a cluster, each held in its block's shared memory for
// the whole kernel: the row is read from global memory once, every later pass reads shared memory, and eight
// SMs share the passes. (One block a row read the row from L2 about ten times at one SM's pace: 70 µs at
// V = 49152 with top-k and top-p, 157 µs at 128256; notes/sampling_h100.log.) Cluster-wide values (the max,
// the masses, the histograms' totals, the slices' sums) go through distributed shared memory.
// The block works on e_v = exp(z_v - max z) = p_v / max p (no normalising pass; max e = 1). Thresholds are
// exact order statistics by radix select on e's bits (positive floats order as their bits): 3 rounds of
// 10-11 bits, each one pass over the slices building per-block histograms of the values still matching the
// prefix; each block then totals its share of the bins over the cluster, and every block scans those totals
// for the bin where the running count (top-k) or mass (top-p) from the top reaches the goal. With top-k on (k up to
// SAMPLE_CANDIDATES) top-p needs no radix select: its threshold matters only where it is above tau_k, and then it is
// one of the e >= tau_k, which the blocks gather (candidates_tau_p): one cluster round instead of seven barriers.
// Masses are summed in 2^-40 fixed point with integer adds, so the result does not depend on the order the
// threads add in; the kept sums that the draw walks are float sums in a fixed order (a seed reproduces its token).
// NumPy reference: minispec.sampling.sample_from(target_distribution(...), u). Tests: test_cuda_kernels.py.
#include "cluster.cuh"
#define SAMPLE_CLUSTER 8
#ifndef SAMPLE_THREADS
#define SAMPLE_THREADS 1024  // CudaBackend.SAMPLE_THREADS (256 and 512 measured slower: notes/sampling_h100_stop22.log)
#endif
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
// Two blocks a SM (__launch_bounds__(SAMPLE_THREADS, 2): 32 registers, a few bytes of spill), so that 16 clusters of
// 8 run at once (a 16-row sample): at one block a SM (64 registers, no spill) one row took 6% less
// but 16 rows 35% more, their last clusters waiting for a second wave (notes/sampling_h100_stop22.log).
#define RADIX_BINS 2048
#define MASS_ONE 1099511627776.0  // 2^40: e in (0, 1] as a fixed-point integer; V e's sum below 2^57
#define SAMPLE_CANDIDATES 256  // top-k up to this many: top-p's threshold from the top-k candidates, not a radix select
#define ROW_UNROLL 12  // logits in flight per thread while a slice is read (the row's one pass over global memory)

// sampling.position_uniforms: splitmix64's finaliser over the counter (position | stream << 32), then over that xor
// the key; the top 53 bits as a double in [0, 1) (exact, as numpy computes it).
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

__device__ __forceinline__ double position_uniform(unsigned long long key, int position, int stream) {
    const unsigned long long counter = (unsigned long long)(long long)position | ((unsigned long long)stream << 32);
    return (double)(mix64(key ^ mix64(counter + 0x9E3779B97F4A7C15ull)) >> 11) * 0x1.0p-53;
}

__device__ __forceinline__ int slice_len(int V) { return (V + SAMPLE_CLUSTER - 1) / SAMPLE_CLUSTER; }

// A bin's mass is kept as four 10-bit digit sums of the 40-bit fixed-point masses, each in its own 32-bit
// histogram: shared-memory atomics are native at 32 bits (a 64-bit add is a compare-and-swap loop, which
// contended bins turn into the pass's whole cost), a digit sum over V <= 2^22 values stays below 2^32, and
// the small e of the long tail have zero high digits, so they cost fewer adds.
// The other blocks of the cluster read `digits` (their share of the bins), `summed`, and the fields from `max_x` on.
struct SampleShared {
    unsigned int digits[4][RADIX_BINS];  // this block's histogram (counts in digits[0] when selecting by count)
    unsigned long long summed[RADIX_BINS / SAMPLE_CLUSTER];  // totals over the cluster of this block's share of bins
    unsigned long long warp_u64[SAMPLE_WARPS];
    float warp_f[SAMPLE_WARPS];
    int warp_last[SAMPLE_WARPS];
    float scratch[SAMPLE_WARPS];
    unsigned long long above;  // block-wide broadcasts
    int bin, range_begin, range_end, found;
    float before, target;
    float max_x;              // cluster-wide: the slice's largest logit
    unsigned long long mass;  // the slice's fixed-point mass
    float sum;                // the slice's kept p, summed in a fixed order (slice_sums)
    int last;                 // the slice's last index with p > 0 (-1: none)
    int candidates;              // top-k with top-p: the slice's e >= tau_k (candidates_tau_p), the first ones in
    float candidate[SAMPLE_CANDIDATES];  // `candidate`
    float gathered[SAMPLE_CANDIDATES];   // every block's candidates, and their fixed-point masses (block-local)
    unsigned long long gathered_mass[SAMPLE_CANDIDATES];
};

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

// Integer sum over the block (the order does not matter); every thread gets it.
__device__ unsigned long long block_sum_u64(unsigned long long value, SampleShared& sh) {
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) sh.warp_u64[warp] = value;
    __syncthreads();
    unsigned long long total = 0;
    for (int w = 0; w < SAMPLE_WARPS; w++) total += sh.warp_u64[w];
    return total;
}

// Values each block of the cluster put at `local`'s offset, gathered by every warp (lane q reads block q's) and
// combined; every lane gets the result: an order-free combine (max, integer sums), lanes past the cluster holding
// `none`.
template <typename T, typename Combine>
__device__ __forceinline__ T cluster_reduce(const T* local, T none, Combine combine) {
    const int lane = threadIdx.x % 32;
    T value = lane < SAMPLE_CLUSTER ? load_cluster(local, lane) : none;
    for (int offset = 16; offset > 0; offset >>= 1) value = combine(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

// Bins in descending order: the bin where the running total first reaches `need` (and the total of the bins
// above it), or bin -1 when all of them together stay below. total(b) is bin b's cluster-wide total.
// Block-wide; every thread gets the answer.
template <typename Total>
__device__ int find_crossing(SampleShared& sh, int bins, unsigned long long need, unsigned long long& above, Total total) {
    constexpr int MAX_PER = RADIX_BINS / SAMPLE_THREADS;
    const int per = bins / SAMPLE_THREADS;  // bins per thread, highest first
    unsigned long long mine = 0, own[MAX_PER];
    #pragma unroll
    for (int j = 0; j < MAX_PER; j++) {
        if (j >= per) break;
        int pos = threadIdx.x * per + j;
        own[j] = pos < bins ? total(bins - 1 - pos) : 0;
        mine += own[j];
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    unsigned long long inclusive = mine;
    for (int offset = 1; offset < 32; offset <<= 1) {
        unsigned long long other = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += other;
    }
    if (lane == 31) sh.warp_u64[warp] = inclusive;
    if (threadIdx.x == 0) sh.bin = -1;
    __syncthreads();
    if (warp == 0) {
        unsigned long long sum = lane < SAMPLE_WARPS ? sh.warp_u64[lane] : 0;
        for (int offset = 1; offset < 32; offset <<= 1) {
            unsigned long long other = __shfl_up_sync(0xffffffffu, sum, offset);
            if (lane >= offset) sum += other;
        }
        if (lane < SAMPLE_WARPS) sh.warp_u64[lane] = sum;  // inclusive over warps
    }
    __syncthreads();
    inclusive += warp > 0 ? sh.warp_u64[warp - 1] : 0;
    unsigned long long running = inclusive - mine;
    if (running < need && need <= inclusive) {  // exactly one thread holds the crossing
        #pragma unroll
        for (int j = 0; j < MAX_PER; j++) {
            if (j >= per) break;
            if (running + own[j] >= need) { sh.bin = bins - 1 - (threadIdx.x * per + j); sh.above = running; break; }
            running += own[j];
        }
    }
    __syncthreads();
    above = sh.above;
    int bin = sh.bin;
    __syncthreads();  // warp_u64, bin and above are reused next
    return bin;
}

// The bits of the e (an order statistic of the row's e, whose slices are e[0..n) in each block) where the count
// (by_mass false: each e counts 1) or the fixed-point mass from the top first reaches `need`; 0 when the goal is
// never reached. Per round: this block's histogram, a cluster barrier, this block's share of the bins totalled
// over the cluster's histograms (into `summed`), a cluster barrier, and every block reads every share. A block
// clears its histogram only after the second barrier (the others have totalled it), and writes `summed` only
// after the next round's first one (the others have read it).
__device__ unsigned int radix_select(const float* e, int n, bool by_mass, unsigned long long need, SampleShared& sh) {
    const int shifts[3] = {21, 10, 0}, widths[3] = {10, 11, 10};  // bit 31 (the sign) is 0
    const unsigned rank = blockIdx.x;
    unsigned int prefix = 0, mask = 0;
    #pragma unroll
    for (int round = 0; round < 3; round++) {
        const int shift = shifts[round], bins = 1 << widths[round], share = bins / SAMPLE_CLUSTER;
        for (int b = threadIdx.x; b < bins; b += blockDim.x) {
            sh.digits[0][b] = 0;
            if (by_mass) sh.digits[1][b] = sh.digits[2][b] = sh.digits[3][b] = 0;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float x = e[i];
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
        }
        cluster_sync();
        for (int j = threadIdx.x; j < share; j += blockDim.x) {
            const int b = rank * share + j;
            unsigned long long total = 0;
            for (unsigned q = 0; q < SAMPLE_CLUSTER; q++) {
                total += load_cluster(&sh.digits[0][b], q);
                if (by_mass)
                    total += ((unsigned long long)load_cluster(&sh.digits[1][b], q) << 10) +
                             ((unsigned long long)load_cluster(&sh.digits[2][b], q) << 20) +
                             ((unsigned long long)load_cluster(&sh.digits[3][b], q) << 30);
            }
            sh.summed[j] = total;
        }
        cluster_sync();
        unsigned long long above;
        int bin = find_crossing(sh, bins, need, above, [&](int b) { return load_cluster(&sh.summed[b % share], b / share); });
        if (bin < 0) return 0u;
        need -= above;
        prefix |= (unsigned int)bin << shift;
        mask |= (unsigned int)(bins - 1) << shift;
    }
    return prefix;
}

// tau_p from the `count` candidates (every e >= tau_k of the row, in the blocks' `candidate` lists): the largest
// candidate t whose mass(e >= t), in the fixed point, reaches `need`; 0 when none does (then mass(e >= tau_k) < need,
// so tau_p < tau_k and tau_k decides). The same value the radix select by mass finds when it is >= tau_k. Each block
// gathers all candidates (count <= SAMPLE_CANDIDATES) and checks each against all: count^2 / blockDim steps.
__device__ float candidates_tau_p(int count, unsigned long long need, SampleShared& sh) {
    for (int g = threadIdx.x; g < count; g += blockDim.x) {  // candidate g: block q's entry g - (those of blocks < q)
        int q = 0, before = 0;
        for (int here; q < SAMPLE_CLUSTER && g >= before + (here = min(load_cluster(&sh.candidates, q), SAMPLE_CANDIDATES)); q++) before += here;
        const float e = load_cluster(&sh.candidate[g - before], q);
        sh.gathered[g] = e;
        sh.gathered_mass[g] = (unsigned long long)((double)e * MASS_ONE);
    }
    __syncthreads();
    float best = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const float t = sh.gathered[i];
        unsigned long long above = 0;
        for (int j = 0; j < count; j++) above += sh.gathered[j] >= t ? sh.gathered_mass[j] : 0ull;
        if (above >= need) best = fmaxf(best, t);
    }
    return block_reduce(best, true, sh.scratch);
}

// The row's slice [begin, begin + n) into p (shared memory) as kept e: e_v if v passes the filters, else 0.
__device__ void target_probs(const float* __restrict__ row, float* p, int n, int V, double temperature, int top_k, double top_p,
                             double min_p, SampleShared& sh) {
    float local_max = -__int_as_float(0x7f800000);
    for (int base = threadIdx.x; base < n; base += ROW_UNROLL * blockDim.x) {
        float values[ROW_UNROLL];
        #pragma unroll
        for (int u = 0; u < ROW_UNROLL; u++) {  // every load issued before the first store
            const int i = base + u * blockDim.x;
            values[u] = i < n ? row[i] : 0.0f;
        }
        #pragma unroll
        for (int u = 0; u < ROW_UNROLL; u++) {
            const int i = base + u * blockDim.x;
            if (i < n) {
                p[i] = values[u];
                local_max = fmaxf(local_max, values[u]);
            }
        }
    }
    local_max = block_reduce(local_max, true, sh.scratch);
    if (threadIdx.x == 0) sh.max_x = local_max;
    cluster_sync();
    const float row_max = cluster_reduce(&sh.max_x, -__int_as_float(0x7f800000), [](float a, float b) { return fmaxf(a, b); });
    const double inv_t = 1.0 / temperature, z_max = (double)row_max * inv_t;
    unsigned long long local_mass = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        // z - max z in double, as the reference divides: at top_p near 1 the cut falls among tokens of p ~ 1e-6
        // of the mass, and a float z's error (|z| ulp, the same sign for neighbours) moved the cut by a token;
        // exp itself in float (a double exp per logit cost more than the rest of a pass)
        float e = expf((float)fma((double)p[i], inv_t, -z_max));
        p[i] = e;
        local_mass += (unsigned long long)((double)e * MASS_ONE);
    }
    __syncthreads();  // every e is in p before the passes below read other threads' entries
    float tau = (float)min_p;  // min_p * max p, and max e = 1
    const bool by_k = top_k > 0 && top_k < V;
    const float tau_k = by_k ? __uint_as_float(radix_select(p, n, false, (unsigned long long)top_k, sh)) : 0.0f;
    tau = fmaxf(tau, tau_k);
    if (top_p < 1.0) {
        // with top-k on, tau_p matters only where it is above tau_k, and then it is one of the e >= tau_k: the
        // slices' candidates (e >= tau_k) go out with the masses, and no radix select runs (candidates_tau_p)
        const bool gather = by_k && top_k <= SAMPLE_CANDIDATES;  // the same in every thread: the barrier is safe
        if (gather) {
            if (threadIdx.x == 0) sh.candidates = 0;
            __syncthreads();
            for (int i = threadIdx.x; i < n; i += blockDim.x)
                if (p[i] >= tau_k) {
                    const int at = atomicAdd(&sh.candidates, 1);
                    if (at < SAMPLE_CANDIDATES) sh.candidate[at] = p[i];
                }
        }
        // the row's total mass in the same fixed point, summed exactly (integer adds commute)
        local_mass = block_sum_u64(local_mass, sh);
        if (threadIdx.x == 0) sh.mass = local_mass;
        cluster_sync();
        const unsigned long long total = cluster_reduce(&sh.mass, 0ull, [](unsigned long long a, unsigned long long b) { return a + b; });
        unsigned long long need = (unsigned long long)ceil(top_p * (double)total);
        need = need > 0 ? need : 1ull;
        const int count = gather ? cluster_reduce(&sh.candidates, 0, [](int a, int b) { return a + b; }) : SAMPLE_CANDIDATES + 1;
        const float tau_p = count <= SAMPLE_CANDIDATES ? candidates_tau_p(count, need, sh) : __uint_as_float(radix_select(p, n, true, need, sh));
        tau = fmaxf(tau, tau_p);
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = p[i] >= tau ? p[i] : 0.0f;
    __syncthreads();
}

// Sum of p over [begin, end) by one warp, lanes strided (a fixed order: the same bits every run); also the
// last index with p > 0 there (-1 if none).
__device__ float warp_range_sum(const float* p, int begin, int end, int& last) {
    const int lane = threadIdx.x % 32;
    float sum = 0.0f;
    last = -1;
    for (int i = begin + lane; i < end; i += 32) {
        sum += p[i];
        if (p[i] > 0.0f) last = i;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        last = max(last, __shfl_xor_sync(0xffffffffu, last, offset));
    }
    return sum;
}

// The slice cut into one chunk a warp: each warp's sum (sh.warp_f, in a fixed order), its last index with p > 0
// (sh.warp_last, slice index), and the slice's sum (sh.sum: the warps' sums added in warp order, as the draw
// walks them) and last kept index (sh.last, row index, -1: none).
__device__ __forceinline__ int warp_chunk(int n) { return ((n + SAMPLE_WARPS - 1) / SAMPLE_WARPS + 31) / 32 * 32; }

__device__ void slice_sums(const float* p, int n, int begin, SampleShared& sh) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, C = warp_chunk(n);
    const int chunk_begin = min(n, warp * C), chunk_end = min(n, chunk_begin + C);
    int last;
    float sum = warp_range_sum(p, chunk_begin, chunk_end, last);
    if (lane == 0) { sh.warp_f[warp] = sum; sh.warp_last[warp] = last; }
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        int last_kept = -1;
        for (int w = 0; w < SAMPLE_WARPS; w++) { total += sh.warp_f[w]; last_kept = max(last_kept, sh.warp_last[w]); }
        sh.sum = total;
        sh.last = last_kept >= 0 ? begin + last_kept : -1;
    }
}

// The first v (index order) whose running sum of p exceeds u * (sum of p); the last v with p > 0 when rounding
// leaves the target past the end; 0 when no p > 0 (NaN or -inf logits). Every block of the cluster calls it
// after target_probs (p: its slice [begin, begin + n)); the block where the running sum passes the target
// returns the token, the others -1 (block 0 returns it when no block does). Rounds narrow the range: the slices
// (their sums in rank order), the holding slice's warp chunks (slice_sums), one warp chunk cut again into one
// piece a warp, then one warp scans the last piece 32 at a time.
__device__ int sample_index(const float* p, int n, int begin, double u, SampleShared& sh) {
    slice_sums(p, n, begin, sh);
    cluster_sync();
    __shared__ int holder, last_kept;
    const int warps = SAMPLE_WARPS, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 0) {  // the slices' sums in rank order: the one where the running sum passes the target
        const float sum = lane < SAMPLE_CLUSTER ? load_cluster(&sh.sum, lane) : 0.0f;
        int last = lane < SAMPLE_CLUSTER ? load_cluster(&sh.last, lane) : -1;
        for (int offset = 16; offset > 0; offset >>= 1) last = max(last, __shfl_xor_sync(0xffffffffu, last, offset));
        float total = 0.0f;
        #pragma unroll
        for (int q = 0; q < SAMPLE_CLUSTER; q++) total += __shfl_sync(0xffffffffu, sum, q);
        const float target = (float)(u * total);
        float running = 0.0f;
        int found = -1;
        #pragma unroll
        for (int q = 0; q < SAMPLE_CLUSTER; q++) {
            const float here = __shfl_sync(0xffffffffu, sum, q);
            if (found < 0 && here > 0.0f && running + here > target) found = q;
            if (found < 0) running += here;
        }
        if (lane == 0) {
            holder = found;
            last_kept = last;
            sh.before = running;
            sh.target = target;
        }
    }
    cluster_sync();  // no block reads another's shared memory past here
    if (holder != (int)blockIdx.x) return holder < 0 && blockIdx.x == 0 ? max(last_kept, 0) : -1;
    int lo = 0, hi = n, C = warp_chunk(n);
    for (int round = 0; round < 2; round++) {
        if (round == 1) {  // the chunk found, cut again into one piece a warp
            C = ((hi - lo + warps - 1) / warps + 31) / 32 * 32;
            const int piece_begin = min(hi, lo + warp * C), piece_end = min(hi, piece_begin + C);
            int last;
            float sum = warp_range_sum(p, piece_begin, piece_end, last);
            if (lane == 0) sh.warp_f[warp] = sum;
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            float running = sh.before;
            sh.range_begin = sh.range_end = hi;  // not found: the scan below finds nothing
            for (int w = 0; w < warps; w++) {
                if (sh.warp_f[w] > 0.0f && running + sh.warp_f[w] > sh.target) {
                    sh.range_begin = min(hi, lo + w * C);
                    sh.range_end = min(hi, sh.range_begin + C);
                    break;
                }
                running += sh.warp_f[w];
            }
            sh.before = running;
        }
        __syncthreads();
        lo = sh.range_begin;
        hi = sh.range_end;
        __syncthreads();  // warp_f is rewritten next round
    }
    if (threadIdx.x == 0) sh.found = -1;
    __syncthreads();
    if (warp == 0) {
        float running = sh.before;
        for (int base = lo; base < hi; base += 32) {
            float x = base + lane < hi ? p[base + lane] : 0.0f;
            float inclusive = x;
            for (int offset = 1; offset < 32; offset <<= 1) {
                float other = __shfl_up_sync(0xffffffffu, inclusive, offset);
                if (lane >= offset) inclusive += other;
            }
            unsigned int crossed = __ballot_sync(0xffffffffu, x > 0.0f && running + inclusive > sh.target);
            if (crossed) {
                if (lane == __ffs(crossed) - 1) sh.found = base + lane;
                break;
            }
            running += __shfl_sync(0xffffffffu, inclusive, 31);
        }
    }
    __syncthreads();
    // not found (rounding): the last kept token; nothing kept at all (a row of NaN or -inf logits): token 0, so
    // that a step ahead still reads a valid id
    return sh.found >= 0 ? begin + sh.found : max(last_kept, 0);
}

extern "C" __global__ void __cluster_dims__(SAMPLE_CLUSTER, 1, 1) __launch_bounds__(SAMPLE_THREADS, 2)
sample_rows(const float* __restrict__ logits, const double* __restrict__ settings, int* __restrict__ tokens, float* __restrict__ probs, int V,
            const int* __restrict__ positions, unsigned long long key) {
    pdl_begin();
    extern __shared__ float p[];  // [slice_len(V)]
    __shared__ SampleShared sh;
    const int r = blockIdx.y, S = slice_len(V), begin = blockIdx.x * S, n = max(0, min(V, begin + S) - begin);
    const double* s = settings + 6 * r;  // row, temperature, top_k, top_p, min_p, u
    target_probs(logits + (long long)s[0] * V + begin, p, n, V, s[1], (int)s[2], s[3], s[4], sh);
    if (probs != nullptr)
        for (int i = threadIdx.x; i < n; i += blockDim.x) probs[(long long)r * V + begin + i] = p[i];
    const double u = positions != nullptr ? position_uniform(key, positions[r], 0) : s[5];
    int token = sample_index(p, n, begin, u, sh);
    if (threadIdx.x == 0 && token >= 0) tokens[r] = token;
}

// specinfer_rows: SpecInfer's test at the nodes of chains whose children were drawn from the draft's q (a draft
// model's sampled chains, ModelDrafter.propose_chains), with each node's target p made as sample_rows makes it (kept
// e units in the cluster's shared memory; never written out), so the host reads one int a node instead of the rows:
//   a node whose child x was drawn from q (q_row >= 0): accept x iff u1 < min(1, p(x) / q(x)) (p and q normalised,
//     the sums in a fixed order); token = -1 where accepted, else the draw at u2 from the residual
//     r = max(p - q, 0) (sample_index: the first v whose running sum of r exceeds u2 * sum r);
//   a node without one (q_row < 0: the chain's last): token = p's draw at u1, sample_rows' token.
// verify.verify_sampled's rule on a chain (one child a node): the tests at a node at position L + k use the
// uniforms of streams 1 and 2 there. settings float64 [R, 9]: row, temperature, top_k, top_p, min_p, u1, q_row,
// child, u2; q float [Q, V]: the draft's kept q in e units (CudaBackend.draw_rows); tokens int32 [R].
// grid (SAMPLE_CLUSTER, R), cluster (SAMPLE_CLUSTER, 1, 1), block SAMPLE_THREADS, dynamic shared memory
// slice_len(V) floats. NumPy reference: NumpyBackend.specinfer_rows. Tests: test_cuda_kernels.py.
extern "C" __global__ void __cluster_dims__(SAMPLE_CLUSTER, 1, 1) __launch_bounds__(SAMPLE_THREADS, 2)
specinfer_rows(const float* __restrict__ logits, const double* __restrict__ settings, const float* __restrict__ q,
               int* __restrict__ tokens, int V) {
    pdl_begin();
    extern __shared__ float p[];  // [slice_len(V)]: p, then the residual
    __shared__ SampleShared sh;
    __shared__ float slice_p, slice_q, child_p, child_q;  // read by the cluster's blocks (never rewritten)
    __shared__ float sum_p, sum_q;
    __shared__ int accepted;
    const int r = blockIdx.y, S = slice_len(V), begin = blockIdx.x * S, n = max(0, min(V, begin + S) - begin);
    const double* s = settings + 9 * r;  // row, temperature, top_k, top_p, min_p, u1, q_row, child, u2
    target_probs(logits + (long long)s[0] * V + begin, p, n, V, s[1], (int)s[2], s[3], s[4], sh);
    const long long q_row = (long long)s[6];
    if (q_row < 0) {  // the chain's last node: p's draw
        const int token = sample_index(p, n, begin, s[5], sh);
        if (threadIdx.x == 0 && token >= 0) tokens[r] = token;
        return;
    }
    const int child = (int)s[7];
    const float* qs = q + q_row * V + begin;
    float ps = 0.0f, qsum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) { ps += p[i]; qsum += qs[i]; }
    ps = block_reduce(ps, false, sh.scratch);
    qsum = block_reduce(qsum, false, sh.scratch);
    if (threadIdx.x == 0) {
        const bool here = child >= begin && child < begin + n;
        slice_p = ps;
        slice_q = qsum;
        child_p = here ? p[child - begin] : 0.0f;
        child_q = here ? qs[child - begin] : 0.0f;
    }
    cluster_sync();
    if (threadIdx.x == 0) {  // every block decides alike: the slices' sums in rank order
        float total_p = 0.0f, total_q = 0.0f;
        for (int b = 0; b < SAMPLE_CLUSTER; b++) { total_p += load_cluster(&slice_p, b); total_q += load_cluster(&slice_q, b); }
        const int holder = min(child / S, SAMPLE_CLUSTER - 1);
        const double ratio = ((double)load_cluster(&child_p, holder) / total_p) / ((double)load_cluster(&child_q, holder) / total_q);
        accepted = s[5] < fmin(1.0, ratio);  // (q(x) = 0 cannot be: x was drawn from q; NaN reads as 1, as on the host)
        sum_p = total_p;
        sum_q = total_q;
    }
    __syncthreads();
    if (accepted) {
        if (threadIdx.x == 0 && blockIdx.x == 0) tokens[r] = -1;
        cluster_sync();  // (the other blocks may still read this one's sums)
        return;
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = fmaxf(p[i] / sum_p - qs[i] / sum_q, 0.0f);
    __syncthreads();
    const int token = sample_index(p, n, begin, s[8], sh);  // (its first cluster barrier: the sums' reads are done)
    if (threadIdx.x == 0 && token >= 0) tokens[r] = token;
}
