"""What a benchmark runs: the target table (ours from ``runtimes.registry``, then the peers), the plan of rows, and
the spec a row's ``measure`` job is given.

    rows = plan_rows(["openvino", "hf-eager"], ["fp32", "int8"])   # [Row(id="m2f-torch-fp32", ...), ...]

The reference (our eager torch model, fp32 on the CPU) is always the first row: every other row's label agreement
is measured against it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.litert_peer import PEER_LABEL
from runtimes.registry import RUNTIMES, RuntimeSpec, runtimes_named, unknown_name
from runtimes.vocabulary import PRECISIONS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetKind:
    """One benchmark target: who made it (``m2f`` or the ``hf`` peer), its runtime, the devices and precisions it
    runs on, and its label. Ours are rows of ``runtimes.registry`` (a runtime or device added there appears here)."""

    family: str
    runtime: str
    devices: tuple[str, ...]
    precisions: dict[str, tuple[str, ...]]  # device -> precisions
    needs: tuple[str, ...]  # Python packages
    label: str


def _ours(spec: RuntimeSpec) -> TargetKind:
    """Our runtime's row: the artifact is exported (or the reference model built) with torch."""
    precisions = {device: spec.precisions_on(device) for device in spec.devices}
    needs = tuple(dict.fromkeys(("torch", spec.package)))
    return TargetKind("m2f", spec.name, spec.devices, precisions, needs, f"m2f {spec.label}")


_PEERS: dict[str, TargetKind] = {  # the same architecture and weights, run the HF user's way
    "hf-eager": TargetKind(
        "hf", "eager", ("cpu",), {"cpu": ("fp32",)}, ("torch", "transformers"), "HF transformers (eager)"
    ),
    "hf-openvino": TargetKind(
        "hf",
        "openvino",
        ("cpu",),
        {"cpu": ("fp32",)},
        ("torch", "transformers", "onnxruntime", "openvino"),
        "HF → ONNX → OpenVINO",
    ),
    # what a street-scene user would pick instead: an off-the-shelf int8 model (benchmarks.litert_peer); its
    # classes are mapped onto CamVid's, so it joins evaluations with CamVid's classes only
    "litert-deeplab": TargetKind("litert", "litert", ("cpu",), {"cpu": ("int8",)}, ("ai_edge_litert",), PEER_LABEL),
}
# target name -> kind: the reference (our torch) first, then the peers, then our other runtimes in table order
BENCHMARK_TARGETS: dict[str, TargetKind] = {
    "torch": _ours(RUNTIMES["torch"]),
    **_PEERS,
    **{name: _ours(spec) for name, spec in RUNTIMES.items() if name != "torch"},
}
PEERS = tuple(_PEERS)  # what a user would run instead, named with --peers
REFERENCE = ("torch", "cpu", "fp32")  # (target, device, precision) of the row the others are held to
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8")  # fp16 joins when a GPU row runs


def benchmark_targets(targets: Sequence[str] | None, peers: Sequence[str] | None = None) -> list[str] | None:
    """``m2f benchmark --targets`` (profiles or runtimes: ``cpu`` means openvino and onnxruntime) and ``--peers``
    -> the row names of ``BENCHMARK_TARGETS``; None (both unset): every available one. A peer under ``--targets``
    is refused with the option that takes it; an unknown name suggests the closest."""
    if targets is None and peers is None:
        return None
    names: list[str] = []
    for name in targets or ():
        if name in _PEERS:
            raise ValueError(f"{name} is a peer: name it with --peers {name}")
        names += [r for r in runtimes_named(name) if r in BENCHMARK_TARGETS]
    for name in peers or ():
        if name not in _PEERS:
            raise unknown_name("peer", name, _PEERS)
        names.append(name)
    return list(dict.fromkeys(names))


def target_available(name: str, device: str | None = None) -> str | None:
    """None when ``name`` can run here (on ``device``, default its first), else why not."""
    kind = BENCHMARK_TARGETS[name]
    missing = [m for m in kind.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"{name} needs {', '.join(missing)} (not installed)"
    if kind.family == "m2f":
        from sdk.targets import runtime_usable

        return runtime_usable(kind.runtime, device or kind.devices[0])
    return None


@dataclass(frozen=True)
class Row:
    """One planned row; its fields open the row's entry in ``benchmark.json`` (``to_dict``)."""

    id: str  # m2f-openvino-int8, hf-eager-fp32, m2f-torch-cuda-fp16
    target: str  # a name of BENCHMARK_TARGETS
    family: str  # m2f, hf, litert
    runtime: str
    device: str
    precision: str
    label: str

    @classmethod
    def planned(cls, target: str, device: str, precision: str) -> Row:
        """The row of ``target`` on ``device`` at ``precision``; a device other than the target's first is named in
        the id (``m2f-torch-cuda-fp16``) and the label (``... on CUDA``)."""
        kind = BENCHMARK_TARGETS[target]
        first = device == kind.devices[0]
        name = target.removeprefix(kind.family + "-")
        return cls(
            id=f"{kind.family}-{name}{'' if first else '-' + device}-{precision}",
            target=target,
            family=kind.family,
            runtime=kind.runtime,
            device=device,
            precision=precision,
            label=kind.label + ("" if first else f" on {device.upper()}"),
        )

    @property
    def is_reference(self) -> bool:
        return (self.target, self.device, self.precision) == REFERENCE

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def plan_rows(targets: Sequence[str] | None, precisions: Sequence[str] | None) -> list[Row]:
    """The rows to run, reference first.

    ``targets=None`` means every available target x device (unavailable ones named explicitly become error rows on
    their first device; their other devices join where available).
    """
    unknown = [t for t in targets or () if t not in BENCHMARK_TARGETS]
    if unknown:
        raise ValueError(f"unknown target(s) {unknown}; expected some of {', '.join(BENCHMARK_TARGETS)}")
    named = targets is not None
    if targets is None:
        targets = [t for t in BENCHMARK_TARGETS if target_available(t) is None]
        skipped = [t for t in BENCHMARK_TARGETS if t not in targets]
        if skipped:
            logger.info("not available here, skipped: %s", ", ".join(skipped))
    places = [
        (t, device)
        for t in BENCHMARK_TARGETS  # table order, not command-line order
        if t in targets
        for i, device in enumerate(BENCHMARK_TARGETS[t].devices)
        if (i == 0 and named) or target_available(t, device) is None
    ]
    if precisions is None:
        precisions = DEFAULT_PRECISIONS + (("fp16",) if any(device == "cuda" for _, device in places) else ())
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision(s) {bad}; expected some of {', '.join(PRECISIONS)}")
    rows = [REFERENCE]
    for target, device in places:
        kind = BENCHMARK_TARGETS[target]
        # a peer runs as its users run it, at its own precision whatever --precisions asks of ours
        rows += [(target, device, p) for p in kind.precisions[device] if p in precisions or kind.family != "m2f"]
    with_rows = {row[0] for row in rows}
    unmatched = [t for t in targets if t not in with_rows] if named else []
    if unmatched:
        logger.warning("no row for %s: none of its precisions is among %s", ", ".join(unmatched), ", ".join(precisions))
    return [Row.planned(*place) for place in dict.fromkeys(rows)]  # the reference once


@dataclass(frozen=True)
class MeasureSpec:
    """What one ``measure`` job is told (``benchmarks.measure``): the run's model, frames and settings, and the row.

    Written as the job's JSON spec (``to_dict``; ``artifact`` and ``exporter`` only where the row has them) and read
    back by the worker (``from_dict``).
    """

    checkpoint: str | None  # our model.pt (the torch rows run it; the HF rows read its normalisation); None: an
    # artifact was given (benchmarks.artifact_rows)
    hf_dir: str | None  # the HF peer's folder, same weights
    task: str
    input_size: tuple[int, int]
    threads: int
    runs: int  # timed frames in this round
    warmup: int
    eval: str  # the evaluation frames (.npz, ``benchmarks.eval_set``)
    reference: str  # the reference row's labels (.npz), written by the reference row
    num_classes: int
    num_classes_match: bool  # the frames' labels use the model's classes: mIoU is measured
    stream: bool  # also measure sdk.stream throughput
    video: bool  # consecutive frames: the stream also measures temporal stability
    profile: bool
    class_names: tuple[str, ...] | None  # the evaluation set's
    peer_model: str  # the LiteRT peer's .tflite
    row: Row
    write_reference: bool = False
    artifact: str | None = None  # the row's .onnx (exported rows)
    exporter: str | None = None  # the HF export's torch.onnx exporter (hf-openvino)
    latency_only: bool = False  # a later round: warm-up and timed frames only

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("artifact", "exporter"):
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureSpec:
        values = {**data, "input_size": tuple(data["input_size"]), "row": Row(**data["row"])}
        if values.get("class_names") is not None:
            values["class_names"] = tuple(values["class_names"])
        return cls(**values)
