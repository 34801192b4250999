"""What a TensorRT engine build needs decided before TensorRT is touched: the version gate, the precision plan
(strongly or weakly typed, builder flags), optimisation-profile shapes, engine and timing-cache paths, dtypes.

Pure functions (no tensorrt, no CUDA, no torch), used by :mod:`runtimes.tensorrt_backend` and testable anywhere.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import INSTALL_HINTS
from runtimes.artifact import engine_cache_key
from runtimes.base import RuntimeNotAvailable
from runtimes.cache import cache_root
from runtimes.errors import ArtifactError
from runtimes.vocabulary import PRECISIONS

MIN_TENSORRT_MAJOR = 10
UPGRADE_HINT = (
    "on a Jetson flash JetPack >= 6.1 (TensorRT 10.3) and use a venv made with --system-site-packages; elsewhere "
    f"{INSTALL_HINTS['tensorrt']}"
)
ENGINE_FILE = "model.engine"
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


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """The numpy dtype of a ``tensorrt.DataType`` (by its name); ArtifactError for types numpy cannot hold."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name not in TRT_NUMPY_DTYPES:
        raise ArtifactError(
            f"the engine has a {name} input or output, which numpy cannot hold: export the artifact with "
            "float32/float16/integer inputs and outputs (`m2f export`)"
        )
    return TRT_NUMPY_DTYPES[name]


def check_tensorrt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT ``__version__``; RuntimeNotAvailable for < 10 or an unreadable version."""
    match = re.match(r"(\d+)\.(\d+)", str(version))
    if match is None:
        raise RuntimeNotAvailable(f"cannot read the TensorRT version {version!r}: {UPGRADE_HINT}")
    major, minor = int(match.group(1)), int(match.group(2))
    if major < MIN_TENSORRT_MAJOR:
        raise RuntimeNotAvailable(
            f"the tensorrt backend needs TensorRT >= {MIN_TENSORRT_MAJOR} (JetPack >= 6.1); this is TensorRT "
            f"{version} (JetPack 6.0 ships 8.6: no strongly typed networks, no IPluginV3): {UPGRADE_HINT}"
        )
    return major, minor


def has_weak_typing(version: str) -> bool:
    """Whether this TensorRT still has precision builder flags (FP16/BF16/INT8): 10.x yes, 11.x no."""
    return check_tensorrt_version(version)[0] < 11


def default_cache_dir() -> Path:
    """``runtimes.cache.cache_root()``/tensorrt."""
    return cache_root() / "tensorrt"


def device_tag(name: str, compute_capability: tuple[int, int], dla_core: int | None = None) -> str:
    """The device part of the engine cache key: GPU name, SM version, DLA core if any ("Orin_sm87_dla0")."""
    major, minor = compute_capability
    return f"{name}_sm{major}{minor}" + ("" if dla_core is None else f"_dla{dla_core}")


def engine_path(cache_dir: str | Path, artifact_sha: str, precision: str, device: str, tensorrt_version: str) -> Path:
    """Where the engine of (artifact, precision, device, TensorRT version) lives; ``m2f.json`` sits beside it."""
    key = engine_cache_key(artifact_sha, "tensorrt", precision, device, tensorrt_version)
    return Path(cache_dir) / key / ENGINE_FILE


def timing_cache_path(cache_dir: str | Path, device: str, tensorrt_version: str) -> Path:
    """The timing cache beside the engine cache: one per device tag and TensorRT version (it is valid for both)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{device}-{tensorrt_version}")
    return Path(cache_dir) / "timing" / f"{safe}.cache"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` so that a concurrent reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f"{path.suffix}.partial{os.getpid()}-{threading.get_ident()}")
    partial.write_bytes(data)
    partial.replace(path)


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
