// n-gram speculation between two tree steps, on the device: verify the step just run, commit its accepted K/V,
// append the tokens, draft the next tree, and write the next step's plan where its replay reads it. One block; the
// host launches step k + 1 before it reads step k's tokens (minispec/ngram_device.py). Greedy, ids are the argmax;
// sampled, each node's draw at its position (CudaBackend.ngram_draws), which the same walk verifies (verify.py).
//
// Verify (verify.verify_chosen): from the root, follow the child whose token is ids[node]; where no
//   child matches, ids[node] is the bonus. path = accepted nodes from the root (P of them), tokens taken = the
//   path's tokens after the root, then the bonus (P).
// Commit (KVCache.commit): node path[j] at position L + path[j] moves to L + j, for j = 1 .. P-1 in order (path[j]
//   >= j and increasing, so a destination is never a later source); every layer's K and V, every KV head.
//   caches: uint64 [C] pointers to store_t [NP, Hkv, P, D] pools (K of every layer, then V); moved as row_words
//   32-bit words a head row. L' = L + P; hist[L+1 .. L'] = the tokens taken (hist[L'] the bonus, the next root).
// Counts (NgramDrafter.commit): a path node with children is a try, accepted when the path goes on; a tree of more
//   than the root adds P to tree_tokens and 1 to tree_steps. alpha = accepted / tries.
// Draft (NgramDrafter.propose, whose scan form is drafters.scan_match_starts):
//   starts: for n = min(max_ngram, len - 1) down to 1 (2 while alpha < 1/2), the ends e < len - 1 whose n tokens
//   equal the last n, most recent first; a start e + 1 gains weight n (first place kept) until max_matches
//   (start, n) pairs; where n = 1 finds the first and matches at `common` or more places, none.
//   gate: unless tree_tokens >= pays * tree_steps, no draft while every weight is below `strong`.
//   tree (drafters.ngram_tree): the trie of the continuations hist[start : start + depth] (continuation_trie, at
//   most 64 nodes), value(child) = value(parent) * alpha * weight(child) / weight(parent) in doubles in that order
//   (no contraction: __dmul_rn, __ddiv_rn), best_subtree of min(nodes, max_len - L') nodes, `width` children each.
// Stop (Engine.take_tokens): where a token taken is a stop token (stop0..3, -1 for none) or hist reaches stop_len
//   tokens, the sequence ends there. Then, and where the draft is the root alone, the plan is empty (cu_q[1] = 0,
//   T' = 0), whose step the fused kernel skips: the step the host launched behind this one costs ~0.04 ms instead of a
//   full tree step, and the host goes on as its own loop does (plain decoding ahead). An advance after it (T = 0)
//   writes nothing.
// Plan (CapturedStep's packed int32 layout, B = 1): masks 2N (uint64 ancestor bits) | tokens N | positions N (L' +
//   depth) | slots N (page * P + row of L' + i) | logit_rows N | cu_q 2 | kv_len | tree_start | causal | page table
//   W (the host's, read here). Rows past the tree: mask 0, token 0, position 0, slot -1, their own logit row.
// State (int32): hist [capacity]; state [8] = L, T, accepted, tries, tree_tokens, tree_steps; tree [2 * 64] =
//   tokens | parents of the step's tree (rewritten with the next one).
// out [72] (the host's record, in pinned memory): P, T', L', accepted, tries, tree_tokens, tree_steps, -, then the
//   P tokens taken.
// NumPy reference: NumpyBackend.ngram_advance. Tests: tests/test_ngram_device.py.
#include "pdl.cuh"

#define MAX_NODES 64
#define MAX_FOUND 8  // max_matches (the host checks)
#define CANDIDATES 16  // starts kept from one suffix length: max(MAX_FOUND, common) at most
#define THREADS 256
#define OUT_TOKENS 8

extern "C" __global__ void __launch_bounds__(THREADS)
ngram_advance(const int* __restrict__ ids, int* __restrict__ hist, int* __restrict__ state, int* __restrict__ tree,
              int* __restrict__ packed, int* __restrict__ out, const unsigned long long* __restrict__ caches,
              int num_caches, int Hkv, int page_size, int row_words, int N, int max_len, int max_ngram,
              int max_matches, int depth, int nodes, int width, int common, int strong, double pays, int stop0,
              int stop1, int stop2, int stop3, int stop_len) {
    __shared__ int s_path[MAX_NODES], s_P, s_L, s_len, s_stopped;
    __shared__ int s_acc, s_tries, s_tree_tokens, s_tree_steps;
    __shared__ int s_found_start[MAX_FOUND], s_found_weight[MAX_FOUND], s_nfound, s_matches, s_done;
    __shared__ int s_cand[CANDIDATES], s_warp[THREADS / 32];
    __shared__ int s_tok[MAX_NODES], s_par[MAX_NODES], s_wt[MAX_NODES], s_n;  // the trie
    __shared__ double s_val[MAX_NODES];
    __shared__ int s_order[MAX_NODES], s_fast, s_cap;
    __shared__ int s_path_nodes[MAX_FOUND][MAX_NODES], s_path_len[MAX_FOUND];
    __shared__ int s_ttok[MAX_NODES], s_tpar[MAX_NODES], s_T;  // the next tree
    __shared__ unsigned long long s_anc[MAX_NODES];
    __shared__ int s_depth[MAX_NODES];
    __shared__ int s_ids[MAX_NODES], s_next[MAX_NODES], s_kids[MAX_NODES], s_cont[MAX_FOUND][MAX_NODES];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    pdl_wait();
    const int* table = packed + 6 * N + 5;

    // ---- verify, counts, tokens taken (the step's tree and ids staged in shared memory first: the walk and the
    // counts are one thread's chains of dependent reads)
    const int T0 = state[1];
    if (T0 == 0) {  // the sequence stopped at an earlier step: nothing to verify, the plan stays empty
        if (tid == 0) out[0] = out[1] = 0;
        return;
    }
    for (int i = tid; i < T0; i += THREADS) {
        s_ttok[i] = tree[i];
        s_tpar[i] = tree[MAX_NODES + i];
        s_ids[i] = ids[i];
    }
    __syncthreads();
    for (int i = tid; i < T0; i += THREADS) {  // node i's child on the argmax (the first in order), and whether it has any
        int next = -1, kids = 0;
        for (int c = i + 1; c < T0; ++c)
            if (s_tpar[c] == i) {
                kids = 1;
                if (next < 0 && s_ttok[c] == s_ids[i]) next = c;
            }
        s_next[i] = next;
        s_kids[i] = kids;
    }
    __syncthreads();
    if (tid == 0) {
        const int L = state[0];
        int node = 0, P = 1;
        s_path[0] = 0;
        while (s_next[node] >= 0) s_path[P++] = node = s_next[node];
        const int bonus = s_ids[node];
        int acc = state[2], tries = state[3], tree_tokens = state[4], tree_steps = state[5];
        for (int j = 0; j < P; ++j)
            if (s_kids[s_path[j]]) { ++tries; acc += j + 1 < P; }
        if (T0 > 1) { tree_tokens += P; ++tree_steps; }
        for (int j = 1; j < P; ++j) {
            hist[L + j] = s_ttok[s_path[j]];
            out[OUT_TOKENS + j - 1] = s_ttok[s_path[j]];
        }
        hist[L + P] = bonus;
        out[OUT_TOKENS + P - 1] = bonus;
        bool stopped = L + P + 1 >= stop_len;  // Engine.take_tokens: a stop token taken, or the length reached
        for (int j = 1; j <= P; ++j) {
            const int token = j < P ? s_ttok[s_path[j]] : bonus;
            stopped |= token == stop0 || token == stop1 || token == stop2 || token == stop3;
        }
        s_stopped = stopped;
        s_P = P; s_L = L; s_len = L + P + 1;
        s_acc = acc; s_tries = tries; s_tree_tokens = tree_tokens; s_tree_steps = tree_steps;
        s_nfound = 0; s_matches = 0; s_done = 0;
    }
    __syncthreads();

    // ---- commit: K/V of path[j] to L + j, one destination at a time
    {
        const int L = s_L, per_cache = Hkv * row_words;
        for (int j = 1; j < s_P; ++j) {
            const int from = L + s_path[j], to = L + j;
            if (from != to) {
                const long long src_page = table[from / page_size], dst_page = table[to / page_size];
                for (int idx = tid; idx < num_caches * per_cache; idx += THREADS) {
                    const int c = idx / per_cache, h = (idx % per_cache) / row_words, w = idx % row_words;
                    unsigned* cache = reinterpret_cast<unsigned*>(caches[c]);
                    cache[((dst_page * Hkv + h) * page_size + to % page_size) * row_words + w] =
                        cache[((src_page * Hkv + h) * page_size + from % page_size) * row_words + w];
                }
            }
            __syncthreads();
        }
    }

    if (s_stopped) {  // no next tree: an empty plan, whose step does no work (the fused kernel returns at once)
        if (tid == 0) s_T = 0;
        __syncthreads();
        goto plan;
    }

    // ---- suffix matches: for each n, a scan of the ends from the most recent down, a block of ends at a time
    {
        const int len = s_len;
        const int shortest = 2 * s_acc >= s_tries ? 1 : 2;
        for (int n = min(max_ngram, len - 1); n >= shortest; --n) {
            // read after a sync by every thread: the scan's trip count is the same in all of them
            const int need_common = (n == 1 && s_nfound == 0) ? common : 0;
            const int need = max(need_common, max_matches - s_matches);
            __syncthreads();  // every thread has read them (and the last round's s_done) before thread 0 writes again
            int collected = 0;
            for (int top = len - 2; top >= n - 1 && collected < need; top -= THREADS) {
                const int e = top - tid;
                bool hit = e >= n - 1;
                for (int k = 0; k < n && hit; ++k) hit = hist[e - k] == hist[len - 1 - k];
                const unsigned ballot = __ballot_sync(0xffffffffu, hit);
                if (lane == 0) s_warp[warp] = __popc(ballot);
                __syncthreads();
                int before = 0, total = 0;
                for (int w = 0; w < THREADS / 32; ++w) {
                    before += w < warp ? s_warp[w] : 0;
                    total += s_warp[w];
                }
                const int rank = collected + before + __popc(ballot & ((1u << lane) - 1));
                if (hit && rank < CANDIDATES) s_cand[rank] = e + 1;  // most recent first
                collected += total;
                __syncthreads();
            }
            if (tid == 0) {
                if (need_common && collected >= common) {
                    s_done = 1;  // a common token alone matches
                } else {
                    for (int i = 0; i < min(collected, CANDIDATES); ++i) {
                        const int start = s_cand[i];
                        int f = 0;
                        while (f < s_nfound && s_found_start[f] != start) ++f;
                        if (f == s_nfound) { s_found_start[f] = start; s_found_weight[f] = 0; ++s_nfound; }
                        s_found_weight[f] += n;
                        if (++s_matches >= max_matches) { s_done = 1; break; }
                    }
                }
            }
            __syncthreads();
            if (s_done) break;
        }
    }
    __syncthreads();

    // ---- the gate (NgramDrafter.pays), then the continuations staged in shared memory
    if (tid == 0 && !(s_tree_tokens >= pays * s_tree_steps)) {
        int strongest = 0;
        for (int f = 0; f < s_nfound; ++f) strongest = max(strongest, s_found_weight[f]);
        if (strongest < strong) s_nfound = 0;
    }
    __syncthreads();
    for (int idx = tid; idx < s_nfound * MAX_NODES; idx += THREADS) {
        const int f = idx / MAX_NODES, i = idx % MAX_NODES, start = s_found_start[f];
        if (i < min(depth, s_len - start)) s_cont[f][i] = hist[start + i];  // (a trie path holds 63 tokens at most)
    }
    __syncthreads();

    // ---- the trie of the continuations (drafters.continuation_trie) and its values
    if (tid == 0) {
        const int len = s_len, nfound = s_nfound;
        int n = 1;
        s_tok[0] = hist[len - 1]; s_par[0] = -1; s_wt[0] = 0;
        for (int f = 0; f < nfound; ++f) {
            const int weight = s_found_weight[f], clen = min(depth, len - s_found_start[f]);
            const int* cont = s_cont[f];
            s_wt[0] += weight;
            int shared = 0, along = -1;
            for (int p = 0; p < f; ++p) {
                const int* other = s_cont[p];
                if (other[0] != cont[0] || s_path_len[p] <= shared) continue;
                int k = 1;
                const int end = min(clen, s_path_len[p]);
                while (k < end && other[k] == cont[k]) ++k;
                if (k > shared) { shared = k; along = p; }
            }
            for (int i = 0; i < shared; ++i) {
                s_wt[s_path_nodes[along][i]] += weight;
                s_path_nodes[f][i] = s_path_nodes[along][i];
            }
            const int fresh = max(0, min(clen - shared, MAX_NODES - n));
            for (int i = 0; i < fresh; ++i) {
                s_tok[n + i] = cont[shared + i];
                s_par[n + i] = i ? n + i - 1 : (shared ? s_path_nodes[along][shared - 1] : 0);
                s_wt[n + i] = weight;
                s_path_nodes[f][shared + i] = n + i;
            }
            s_path_len[f] = shared + fresh;
            n += fresh;
        }
        const double alpha = __ddiv_rn((double)s_acc, (double)s_tries);
        for (int i = 1; i < n; ++i) {
            const int p = s_par[i];
            double v = p == 0 ? 1.0 : s_val[p];
            v = __dmul_rn(v, alpha);
            v = __dmul_rn(v, (double)s_wt[i]);
            s_val[i] = __ddiv_rn(v, (double)s_wt[p]);
        }
        s_n = n;
    }
    __syncthreads();
    for (int i = tid; i < s_n; i += THREADS) {  // children of each trie node
        int kids = 0;
        for (int c = i + 1; c < s_n; ++c) kids += s_par[c] == i;
        s_kids[i] = kids;
    }
    __syncthreads();
    if (tid == 0) {
        int most = 0;
        for (int i = 0; i < s_n; ++i) most = max(most, s_kids[i]);
        s_cap = max(1, min(nodes, max_len - (s_len - 1)));
        s_fast = s_n <= s_cap && most <= width;
    }
    __syncthreads();

    // ---- best_subtree: candidates by descending value (ties: older first), kept where the parent is kept and has room
    if (!s_fast) {
        const int n = s_n;
        for (int i = tid + 1; i < n; i += THREADS) {
            int rank = 0;
            for (int j = 1; j < n; ++j)
                rank += s_val[j] > s_val[i] || (s_val[j] == s_val[i] && j < i);
            s_order[rank] = i;
        }
    }
    __syncthreads();
    if (tid == 0) {
        const int n = s_n;
        if (s_fast) {
            for (int i = 0; i < n; ++i) { s_ttok[i] = s_tok[i]; s_tpar[i] = s_par[i]; }
            s_T = n;
        } else {
            int kept[MAX_NODES], children[MAX_NODES], index[MAX_NODES];
            for (int i = 0; i < n; ++i) { kept[i] = i == 0; children[i] = 0; }
            int count = 1;
            for (int r = 0; r < n - 1 && count < s_cap; ++r) {
                const int node = s_order[r], p = s_par[node];
                if (kept[p] && children[p] < width) { kept[node] = 1; ++children[p]; ++count; }
            }
            int T = 0;
            for (int i = 0; i < n; ++i)
                if (kept[i]) {
                    index[i] = T;
                    s_ttok[T] = s_tok[i];
                    s_tpar[T] = i ? index[s_par[i]] : -1;
                    ++T;
                }
            s_T = T;
        }
        if (s_T == 1) s_T = 0;  // no draft: an empty plan (the host decodes plainly, one step ahead, until a tree pays)
        for (int i = 0; i < s_T; ++i) {
            s_depth[i] = i ? s_depth[s_tpar[i]] + 1 : 0;
            s_anc[i] = (i ? s_anc[s_tpar[i]] : 0ull) | (1ull << i);
        }
    }
    __syncthreads();

    // ---- the next step's plan, tree and state; the host's record
plan:
    const int T = s_T, L = s_len - 1;
    for (int i = tid; i < N; i += THREADS) {
        const bool node = i < T;
        const unsigned long long anc = node ? s_anc[i] : 0ull;
        packed[2 * i] = (int)(anc & 0xffffffffu);
        packed[2 * i + 1] = (int)(anc >> 32);
        packed[2 * N + i] = node ? s_ttok[i] : 0;
        packed[3 * N + i] = node ? L + s_depth[i] : 0;
        const int position = L + i;
        packed[4 * N + i] = node ? table[position / page_size] * page_size + position % page_size : -1;
        packed[5 * N + i] = i;
    }
    for (int i = tid; i < MAX_NODES; i += THREADS) {
        tree[i] = i < T ? s_ttok[i] : 0;
        tree[MAX_NODES + i] = i < T ? s_tpar[i] : -1;
    }
    if (tid == 0) {
        packed[6 * N] = 0;
        packed[6 * N + 1] = T;
        packed[6 * N + 2] = L + T;  // kv_len
        packed[6 * N + 3] = L;  // tree_start
        packed[6 * N + 4] = 0;  // causal
        state[0] = L; state[1] = T;
        state[2] = s_acc; state[3] = s_tries; state[4] = s_tree_tokens; state[5] = s_tree_steps;
        out[0] = s_P; out[1] = T; out[2] = L;
        out[3] = s_acc; out[4] = s_tries; out[5] = s_tree_tokens; out[6] = s_tree_steps;
        out[7] = 0;
    }
}
