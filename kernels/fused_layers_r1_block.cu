// The fused-layers kernel (kernels/fused_layers.cuh) for decode steps of up to 256 keys: 1 row per GEMV pass,
// attention and its merge in one phase, a block per head (phase_attention, BLOCK).
#include "fused_layers.cuh"

HEAD_DIM_64(FUSED_LAYERS_BLOCK(1, 64))
HEAD_DIM_128(FUSED_LAYERS_BLOCK(1, 128))
