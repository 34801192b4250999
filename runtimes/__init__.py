"""One Backend interface, one module per engine; numpy in, numpy out. Imports no torch (except runtimes.torch).

Engines are imported lazily: ``import runtimes`` imports no onnxruntime, openvino, tensorrt or torch.

    with runtimes.load_backend("openvino", "model.onnx", precision="bf16") as backend:
        outputs = backend.run({"image": frame[None]})   # {output name: numpy array}
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from runtimes.artifact import (
    ARTIFACT_FORMAT_VERSION,
    ArtifactError,
    artifact_sha256,
    read_metadata,
    validate_metadata,
    write_metadata,
)
from runtimes.base import Backend, BackendInputError, DeviceNotAvailable, RuntimeNotAvailable, TensorSpec

__all__ = [
    "ARTIFACT_FORMAT_VERSION",
    "INSTALL_HINTS",
    "RUNTIMES",
    "RUNTIME_PACKAGES",
    "ArtifactError",
    "Backend",
    "BackendInputError",
    "DeviceNotAvailable",
    "RuntimeNotAvailable",
    "TensorSpec",
    "artifact_sha256",
    "available_runtimes",
    "load_backend",
    "read_metadata",
    "validate_metadata",
    "write_metadata",
]

# runtime name -> "module:Class" of its Backend, imported only when loaded
RUNTIMES: dict[str, str] = {
    "onnxruntime": "runtimes.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "runtimes.openvino_backend:OpenVinoBackend",
    "tensorrt": "runtimes.tensorrt_backend:TensorRtBackend",
    "torch": "runtimes.torch_backend:TorchBackend",
}
# runtime name -> the top-level package the engine needs
RUNTIME_PACKAGES: dict[str, str] = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "tensorrt": "tensorrt",
    "torch": "torch",
}
INSTALL_HINTS: dict[str, str] = {
    "onnxruntime": "pip install onnxruntime (onnxruntime-gpu for CUDA)",
    "openvino": "pip install openvino",
    "tensorrt": "TensorRT from NVIDIA's index: pip install tensorrt --extra-index-url https://pypi.nvidia.com",
    "torch": "pip install 'm2f-edge[train]'",
}


def _spec_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked (sys.modules[x] = None) or broken parent package
        return False


def available_runtimes() -> dict[str, bool]:
    """{runtime name: whether its package and backend module are installed}, without importing either."""
    return {
        name: _spec_exists(RUNTIME_PACKAGES[name]) and _spec_exists(target.split(":")[0])
        for name, target in RUNTIMES.items()
    }


def load_backend(name: str, artifact: str | Path | Any, **options: Any) -> Backend:
    """Open ``artifact`` with runtime ``name``; ``options`` go to the backend's constructor.

    Raises ValueError for an unknown runtime and :class:`RuntimeNotAvailable` (saying what to install) when
    the runtime's package or backend module is missing.
    """
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; known runtimes: {', '.join(RUNTIMES)}")
    module_name, class_name = RUNTIMES[name].split(":")
    package = RUNTIME_PACKAGES[name]
    if not _spec_exists(package):
        raise RuntimeNotAvailable(f"runtime {name!r} needs the {package!r} package: {INSTALL_HINTS[name]}")
    if not _spec_exists(module_name):
        raise RuntimeNotAvailable(f"runtime {name!r} is not part of this m2f build (no module {module_name})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if isinstance(err, RuntimeNotAvailable):
            raise
        raise RuntimeNotAvailable(f"runtime {name!r} failed to import ({err}): {INSTALL_HINTS[name]}") from err
    backend_class = getattr(module, class_name)
    return backend_class(artifact, **options)
