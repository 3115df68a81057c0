"""TMA descriptors (CUtensorMap) through the CUDA driver, for kernels that load tiles with Hopper's tensor
memory accelerator. CuPy does not wrap cuTensorMapEncodeTiled, so it is called through ctypes (driver.py); the
descriptor is 128 host bytes that a kernel takes by value (a `__grid_constant__` parameter), so a captured
graph keeps its own copy.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import driver

UINT16, INTERLEAVE_NONE, SWIZZLE_128B, OOB_FILL_NONE = 1, 0, 3, 0  # cuda.h enums
L2_PROMOTION = {0: 0, 64: 1, 128: 2, 256: 3}  # bytes an L2 miss of a box row fetches at least -> CUtensorMapL2promotion
DESCRIPTOR = np.dtype([("words", np.uint64, (16,))])  # a CUtensorMap's 128 bytes
_encode = None


def _driver_encode():
    """cuTensorMapEncodeTiled, or None where the driver has no TMA (before CUDA 12)."""
    global _encode
    if _encode is None:
        library = driver.libcuda()
        function = getattr(library, "cuTensorMapEncodeTiled", None) if library is not None else None
        if function is None:
            return None
        u64p, u32p = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
        function.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p, u32p, u32p,
                             ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        function.restype = ctypes.c_int
        _encode = function
    return _encode


def available() -> bool:
    return _driver_encode() is not None


def swizzled_rows(array, rows: int, cols: int, box_rows: int, box_cols: int = 64, promotion: int = 256) -> np.ndarray:
    """The descriptor of a row-major [rows, cols] device array of 2-byte elements, read in boxes of box_rows x
    box_cols (box_cols x 2 = 128 bytes) that land in shared memory with the 128-byte swizzle: chunk c of a
    box row r sits at chunk c ^ (r % 8); an L2 miss fetches at least `promotion` bytes (0, 64, 128 or 256).
    Returned as one 128-byte structured element (CuPy passes a size-one host array by value)."""
    if promotion not in L2_PROMOTION:
        raise ValueError(f"L2 promotion of {promotion} bytes: the driver takes {sorted(L2_PROMOTION)}")
    encode = _driver_encode()
    if encode is None:
        raise RuntimeError("the CUDA driver has no cuTensorMapEncodeTiled")
    buffer = np.zeros(24, dtype=np.uint64)  # a 64-byte aligned window of 16 words inside
    start = (-buffer.ctypes.data) % 64 // 8
    window = buffer[start: start + 16]
    result = encode(window.ctypes.data, UINT16, 2, ctypes.c_void_p(array.data.ptr), (ctypes.c_uint64 * 2)(cols, rows),
                    (ctypes.c_uint64 * 1)(cols * 2), (ctypes.c_uint32 * 2)(box_cols, box_rows), (ctypes.c_uint32 * 2)(1, 1),
                    INTERLEAVE_NONE, SWIZZLE_128B, L2_PROMOTION[promotion], OOB_FILL_NONE)
    if result != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed (CUresult {result}) for [{rows}, {cols}] in {box_rows} x {box_cols} boxes")
    return window.copy().view(DESCRIPTOR)
