// Instances for one head dim at a time. A file that includes this header wraps each of its instances in
// HEAD_DIM_64(...) or HEAD_DIM_128(...); the backend compiles it with -DHEAD_DIM=64 or 128 for the model it runs
// (CudaBackend.kernel's head_dim), which halves the compile of a machine's first run. Without HEAD_DIM (a tool that
// compiles the file whole: notes/scripts/sass_compare.py) both dims' instances are built.
#pragma once

#if !defined(HEAD_DIM) || HEAD_DIM == 64
#define HEAD_DIM_64(...) __VA_ARGS__
#else
#define HEAD_DIM_64(...)
#endif

#if !defined(HEAD_DIM) || HEAD_DIM == 128
#define HEAD_DIM_128(...) __VA_ARGS__
#else
#define HEAD_DIM_128(...)
#endif
