// kernels/cluster_decode.cuh's 2- and 4-row instances: every layer of a tree step of up to 4 nodes of one sequence in
// one launch of thread block clusters (CudaBackend.cluster_decode_shape, cluster_tree_rows).
#include "cluster_decode.cuh"

HEAD_DIM_64(CLUSTER_DECODE(2, 64))
HEAD_DIM_64(CLUSTER_DECODE(4, 64))
HEAD_DIM_128(CLUSTER_DECODE(2, 128))
HEAD_DIM_128(CLUSTER_DECODE(4, 128))
