// The fused-layers kernel (kernels/fused_layers.cuh) with 4 rows per GEMV pass: steps of 2-4 rows, and of 5-16 rows where the tensor-core instance does not apply.
#include "fused_layers.cuh"

HEAD_DIM_64(FUSED_LAYERS(4, 64))
HEAD_DIM_128(FUSED_LAYERS(4, 128))
