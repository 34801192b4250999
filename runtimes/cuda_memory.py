"""CUDA memory and streams behind one small interface: cuda-python (``cuda.bindings``) by default, pycuda where
only it is installed. No torch. Used by the TensorRT backend; any other GPU runtime that moves numpy arrays may
use it too.

* :func:`cuda_binding` picks the binding: ``cuda.bindings.driver`` (NVIDIA's own, wheels on PyPI for x86-64 and
  aarch64/Jetson, what TensorRT's samples use since 10.13/10.14), else ``pycuda.driver`` (builds from source).
* :class:`CudaDevice` holds one device's **primary context** (the one the CUDA runtime, hence TensorRT, uses too).
  CUDA keeps a current-context stack per thread: every thread that works on the device enters
  ``with device.current():`` (push on entry, pop on exit), so one device is usable from several threads at once.
* :class:`Stream`, :class:`DeviceBuffer` (``cuMemAlloc``) and :class:`HostBuffer` (page-locked ``cuMemAllocHost``
  memory seen as a numpy array) are freed by ``close()``/``free()``, with the device current.
* :func:`copy_to_device` / :func:`copy_to_host` enqueue asynchronous copies on a stream; synchronise the stream
  before reading a host buffer.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from runtimes.base import DeviceNotAvailable, RuntimeNotAvailable
from runtimes.errors import M2FError

logger = logging.getLogger(__name__)

BINDINGS = ("cuda-python", "pycuda")  # in order of preference
CUDA_BINDING_HINT = (
    "pip install cuda-python (NVIDIA's CUDA bindings; wheels for x86-64 and aarch64), or pycuda (built from source: "
    "the CUDA toolkit's nvcc on PATH and the Python headers)"
)


class CudaError(M2FError, RuntimeError):
    """A CUDA driver call failed; the message names the call and CUDA's error."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the engine cache key and ``m2f info`` need of a device."""

    index: int
    name: str
    compute_capability: tuple[int, int]


def array_at(address: int, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
    """A numpy array over ``address`` (host memory that outlives the array: pinned memory we free ourselves)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = max(count * dtype.itemsize, 1)
    raw = (ctypes.c_ubyte * nbytes).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(tuple(shape))


# --------------------------------------------------------------------------------------------- the bindings


class _CudaPython:
    """cuda-python's driver API: every call returns ``(CUresult, *values)``."""

    name = "cuda-python"

    def __init__(self, driver: ModuleType) -> None:
        self.driver = driver
        self.version = getattr(importlib.import_module("cuda.bindings"), "__version__", "?")

    def _call(self, function: str, *args: Any) -> Any:
        result = getattr(self.driver, function)(*args)
        status, values = result[0], result[1:]
        if status != self.driver.CUresult.CUDA_SUCCESS:
            err, text = self.driver.cuGetErrorString(status)
            detail = text.decode() if err == self.driver.CUresult.CUDA_SUCCESS and text else status.name
            raise CudaError(f"{function} failed: {detail}")
        return values[0] if len(values) == 1 else values

    def init(self) -> int:
        self._call("cuInit", 0)
        return int(self._call("cuDeviceGetCount"))

    def info(self, index: int) -> DeviceInfo:
        device = self._call("cuDeviceGet", index)
        name = self._call("cuDeviceGetName", 256, device).split(b"\0", 1)[0].decode()
        attr = self.driver.CUdevice_attribute
        major = self._call("cuDeviceGetAttribute", attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        minor = self._call("cuDeviceGetAttribute", attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        return DeviceInfo(index, name, (int(major), int(minor)))

    def retain(self, index: int) -> Any:
        return self._call("cuDevicePrimaryCtxRetain", self._call("cuDeviceGet", index))

    def release(self, index: int, context: Any) -> None:
        del context
        self._call("cuDevicePrimaryCtxRelease", self._call("cuDeviceGet", index))

    def push(self, context: Any) -> None:
        self._call("cuCtxPushCurrent", context)

    def pop(self) -> None:
        self._call("cuCtxPopCurrent")

    def stream(self) -> tuple[Any, int]:
        stream = self._call("cuStreamCreate", self.driver.CUstream_flags.CU_STREAM_NON_BLOCKING.value)
        return stream, int(stream)

    def synchronize(self, stream: Any) -> None:
        self._call("cuStreamSynchronize", stream)

    def destroy(self, stream: Any) -> None:
        self._call("cuStreamDestroy", stream)

    def alloc(self, nbytes: int) -> tuple[Any, int]:
        pointer = self._call("cuMemAlloc", nbytes)
        return pointer, int(pointer)

    def free(self, allocation: Any) -> None:
        self._call("cuMemFree", allocation)

    def host(self, shape: Sequence[int], dtype: np.dtype) -> tuple[np.ndarray, Any]:
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        address = int(self._call("cuMemAllocHost", nbytes))
        return array_at(address, shape, dtype), address

    def free_host(self, handle: Any) -> None:
        self._call("cuMemFreeHost", handle)

    def htod(self, device: int, host: np.ndarray, stream: Any) -> None:
        self._call("cuMemcpyHtoDAsync", device, host.ctypes.data, host.nbytes, stream)

    def dtoh(self, host: np.ndarray, device: int, stream: Any) -> None:
        self._call("cuMemcpyDtoHAsync", host.ctypes.data, device, host.nbytes, stream)


class _PyCuda:
    """pycuda's driver module: objects, exceptions on failure."""

    name = "pycuda"

    def __init__(self, driver: ModuleType) -> None:
        self.driver = driver
        self.version = getattr(importlib.import_module("pycuda"), "VERSION_TEXT", "?")

    def _call(self, what: str, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except self.driver.Error as err:
            raise CudaError(f"{what} failed: {err}") from err

    def init(self) -> int:
        self._call("cuInit", self.driver.init)
        return int(self._call("cuDeviceGetCount", self.driver.Device.count))

    def info(self, index: int) -> DeviceInfo:
        device = self.driver.Device(index)
        return DeviceInfo(index, device.name(), tuple(device.compute_capability()))  # type: ignore[arg-type]

    def retain(self, index: int) -> Any:
        return self._call("cuDevicePrimaryCtxRetain", self.driver.Device(index).retain_primary_context)

    def release(self, index: int, context: Any) -> None:
        del index
        context.detach()

    def push(self, context: Any) -> None:
        self._call("cuCtxPushCurrent", context.push)

    def pop(self) -> None:
        self._call("cuCtxPopCurrent", self.driver.Context.pop)

    def stream(self) -> tuple[Any, int]:
        stream = self._call("cuStreamCreate", self.driver.Stream)
        return stream, int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        self._call("cuStreamSynchronize", stream.synchronize)

    def destroy(self, stream: Any) -> None:
        del stream  # pycuda destroys the stream with its object

    def alloc(self, nbytes: int) -> tuple[Any, int]:
        allocation = self._call("cuMemAlloc", self.driver.mem_alloc, nbytes)
        return allocation, int(allocation)

    def free(self, allocation: Any) -> None:
        allocation.free()

    def host(self, shape: Sequence[int], dtype: np.dtype) -> tuple[np.ndarray, Any]:
        array = self._call("cuMemAllocHost", self.driver.pagelocked_empty, tuple(shape), dtype)
        return array, array

    def free_host(self, handle: Any) -> None:
        handle.base.free()

    def htod(self, device: int, host: np.ndarray, stream: Any) -> None:
        self._call("cuMemcpyHtoDAsync", self.driver.memcpy_htod_async, device, host, stream)

    def dtoh(self, host: np.ndarray, device: int, stream: Any) -> None:
        self._call("cuMemcpyDtoHAsync", self.driver.memcpy_dtoh_async, host, device, stream)


_BINDING_MODULES = {"cuda-python": ("cuda.bindings.driver", _CudaPython), "pycuda": ("pycuda.driver", _PyCuda)}
_binding_lock = threading.Lock()
_bindings: dict[str, Any] = {}


def cuda_binding(prefer: str | None = None) -> _CudaPython | _PyCuda:
    """The CUDA binding to use: ``prefer`` ("cuda-python" | "pycuda") or the first of :data:`BINDINGS` installed.

    Raises RuntimeNotAvailable naming both packages when none imports.
    """
    names = (prefer,) if prefer else BINDINGS
    if prefer is not None and prefer not in _BINDING_MODULES:
        raise ValueError(f"unknown CUDA binding {prefer!r}; expected one of {BINDINGS}")
    errors = []
    with _binding_lock:
        for name in names:
            if name in _bindings:
                return _bindings[name]
            module, make = _BINDING_MODULES[name]
            try:
                _bindings[name] = make(importlib.import_module(module))
            except ImportError as err:
                errors.append(f"{name}: {err}")
                continue
            return _bindings[name]
    raise RuntimeNotAvailable(f"no CUDA binding for Python ({'; '.join(errors)}): {CUDA_BINDING_HINT}")


def binding_status() -> str:
    """One line for ``m2f info``: which binding would be used and its version, or what to install."""
    try:
        binding = cuda_binding()
    except RuntimeNotAvailable as err:
        return f"missing ({err})"
    return f"{binding.name} {binding.version}"


# --------------------------------------------------------------------------------------------- device, streams, memory


class Stream:
    """A CUDA stream of a :class:`CudaDevice`; ``handle`` is what TensorRT's ``execute_async_v3`` takes."""

    def __init__(self, device: CudaDevice) -> None:
        self._device = device
        with device.current():
            self._stream, self.handle = device.binding.stream()

    def synchronize(self) -> None:
        with self._device.current():
            self._device.binding.synchronize(self._stream)

    @property
    def raw(self) -> Any:
        """The binding's own stream object (for the copy calls)."""
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            with self._device.current():
                self._device.binding.destroy(self._stream)
            self._stream = None


class DeviceBuffer:
    """``nbytes`` of device memory at ``pointer`` (an int, what ``set_tensor_address`` takes)."""

    def __init__(self, device: CudaDevice, nbytes: int) -> None:
        self._device, self.nbytes = device, max(int(nbytes), 1)
        with device.current():
            self._allocation, self.pointer = device.binding.alloc(self.nbytes)

    def free(self) -> None:
        if self._allocation is not None:
            with self._device.current():
                self._device.binding.free(self._allocation)
            self._allocation = None


class HostBuffer:
    """Page-locked host memory as the numpy ``array`` (shape, dtype): the source and target of async copies."""

    def __init__(self, device: CudaDevice, shape: Sequence[int], dtype: np.dtype | type) -> None:
        self._device = device
        with device.current():
            self.array, self._handle = device.binding.host(tuple(shape), np.dtype(dtype))

    def free(self) -> None:
        if self._handle is not None:
            self.array = np.empty(0, self.array.dtype)  # drop the view before the memory goes
            with self._device.current():
                self._device.binding.free_host(self._handle)
            self._handle = None


def copy_to_device(target: DeviceBuffer, source: HostBuffer, stream: Stream) -> None:
    """Enqueue host -> device of the whole host buffer on ``stream``."""
    if source.array.nbytes > target.nbytes:
        raise ValueError(f"{source.array.nbytes} bytes do not fit a {target.nbytes}-byte device buffer")
    with target._device.current():
        target._device.binding.htod(target.pointer, source.array, stream.raw)


def copy_to_host(target: HostBuffer, source: DeviceBuffer, stream: Stream) -> None:
    """Enqueue device -> host filling the whole host buffer on ``stream``; synchronise before reading it."""
    if target.array.nbytes > source.nbytes:
        raise ValueError(f"a {source.nbytes}-byte device buffer cannot fill {target.array.nbytes} bytes")
    with source._device.current():
        source._device.binding.dtoh(target.array, source.pointer, stream.raw)


class CudaDevice:
    """One GPU's primary context, shared by every thread that enters :meth:`current`."""

    def __init__(self, index: int = 0, binding: str | None = None) -> None:
        self.binding = cuda_binding(binding)
        self.index = index
        try:
            count = self.binding.init()
        except Exception as err:  # no driver: the bindings raise their own errors (a missing libcuda, CUDA errors)
            raise DeviceNotAvailable(f"CUDA cannot start ({err}): no NVIDIA GPU or driver here") from err
        if not 0 <= index < count:
            raise DeviceNotAvailable(f"no CUDA device {index}: {count} device(s) visible (CUDA_VISIBLE_DEVICES?)")
        self.info = self.binding.info(index)
        self._context: Any = self.binding.retain(index)

    @contextlib.contextmanager
    def current(self) -> Iterator[CudaDevice]:
        """Make the device's context current on this thread for the block (nests; any thread)."""
        if self._context is None:
            raise RuntimeError(f"CUDA device {self.index} is closed")
        self.binding.push(self._context)
        try:
            yield self
        finally:
            self.binding.pop()

    def stream(self) -> Stream:
        return Stream(self)

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self, nbytes)

    def host_buffer(self, shape: Sequence[int], dtype: np.dtype | type) -> HostBuffer:
        return HostBuffer(self, shape, dtype)

    def close(self) -> None:
        """Let go of the primary context (free buffers and streams first)."""
        if self._context is not None:
            self.binding.release(self.index, self._context)
            self._context = None


def open_device(index: int = 0, binding: str | None = None) -> CudaDevice:
    """:class:`CudaDevice` for GPU ``index``: RuntimeNotAvailable without a binding, DeviceNotAvailable without
    a GPU or driver."""
    device = CudaDevice(index, binding)
    logger.info("CUDA device %d (%s, sm %d.%d) via %s", index, device.info.name, *device.info.compute_capability,
                device.binding.name)  # fmt: skip
    return device
