// tree_attention_wgmma's body and instance macro, for the two files that instance it: kernels/attention_wgmma.cu (steps
// with causal chunks, prefill; its opening comment describes the kernel) and kernels/attention_wgmma_tree.cu (steps of
// tree rows alone: decode, verify). Two files, so that a machine's first run compiles them side by side and a first
// answer waits for the prefill's instances alone.
#pragma once
#include <cuda_bf16.h>
#include "pdl.cuh"
#include "hopper.cuh"
#include "attention.cuh"
#include "head_dim.cuh"

__host__ __device__ constexpr int attention_ring(int D, int KEYS) { return 196608 / (4 * KEYS * D) < 6 ? 196608 / (4 * KEYS * D) : 6; }
template <int D, int KEYS, bool CAUSAL_SKIP>
__device__ void tree_attention_wgmma(
    const float* __restrict__ q, const __nv_bfloat16* __restrict__ k_cache, const __nv_bfloat16* __restrict__ v_cache,
    const TensorMap& k_map, const TensorMap& v_map, int box_rows,
    const int* __restrict__ cu_q, const int* __restrict__ kv_len, const int* __restrict__ tree_start,
    const unsigned long long* __restrict__ masks, const int* __restrict__ causal,
    const int* __restrict__ page_tables, int max_pages, int B,
    float* __restrict__ o_part, float* __restrict__ ml_part, __nv_bfloat16* __restrict__ out,
    int N, int H, int Hkv, int P, float scale, int producers) {
    constexpr int ROWS = 128, RING = attention_ring(D, KEYS), TILE = KEYS * D, NT = KEYS / 8, ATOMS = D / 64;
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    __nv_bfloat16* base = reinterpret_cast<__nv_bfloat16*>(shared_bytes + (1024 - (unsigned)__cvta_generic_to_shared(shared_bytes) % 1024) % 1024);
    __nv_bfloat16* k_ring = base;
    __nv_bfloat16* v_ring = k_ring + RING * TILE;
    unsigned long long* full = reinterpret_cast<unsigned long long*>(v_ring + RING * TILE);
    unsigned long long* empty = full + RING;
    // warp read through a shuffle: the compiler then knows it warp-uniform, which wgmma needs to stay
    // asynchronous (on a path it thinks divergent, ptxas serialises the products)
    const int warp = __shfl_sync(0xffffffff, threadIdx.x / 32, 0), group = warp / 4;  // group 2: the producers
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int G = H / Hkv, kv_head = blockIdx.y;
    int b, tile;
    if (!locate_row_tile(cu_q, B, G, ROWS, b, tile)) return;
    const int T = cu_q[b + 1] - cu_q[b], rows = T * G, S = kv_len[b], start = tree_start[b], is_causal = causal[b];
    int tile_begin, tile_count;
    split_tiles(S, T, G, is_causal, tile * ROWS + ROWS - 1, KEYS, tile_begin, tile_count);
    const QueryRows r(tile * ROWS + group * 64 + warp % 4 * 16 + g, rows, G, kv_head, H, cu_q[b], masks);
    if (tile_count == 0) {  // the whole block leaves before its first barrier (never with one split)
        pdl_wait();
        if (group < 2) store_empty_share(r, t, ml_part, N, H);
        return;
    }

    // The producer warps' tile loads: box j = producers x lane + warp of a tile (segment j / (2 ATOMS), atom
    // j / 2 % ATOMS, K or V by j % 2), so the warps issue a tile's boxes side by side; rows past the whole
    // segments by cp.async (producer warp 0). A segment is one page's box_rows = P rows: its page is entry
    // tile x KEYS / P + segment of the table (no division by the runtime P), its first row the page's first.
    const int producer = warp - 8, job = lane * producers + producer;
    const int segments = box_rows ? KEYS / box_rows : 0, jobs = segments * 2 * ATOMS;
    if (jobs > 32 * producers) __trap();  // a box per lane: the backend never sends more (attention_tile_keys)
    const int segment = job / (2 * ATOMS), atom = job / 2 % ATOMS, is_v = job % 2;
    const int* table = page_tables + (long long)b * max_pages;
    const long long page_elements = (long long)Hkv * P * D;
    // the page of this lane's segment in tile j if the segment is whole (all its rows < S), else -1
    auto segment_page = [&](int j) {
        const int key = (tile_begin + j) * KEYS + segment * box_rows;
        return job < jobs && j < tile_count && key + box_rows <= S ? table[(tile_begin + j) * segments + segment] : -1;
    };
    auto load_tile = [&](int j, int page) {  // tile j into its slot, whose previous readers are done
        const int slot = j % RING, key0 = (tile_begin + j) * KEYS;
        const int boxes = __popc(__ballot_sync(0xffffffff, page >= 0));
        if (lane == 0) mbarrier_expect_bytes(full + slot, boxes * box_rows * 128);
        __syncwarp();
        if (page >= 0)
            tma_load((is_v ? v_ring : k_ring) + slot * TILE + atom * KEYS * 64 + segment * box_rows * 64, is_v ? &v_map : &k_map,
                     atom * 64, (page * Hkv + kv_head) * P, full + slot);
        // whole segments are a prefix of the tile
        const int boxed_rows = !box_rows ? 0 : key0 + KEYS <= S ? KEYS : max(0, S - key0) / box_rows * box_rows;
        if (producer == 0 && boxed_rows < KEYS) {  // the rest by cp.async, zero past S (masked keys must meet finite V)
            for (int i = lane; i < (KEYS - boxed_rows) * (D / 8); i += 32) {
                const int row = boxed_rows + i / (D / 8), chunk = i % (D / 8), key = key0 + row;
                const long long offset = key < S ? table[key / P] * page_elements + (kv_head * P + key % P) * D + chunk * 8 : 0;
                const int at = slot * TILE + chunk / 8 * KEYS * 64 + row * 64 + ((chunk % 8) ^ (row % 8)) * 8;
                copy16_async(k_ring + at, k_cache + offset, key < S);
                copy16_async(v_ring + at, v_cache + offset, key < S);
            }
            cp_async_commit();
            cp_async_wait<0>();
            fence_async_shared();  // generic-proxy writes, read by wgmma
            __syncwarp();
        }
        if (lane == 0) mbarrier_arrive(full + slot);
    };
    if (group == 2 && lane == 0 && producer == 0) {
        for (int i = 0; i < RING; i++) mbarrier_init(full + i, producers), mbarrier_init(empty + i, 8);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // before the TMA completes on them
    }
    __syncthreads();  // barriers initialised (the only block-wide barrier)

    // Registers move from the producer warpgroup to the consumers, whose Q fragments, O, S and P live in
    // registers: ptxas gives 384 threads 168 each, and the consumers' loop needs ~180 without spilling
    if (group == 2) asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    else asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
    if (group == 2) {  // the producer warps
        if (producer >= producers) return;
        // Tiles wholly before tree_start go out before the wait for the previous kernel: their latency overlaps
        // the Q staging and the kernel ahead's tail (the page table is the step plan's).
        const int early = box_rows ? tiles_before_tree(tile_begin, tile_count, KEYS, start, RING) : 0;
        // The page-table reads run RING tiles ahead in a shift register (constant indices keep it in registers),
        // the first RING in flight together. Read one per tile before the block barrier, they had held every
        // block ~8 µs at 8k keys (notes/attention_splits.log, stop 19).
        int pages[RING];
#pragma unroll
        for (int k = 0; k < RING; k++) pages[k] = segment_page(k);
        for (int j = 0; j < tile_count; j++) {
            if (j == early) pdl_wait();
            if (j >= RING) mbarrier_wait(empty + j % RING, (j / RING - 1) & 1);  // tile j - RING's readers are done
            const int page = pages[0];
#pragma unroll
            for (int k = 0; k < RING - 1; k++) pages[k] = pages[k + 1];
            pages[RING - 1] = segment_page(j + RING);
            load_tile(j, page);
        }
        return;
    }

    // consumers
    pdl_wait();
    const bool active = tile * ROWS + group * 64 < rows;  // a warpgroup issues wgmma together
    unsigned qa[D / 16][4];  // Q's A fragments, in registers across the key loop (S = Q K^T reads only K from shared memory)
    if (active) load_query<D>(q, r, scale, t, qa);
    float o[D / 8][4] = {}, s[NT][4];
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    unsigned pa[KEYS / 16][4];  // P of the previous tile, the A operand of its O += P V
    auto release = [&](int j) {  // this warp's products no longer read tile j's slot
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty + j % RING);
    };
    auto issue_pv = [&](int j) {
        const __nv_bfloat16* v_buf = v_ring + j % RING * TILE;
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) {
            const unsigned long long desc = smem_descriptor(v_buf + kk * 16 * 64, KEYS * 64 * 2, 1024);
            if constexpr (D == 128) wgmma_n128<1>(o, pa[kk], desc, 1);
            else wgmma_n64<1>(o, pa[kk], desc, 1);
        }
        wgmma_commit();
    };
    if (!active) {  // no rows here: only let the producer reuse the slots
        for (int i = 0; i < tile_count; i++) {
            mbarrier_wait(full + i % RING, (i / RING) & 1);
            release(i);
        }
        return;
    }
    auto issue_s = [&](int i) {  // S(i) = Q K(i)^T, after tile i landed
        mbarrier_wait(full + i % RING, (i / RING) & 1);
        const __nv_bfloat16* k_buf = k_ring + i % RING * TILE;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++)
            if constexpr (KEYS == 128) wgmma_n128<0>(s, qa[ks], smem_descriptor(k_buf + ks / 4 * KEYS * 64 + ks % 4 * 16, 16, 1024), ks > 0);
            else wgmma_n64<0>(s, qa[ks], smem_descriptor(k_buf + ks / 4 * KEYS * 64 + ks % 4 * 16, 16, 1024), ks > 0);
        wgmma_commit();
    };
    auto softmax = [&](int i, float& corr0, float& corr1) {  // S(i) -> the weights of tile i
        wgmma_pin(s);
        mask_scores<NT, CAUSAL_SKIP>(s, (tile_begin + i) * KEYS, S, start, is_causal, T, r, t);
        softmax_tile(s, m0, m1, l0, l1, corr0, corr1);
    };
    float corr0, corr1;
    if (tile_count > 0) {  // the first tile alone, so that the loop below always has a P V in flight
        issue_s(0);
        wgmma_wait<0>();
        softmax(0, corr0, corr1);
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) pack_p(s, kk, pa[kk]);
    }
    for (int i = 1; i < tile_count; i++) {
        issue_s(i);
        issue_pv(i - 1);
        wgmma_wait<1>();  // S(i) is done; O += P(i-1) V(i-1) may still run while the softmax does
        softmax(i, corr0, corr1);
        wgmma_wait<0>();
        wgmma_pin(o);
        release(i - 1);
        rescale(o, corr0, corr1);
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) pack_p(s, kk, pa[kk]);
    }
    if (tile_count > 0) {
        wgmma_fence();
        issue_pv(tile_count - 1);
        wgmma_wait<0>();
        wgmma_pin(o);
        release(tile_count - 1);
    }
    store_rows<D>(o, m0, m1, l0, l1, r, t, blockIdx.z, gridDim.z, o_part, ml_part, out, N, H);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TREE_ATTENTION_WGMMA(D, KEYS, CAUSAL_SKIP, SUFFIX)                                                        \
    extern "C" __global__ void __launch_bounds__(384, 1) tree_attention_wgmma_d##D##_k##KEYS##SUFFIX(           \
        const float* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,                          \
        const __grid_constant__ TensorMap k_map, const __grid_constant__ TensorMap v_map, int box_rows,         \
        const int* cu_q, const int* kv_len, const int* tree_start, const unsigned long long* masks,            \
        const int* causal, const int* page_tables, int max_pages, int B, float* o_part, float* ml_part,        \
        __nv_bfloat16* out, int N, int H, int Hkv, int P, float scale, int producers, int trigger_first) {      \
        if (trigger_first) pdl_trigger();                                                                       \
        tree_attention_wgmma<D, KEYS, CAUSAL_SKIP>(q, k_cache, v_cache, k_map, v_map, box_rows, cu_q, kv_len,    \
                                                   tree_start, masks, causal, page_tables, max_pages, B, o_part, \
                                                   ml_part, out, N, H, Hkv, P, scale, producers);                \
    }
#endif
