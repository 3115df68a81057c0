"""Kernel arguments for cuLaunchKernelEx (backends/driver.py), packed as CuPy packs them: no GPU needed."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from minispec.backends import driver
from minispec.backends.tensor_map import DESCRIPTOR


class FakeDeviceArray:
    """What the packer reads of a CuPy array: its device pointer."""

    class Memory:
        ptr = 0x7F00_1234_5670

    data = Memory()


def raw(argument) -> bytes:
    return ctypes.string_at(ctypes.addressof(argument), ctypes.sizeof(argument))


def test_arguments_carry_the_bytes_cupy_would_pass():
    assert raw(driver._argument(np.int32(-7))) == np.int32(-7).tobytes()
    assert raw(driver._argument(np.float32(0.1))) == np.float32(0.1).tobytes()
    assert raw(driver._argument(np.float64(-2.5))) == np.float64(-2.5).tobytes()
    assert raw(driver._argument(np.uint64(1 << 40))) == np.uint64(1 << 40).tobytes()
    assert raw(driver._argument(3)) == np.int64(3).tobytes()  # Python numbers as CuPy passes them: int64, double
    assert raw(driver._argument(0.5)) == np.float64(0.5).tobytes()
    assert raw(driver._argument(FakeDeviceArray())) == (0x7F00_1234_5670).to_bytes(8, "little")
    descriptor = np.zeros(1, dtype=DESCRIPTOR)  # a TMA descriptor: 128 bytes by value
    descriptor["words"][0] = np.arange(16, dtype=np.uint64) * 0x0101
    packed = raw(driver._argument(descriptor))
    assert len(packed) == 128 and packed == descriptor.tobytes()


@pytest.mark.parametrize("value", [True, None])
def test_ambiguous_arguments_are_refused(value):
    with pytest.raises(TypeError):
        driver._argument(value)


def test_launch_attribute_layout_matches_cuda_h():
    assert ctypes.sizeof(driver.LaunchAttribute) == 72  # id, padding to 8, a 64-byte value union
    assert driver.LaunchAttribute.value.offset == 8
    fields = [name for name, _ in driver.LaunchConfig._fields_]
    assert fields == ["grid", "block", "shared_bytes", "stream", "attrs", "num_attrs"]
    assert driver.LaunchConfig.stream.offset == 32 and driver.LaunchConfig.attrs.offset == 40
