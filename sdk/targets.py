"""Target profiles: one row per name, saying which runtime, device, precision and options it means.

``resolve_target(name)`` picks the first runtime of the row that is installed and has its device, and says
exactly which package or device is missing otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes import INSTALL_HINTS, available_runtimes


class TargetNotAvailable(RuntimeError):
    """The target's runtime or device is missing on this machine; the message says which."""


@dataclass(frozen=True)
class Target:
    name: str
    runtimes: tuple[str, ...]  # in order of preference
    device: str  # "cpu" or "cuda"
    precision: str  # default precision of the artifact it compiles / expects
    options: dict[str, Any] = field(default_factory=dict)  # backend options
    description: str = ""


TARGETS: dict[str, Target] = {
    "jetson": Target(
        "jetson",
        ("tensorrt",),
        "cuda",
        "fp16",
        {"workspace_mb": 1024, "dla_core": None},
        "Jetson (Orin): TensorRT FP16, engine built and cached on the device; INT8 with a calibrated artifact",
    ),
    "cuda": Target("cuda", ("tensorrt", "onnxruntime"), "cuda", "fp16", {}, "NVIDIA GPU: TensorRT, else ORT CUDA"),
    "cpu": Target("cpu", ("openvino", "onnxruntime"), "cpu", "fp32", {}, "CPU: OpenVINO if installed, else ORT"),
    "openvino": Target("openvino", ("openvino",), "cpu", "fp32", {}, "OpenVINO on the CPU"),
    "onnxruntime": Target("onnxruntime", ("onnxruntime",), "cpu", "fp32", {}, "ONNX Runtime on the CPU"),
    "tensorrt": Target("tensorrt", ("tensorrt",), "cuda", "fp16", {}, "TensorRT on an NVIDIA GPU"),
    "torch": Target("torch", ("torch",), "cpu", "fp32", {}, "the PyTorch model itself (host installs)"),
}
AUTO_ORDER = ("jetson", "cuda", "cpu")


def is_jetson() -> bool:
    """A Jetson (L4T) board."""
    return Path("/etc/nv_tegra_release").exists()


def has_cuda_device() -> bool:
    """An NVIDIA GPU is visible (driver device node or nvidia-smi), without importing any framework."""
    return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-gpu").exists() or shutil.which("nvidia-smi") is not None


def cpu_flags() -> set[str]:
    """CPU feature flags (Linux), e.g. to choose BF16/INT8 where AMX/VNNI exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _runtime_usable(runtime: str, device: str) -> str | None:
    """None if usable, else why not."""
    if not available_runtimes().get(runtime, False):
        return f"runtime {runtime!r} is not installed ({INSTALL_HINTS.get(runtime, '')})"
    if device == "cuda" and not has_cuda_device():
        return "no NVIDIA GPU is visible (no /dev/nvidia0, no nvidia-smi)"
    if runtime == "onnxruntime" and device == "cuda" and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
    return None


def resolve_target(name: str) -> tuple[Target, str]:
    """(the target row, the runtime to use). ``auto``: Jetson, else an NVIDIA GPU, else the CPU."""
    if name == "auto":
        if os.environ.get("M2F_TARGET"):
            return resolve_target(os.environ["M2F_TARGET"])
        reasons = []
        for candidate in AUTO_ORDER:
            if candidate == "jetson" and not is_jetson():
                continue
            try:
                return resolve_target(candidate)
            except TargetNotAvailable as err:
                reasons.append(str(err))
        raise TargetNotAvailable("no target is usable here: " + "; ".join(reasons))
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {', '.join([*TARGETS, 'auto'])}")
    target = TARGETS[name]
    reasons = []
    for runtime in target.runtimes:
        why = _runtime_usable(runtime, target.device)
        if why is None:
            return target, runtime
        reasons.append(why)
    raise TargetNotAvailable(f"target {name!r} cannot run here: " + "; ".join(reasons))
