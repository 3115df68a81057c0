"""Backends: the same operations on NumPy (the reference, float32) and on CUDA (CuPy + own kernels)."""

from __future__ import annotations

import sys

from ..errors import MinispecError


def cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def cuda_capability() -> tuple[int, int]:
    """The compute capability of the current GPU (call only where cuda_available())."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return props["major"], props["minor"]


def finish_compiles() -> None:
    """Wait for the CUDA backend's kernel files still compiling in the background, naming a long wait
    (cuda_backend.finish_compiles); nothing where no CUDA backend was made in this process."""
    cuda = sys.modules.get(f"{__name__}.cuda_backend")
    if cuda is not None:
        cuda.finish_compiles()


CUDA_CAPABILITY = (9, 0)  # the CUDA backend's kernels launch thread block clusters (CudaBackend refuses older GPUs)


def make_backend(device: str, dtype: str | None = None, kv_memory_fraction: float = 0.5):
    if device not in ("cpu", "cuda", "auto"):
        raise MinispecError(f"unknown device {device!r}: use cpu, cuda or auto")
    if device == "auto":  # a GPU the CUDA backend cannot run on leaves the NumPy backend
        device = "cuda" if cuda_available() and cuda_capability() >= CUDA_CAPABILITY else "cpu"
    if device == "cpu":
        from .numpy_backend import NumpyBackend

        return NumpyBackend()
    if not cuda_available():
        raise MinispecError("no CUDA GPU found (or CuPy is not installed: pip install cupy-cuda12x/13x); use --device cpu")
    from .cuda_backend import CudaBackend

    return CudaBackend(dtype=dtype or "bfloat16", kv_memory_fraction=kv_memory_fraction)
