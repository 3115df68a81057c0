// Paged tree attention on Hopper's warpgroup MMA (sm_90a): attention.cu's product, visibility rules and arguments,
//   o[n, h, :] = sum_j softmax_j(q[n, h, :] . k[j, h / G, :] * scale | visible(n, j)) v[j, h / G, :],
// with the query rows packed as attention_mma.cu packs them (row r = node r / G, head kv_head G + r % G). Both
// products on warpgroup MMA, K/V brought by the tensor memory accelerator.
// Block = 2 consumer warpgroups (warps 0-7, 64 of the block's 128 packed rows each) + a producer warpgroup
// (warps 8-11, of which `producers` = 1 or 2 work; the rest leave at once).
// The producers fill a RING-slot ring of KEYS-key tiles: each page segment of a tile (R = P rows of one head,
// contiguous in the cache) is one TMA box per 64-dim atom of K and of V, written 128-byte swizzled
// [D / 64][KEYS keys][64 dims], the layout the wgmma descriptors read. Rows TMA cannot box (past the sequence
// end, which must read as zeros, or a page size that does not divide 64) go by cp.async with zero fill.
// Per slot two mbarriers: `full` (each producer's expected bytes, and its arrive once any cp.async rows
// landed) and `empty` (the 8 consumer warps, once their products no longer read the slot). Q's A fragments
// stay in each consumer's registers (S = Q K^T reads only K from shared memory), which setmaxnreg makes room
// for; O += P(i-1) V(i-1) is issued with S(i) (FlashAttention-3's order; ptxas nonetheless waits for both
// before the softmax, notes/attention_splits.log, stop 20), and the two consumer warpgroups never meet at a
// block barrier.
// k_map / v_map: TMA descriptors of the caches viewed as [NP Hkv P rows, D] with 64 x box_rows boxes,
// 128-byte swizzle (box_rows = P when P divides 64 and P >= 8, else 0: cp.async only).
// Key tiles of KEYS = 64 or 128 positions (tree_attention_wgmma_d{D}_k{KEYS}, and _tree in attention_wgmma_tree.cu:
// the same for steps without causal chunks, with the older mask rule, attention.cuh's mask_scores): 128 halves the per-tile work of
// the loop (barriers, row maxima, P V's issue) and makes S one N = 128 product per k-step, but leaves 3 slots of
// 64 KB at D = 128 and doubles the smallest share; the backend takes it for long shares (attention_tile_keys).
// Launch: grid as attention_mma.cu's kernel with 128 rows per block, block 384, dynamic shared memory
// 2 RING x KEYS x D x 2 + 1024 (alignment) + 16 RING (barriers) bytes, RING = attention_ring(D, KEYS).
// Measured (H100, notes/attention_splits.log), 8B heads, T = 64, 8k keys, 8 splits: 49 µs on mma.sync, 42 with
// wgmma and 128 cp.async producer threads (4 slots), 37 with 6 slots, 33 with the TMA producer. Built with
// loads or products left out, a block's tile cost ~1 µs for the loads alone and ~1 µs for the products alone,
// and the sum with both: the cp.async producer was bound by its SM's outstanding requests, which TMA leaves.
// Stop 21: the producer itself bounded the loop at P = 16 (16 boxes a tile, each lane's TMA issued in turn,
// and two runtime divisions by P per box): without the divisions one split at 8k keys took 163 -> 132 µs,
// with the boxes over two warps 121 (0.94 µs a tile); decode-like steps keep one producer warp (8193 keys
// 14.5 -> 13.5 µs, where two gave 14.5). Q from registers instead of shared memory changed nothing alone.
// 128-key tiles (8B heads, shares of 8192 keys or more): one split at 8k keys 121 -> 108 µs, T = 64 at 32k
// keys 72.5 -> 69.5, batch 16 at 8k 3-8% faster; shorter shares lost (T = 64 at 512 keys 12.8 -> 15.3). On an H200
// tree steps gain from shares of 2048 keys (stop 59: T = 64 at 8k keys 28.0 -> 26.8 µs), decode rows do not.
// Tried and not kept: the last split merging in the kernel instead of attention_merge (slower: one block then
// reads every share serially), and every split block of a (row tile, KV head) pair merging a share of the pair's
// rows once all have written (stop 26: 8B T = 64 step 6.61 -> 6.81 ms at 512 keys; attention_merge, a launch of its
// own, lets the next kernel be placed and copy its first stages under PDL while it runs,
// notes/attention_merge_inside_h100_stop26.log), FlashAttention-3's ping-pong of the two warpgroups (within 3%), a seventh slot
// (level), four producer warps (as two).
// K/V slots: as many as 192 KB hold, at most 6 (6 x 32 KB at D = 128, KEYS = 64: a seventh fits, it measured
// level; attention_ring in kernels/attention_wgmma.cuh, with the kernel's body); CudaBackend.attention_tile_keys sizes
// the launch by the same rule
#include "attention_wgmma.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// the steps with causal chunks (prefill, and decode or verify rows batched with one); attention_wgmma_tree.cu has
// the _tree instances
HEAD_DIM_64(TREE_ATTENTION_WGMMA(64, 64, true, ))
HEAD_DIM_64(TREE_ATTENTION_WGMMA(64, 128, true, ))
HEAD_DIM_128(TREE_ATTENTION_WGMMA(128, 64, true, ))
HEAD_DIM_128(TREE_ATTENTION_WGMMA(128, 128, true, ))
#endif
