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

from runtimes.artifact import ARTIFACT_FORMAT_VERSION, read_metadata, validate_metadata, write_metadata
from runtimes.base import Backend, BackendInputError, DeviceNotAvailable, RuntimeNotAvailable, TensorSpec
from runtimes.errors import ArtifactError
from runtimes.registry import ARTIFACT_TARGETS, RUNTIMES, TARGETS, RuntimeSpec, TargetSpec, check_options, runtime_spec

__all__ = [
    "ARTIFACT_FORMAT_VERSION",
    "INSTALL_HINTS",
    "RUNTIMES",
    "TARGETS",
    "ArtifactError",
    "Backend",
    "BackendInputError",
    "DeviceNotAvailable",
    "RuntimeNotAvailable",
    "RuntimeSpec",
    "TargetSpec",
    "TensorSpec",
    "available_runtimes",
    "check_options",
    "device_unavailable",
    "load_backend",
    "read_metadata",
    "validate_metadata",
    "write_metadata",
]

# views of runtimes.registry (the one table), kept for callers that only need one column
INSTALL_HINTS: dict[str, str] = {name: spec.install_hint for name, spec in RUNTIMES.items()}


def _spec_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked (sys.modules[x] = None) or broken parent package
        return False


def available_runtimes() -> dict[str, bool]:
    """{runtime name: whether its package and backend module are installed}, without importing either."""
    return {name: _spec_exists(spec.package) and _spec_exists(spec.module) for name, spec in RUNTIMES.items()}


def device_unavailable(name: str, device: str) -> str | None:
    """None if installed runtime ``name`` can reach ``device``, else why not. Imports the backend module (and its
    engine) only for a device other than the CPU, and asks its ``device_unavailable(device)`` where it has one."""
    spec = runtime_spec(name)
    if device not in spec.devices:
        return f"runtime {name!r} does not run on {device} (it runs on {', '.join(spec.devices)})"
    if device == "cpu":
        return None
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        return f"runtime {name!r} failed to import ({err}): {spec.install_hint}"
    check = getattr(module, "device_unavailable", None)
    return check(device) if check is not None else None


def _check_artifact_target(spec: RuntimeSpec, artifact: Any) -> None:
    """Refuse an artifact compiled for a target this runtime cannot open (unreadable files: the backend says why)."""
    if not spec.artifact_targets or not isinstance(artifact, str | Path) or not Path(artifact).is_file():
        return
    try:
        target = read_metadata(artifact, validate=False).get("target")
    except (ArtifactError, OSError):
        return
    if target in ARTIFACT_TARGETS and target not in spec.artifact_targets:
        runners = [name for name, other in RUNTIMES.items() if target in other.artifact_targets]
        raise ArtifactError(
            f"{artifact} was compiled for {target}, which runtime {spec.name!r} cannot run: open it with "
            f"{' or '.join(runners)}, or export it for {spec.name} (`m2f export --target {spec.name}`)"
        )


def load_backend(name: str, artifact: str | Path | Any, **options: Any) -> Backend:
    """Open ``artifact`` with runtime ``name``; ``options`` go to the backend's constructor.

    Raises ValueError for an unknown runtime or an option the runtime does not accept (naming the accepted ones),
    and :class:`RuntimeNotAvailable` (saying what to install) when the runtime's package or backend module is
    missing.
    """
    spec = runtime_spec(name)
    check_options(name, options)
    _check_artifact_target(spec, artifact)
    if not _spec_exists(spec.package):
        raise RuntimeNotAvailable(f"runtime {name!r} needs the {spec.package!r} package: {spec.install_hint}")
    if not _spec_exists(spec.module):
        raise RuntimeNotAvailable(f"runtime {name!r} is not part of this m2f build (no module {spec.module})")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        if isinstance(err, RuntimeNotAvailable):
            raise
        raise RuntimeNotAvailable(f"runtime {name!r} failed to import ({err}): {spec.install_hint}") from err
    backend_class = getattr(module, spec.backend.split(":")[1])
    return backend_class(artifact, **options)
