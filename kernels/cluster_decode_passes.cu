// kernels/cluster_decode.cuh's instances that run a block's K/V share in passes of pass_keys keys (its PASSES): a step
// whose share does not fit a block's shared memory whole (the default model: decode past the 4096-key bucket, 2-node
// trees past 2048; 4-node trees in passes were slower than the fused kernel: CudaBackend.CLUSTER_DECODE_PASS_ROWS). A
// file of its own, apart from cluster_decode.cu and cluster_tree.cu: the loop over passes cost the one-pass steps 1-2%
// (stop 66), and only long contexts need it, so a generation's first steps do not wait for its compile.
#include "cluster_decode.cuh"

HEAD_DIM_64(CLUSTER_DECODE_PASSES(1, 64))
HEAD_DIM_64(CLUSTER_DECODE_PASSES(2, 64))
HEAD_DIM_128(CLUSTER_DECODE_PASSES(1, 128))
HEAD_DIM_128(CLUSTER_DECODE_PASSES(2, 128))
