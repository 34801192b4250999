"""ONNX Runtime backend: an ``InferenceSession`` over the artifact, CPU or CUDA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.artifact import read_metadata
from runtimes.base import Backend, DeviceNotAvailable, RuntimeNotAvailable, TensorSpec
from runtimes.errors import ArtifactError
from runtimes.registry import RUNTIMES

logger = logging.getLogger(__name__)

# ONNX Runtime type strings -> numpy dtypes (bfloat16 has none and is not a valid artifact input)
_ORT_DTYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}
_DEVICE_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise RuntimeNotAvailable(
            f"the onnxruntime backend needs ONNX Runtime: {RUNTIMES['onnxruntime'].install_hint} ({err})"
        ) from err
    return onnxruntime


def device_unavailable(device: str) -> str | None:
    """None if this ONNX Runtime build has the providers of ``device``, else why not (see ``runtimes``)."""
    if device.lower() not in _DEVICE_PROVIDERS:
        return f"onnxruntime has no device {device!r} (it has {', '.join(_DEVICE_PROVIDERS)})"
    available = _import_onnxruntime().get_available_providers()
    missing = [p for p in _DEVICE_PROVIDERS[device.lower()] if p not in available]
    return f"onnxruntime has no {', '.join(missing)} (pip install onnxruntime-gpu)" if missing else None


class OnnxRuntimeBackend(Backend):
    """Run an artifact with ONNX Runtime.

    ``device`` is "cpu" or "cuda"; ``providers`` overrides the provider list; ``threads`` sets
    ``intra_op_num_threads``; other keyword arguments are set as ``onnxruntime.SessionOptions`` attributes.

    Thread safety: one backend may be shared by threads and streams. ``InferenceSession.run`` is re-entrant
    (ONNX Runtime documents concurrent ``Run`` calls on one session as safe) and returns new arrays per call, and
    this class keeps no per-call state, so every call gets the outputs of its own inputs
    (tests/runtimes/test_backend_threads.py, tests/sdk/test_concurrency.py). Concurrent calls share the session's
    intra-op thread pool, which one call already fills, so :attr:`concurrency` is 1.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        providers: list[str] | None = None,
        **session_options: Any,
    ) -> None:
        ort = _import_onnxruntime()
        super().__init__(read_metadata(path), path)
        device = device.lower()
        if providers is None:
            if device not in _DEVICE_PROVIDERS:
                raise ValueError(f"unknown device {device!r} for onnxruntime; use one of {sorted(_DEVICE_PROVIDERS)}")
            providers = _DEVICE_PROVIDERS[device]
        available = ort.get_available_providers()
        unavailable = [p for p in providers if p not in available]
        if unavailable:
            hint = (
                " (pip uninstall onnxruntime; pip install onnxruntime-gpu)"
                if "CUDAExecutionProvider" in unavailable
                else ""
            )
            raise RuntimeNotAvailable(
                f"this ONNX Runtime build has no {', '.join(unavailable)}{hint}; available: {', '.join(available)}"
            )

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        for key, value in session_options.items():
            if key.startswith("_") or not hasattr(options, key):
                raise TypeError(f"unknown onnxruntime.SessionOptions attribute {key!r}")
            setattr(options, key, value)
        self._extend_options(options)

        with self._loading():
            self._session = ort.InferenceSession(self._model_source(), sess_options=options, providers=providers)
        if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in self._session.get_providers():
            raise DeviceNotAvailable(
                "ONNX Runtime could not start its CUDA provider (no GPU visible, or CUDA/cuDNN libraries missing "
                "for this onnxruntime-gpu version); use device='cpu' or fix the CUDA install"
            )
        # the device it really runs on: a CUDA request without the CUDA provider in the session was refused above
        self.device = "cuda" if "CUDAExecutionProvider" in self._session.get_providers() else "cpu"
        self._input_specs = {}
        for node in self._session.get_inputs():
            if node.type not in _ORT_DTYPES:
                raise ArtifactError(f"input {node.name!r} has type {node.type}, which numpy cannot hold")
            shape = tuple(d if isinstance(d, int) else None for d in node.shape)
            self._input_specs[node.name] = TensorSpec(node.name, shape, np.dtype(_ORT_DTYPES[node.type]))
        self._output_names = [node.name for node in self._session.get_outputs()]
        self._check_engine_matches_metadata()
        logger.debug("onnxruntime session on %s with %s", self.path, self._session.get_providers())

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses, in priority order."""
        return list(self._session.get_providers())

    def _model_source(self) -> str | bytes:
        """What the session loads: the artifact's path; a subclass may hand over a rewritten model's bytes."""
        return str(self.path)

    def _extend_options(self, options: Any) -> None:
        """Hook for a subclass to register custom-op libraries on the session options."""

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, outputs, strict=True))

    def _close(self) -> None:
        del self._session
