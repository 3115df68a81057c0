// The fused-layers kernel (kernels/fused_layers.cuh) with 4 rows per GEMV pass (the CUDA-core instance for 2-16 rows) for
// steps of up to 256 keys: attention and its merge in one phase, a block per (sequence, KV head, row group) (BLOCK).
#include "fused_layers.cuh"

HEAD_DIM_64(FUSED_LAYERS_BLOCK(4, 64))
HEAD_DIM_128(FUSED_LAYERS_BLOCK(4, 128))
