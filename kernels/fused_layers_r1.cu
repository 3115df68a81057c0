// The fused-layers kernel (kernels/fused_layers.cuh) with 1 row per GEMV pass: decode steps (one row per sequence).
#include "fused_layers.cuh"

HEAD_DIM_64(FUSED_LAYERS(1, 64))
HEAD_DIM_128(FUSED_LAYERS(1, 128))
