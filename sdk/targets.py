"""Target profiles: which runtime, device, precision and options a target name means, and which one runs here.

The rows live in ``runtimes.registry`` (the one table of runtimes and targets); this module decides, on this
machine, which runtime of a row can run: ``resolve_target(name)`` picks the first one that is installed and has
its device (logging why it skipped the ones before it), and says exactly which package or device is missing
otherwise.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runtimes import available_runtimes, device_unavailable
from runtimes.cpu_features import FEATURE_NAMES, CpuFeatures, cpu_features
from runtimes.errors import M2FError
from runtimes.registry import AUTO_ORDER, RUNTIMES, TARGETS, TargetSpec, runtimes_named
from runtimes.vocabulary import INT8_BF16

__all__ = [
    "AUTO_ORDER",
    "TARGETS",
    "PrecisionChoice",
    "Target",
    "TargetNotAvailable",
    "choose_precision",
    "resolve_target",
    "runtime_usable",
]

logger = logging.getLogger(__name__)

Target = TargetSpec  # the row type, under the name this module always gave it


class TargetNotAvailable(M2FError, RuntimeError):
    """The target's runtime or device is missing on this machine; the message says which."""


def is_jetson() -> bool:
    """A Jetson (L4T) board."""
    return Path("/etc/nv_tegra_release").exists()


def has_cuda_device() -> bool:
    """An NVIDIA GPU is visible (driver device node or nvidia-smi), without importing any framework."""
    return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-gpu").exists() or shutil.which("nvidia-smi") is not None


def runtime_usable(runtime: str, device: str) -> str | None:
    """None if ``runtime`` can run on ``device`` here, else why not (without loading a model)."""
    if not available_runtimes().get(runtime, False):
        return f"runtime {runtime!r} is not installed ({RUNTIMES[runtime].install_hint})"
    if device == "cuda" and not has_cuda_device():
        return "no NVIDIA GPU is visible (no /dev/nvidia0, no nvidia-smi)"
    return device_unavailable(runtime, device)


def _opens(runtime: str, artifact_target: str | None) -> str | None:
    """None if ``runtime`` can open an artifact compiled for ``artifact_target`` (None: a checkpoint), else why."""
    opens = RUNTIMES[runtime].artifact_targets
    if artifact_target is None or artifact_target in opens:
        return None
    if not opens:
        return f"runtime {runtime!r} runs a checkpoint, not an artifact (pass model=<checkpoint .pt>)"
    return f"runtime {runtime!r} cannot open a {artifact_target} artifact (it opens {', '.join(opens)})"


def resolve_target(name: str, artifact_target: str | None = None) -> tuple[TargetSpec, str]:
    """(the target row, the runtime to use). ``auto``: Jetson, else an NVIDIA GPU, else the CPU.

    ``artifact_target``: what the model to run was compiled for (None: a checkpoint, which is compiled for, or run
    by, whichever runtime is chosen); runtimes that cannot open such an artifact are passed over.
    """
    if name == "auto":
        if os.environ.get("M2F_TARGET"):
            return resolve_target(os.environ["M2F_TARGET"], artifact_target)
        reasons = []
        for candidate in AUTO_ORDER:
            if candidate == "jetson" and not is_jetson():
                continue
            try:
                return resolve_target(candidate, artifact_target)
            except TargetNotAvailable as err:
                reasons.append(str(err))
        raise TargetNotAvailable("no target is usable here: " + "; ".join(reasons))
    runtimes_named(name)  # an unknown name: ValueError with the closest known one
    target = TARGETS[name]
    reasons = []
    for runtime in target.runtimes:
        why = runtime_usable(runtime, target.device) or _opens(runtime, artifact_target)
        if why is None:
            if reasons:
                logger.warning("target %s runs on %s: %s", name, runtime, "; ".join(reasons))
            return target, runtime
        if why not in reasons:  # two runtimes missing the same device say it once
            reasons.append(why)
    raise TargetNotAvailable(f"target {name!r} cannot run here: " + "; ".join(reasons))


@dataclass(frozen=True)
class PrecisionChoice:
    """What to run at, from which artifact, and why (shown by ``Segmenter``'s repr and ``m2f info``)."""

    precision: str
    artifact: Path | None
    reason: str


def choose_precision(runtime: str, offers: Mapping[str, Path], features: CpuFeatures | None = None) -> PrecisionChoice:
    """The fastest precision on this CPU among ``offers`` (precision -> an artifact whose gate passed at it; the key
    ``INT8_BF16``: an int8 file whose float ops were gated in bf16 too, which runs at "int8").

    Walks the runtime's ``cpu_speed_order`` (``runtimes.registry``): the first precision that is offered and whose
    CPU feature is present wins; the reason names the CPU, what it has, and the faster choices passed over.
    """
    if not offers:
        raise ValueError(f"no gated artifact to choose a precision from for {runtime}")
    features = features or cpu_features()
    needs: dict[str, list[str]] = {}  # faster precisions offered, and the features they would need
    unoffered: list[str] = []
    for key, flag in RUNTIMES[runtime].cpu_speed_order:
        if not features.has(flag):
            if key in offers:
                needs.setdefault(key, []).append(FEATURE_NAMES.get(flag, flag))
            continue
        if key not in offers:
            if key != "fp32" and key not in unoffered:
                unoffered.append(key)
            continue
        precision = _offer_precision(key)
        passed = [
            f"{_offer_label(k)} needs {' or '.join(flags)}"
            for k, flags in needs.items()
            if _offer_precision(k) != precision
        ]
        passed += [f"no gated {_offer_label(k)} artifact" for k in unoffered if _offer_precision(k) != precision]
        why = f"fastest gated precision for {runtime} on {features.describe()}"
        if passed:
            why += f" ({'; '.join(passed)})"
        return PrecisionChoice(precision, offers[key], why)
    key = next(iter(offers))  # nothing in the speed order is offered: run what there is
    why = f"the only gated precision offered to {runtime}"
    if key in needs:
        why += f", slow without {' or '.join(needs[key])} on {features.describe()}"
    return PrecisionChoice(_offer_precision(key), offers[key], why)


def _offer_precision(key: str) -> str:
    """The precision an offer runs at (``INT8_BF16`` runs at int8)."""
    return "int8" if key == INT8_BF16 else key


def _offer_label(key: str) -> str:
    return "int8 with bf16 float ops" if key == INT8_BF16 else key
