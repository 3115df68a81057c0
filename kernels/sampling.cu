// Token selection on the GPU, so a greedy step copies back T ids instead of T x V logits.
//
// argmax_rows: ids[r] = argmax_v logits[r, v] (first index on ties, like numpy.argmax)
//   logits float [R, V], ids int32 [R].  grid (R), block 256; block-wide (value, index) reduction.
// NumPy reference: numpy.argmax. Tests: tests/test_cuda_kernels.py.

extern "C" __global__ void argmax_rows(const float* __restrict__ logits, int* __restrict__ ids, int V) {
    __shared__ float best_value[256];
    __shared__ int best_index[256];
    const float* row = logits + (long long)blockIdx.x * V;
    float value = -__int_as_float(0x7f800000);
    int index = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float x = row[v];
        if (x > value) { value = x; index = v; }  // strided scan: the first max of this thread's share
    }
    best_value[threadIdx.x] = value;
    best_index[threadIdx.x] = index;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            float other = best_value[threadIdx.x + stride];
            int other_index = best_index[threadIdx.x + stride];
            if (other > best_value[threadIdx.x] || (other == best_value[threadIdx.x] && other_index < best_index[threadIdx.x])) {
                best_value[threadIdx.x] = other;
                best_index[threadIdx.x] = other_index;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = best_index[0];
}
