"""cuBLAS through ctypes, so GEMMs can be captured into CUDA graphs.

CuPy refuses every cuBLAS call during stream capture (even its low-level
binding), while cuBLAS itself supports capture once the handle has its stream
and a preallocated workspace. This module holds one such handle.

    y[M, N] (fp32, row-major) = x[M, K] (bf16) . W[N, K]^T (bf16)
    column-major view: y^T = W x^T  ->  A = W (op T, lda = K), B = x (op N, ldb = K), C = y^T (ldc = N)
"""

from __future__ import annotations

import ctypes

import numpy as np

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_16BF = 0, 14
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT = -1
LIBRARY_NAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so")


def load_library(cp):
    """libcublas as CuPy loaded it (often from a pip wheel's folder), else by soname."""
    cp.cuda.device.get_cublas_handle()  # makes CuPy load libcublas into the process
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "libcublas.so" in line and "Lt" not in line})
    for name in (*paths, *LIBRARY_NAMES):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class Cublas:
    def __init__(self, cp, stream, workspace_bytes: int = 32 << 20):
        library = load_library(cp)
        if library is None:
            raise OSError(f"none of {', '.join(LIBRARY_NAMES)} could be loaded")
        self.library, self.cp = library, cp
        self.handle = ctypes.c_void_p()
        self._check(library.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(library.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
        self.workspace = cp.empty(workspace_bytes, dtype=cp.uint8)  # kept for the handle's lifetime
        self._check(
            library.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(workspace_bytes)),
            "cublasSetWorkspace",
        )
        self.one = np.array(1.0, dtype=np.float32)
        self.zero = np.array(0.0, dtype=np.float32)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def gemm_bf16(self, x, weight, y) -> None:
        """y[M, N] = x[M, K] W[N, K]^T; x and W bf16 (uint16 bits), y fp32, all C-contiguous."""
        M, K = x.shape
        N = weight.shape[0]
        pointer = lambda array: ctypes.c_void_p(array.data.ptr)  # noqa: E731
        self._check(
            self.library.cublasGemmEx(
                self.handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, self.one.ctypes.data_as(ctypes.c_void_p),
                pointer(weight), CUDA_R_16BF, K, pointer(x), CUDA_R_16BF, K, self.zero.ctypes.data_as(ctypes.c_void_p),
                pointer(y), CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT,
            ),
            "cublasGemmEx",
        )
