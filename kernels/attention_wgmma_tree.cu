// tree_attention_wgmma's _tree instances (kernels/attention_wgmma.cu: the kernel, its layouts and launch; the body in
// kernels/attention_wgmma.cuh) for steps of tree rows alone (decode, verify: no causal chunk), with the older mask
// rule (attention.cuh's mask_scores): with the causal rows' mask rule in its loop the B = 1, T = 64 tree rows at
// 8k keys ran 26.4-27.0 -> 28.5-29.1 µs (stop 59). In a file of their own, compiled beside attention_wgmma.cu.
#include "attention_wgmma.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
HEAD_DIM_64(TREE_ATTENTION_WGMMA(64, 64, false, _tree))
HEAD_DIM_64(TREE_ATTENTION_WGMMA(64, 128, false, _tree))
HEAD_DIM_128(TREE_ATTENTION_WGMMA(128, 64, false, _tree))
HEAD_DIM_128(TREE_ATTENTION_WGMMA(128, 128, false, _tree))
#endif
