"""OpenVINO backend: the artifact compiled for a device (CPU by default), with an optional on-disk model cache.

Inference precision: ``precision`` if given, else the artifact's metadata precision; "bf16" -> bf16,
"fp16" -> f16, "fp32" -> f32. Always set explicitly: OpenVINO's own CPU default on bf16-capable CPUs is bf16, which
would silently degrade an fp32 artifact. When the device lacks the capability ("BF16" / "FP16" in
``OPTIMIZATION_CAPABILITIES``): an explicit ``precision`` raises :class:`DeviceNotAvailable`; a precision taken
from the metadata falls back to f32 with a logged warning. An int8 artifact carries its quantisation in the graph;
the hint sets what its float operations (the ops left unquantised) run in: bf16 where its export gate verified
that on OpenVINO (``verified_precisions["bf16"]``) and the CPU computes bf16 natively (AVX512-BF16 or AMX), else
f32 (``precision="fp32"`` asks for f32).

Concurrency: the backend is safe to share between threads. Every ``run`` borrows an infer request from a pool
and copies its outputs out before handing the request back, so each call gets the outputs of its own inputs.
The pool holds ``num_requests`` requests, by default the compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS (1 in
"latency" mode; one per CPU stream, e.g. 2 on a 2-core CPU, in "throughput" mode). ``performance_mode`` sets
OpenVINO's PERFORMANCE_HINT: "latency" (default: one request uses every core) or "throughput" (several streams
of fewer cores each; worth it when several calls are in flight: ``Segmenter.predict_batch`` or several threads).

Cache: with ``cache_dir``, compiled blobs go to ``cache_dir/<key>/`` where the key is (artifact hash, "openvino",
precision, device, OpenVINO version); the folder also gets ``m2f.json``, the artifact's metadata.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.artifact import engine_cache_key, read_metadata
from runtimes.artifact_file import read_io_names
from runtimes.base import Backend, DeviceNotAvailable, ExclusivePool, RuntimeNotAvailable, TensorSpec
from runtimes.cache import file_sha256
from runtimes.errors import ArtifactError
from runtimes.registry import RUNTIMES
from runtimes.vocabulary import PRECISIONS

logger = logging.getLogger(__name__)

# our precision names -> OpenVINO INFERENCE_PRECISION_HINT values
OV_INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
_ALIASES = {"f32": "fp32", "f16": "fp16", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}  # hint value -> OPTIMIZATION_CAPABILITIES entry it needs
_VIRTUAL_DEVICES = {"AUTO", "MULTI", "HETERO", "BATCH"}
# performance_mode -> OpenVINO PERFORMANCE_HINT
PERFORMANCE_MODES = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise RuntimeNotAvailable(
            f"the openvino backend needs OpenVINO: {RUNTIMES['openvino'].install_hint} ({err})"
        ) from err
    return openvino


def openvino_version() -> str:
    """The OpenVINO release, e.g. "2026.4.1" (without the build suffix)."""
    return _import_openvino().get_version().split("-")[0]


def _port_name(port: Any, onnx_names: list[str]) -> str:
    """The ONNX name of a port. OpenVINO keeps ONNX names as tensor names, but a port can carry several (an
    output of a fused node keeps its producer's name too: "mask" and "is_positive" for Cast(Greater(...)))."""
    names = port.get_names()
    return next((n for n in onnx_names if n in names), None) or port.get_any_name()


def int8_float_ops_hint(metadata: dict, core: Any, device: str = "CPU") -> str:
    """The hint for an int8 artifact's float operations: "bf16" where its gate verified them in bf16 on OpenVINO
    (``verified_precisions["bf16"]``) and this CPU computes bf16 natively (the packaged default on AVX512-BF16:
    0.82x the time of f32 float ops, labels 99.7 % equal), else "f32"."""
    from runtimes.cpu_features import cpu_features

    record = (metadata.get("verified_precisions") or {}).get("bf16") or {}
    if record.get("runtime") != "openvino" or not device.startswith("CPU") or not cpu_features().native_bf16:
        return "f32"
    try:
        capabilities = list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:
        return "f32"
    return "bf16" if _CAPABILITY["bf16"] in capabilities else "f32"


def int8_float_ops_of(path: str | Path) -> str:
    """:func:`int8_float_ops_hint` of the int8 file at ``path`` on this machine's CPU; "f32" for a file without m2f
    metadata (a bare quantised ONNX carries no gate record) or one that cannot be read (its own load says why)."""
    try:
        metadata = read_metadata(path)
    except (ArtifactError, OSError):
        return "f32"
    return int8_float_ops_hint(metadata, _import_openvino().Core())


def openvino_core(path: str | Path, metadata: dict | None = None) -> Any:
    """An ``openvino.Core`` that can compile the artifact at ``path``: with our MSDA extension added when its
    metadata records the fused node (``native_ops``; the library from the cache or $M2F_MSDA_OPENVINO_EXTENSION,
    never from the artifact). ``metadata``: the artifact's, when already read; a bare ONNX file has none."""
    core = _import_openvino().Core()
    if metadata is None:
        try:
            metadata = read_metadata(path, validate=False)
        except ArtifactError:
            metadata = {}
    native = metadata.get("native_ops")
    if native is not None:
        from plugins.msda import openvino_extension

        core.add_extension(str(openvino_extension.check_record(native, Path(path))))
    return core


class OpenVinoBackend(Backend):
    """Run an artifact with OpenVINO on ``device`` ("CPU", "GPU", "NPU", "AUTO", ...); see the module docstring
    for ``precision``, ``performance_mode``, ``num_requests`` (the request pool) and ``cache_dir``."""

    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        precision: str | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        num_requests: int | None = None,
        performance_mode: str = "latency",
    ) -> None:
        _import_openvino()  # RuntimeNotAvailable with the install hint, before the metadata is read
        super().__init__(read_metadata(path), path)
        core = openvino_core(self.path, self.metadata)
        self.native_ops = self.metadata.get("native_ops") is not None
        device = device.upper()
        self.ov_device = device  # OpenVINO's spelling ("CPU", "GPU.0")
        self.device = device.split(".")[0].split(":")[0].lower()
        self._check_device(core, device)

        ov_precision = self._inference_precision(core, device, precision)
        hint = PERFORMANCE_MODES.get(str(performance_mode).lower())
        if hint is None:
            modes = ", ".join(PERFORMANCE_MODES)
            raise ValueError(f"unknown performance_mode {performance_mode!r}; use one of {modes}")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": ov_precision, "PERFORMANCE_HINT": hint}
        if num_requests is not None:
            if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
                raise ValueError(f"num_requests must be a positive integer, got {num_requests!r}")
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = num_requests  # no more streams than requests
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.cache_dir: Path | None = None
        if cache_dir is not None:
            key = engine_cache_key(file_sha256(self.path), self.name, ov_precision, device, openvino_version())
            self.cache_dir = Path(cache_dir) / key
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            (self.cache_dir / "m2f.json").write_text(json.dumps(self.metadata, sort_keys=True, indent=1))
            config["CACHE_DIR"] = str(self.cache_dir)
        self.inference_precision = ov_precision  # OpenVINO's hint ("f32", "bf16"); an int8 graph keeps its own types
        if self.metadata["precision"] != "int8":
            self.precision = {"f32": "fp32", "f16": "fp16"}.get(ov_precision, ov_precision)

        # compiling from the path (not a read_model() object) lets a cache hit skip reading the ONNX altogether
        with self._loading():
            self._compiled = core.compile_model(str(self.path), device, config)
        if num_requests is None:
            num_requests = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = ExclusivePool(self._compiled.create_infer_request() for _ in range(num_requests))
        self._num_requests = num_requests
        self.performance_mode = hint.lower()

        onnx_inputs, onnx_outputs = read_io_names(self.path)
        self._input_specs: dict[str, TensorSpec] = {}
        for port in self._compiled.inputs:
            name = _port_name(port, onnx_inputs)
            element_type = port.get_element_type()
            try:
                dtype = np.dtype(element_type.to_dtype())
            except Exception as err:
                raise ArtifactError(f"input {name!r} has type {element_type}, which numpy cannot hold") from err
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            self._input_specs[name] = TensorSpec(name, shape, dtype)
        self._output_ports = list(self._compiled.outputs)
        self._output_names = [_port_name(port, onnx_outputs) for port in self._output_ports]
        self._check_engine_matches_metadata()
        logger.debug(
            "openvino compiled %s on %s (%s, %s, %d requests)", self.path, device, ov_precision, hint, num_requests
        )

    @staticmethod
    def _check_device(core: Any, device: str) -> None:
        base = device.split(":")[0].split(".")[0]
        if base in _VIRTUAL_DEVICES:
            return
        available = list(core.available_devices)
        if not any(d == device or d.split(".")[0] == base for d in available):
            raise DeviceNotAvailable(
                f"OpenVINO sees no {device} device (available: {', '.join(available) or 'none'}); "
                "for GPU/NPU install the device driver, or use device='CPU'"
            )

    def _inference_precision(self, core: Any, device: str, precision: str | None) -> str:
        explicit = precision is not None
        name = (precision or self.metadata["precision"]).lower()
        name = _ALIASES.get(name, name)
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        if name == "int8" and self.metadata["precision"] == "int8":
            return int8_float_ops_hint(self.metadata, core, device)
        ov_precision = OV_INFERENCE_PRECISION[name]
        needed = _CAPABILITY.get(ov_precision)
        if needed is None:
            return ov_precision
        try:
            capabilities = list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # virtual devices (AUTO, HETERO) do not report it: let the plugin decide
            return ov_precision
        if needed in capabilities:
            return ov_precision
        message = f"OpenVINO {device} has no {needed} support (capabilities: {', '.join(capabilities)})"
        if explicit:
            raise DeviceNotAvailable(f"{message}; ask for precision='fp32' or use a device with {needed}")
        logger.warning("%s; running the %s artifact in f32", message, name)
        return "f32"

    @property
    def concurrency(self) -> int:
        """The number of infer requests in the pool."""
        return self._num_requests

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._requests.borrow() as request:
            # inputs are copied into the request; share_outputs=False copies the outputs out of it, so nothing
            # returned here changes when the request runs the next call
            results = request.infer(inputs, share_outputs=False)
            return {name: results[port] for name, port in zip(self._output_names, self._output_ports, strict=True)}

    def _close(self) -> None:
        del self._requests, self._compiled
