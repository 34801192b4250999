"""The one table of runtimes and targets: what each engine is and what each target profile means.

Every other module reads these rows (``runtimes.load_backend``, ``sdk.targets``, ``sdk.segmenter``,
``compile.export``, ``benchmarks.rows``, ``runtimes.artifact``); no option whitelist, device list, precision
list or label is written anywhere else. Adding a runtime or a target is adding a row here.

Two kinds of name:

- a **runtime** is an engine behind the ``Backend`` interface (``runtimes/<name>_backend.py``);
- an **artifact target** is what an artifact was compiled for (its metadata ``target``; ``m2f export --target``).
  Each one is named after the runtime it is compiled for: a runtime whose ``artifact_targets`` include its own name
  is an artifact target, and its ``precisions`` are exactly what ``m2f export`` makes for it.

Imports nothing but the standard library (``runtimes.artifact`` reads it to validate metadata).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runtimes.vocabulary import INT8_BF16, PRECISIONS


@dataclass(frozen=True)
class RuntimeSpec:
    """One engine.

    ``options``: the keyword arguments its backend's constructor accepts (anything else raises ValueError in
    :func:`check_options`); ``passthrough``: where the backend also accepts attribute names of an engine object
    (checked by the backend itself), or None. ``devices``: ours ("cpu", "cuda"), the first is its default.
    ``artifact_targets``: the artifact targets it can open (a checkpoint-based runtime has none). ``precisions``:
    what it runs (for an artifact target: what the export makes); ``device_precisions`` narrows them per device.
    """

    name: str
    backend: str  # "module:Class", imported only when loaded
    package: str  # the top-level Python package the engine needs
    install_hint: str
    devices: tuple[str, ...]
    options: frozenset[str]
    artifact_targets: tuple[str, ...]
    precisions: tuple[str, ...]
    label: str  # for tables and reports
    device_precisions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    passthrough: str | None = None
    # fastest first, on a CPU: (precision, the runtimes.cpu_features.CpuFeatures flag it needs to be fast, "" for
    # none). A profile given no precision runs the first whose artifact passed the gate (sdk.targets). INT8_BF16 is
    # int8 from a file whose gate also verified its float ops in bf16 on this runtime.
    cpu_speed_order: tuple[tuple[str, str], ...] = (("fp32", ""),)

    @property
    def module(self) -> str:
        return self.backend.split(":")[0]

    def precisions_on(self, device: str) -> tuple[str, ...]:
        """The precisions it runs on ``device``."""
        return tuple(self.device_precisions.get(device, self.precisions))


@dataclass(frozen=True)
class TargetSpec:
    """One target profile: runtimes in order of preference, the device, the default precision, and per runtime the
    backend options the profile sets (``options[runtime]``; a runtime's row says which options it accepts)."""

    name: str
    runtimes: tuple[str, ...]
    device: str  # "cpu" or "cuda": passed to the backend as option ``device``
    precision: str  # what to run (and compile a checkpoint) at, where the runtime can
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    def options_for(self, runtime: str) -> dict[str, Any]:
        """The profile's backend options for ``runtime``, the device included."""
        return {"device": self.device, **self.options.get(runtime, {})}


def _frozen(options: dict[str, dict[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({runtime: MappingProxyType(dict(opts)) for runtime, opts in options.items()})


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec(
            name="onnxruntime",
            backend="runtimes.onnxruntime_backend:OnnxRuntimeBackend",
            package="onnxruntime",
            install_hint="pip install onnxruntime (onnxruntime-gpu for CUDA)",
            devices=("cpu", "cuda"),
            options=frozenset({"device", "threads", "providers"}),
            artifact_targets=("onnxruntime", "openvino"),
            precisions=("fp32", "int8"),
            label="ONNX Runtime",
            passthrough="onnxruntime.SessionOptions attributes",
            # int8 first where the CPU multiplies int8 in one instruction (VNNI; AMX CPUs have it too): on the
            # default (2-core EPYC, VNNI + AVX512-BF16, each row alone) inference took int8 74.0 vs fp32 96.8 ms,
            # as on the ResNet-18 default before it (86.5 vs 107.8); the MobileNetV2 default's 120.7 vs 102.7 ms
            # was timed beside other runtimes in one process (benchmarks/results/issue20_onnxruntime). Without
            # VNNI, not measured: fp32.
            cpu_speed_order=(("int8", "vnni"), ("fp32", "")),
        ),
        RuntimeSpec(
            name="openvino",
            backend="runtimes.openvino_backend:OpenVinoBackend",
            package="openvino",
            install_hint="pip install openvino",
            devices=("cpu",),
            options=frozenset({"device", "precision", "threads", "cache_dir", "num_requests", "performance_mode"}),
            artifact_targets=("openvino", "onnxruntime"),
            precisions=PRECISIONS,
            label="OpenVINO",
            # AMX runs int8 and bf16 tiles. Without AMX, an int8 file whose float ops run in bf16 (INT8_BF16: its
            # gate verified them, the CPU has AVX512-BF16) comes before bf16: on a 2-core EPYC (AVX512-BF16, VNNI)
            # the default took 0.85-0.98x bf16's time in three cpu_precisions runs and 0.943x interleaved
            # (benchmarks/results/issue20_int8_tail); with f32 float ops it is slower than bf16 (56.2 vs 50.4 ms),
            # so a file without that record waits behind bf16. int8 where VNNI is all there is (docs/compiling.md:
            # "Precision by default")
            cpu_speed_order=(
                ("int8", "amx_int8"),
                ("bf16", "amx_bf16"),
                (INT8_BF16, "avx512_bf16"),
                ("bf16", "avx512_bf16"),
                ("int8", "vnni"),
                ("fp32", ""),
            ),
        ),
        RuntimeSpec(
            name="tensorrt",
            backend="runtimes.tensorrt_backend:TensorRtBackend",
            package="tensorrt",
            install_hint="TensorRT from NVIDIA's index: pip install tensorrt --extra-index-url https://pypi.nvidia.com",
            devices=("cuda",),
            options=frozenset(
                {
                    "device",
                    "precision",
                    "workspace_mb",
                    "dla_core",
                    "cache_dir",
                    "timing_cache",
                    "plugin_library",
                    "strongly_typed",
                    "rebuild",
                    "cuda_binding",
                }
            ),
            # standard-op artifacts too: TensorRT parses the MSDA-as-ops graph; its own has the plugin node
            artifact_targets=("tensorrt", "onnxruntime", "openvino"),
            precisions=("fp32", "fp16"),  # int8 is a ModelOpt Q/DQ artifact the export does not make (see compile)
            label="TensorRT",
        ),
        RuntimeSpec(
            name="torch",
            backend="runtimes.torch_backend:TorchBackend",
            package="torch",
            install_hint="pip install 'm2f-edge[train]'",
            devices=("cpu", "cuda"),
            options=frozenset({"device", "precision", "cuda_graph", "threads"}),
            artifact_targets=(),  # runs the checkpoint's own model (compile.export.reference_model)
            precisions=("fp32", "fp16", "bf16"),
            device_precisions=MappingProxyType({"cpu": ("fp32",)}),
            label="torch (eager)",
        ),
    )
}

TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec(
            "jetson",
            ("tensorrt", "torch"),
            "cuda",
            "fp16",
            _frozen({"tensorrt": {"workspace_mb": 1024, "dla_core": None}}),
            "Jetson (Orin): TensorRT FP16, engine built and cached on the device; else torch on CUDA",
        ),
        TargetSpec(
            "cuda",
            ("tensorrt", "torch", "onnxruntime"),
            "cuda",
            "fp16",
            description="NVIDIA GPU: TensorRT, else torch on CUDA with CUDA graphs, else ONNX Runtime's CUDA provider",
        ),
        TargetSpec("cpu", ("openvino", "onnxruntime"), "cpu", "fp32", description="CPU: OpenVINO, else ONNX Runtime"),
        TargetSpec("openvino", ("openvino",), "cpu", "fp32", description="OpenVINO on the CPU"),
        TargetSpec("onnxruntime", ("onnxruntime",), "cpu", "fp32", description="ONNX Runtime on the CPU"),
        TargetSpec("tensorrt", ("tensorrt",), "cuda", "fp16", description="TensorRT on an NVIDIA GPU"),
        TargetSpec("torch", ("torch",), "cpu", "fp32", description="the PyTorch model itself (host installs)"),
    )
}
AUTO_ORDER = ("jetson", "cuda", "cpu")  # what target "auto" tries, in order

ARTIFACT_TARGETS: tuple[str, ...] = tuple(name for name, spec in RUNTIMES.items() if name in spec.artifact_targets)


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ValueError:
    """``ValueError`` for a name not in ``known``, suggesting the closest (``jetsn`` -> ``jetson``)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}{hint} (known: {', '.join(known)})")


def runtimes_named(name: str) -> tuple[str, ...]:
    """The runtimes a profile (``cpu``, ``jetson``, ...: where it runs) or a runtime name (the engine) stands for,
    in the profile's order. Every command that takes a target reads it through here."""
    if name in TARGETS:
        return TARGETS[name].runtimes
    raise unknown_name("profile or runtime", name, TARGETS)


def artifact_target_for(name: str) -> str:
    """What ``m2f export --target name`` builds: the runtime itself, or a profile's first runtime that takes an
    artifact (``cpu`` -> openvino, ``jetson`` -> tensorrt)."""
    for runtime in runtimes_named(name):
        if runtime in ARTIFACT_TARGETS:
            return runtime
    raise ValueError(f"{name!r} runs checkpoints directly (the torch runtime): there is no artifact to export")


def runtime_spec(name: str) -> RuntimeSpec:
    """The row of runtime ``name``; ValueError naming the known runtimes otherwise."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; known runtimes: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def export_precisions(target: str) -> tuple[str, ...]:
    """What ``m2f export --target target`` makes; ValueError for an unknown artifact target."""
    if target not in ARTIFACT_TARGETS:
        raise ValueError(f"unknown artifact target {target!r}; expected one of {', '.join(ARTIFACT_TARGETS)}")
    return RUNTIMES[target].precisions


def check_options(runtime: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError for an option runtime ``runtime`` does not accept, naming the ones it does."""
    spec = runtime_spec(runtime)
    if spec.passthrough is not None:
        return  # the backend checks the rest against its engine object and raises on an unknown name
    unknown = sorted(set(options) - spec.options)
    if unknown:
        accepted = ", ".join(sorted(spec.options))
        raise ValueError(f"runtime {runtime!r} does not take option(s) {', '.join(unknown)}; it accepts {accepted}")
