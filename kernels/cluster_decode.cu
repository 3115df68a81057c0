// kernels/cluster_decode.cuh's one-row instances: every layer of a one-token decode step in one launch of thread block
// clusters (a file of its own so that a generation's first step, which needs it, does not wait for the tree instances'
// compile; those are kernels/cluster_tree.cu).
#include "cluster_decode.cuh"

HEAD_DIM_64(CLUSTER_DECODE(1, 64))
HEAD_DIM_128(CLUSTER_DECODE(1, 128))
