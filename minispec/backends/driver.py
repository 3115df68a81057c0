"""The CUDA driver through ctypes, for what CuPy does not wrap: kernel launches with launch attributes
(cuLaunchKernelEx), used for programmatic dependent launch, and TMA descriptors (tensor_map.py).

Programmatic dependent launch (Hopper): a kernel launched with the programmatic-stream-serialization attribute
may be placed on the SMs as soon as every block of the kernel before it in the stream has run
`griddepcontrol.launch_dependents`, instead of after that kernel has finished; its own `griddepcontrol.wait`
then holds it until the kernel before has finished and its writes are visible. Every kernel launched here
waits so (kernels/pdl.cuh); the GEMMs copy their first weight stages before waiting, which is where the time
is won. In a captured graph the attribute becomes a programmatic edge.
"""

from __future__ import annotations

import ctypes
import re
import struct

import numpy as np

PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: the id, padding to 8 bytes, a 64-byte value union
    _fields_ = [("id", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("value", ctypes.c_uint8 * 64)]


class LaunchConfig(ctypes.Structure):  # CUlaunchConfig, in cuda.h's field order
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3), ("shared_bytes", ctypes.c_uint32),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttribute)), ("num_attrs", ctypes.c_uint32)]


# the one attribute every launch carries (the driver copies it at the launch)
SERIALIZATION = LaunchAttribute(id=PROGRAMMATIC_STREAM_SERIALIZATION)
SERIALIZATION.value[0] = 1  # programmaticStreamSerializationAllowed

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


CODES = {np.int32: "i", np.uint32: "I", np.int64: "q", np.uint64: "Q", np.float32: "f", np.float64: "d", int: "q", float: "d"}
_layouts = {}  # struct format -> (Struct, each argument's offset)


def _layout(fmt: str):
    if fmt not in _layouts:
        codes = struct.Struct("@" + fmt)
        parts = re.findall(r"\d*[a-zA-Z]", fmt)
        offsets = [struct.calcsize("@" + "".join(parts[:i + 1])) - struct.calcsize("@" + parts[i]) for i in range(len(parts))]
        _layouts[fmt] = (codes, offsets)
    return _layouts[fmt]


def pack_arguments(args):
    """The kernel arguments in one host buffer, as CuPy would pass them (a device array by its pointer, a NumPy
    scalar or one-element array, such as a TMA descriptor, by value, a Python int as int64 and a float as
    double), each at its natural alignment; returns (buffer, the array of pointers to each argument)."""
    fmt, values = [], []
    for value in args:
        code = CODES.get(type(value))
        if code is not None:
            fmt.append(code)
            values.append(value)
        elif hasattr(value, "data") and hasattr(value.data, "ptr"):
            fmt.append("Q")
            values.append(value.data.ptr)
        elif isinstance(value, np.ndarray):
            raw = np.ascontiguousarray(value).tobytes()
            fmt.append(f"{len(raw)}s")
            values.append(raw)
        else:
            raise TypeError(f"kernel argument {value!r}: pass a NumPy scalar or array, or a device array")
    codes, offsets = _layout("".join(fmt))
    buffer = ctypes.create_string_buffer(max(1, codes.size))
    codes.pack_into(buffer, 0, *values)
    base = ctypes.addressof(buffer)
    return buffer, (ctypes.c_void_p * max(1, len(offsets)))(*[base + o for o in offsets])


class PreparedLaunch:
    """A launch of `function` (a CuPy RawKernel) with programmatic stream serialization on the stream `stream_ptr`,
    its arguments packed once: calling it launches again with the same arguments for the cost of the driver call
    alone. Making and packing the arguments is most of a launch's host time (ngram_advance's 26: ~85 µs a launch
    on an H100's host, ~21 once kept, notes/handover_h100_stop35.log). The driver copies the arguments during each
    call (or into the graph node while capturing), so reuse is safe whatever the kernel does with them."""

    def __init__(self, function, grid, block, args, shared_bytes: int, stream_ptr: int):
        self.function = function
        self.buffer, self.pointers = pack_arguments(args)  # (the pointers point into the buffer: both kept)
        grid, block = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
        self.config = LaunchConfig((ctypes.c_uint32 * 3)(*grid), (ctypes.c_uint32 * 3)(*block), shared_bytes, stream_ptr,
                                   ctypes.pointer(SERIALIZATION), 1)

    def __call__(self) -> None:
        result = _driver_launch_ex()(ctypes.byref(self.config), ctypes.c_void_p(self.function.kernel.ptr), self.pointers, None)
        if result != 0:
            c = self.config
            raise RuntimeError(f"cuLaunchKernelEx failed (CUresult {result}) for grid {tuple(c.grid)}, block {tuple(c.block)}, "
                               f"{c.shared_bytes} B shared")


def allow_shared(kernel, nbytes: int) -> None:
    """Let `kernel` take `nbytes` of dynamic shared memory (over 48 KiB needs the function's opt-in, which
    CuPy's Function attribute sets through the driver; set only when it grows, one driver call fewer per launch)."""
    if kernel.max_dynamic_shared_size_bytes < nbytes:
        kernel.max_dynamic_shared_size_bytes = nbytes


def launch(function, grid, block, args, shared_bytes: int, stream_ptr: int) -> None:
    """Launch `function` once (PreparedLaunch, not kept)."""
    PreparedLaunch(function, grid, block, args, shared_bytes, stream_ptr)()


def max_active_clusters(function, block: int, shared_bytes: int, cluster: int) -> int:
    """How many clusters of `function` (compiled with __cluster_dims__(cluster, 1, 1)) the device runs at once with
    `block` threads and `shared_bytes` of dynamic shared memory a block; 0 where the driver cannot say."""
    library = libcuda()
    query = getattr(library, "cuOccupancyMaxActiveClusters", None) if library is not None else None
    if query is None:
        return 0
    query.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.POINTER(LaunchConfig)]
    query.restype = ctypes.c_int
    count = ctypes.c_int(0)
    config = LaunchConfig((ctypes.c_uint32 * 3)(cluster, 1, 1), (ctypes.c_uint32 * 3)(block, 1, 1), shared_bytes, None, None, 0)
    if query(ctypes.byref(count), ctypes.c_void_p(function.kernel.ptr), ctypes.byref(config)) != 0:
        return 0
    return count.value
