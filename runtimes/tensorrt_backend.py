"""TensorRT backend: the artifact built into an engine on the device itself, cached, run with pycuda.

Written against TensorRT 10's Python API (``tensorrt`` from NVIDIA's index, or JetPack's ``python3-libnvinfer``)
and pycuda; no torch.

Build (first use of an artifact on a device):

1. The MSDA plugin library (``plugins/msda``, built with CMake on the device) is loaded when the artifact has
   ``M2F_MultiscaleDeformableAttn`` nodes; ``trt.init_libnvinfer_plugins`` registers TensorRT's own plugins (the
   ``MultiscaleDeformableAttnPlugin_TRT`` flavour needs nothing else).
2. ``OnnxParser.parse_from_file``; parser errors are raised verbatim.
3. Builder config: ``WORKSPACE`` memory-pool limit (``workspace_mb``); precision (see :func:`plan_build`); DLA
   (``dla_core``: default device DLA, that core, GPU fallback for what DLA cannot run, MSDA included); an
   optimisation profile when the artifact has dynamic dims (:func:`profile_shapes`).
4. ``build_serialized_network``; the plan is written to the engine cache and deserialised.

Precision. An artifact's graph already carries its types: an fp16 artifact is an fp16 graph, an int8 artifact a
Q/DQ graph (explicit quantisation, made with NVIDIA ModelOpt: TensorRT 10 deprecated the implicit-INT8 calibrators
and TensorRT 11 removed them). Such an artifact is built as a **strongly typed** network (``STRONGLY_TYPED``), no
precision flags: the engine computes what the graph says. Asking for a precision other than the artifact's (fp16
from an fp32 artifact) uses TensorRT 10's weak typing (``BuilderFlag.FP16`` / ``BF16``), which TensorRT 11 removed:
there, export the artifact at that precision instead. fp32 clears ``TF32`` so fp32 means fp32.

Cache: ``cache_dir`` (default ``$M2F_CACHE/tensorrt``, else ``~/.cache/m2f/tensorrt``) / key / ``model.engine``,
the key from :func:`runtimes.artifact.engine_cache_key` over (artifact SHA-256, "tensorrt", precision + strongly or
weakly typed, device name + compute capability [+ DLA core], TensorRT version), with the artifact's metadata as
``m2f.json`` beside it. A plan that no longer deserialises (driver or library update) is rebuilt; ``rebuild=True``
ignores the cache (after rebuilding the plugin library, say: the key does not cover it).

The plugin library registers its creator when loaded (the default build). A library built with
``-DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS=ON`` registers nothing on load and is not supported here.

Execution: pinned host buffers, device buffers and a stream from pycuda; inputs copied in asynchronously,
``set_tensor_address`` + ``execute_async_v3``, outputs copied back, one synchronise; tensors by name, output dtypes
from the engine. Buffers are reallocated only when a dynamic input changes shape.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import mmap
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from runtimes import INSTALL_HINTS
from runtimes.artifact import PRECISIONS, ArtifactError, artifact_sha256, engine_cache_key, read_metadata
from runtimes.base import Backend, DeviceNotAvailable, RuntimeNotAvailable, TensorSpec

logger = logging.getLogger(__name__)

INSTALL_HINT = f"{INSTALL_HINTS['tensorrt']} (on a Jetson: JetPack's python3-libnvinfer)"
PYCUDA_HINT = "pip install pycuda (needs the CUDA toolkit's nvcc on PATH to build)"
ENGINE_FILE = "model.engine"
METADATA_FILE = "m2f.json"
PLUGIN_OP = b"M2F_MultiscaleDeformableAttn"  # our plugin's ONNX op type (plugins.msda.tensorrt_plugin.PLUGIN_NAME)

# TensorRT DataType names -> numpy dtypes (BF16, FP8, INT4, FP4 have no numpy dtype)
TRT_NUMPY_DTYPES: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
}
_WEAK_TYPING_FLAG = {"fp16": "FP16", "bf16": "BF16"}  # precision asked of a graph in other types (TensorRT 10)
_SEVERITY_LEVELS = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,  # TensorRT's INFO is build chatter
    "VERBOSE": logging.DEBUG,
}


# --------------------------------------------------------------------------------------------- pure helpers


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """The numpy dtype of a ``tensorrt.DataType`` (by its name); ArtifactError for types numpy cannot hold."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name not in TRT_NUMPY_DTYPES:
        raise ArtifactError(
            f"the engine has a {name} input or output, which numpy cannot hold: export the artifact with "
            "float32/float16/integer inputs and outputs (`m2f export`)"
        )
    return TRT_NUMPY_DTYPES[name]


def default_cache_dir() -> Path:
    """``$M2F_CACHE/tensorrt``, else ``~/.cache/m2f/tensorrt``."""
    return Path(os.environ.get("M2F_CACHE", Path.home() / ".cache" / "m2f")) / "tensorrt"


def device_tag(name: str, compute_capability: tuple[int, int], dla_core: int | None = None) -> str:
    """The device part of the engine cache key: GPU name, SM version, DLA core if any ("Orin_sm87_dla0")."""
    major, minor = compute_capability
    return f"{name}_sm{major}{minor}" + ("" if dla_core is None else f"_dla{dla_core}")


def engine_path(cache_dir: str | Path, artifact_sha: str, precision: str, device: str, tensorrt_version: str) -> Path:
    """Where the engine of (artifact, precision, device, TensorRT version) lives; ``m2f.json`` sits beside it."""
    key = engine_cache_key(artifact_sha, "tensorrt", precision, device, tensorrt_version)
    return Path(cache_dir) / key / ENGINE_FILE


@dataclass(frozen=True)
class BuildPlan:
    """How to build: a strongly typed network or not, and the builder flags (``tensorrt.BuilderFlag`` names)."""

    strongly_typed: bool
    flags: tuple[str, ...]
    clear_flags: tuple[str, ...] = ()


def plan_build(
    precision: str,
    artifact_precision: str,
    weak_typing: bool,
    dla: bool = False,
    strongly_typed: bool | None = None,
) -> BuildPlan:
    """The network kind and builder flags for running an ``artifact_precision`` artifact at ``precision``.

    ``weak_typing``: whether this TensorRT still has the precision builder flags (10.x yes, 11.x no).
    ``strongly_typed``: force (True) or forbid (False) a strongly typed network; None chooses (see module doc).
    """
    if precision not in PRECISIONS or artifact_precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} / {artifact_precision!r}; use one of {PRECISIONS}")
    if dla and precision == "fp32":
        raise ValueError("DLA runs fp16 or int8 only: ask for precision='fp16' (or an int8 artifact), or dla_core=None")
    if precision == "int8" and artifact_precision != "int8":
        raise ArtifactError(
            "int8 on TensorRT needs a Q/DQ artifact (explicit quantisation, made with NVIDIA ModelOpt from the fp32 "
            f"tensorrt artifact); this artifact is {artifact_precision}"
        )
    fallback = ("GPU_FALLBACK",) if dla else ()
    no_tf32 = ("TF32",) if precision == "fp32" else ()
    graph = "fp32" if artifact_precision == "bf16" else artifact_precision  # a bf16 artifact is an fp32 graph
    same = precision == graph
    if strongly_typed is None:
        strongly_typed = same or not weak_typing
    if strongly_typed:
        if not same:
            raise ArtifactError(
                f"a strongly typed engine computes in the artifact's own types ({graph}), not "
                f"{precision}: export the artifact at {precision} (`m2f export --precision {precision}`)"
                + ("" if weak_typing else " (this TensorRT has no weak typing: no precision builder flags)")
            )
        return BuildPlan(True, fallback, no_tf32)
    if not weak_typing:
        raise ArtifactError("this TensorRT builds strongly typed networks only (TensorRT 11 removed weak typing)")
    if precision == "int8":  # a Q/DQ graph, weakly typed: INT8 for the quantised layers, FP16 for the rest
        return BuildPlan(False, ("INT8", "FP16", *fallback))
    flag = _WEAK_TYPING_FLAG.get(precision)
    return BuildPlan(False, ((flag,) if flag else ()) + fallback, no_tf32)


def profile_shapes(shape: Sequence[int], metadata: dict) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) of an NHWC image input with dynamic dims (-1), from the artifact's resize policy.

    Batch: 1. Height and width: 32 .. ``max_size`` (4096 when uncapped), optimised for ``min_size`` square.
    """
    spec = metadata["input"]
    longest = spec.get("max_size") or 4096
    opt_side = min(spec.get("min_size") or 512, longest)
    ranges = []
    for axis, dim in enumerate(shape):
        if dim >= 0:
            ranges.append((dim, dim, dim))
        elif axis == 0:
            ranges.append((1, 1, 1))
        elif axis in (1, 2):
            ranges.append((32, opt_side, longest))
        else:
            raise ArtifactError(f"input dim {axis} of {tuple(shape)} is dynamic; only batch, height and width may be")
    low, opt, high = zip(*ranges, strict=True)
    return tuple(low), tuple(opt), tuple(high)


def uses_plugin_op(path: str | Path, op_type: bytes = PLUGIN_OP) -> bool:
    """Whether the ONNX file names ``op_type`` (node op types are stored as plain bytes); reads no graph."""
    with Path(path).open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return buf.find(op_type) >= 0


def parse_device(device: str) -> int:
    """ "cuda" / "cuda:N" -> the CUDA device index."""
    kind, _, index = device.lower().partition(":")
    if kind not in ("cuda", "gpu") or (index and not index.isdigit()):
        raise ValueError(f"TensorRT runs on an NVIDIA GPU: device must be 'cuda' or 'cuda:N', got {device!r}")
    return int(index or 0)


# --------------------------------------------------------------------------------------------- imports


def _import_tensorrt() -> ModuleType:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as err:
        raise RuntimeNotAvailable(f"the tensorrt backend needs {INSTALL_HINT} ({err})") from err


def _import_pycuda() -> ModuleType:
    try:
        return importlib.import_module("pycuda.driver")
    except ImportError as err:
        raise RuntimeNotAvailable(f"the tensorrt backend moves data with pycuda: {PYCUDA_HINT} ({err})") from err


def tensorrt_plugin_module() -> ModuleType:
    """``plugins.msda.tensorrt_plugin`` (stdlib only). Where torch is absent (an edge install) the package's
    ``__init__`` cannot import, so the file is loaded on its own."""
    name = "plugins.msda.tensorrt_plugin"
    try:
        return importlib.import_module(name)
    except ImportError as err:
        spec = importlib.util.find_spec("plugins")
        if spec is None or spec.origin is None:
            raise
        file = Path(spec.origin).parent / "msda" / "tensorrt_plugin.py"
        logger.debug("importing %s failed (%s); loading %s directly", name, err, file)
        alias = "_m2f_msda_tensorrt_plugin"
        if alias in sys.modules:
            return sys.modules[alias]
        file_spec = importlib.util.spec_from_file_location(alias, file)
        if file_spec is None or file_spec.loader is None:
            raise
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[alias] = module
        file_spec.loader.exec_module(module)
        return module


def _make_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` that forwards to ``logging`` and keeps the errors for exception messages."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity)).split(".")[-1]
            level = _SEVERITY_LEVELS.get(name, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(msg)
            logger.log(level, "TensorRT: %s", msg)

    return _Logger()


# --------------------------------------------------------------------------------------------- the backend


class TensorRtBackend(Backend):
    """Run an artifact with TensorRT on an NVIDIA GPU (or a Jetson DLA core), the engine built and cached here.

    ``precision``: None for the artifact's own; ``workspace_mb``: builder workspace pool; ``dla_core``: build for
    that DLA core with GPU fallback; ``cache_dir``: engine cache root; ``plugin_library``: the MSDA plugin library
    (default ``$M2F_MSDA_TRT_PLUGIN`` or ``build/msda/libm2f_msda_trt.so``); ``strongly_typed``: see
    :func:`plan_build`; ``rebuild``: ignore a cached engine.
    """

    name = "tensorrt"

    def __init__(
        self,
        artifact: str | Path,
        device: str = "cuda",
        precision: str | None = None,
        workspace_mb: int = 1024,
        dla_core: int | None = None,
        cache_dir: str | Path | None = None,
        plugin_library: str | Path | None = None,
        strongly_typed: bool | None = None,
        rebuild: bool = False,
    ) -> None:
        trt = _import_tensorrt()
        super().__init__(read_metadata(artifact), artifact)
        self._trt = trt
        self._context: Any = None
        self._buffers: dict[str, tuple[np.ndarray, Any]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        device_index = parse_device(device)
        artifact_precision = self.metadata["precision"]
        self.precision = (precision or artifact_precision).lower()
        if dla_core is not None and (not isinstance(dla_core, int) or dla_core < 0):
            raise ValueError(f"dla_core must be a DLA core index (0, 1, ...) or None, got {dla_core!r}")
        weak_typing = hasattr(trt, "BuilderFlag") and hasattr(trt.BuilderFlag, "FP16")
        self.plan = plan_build(self.precision, artifact_precision, weak_typing, dla_core is not None, strongly_typed)

        self._trt_logger = _make_logger(trt)
        trt.init_libnvinfer_plugins(self._trt_logger, "")  # TensorRT's own plugins (MultiscaleDeformableAttn_TRT)
        if uses_plugin_op(self.path):
            # FileNotFoundError with the cmake commands when it is not built
            tensorrt_plugin_module().load_plugin_library(plugin_library)

        self._cuda = _import_pycuda()
        self._cuda_context = self._open_device(device_index)
        try:
            gpu = self._cuda.Device(device_index)
            self.device = device_tag(gpu.name(), gpu.compute_capability(), dla_core)
            sha = artifact_sha256(self.path)
            kind = f"{self.precision}-{'strong' if self.plan.strongly_typed else 'weak'}"  # strongly typed or not
            self.engine_path = engine_path(cache_dir or default_cache_dir(), sha, kind, self.device, trt.__version__)
            self._runtime = trt.Runtime(self._trt_logger)
            if dla_core is not None:
                self._runtime.DLA_core = dla_core
            self._engine = None if rebuild else self._load_cached()
            if self._engine is None:
                self._engine = self._deserialize(self._build(workspace_mb, dla_core))
            self._context = self._engine.create_execution_context()
            self._stream = self._cuda.Stream()
            self._describe_io()
        except BaseException:
            self._release_device()
            raise
        self._cuda_context.pop()
        self._check_engine_matches_metadata()

    # ------------------------------------------------------------------ device and engine
    def _open_device(self, index: int) -> Any:
        cuda = self._cuda
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as err:  # pycuda raises its own RuntimeError/LogicError without a driver or GPU
            raise DeviceNotAvailable(f"CUDA cannot start ({err}): no NVIDIA GPU or driver here") from err
        if index >= count:
            raise DeviceNotAvailable(f"no CUDA device {index}: {count} device(s) visible (CUDA_VISIBLE_DEVICES?)")
        context = cuda.Device(index).retain_primary_context()  # the context TensorRT's runtime API uses too
        context.push()
        return context

    def _load_cached(self) -> Any:
        if not self.engine_path.is_file():
            return None
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            logger.warning("cached TensorRT engine %s does not load here; rebuilding it", self.engine_path)
            return None
        logger.info("TensorRT engine from cache %s", self.engine_path)
        return engine

    def _build(self, workspace_mb: int, dla_core: int | None) -> bytes:
        trt, plan = self._trt, self.plan
        builder = trt.Builder(self._trt_logger)
        flags = 0  # TensorRT 10 networks are always explicit batch (EXPLICIT_BATCH is deprecated and ignored)
        if plan.strongly_typed:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._trt_logger)
        if not parser.parse_from_file(str(self.path)):
            errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"TensorRT's ONNX parser rejected {self.path}:\n{errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in plan.clear_flags:
            if hasattr(trt.BuilderFlag, flag):
                config.clear_flag(getattr(trt.BuilderFlag, flag))
        if dla_core is not None:
            if dla_core >= builder.num_DLA_cores:
                raise DeviceNotAvailable(f"no DLA core {dla_core}: this device has {builder.num_DLA_cores}")
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = dla_core
        self._add_profile(builder, network, config)
        logger.info(
            "building the TensorRT engine for %s (%s, %s; minutes on a Jetson)", self.path, self.precision, self.device
        )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            errors = "\n".join(self._trt_logger.errors[-10:]) or "(no error logged)"
            raise RuntimeError(f"TensorRT could not build an engine for {self.path}:\n{errors}")
        data = bytes(serialized)
        self._store(data)
        return data

    def _add_profile(self, builder: Any, network: Any, config: Any) -> None:
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        dynamic = [tensor for tensor in inputs if any(d < 0 for d in tensor.shape)]
        if not dynamic:
            return
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            low, opt, high = profile_shapes(tuple(tensor.shape), self.metadata)
            logger.info("TensorRT profile for %r: min %s opt %s max %s", tensor.name, low, opt, high)
            profile.set_shape(tensor.name, low, opt, high)
        config.add_optimization_profile(profile)

    def _store(self, data: bytes) -> None:
        folder = self.engine_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        (folder / METADATA_FILE).write_text(json.dumps(self.metadata, sort_keys=True, indent=1))
        partial = self.engine_path.with_suffix(f".partial{os.getpid()}")
        partial.write_bytes(data)
        partial.replace(self.engine_path)  # atomic: a concurrent reader sees the old plan or the whole new one
        logger.info("cached TensorRT engine %s (%.1f MB)", self.engine_path, len(data) / 1e6)

    def _deserialize(self, data: bytes) -> Any:
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError(f"TensorRT built but could not load the engine for {self.path}")
        return engine

    def _describe_io(self) -> None:
        trt, engine = self._trt, self._engine
        self._input_specs: dict[str, TensorSpec] = {}
        self._output_names: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._dtypes[name] = numpy_dtype(engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
                self._input_specs[name] = TensorSpec(name, shape, self._dtypes[name])
            else:
                self._output_names.append(name)

    # ------------------------------------------------------------------ Backend
    def _allocate(self, inputs: dict[str, np.ndarray]) -> None:
        """(Re)allocate pinned host + device buffers when an input's shape changed; bind every address."""
        shapes = {name: tuple(array.shape) for name, array in inputs.items()}
        if shapes == {name: self._shapes.get(name) for name in shapes} and self._buffers:
            return
        for name, shape in shapes.items():
            if not self._context.set_input_shape(name, shape):
                raise ValueError(f"TensorRT rejects shape {shape} for input {name!r} (outside the engine's profile)")
        for name in [*self._input_specs, *self._output_names]:
            shape = shapes[name] if name in shapes else tuple(self._context.get_tensor_shape(name))
            if self._shapes.get(name) != shape:
                self._buffers.pop(name, None)  # frees the old pair
                host = self._cuda.pagelocked_empty(shape, self._dtypes[name])
                device = self._cuda.mem_alloc(max(host.nbytes, 1))
                self._buffers[name] = (host, device)
                self._shapes[name] = shape
            self._context.set_tensor_address(name, int(self._buffers[name][1]))

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        self._cuda_context.push()
        try:
            self._allocate(inputs)
            for name, array in inputs.items():
                host, device = self._buffers[name]
                np.copyto(host, array)
                cuda.memcpy_htod_async(device, host, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"TensorRT execution failed: {'; '.join(self._trt_logger.errors[-5:])}")
            for name in self._output_names:
                host, device = self._buffers[name]
                cuda.memcpy_dtoh_async(host, device, self._stream)
            self._stream.synchronize()
            return {name: self._buffers[name][0].copy() for name in self._output_names}
        finally:
            self._cuda_context.pop()

    def _close(self) -> None:
        self._cuda_context.push()
        self._release_device()

    def _release_device(self) -> None:
        """Free the buffers and engine objects (the context is current), then let go of the CUDA context."""
        try:
            self._buffers.clear()
            self._context = self._engine = self._runtime = self._stream = None
        finally:
            self._cuda_context.pop()
            self._cuda_context.detach()
