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


def test_arguments_carry_the_bytes_cupy_would_pass():
    descriptor = np.zeros(1, dtype=DESCRIPTOR)  # a TMA descriptor: 128 bytes by value
    descriptor["words"][0] = np.arange(16, dtype=np.uint64) * 0x0101
    args = [np.int32(-7), np.float32(0.1), FakeDeviceArray(), np.float64(-2.5), np.uint64(1 << 40), descriptor, np.int32(9),
            3, 0.5]  # Python numbers as CuPy passes them: int64, double
    expected = [np.int32(-7).tobytes(), np.float32(0.1).tobytes(), (0x7F00_1234_5670).to_bytes(8, "little"),
                np.float64(-2.5).tobytes(), np.uint64(1 << 40).tobytes(), descriptor.tobytes(), np.int32(9).tobytes(),
                np.int64(3).tobytes(), np.float64(0.5).tobytes()]
    buffer, pointers = driver.pack_arguments(args)
    assert len(pointers) == len(args)
    for pointer, want in zip(pointers, expected):
        assert ctypes.string_at(pointer, len(want)) == want
    # each at its natural alignment from the buffer's start (the 8-byte ones after the 4-byte ones padded)
    offsets = [p - ctypes.addressof(buffer) for p in pointers]
    assert offsets == [0, 4, 8, 16, 24, 32, 160, 168, 176]


@pytest.mark.parametrize("value", [True, None, [1, 2]])
def test_ambiguous_arguments_are_refused(value):
    with pytest.raises(TypeError):
        driver.pack_arguments([np.int32(1), value])


def test_launch_attribute_layout_matches_cuda_h():
    assert ctypes.sizeof(driver.LaunchAttribute) == 72  # id, padding to 8, a 64-byte value union
    assert driver.LaunchAttribute.value.offset == 8
    fields = [name for name, _ in driver.LaunchConfig._fields_]
    assert fields == ["grid", "block", "shared_bytes", "stream", "attrs", "num_attrs"]
    assert driver.LaunchConfig.stream.offset == 32 and driver.LaunchConfig.attrs.offset == 40
    # the attribute every launch carries: CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, allowed
    assert driver.SERIALIZATION.id == 6 and driver.SERIALIZATION.value[0] == 1 and not any(driver.SERIALIZATION.value[1:])


class FakeKernel:
    class Function:
        ptr = 0x5555_0000

    kernel = Function()


def test_a_prepared_launch_passes_the_same_launch_each_call(monkeypatch):
    """driver.PreparedLaunch packs once and hands cuLaunchKernelEx the same config and argument bytes at every call
    (read here at each call, as the driver copies them); a failing call raises with the launch's shape."""
    seen, results = [], iter([0, 0, 700])

    def launch_ex(config, function, pointers, extra):
        c = config._obj
        attribute = c.attrs.contents
        seen.append((tuple(c.grid), tuple(c.block), c.shared_bytes, c.stream, c.num_attrs, attribute.id, attribute.value[0],
                     function.value, [ctypes.string_at(pointers[i], 8) for i in range(3)], extra))
        return next(results)

    monkeypatch.setattr(driver, "_driver_launch_ex", lambda: launch_ex)
    args = [FakeDeviceArray(), np.int64(-3), np.float64(0.25)]
    launch = driver.PreparedLaunch(FakeKernel(), (7, 2), (256,), args, 4096, 0xABC0)
    del args  # the launch keeps its own packed copy
    launch()
    launch()
    expected = ((7, 2, 1), (256, 1, 1), 4096, 0xABC0, 1, 6, 1, 0x5555_0000,
                [(0x7F00_1234_5670).to_bytes(8, "little"), np.int64(-3).tobytes(), np.float64(0.25).tobytes()], None)
    assert seen == [expected, expected]
    with pytest.raises(RuntimeError, match=r"CUresult 700\) for grid \(7, 2, 1\), block \(256, 1, 1\), 4096 B shared"):
        launch()
