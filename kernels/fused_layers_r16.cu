// The fused-layers kernel (kernels/fused_layers.cuh) with 16 rows per GEMV pass: steps of 5-16 rows on tensor cores.
#include "fused_layers.cuh"

HEAD_DIM_64(FUSED_LAYERS(16, 64))
HEAD_DIM_128(FUSED_LAYERS(16, 128))
