"""runtimes/cuda_memory.py: binding choice and host-side logic here; allocation, async copies, streams and the
primary context from several threads on a GPU (``-m gpu``), with every binding installed there."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import threading

import numpy as np
import pytest

from runtimes import cuda_memory
from runtimes.base import DeviceNotAvailable, RuntimeNotAvailable

INSTALLED = [
    name
    for name, module in (("cuda-python", "cuda.bindings"), ("pycuda", "pycuda"))
    if importlib.util.find_spec(module.split(".")[0]) is not None and importlib.util.find_spec(module) is not None
]


def _gpu_binding(name: str) -> str:
    """Skip unless binding ``name`` is installed and sees a GPU."""
    if name not in INSTALLED:
        pytest.skip(f"{name} is not installed")
    try:
        cuda_memory.open_device(0, name).close()
    except DeviceNotAvailable as err:
        pytest.skip(str(err))
    return name


# --------------------------------------------------------------------------------------------- CPU


def test_array_at_views_memory_it_does_not_own() -> None:
    raw = (ctypes.c_float * 6)(*range(6))
    array = cuda_memory.array_at(ctypes.addressof(raw), (2, 3), np.float32)
    assert array.shape == (2, 3) and array.dtype == np.float32
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
    array[1, 2] = 42.0
    assert raw[5] == 42.0  # a view, not a copy: the copy engine writes where numpy reads
    assert cuda_memory.array_at(ctypes.addressof(raw), (0, 3), np.float32).shape == (0, 3)


def test_binding_preference_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    if INSTALLED:
        assert cuda_memory.cuda_binding().name == INSTALLED[0]  # cuda-python first where both are installed
        assert cuda_memory.binding_status().startswith(INSTALLED[0])
    with pytest.raises(ValueError, match="unknown CUDA binding"):
        cuda_memory.cuda_binding("cupy")
    monkeypatch.setattr(cuda_memory, "_bindings", {})
    for module in ("cuda", "cuda.bindings", "cuda.bindings.driver", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(RuntimeNotAvailable, match="pip install cuda-python"):
        cuda_memory.cuda_binding()
    assert cuda_memory.binding_status().startswith("missing (")


def test_no_driver_is_device_not_available() -> None:
    if not INSTALLED:
        pytest.skip("no CUDA binding installed")
    try:
        device = cuda_memory.open_device(0)
    except DeviceNotAvailable as err:
        assert "no NVIDIA GPU or driver" in str(err) or "no CUDA device" in str(err)
    else:
        device.close()
        pytest.skip("a CUDA device is visible here")


# --------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_round_trip_through_device_memory(binding: str) -> None:
    device = cuda_memory.open_device(0, _gpu_binding(binding))
    try:
        assert device.info.name and device.info.compute_capability[0] >= 5
        stream = device.stream()
        data = np.random.default_rng(0).standard_normal((3, 64, 65)).astype(np.float32)
        host_in, host_out = device.host_buffer(data.shape, data.dtype), device.host_buffer(data.shape, data.dtype)
        buffer = device.device_buffer(data.nbytes)
        np.copyto(host_in.array, data)
        cuda_memory.copy_to_device(buffer, host_in, stream)
        cuda_memory.copy_to_host(host_out, buffer, stream)
        stream.synchronize()
        np.testing.assert_array_equal(host_out.array, data)
        with pytest.raises(ValueError, match="do not fit"):
            cuda_memory.copy_to_device(device.device_buffer(16), host_in, stream)
        for item in (host_in, host_out, buffer):
            item.free()
        stream.close()
    finally:
        device.close()


@pytest.mark.gpu
@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_one_device_from_several_threads(binding: str) -> None:
    """Eight threads share one primary context, each with its own stream and buffers, copying at the same time."""
    device = cuda_memory.open_device(0, _gpu_binding(binding))
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(seed: int) -> None:
        try:
            data = np.full((256, 1024), seed, np.int32)
            stream = device.stream()
            host_in, host_out = device.host_buffer(data.shape, data.dtype), device.host_buffer(data.shape, data.dtype)
            buffer = device.device_buffer(data.nbytes)
            barrier.wait()
            for _ in range(20):
                np.copyto(host_in.array, data)
                with device.current():  # nested entry is allowed
                    cuda_memory.copy_to_device(buffer, host_in, stream)
                cuda_memory.copy_to_host(host_out, buffer, stream)
                stream.synchronize()
                assert (host_out.array == seed).all(), f"thread {seed} read another thread's data"
                data += 8
                seed += 8
            host_in.free(), host_out.free(), buffer.free(), stream.close()
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        device.close()
    assert not errors, errors
