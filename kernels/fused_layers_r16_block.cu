// The fused-layers kernel (kernels/fused_layers.cuh) for steps of 5-16 rows (GEMV phases on tensor cores) over up to
// 256 keys: attention and its merge in one phase, a block per (sequence, KV head, row group) (phase_attention, BLOCK).
#include "fused_layers.cuh"

HEAD_DIM_64(FUSED_LAYERS_BLOCK(16, 64))
HEAD_DIM_128(FUSED_LAYERS_BLOCK(16, 128))
