"""The CUDA driver through ctypes, for what CuPy does not wrap: kernel launches with launch attributes
(cuLaunchKernelEx), used for programmatic dependent launch, and TMA descriptors (tensor_map.py).

Programmatic dependent launch (Hopper): a kernel launched with the programmatic-stream-serialization attribute
may be placed on the SMs as soon as every block of the kernel before it in the stream has run
`griddepcontrol.launch_dependents`, instead of after that kernel has finished; its own `griddepcontrol.wait`
then holds it until the kernel before has finished and its writes are visible. Every project kernel opens
with both (kernels/pdl.cuh), so a step's chain of short dependent kernels overlaps each launch and ramp with
the previous kernel's tail. In a captured graph the attribute becomes a programmatic edge.
"""

from __future__ import annotations

import ctypes

import numpy as np

PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: the id, padding to 8 bytes, a 64-byte value union
    _fields_ = [("id", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("value", ctypes.c_uint8 * 64)]


class LaunchConfig(ctypes.Structure):  # CUlaunchConfig, in cuda.h's field order
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3), ("shared_bytes", ctypes.c_uint32),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttribute)), ("num_attrs", ctypes.c_uint32)]


_library = None
_launch_ex = None


def libcuda():
    """The driver library, or None where there is none (a machine without CUDA)."""
    global _library
    if _library is None:
        try:
            _library = ctypes.CDLL("libcuda.so.1")
        except OSError:
            return None
    return _library


def launch_available() -> bool:
    return _driver_launch_ex() is not None


def _driver_launch_ex():
    global _launch_ex
    if _launch_ex is None:
        library = libcuda()
        function = getattr(library, "cuLaunchKernelEx", None) if library is not None else None
        if function is None:
            return None
        function.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
        function.restype = ctypes.c_int
        _launch_ex = function
    return _launch_ex


def _argument(value):
    """A kernel argument as a ctypes object holding its bytes, as CuPy would pass it: a device array by its
    pointer, a NumPy scalar or one-element array (a TMA descriptor) by value, a Python int as int64 and a float
    as double."""
    if hasattr(value, "data") and hasattr(value.data, "ptr"):
        return ctypes.c_void_p(value.data.ptr)
    if isinstance(value, bool) or value is None:
        raise TypeError(f"kernel argument {value!r}: pass a NumPy scalar or a device array")
    if isinstance(value, int):
        value = np.int64(value)
    elif isinstance(value, float):
        value = np.float64(value)
    raw = np.ascontiguousarray(value).tobytes()
    return (ctypes.c_char * len(raw)).from_buffer_copy(raw)


def launch(function, grid, block, args, shared_bytes: int, stream_ptr: int) -> None:
    """Launch `function` (a CuPy RawKernel, from RawModule.get_function) with programmatic stream serialization
    on the stream `stream_ptr`. The driver copies the arguments during the call (or into the graph node while
    capturing), so the ctypes buffers need live only until it returns."""
    launch_ex = _driver_launch_ex()
    held = [_argument(a) for a in args]
    pointers = (ctypes.c_void_p * max(1, len(held)))(*[ctypes.addressof(h) for h in held])
    attribute = LaunchAttribute(id=PROGRAMMATIC_STREAM_SERIALIZATION)
    attribute.value[0] = 1  # programmaticStreamSerializationAllowed
    grid, block = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
    config = LaunchConfig((ctypes.c_uint32 * 3)(*grid), (ctypes.c_uint32 * 3)(*block), shared_bytes, stream_ptr,
                          ctypes.pointer(attribute), 1)
    result = launch_ex(ctypes.byref(config), ctypes.c_void_p(function.kernel.ptr), pointers, None)
    if result != 0:
        raise RuntimeError(f"cuLaunchKernelEx failed (CUresult {result}) for grid {grid}, block {block}, {shared_bytes} B shared")
