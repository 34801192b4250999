"""TensorRT backend: the artifact built into an engine on the device itself, cached, run through
:mod:`runtimes.cuda_memory` (cuda-python, else pycuda); no torch.

Written against TensorRT 10's and 11's Python API (``tensorrt`` from NVIDIA's index, or JetPack's
``python3-libnvinfer``); :func:`check_tensorrt_version` refuses older ones with what to install (JetPack 6.0 ships
TensorRT 8.6, which has neither strongly typed networks nor IPluginV3).

Build (first use of an artifact on a device):

1. The MSDA plugin library (``plugins/msda``, built with CMake on the device) is loaded when the artifact has
   ``M2F_MultiscaleDeformableAttn`` nodes; ``trt.init_libnvinfer_plugins`` registers TensorRT's own plugins (the
   ``MultiscaleDeformableAttnPlugin_TRT`` flavour needs nothing else), once per process with the process's one
   logger (:func:`process_logger`: TensorRT keeps a raw pointer to the logger it was first given).
2. ``OnnxParser.parse_from_file``; parser errors are raised verbatim (``python -m compile.tensorrt_rules`` checks
   the parser's rules on the host before a device sees the file).
3. Builder config: ``WORKSPACE`` memory-pool limit (``workspace_mb``); precision (see :func:`plan_build`); DLA
   (``dla_core``: default device DLA, that core, GPU fallback for what DLA cannot run, MSDA included); an
   optimisation profile when the artifact has dynamic dims (:func:`profile_shapes`); the **timing cache**
   (``timing_cache``: default :func:`timing_cache_path` beside the engine cache, per device and TensorRT version;
   a path; or False), read before and written after each build so that the next build skips the autotuning it
   already did (minutes on an Orin).
4. ``build_serialized_network``; the plan is written to the engine cache and deserialised.

Precision. An artifact's graph already carries its types: an fp16 artifact is an fp16 graph, an int8 artifact a
Q/DQ graph (explicit quantisation, made with NVIDIA ModelOpt: TensorRT 10 deprecated the implicit-INT8 calibrators
and TensorRT 11 removed them). Such an artifact is built as a **strongly typed** network (``STRONGLY_TYPED``), no
precision flags: the engine computes what the graph says. Asking for a precision other than the artifact's (the
``jetson`` target's fp16 of an fp32 artifact) uses TensorRT 10's weak typing (``BuilderFlag.FP16`` / ``BF16``),
which TensorRT 11 removed: there, export the artifact at that precision (``m2f export --target tensorrt
--precision fp16``: every float tensor fp16, Casts at the uint8 input and the float outputs). fp32 clears ``TF32``
so fp32 means fp32.

Cache: ``cache_dir`` (default ``$M2F_CACHE/tensorrt``, else ``~/.cache/m2f/tensorrt``) / key / ``model.engine``,
the key from :func:`runtimes.artifact.engine_cache_key` over (artifact SHA-256, "tensorrt", precision + strongly or
weakly typed, device name + compute capability [+ DLA core], TensorRT version), with the artifact's metadata as
``m2f.json`` beside it. A plan that no longer deserialises (driver or library update) is rebuilt; ``rebuild=True``
ignores the cache (after rebuilding the plugin library, say: the key does not cover it).

The plugin library registers its creator when loaded (the default build). A library built with
``-DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS=ON`` registers nothing on load and is not supported here.

Execution and threads: TensorRT allows one ``enqueue`` at a time per execution context, so each calling thread
gets its **own execution context**, CUDA stream and pinned host + device buffers (made on its first ``run``; the
engine and its weights are shared). Concurrent ``run`` calls from different threads therefore overlap on the GPU;
calls from one thread are sequential. Inputs are copied in asynchronously, ``set_tensor_address`` +
``execute_async_v3``, outputs copied back, one stream synchronise; tensors by name, output dtypes from the engine.
Buffers are reallocated only when a dynamic input changes shape.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from plugins.msda import tensorrt_plugin  # stdlib only: the package imports no torch
from runtimes import INSTALL_HINTS, cuda_memory
from runtimes.artifact import read_metadata
from runtimes.base import Backend, DeviceNotAvailable, RuntimeNotAvailable, TensorSpec
from runtimes.cache import file_sha256
from runtimes.errors import ArtifactError
from runtimes.registry import RUNTIMES
from runtimes.tensorrt_build import (
    check_tensorrt_version,
    default_cache_dir,
    device_tag,
    engine_path,
    has_weak_typing,
    numpy_dtype,
    parse_device,
    plan_build,
    profile_shapes,
    timing_cache_path,
    uses_plugin_op,
    write_atomically,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = f"{INSTALL_HINTS['tensorrt']} (on a Jetson: JetPack's python3-libnvinfer)"
METADATA_FILE = "m2f.json"
_SEVERITY_LEVELS = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,  # TensorRT's INFO is build chatter
    "VERBOSE": logging.DEBUG,
}


# --------------------------------------------------------------------------------------------- imports


def _import_tensorrt() -> ModuleType:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as err:
        raise RuntimeNotAvailable(f"the tensorrt backend needs {INSTALL_HINT} ({err})") from err
    check_tensorrt_version(getattr(trt, "__version__", "unknown"))
    return trt


_logger_lock = threading.Lock()
_process_logger: Any = None


def process_logger(trt: ModuleType) -> Any:
    """The process's one ``trt.ILogger`` (forwarding to ``logging``, keeping recent errors for exception messages),
    handed to ``init_libnvinfer_plugins`` once: TensorRT keeps a raw pointer to it, so it lives as long as the
    process. Builders, runtimes and parsers of every backend use it too."""
    global _process_logger
    with _logger_lock:
        if _process_logger is None:

            class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: deque[str] = deque(maxlen=50)

                def log(self, severity: Any, msg: str) -> None:
                    name = getattr(severity, "name", str(severity)).split(".")[-1]
                    level = _SEVERITY_LEVELS.get(name, logging.INFO)
                    if level >= logging.ERROR:
                        self.errors.append(msg)
                    logger.log(level, "TensorRT: %s", msg)

            instance = _Logger()
            trt.init_libnvinfer_plugins(instance, "")  # TensorRT's own plugins (MultiscaleDeformableAttn_TRT)
            _process_logger = instance
        return _process_logger


def tensorrt_status() -> dict[str, str]:
    """For ``m2f info``: TensorRT (version or why not usable), the CUDA binding, the MSDA plugin library."""
    try:
        version = getattr(importlib.import_module("tensorrt"), "__version__", "unknown")
        check_tensorrt_version(version)
        trt = f"{version} ({'weakly and strongly' if has_weak_typing(version) else 'strongly'} typed networks)"
    except RuntimeNotAvailable as err:
        trt = f"unusable: {err}"
    except ImportError:
        trt = f"not installed ({INSTALL_HINT})"
    library = tensorrt_plugin.plugin_library_path()
    built = f"built: {library}" if library.is_file() else f"not built ({library}; {tensorrt_plugin.build_commands()})"
    return {"trt_backend": trt, "cuda_binding": cuda_memory.binding_status(), "trt_plugin": built}


@dataclass
class _Execution:
    """One thread's execution context with its stream and (pinned host, device) buffers by tensor name."""

    context: Any
    stream: cuda_memory.Stream
    buffers: dict[str, tuple[cuda_memory.HostBuffer, cuda_memory.DeviceBuffer]]
    shapes: dict[str, tuple[int, ...]]


# --------------------------------------------------------------------------------------------- the backend


BACKEND_OPTIONS: frozenset[str] = RUNTIMES["tensorrt"].options  # the tensorrt row of runtimes/registry.py


class TensorRtBackend(Backend):
    """Run an artifact with TensorRT on an NVIDIA GPU (or a Jetson DLA core), the engine built and cached here.

    ``precision``: None for the artifact's own; ``workspace_mb``: builder workspace pool; ``dla_core``: build for
    that DLA core with GPU fallback; ``cache_dir``: engine cache root; ``timing_cache``: True (default: beside the
    engine cache), a file path, or False; ``plugin_library``: the MSDA plugin library (default
    ``plugins.msda.tensorrt_plugin.plugin_library_path()``: ``$M2F_MSDA_TRT_PLUGIN``, else the cache's build);
    ``strongly_typed``: see :func:`plan_build`; ``rebuild``: ignore a cached engine; ``cuda_binding``:
    "cuda-python" or "pycuda" (default: whichever is installed, cuda-python first). Safe to share across threads
    (an execution context per thread).
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
        timing_cache: bool | str | Path = True,
        plugin_library: str | Path | None = None,
        strongly_typed: bool | None = None,
        rebuild: bool = False,
        cuda_binding: str | None = None,
    ) -> None:
        trt = _import_tensorrt()
        super().__init__(read_metadata(artifact), artifact)
        self._trt = trt
        self._local = threading.local()
        self._executions: list[_Execution] = []
        self._executions_lock = threading.Lock()
        device_index = parse_device(device)
        self.device = "cuda"
        artifact_precision = self.metadata["precision"]
        self.precision = (precision or artifact_precision).lower()
        if dla_core is not None and (not isinstance(dla_core, int) or dla_core < 0):
            raise ValueError(f"dla_core must be a DLA core index (0, 1, ...) or None, got {dla_core!r}")
        weak_typing = has_weak_typing(trt.__version__) and hasattr(getattr(trt, "BuilderFlag", None), "FP16")
        self.plan = plan_build(self.precision, artifact_precision, weak_typing, dla_core is not None, strongly_typed)

        self._trt_logger = process_logger(trt)
        if uses_plugin_op(self.path):
            # FileNotFoundError with the cmake commands when it is not built
            tensorrt_plugin.load_plugin_library(plugin_library)

        self._gpu = cuda_memory.open_device(device_index, cuda_binding)
        try:
            with self._gpu.current():
                info = self._gpu.info
                self.device_tag = device_tag(info.name, info.compute_capability, dla_core)
                sha = file_sha256(self.path)
                kind = f"{self.precision}-{'strong' if self.plan.strongly_typed else 'weak'}"  # strongly typed or not
                root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
                self.engine_path = engine_path(root, sha, kind, self.device_tag, trt.__version__)
                if timing_cache is True:
                    self.timing_cache_path: Path | None = timing_cache_path(root, self.device_tag, trt.__version__)
                else:
                    self.timing_cache_path = Path(timing_cache) if timing_cache else None
                self._runtime = trt.Runtime(self._trt_logger)
                if dla_core is not None:
                    self._runtime.DLA_core = dla_core
                self._engine = None if rebuild else self._load_cached()
                if self._engine is None:
                    self._engine = self._deserialize(self._build(workspace_mb, dla_core))
                self._describe_io()
        except BaseException:
            self._release_device()
            raise
        self._check_engine_matches_metadata()

    # ------------------------------------------------------------------ engine
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
            raise ArtifactError(
                f"TensorRT's ONNX parser rejected {self.path}:\n{errors}\n(check an artifact on the host with "
                "`python -m compile.tensorrt_rules FILE.onnx`)"
            )
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
        self._read_timing_cache(config)
        logger.info(
            "building the TensorRT engine for %s (%s, %s; minutes on a Jetson)",
            self.path,
            self.precision,
            self.device_tag,
        )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            errors = "\n".join(list(self._trt_logger.errors)[-10:]) or "(no error logged)"
            raise RuntimeError(f"TensorRT could not build an engine for {self.path}:\n{errors}")
        self._write_timing_cache(config)
        data = bytes(serialized)
        self._store(data)
        return data

    def _read_timing_cache(self, config: Any) -> None:
        """Start the build from the persistent timing cache (an unreadable one is replaced after the build)."""
        if self.timing_cache_path is None:
            return
        data = self.timing_cache_path.read_bytes() if self.timing_cache_path.is_file() else b""
        cache = config.create_timing_cache(data)
        if cache is None and data:
            logger.warning("timing cache %s does not load here; starting an empty one", self.timing_cache_path)
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        logger.info("TensorRT timing cache %s (%d bytes)", self.timing_cache_path, len(data))

    def _write_timing_cache(self, config: Any) -> None:
        if self.timing_cache_path is None:
            return
        cache = config.get_timing_cache()
        if cache is not None:
            write_atomically(self.timing_cache_path, bytes(cache.serialize()))

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
        write_atomically(self.engine_path, data)
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
    def _execution(self) -> _Execution:
        """This thread's execution context, stream and buffers (made on first use; the device is current)."""
        execution = getattr(self._local, "execution", None)
        if execution is None:
            with self._executions_lock:  # contexts are made one at a time; each is then used by its thread only
                context = self._engine.create_execution_context()
                if context is None:
                    raise RuntimeError(f"TensorRT could not create an execution context for {self.path} (GPU memory?)")
                execution = _Execution(context, self._gpu.stream(), {}, {})
                self._executions.append(execution)
            self._local.execution = execution
        return execution

    def _allocate(self, execution: _Execution, inputs: dict[str, np.ndarray]) -> None:
        """(Re)allocate pinned host + device buffers when an input's shape changed; bind every address."""
        shapes = {name: tuple(array.shape) for name, array in inputs.items()}
        if execution.buffers and shapes == {name: execution.shapes.get(name) for name in shapes}:
            return
        context = execution.context
        for name, shape in shapes.items():
            if not context.set_input_shape(name, shape):
                raise ValueError(f"TensorRT rejects shape {shape} for input {name!r} (outside the engine's profile)")
        for name in [*self._input_specs, *self._output_names]:
            shape = shapes[name] if name in shapes else tuple(context.get_tensor_shape(name))
            if execution.shapes.get(name) != shape:
                old = execution.buffers.pop(name, None)
                if old is not None:
                    old[0].free(), old[1].free()
                host = self._gpu.host_buffer(shape, self._dtypes[name])
                execution.buffers[name] = (host, self._gpu.device_buffer(host.array.nbytes))
                execution.shapes[name] = shape
            context.set_tensor_address(name, execution.buffers[name][1].pointer)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._gpu.current():
            execution = self._execution()
            self._allocate(execution, inputs)
            stream = execution.stream
            for name, array in inputs.items():
                host, device = execution.buffers[name]
                np.copyto(host.array, array)
                cuda_memory.copy_to_device(device, host, stream)
            if not execution.context.execute_async_v3(stream.handle):
                raise RuntimeError(f"TensorRT execution failed: {'; '.join(list(self._trt_logger.errors)[-5:])}")
            for name in self._output_names:
                host, device = execution.buffers[name]
                cuda_memory.copy_to_host(host, device, stream)
            stream.synchronize()
            return {name: execution.buffers[name][0].array.copy() for name in self._output_names}

    def _close(self) -> None:
        self._release_device()

    def _release_device(self) -> None:
        """Free every thread's buffers, streams and contexts and the engine objects, then the CUDA context."""
        gpu = getattr(self, "_gpu", None)
        if gpu is None:
            return
        try:
            with gpu.current():
                with self._executions_lock:
                    executions, self._executions = self._executions, []
                for execution in executions:
                    for host, device in execution.buffers.values():
                        host.free(), device.free()
                    execution.stream.close()
                    execution.context = None
                self._engine = self._runtime = None
        finally:
            gpu.close()
            self._gpu = None
