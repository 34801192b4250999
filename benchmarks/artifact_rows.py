"""An exported artifact as the benchmark's model: what is deployed, measured where it runs, without torch.

    artifact = read_artifact("sdk/models/default_int8.onnx")     # its metadata: target, precision, input, classes
    rows, skipped = plan_artifact_rows(artifact, ["cpu"], None)  # rows it can run on; one line per row it cannot

An artifact is already exported: no export step, no torch reference row (no agreement column), no HF peers (they
need the model's weights). It runs on the runtimes its target allows (``runtimes.registry``'s
``artifact_targets``) at its own precision and at those its gate verified (``sdk.artifact_choice.gated_offers``); a
runtime that cannot run it is skipped with its reason in the report, not an error row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.rows import BENCHMARK_TARGETS, Row
from runtimes.artifact import read_metadata
from runtimes.registry import RUNTIMES
from runtimes.vocabulary import PRECISIONS


@dataclass(frozen=True, kw_only=True)
class ArtifactModel:
    """The benchmark's model when ``--model`` is an ``.onnx`` made by ``m2f export``; read from its metadata."""

    path: str
    target: str  # the artifact target it was compiled for
    precision: str
    task: str
    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    metadata: dict[str, Any] = field(repr=False, compare=False)
    checkpoint: None = None  # no torch rows: nothing for them to run
    hf_dir: None = None  # no HF peers
    peer_error: str = "the HF peers need the model's weights (a zoo name, an HF config.json or folder), not an artifact"

    @property
    def weights(self) -> str:
        return f"artifact {Path(self.path).name} ({self.target} {self.precision})"


def named_artifact(model: str, targets: Sequence[str] | None) -> str:
    """``--model`` as a path: a packaged model's name becomes the file ``Segmenter`` runs of it for the first of
    ``targets`` that opens artifacts (``cpu``'s choice when none does); anything else is returned as given."""
    from sdk.artifact_choice import choose_artifact
    from sdk.model_registry import is_model_name
    from sdk.targets import TARGETS, resolve_target

    if not is_model_name(model):
        return model
    ours = [t for t in targets or () if BENCHMARK_TARGETS[t].family == "m2f" and RUNTIMES[t].artifact_targets]
    spec, runtime = (TARGETS[ours[0]], ours[0]) if ours else resolve_target("cpu")
    return str(choose_artifact(model, runtime, None, spec, None).artifact)


def is_artifact(model: str) -> bool:
    """``--model`` names an exported artifact (not a zoo name, HF config or checkpoint)."""
    return Path(model).suffix == ".onnx"


def read_artifact(model: str) -> ArtifactModel:
    """The artifact's metadata; FileNotFoundError or ``ArtifactError`` (a ValueError, one line) when unreadable."""
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"--model {model}: no such artifact file")
    meta = read_metadata(path)
    return ArtifactModel(
        path=str(path.resolve()),
        target=meta["target"],
        precision=meta["precision"],
        task=meta["task"],
        input_size=(int(meta["input"]["size"][0]), int(meta["input"]["size"][1])),
        class_names=tuple(meta["class_names"]),
        metadata=meta,
    )


def runtime_precisions(artifact: ArtifactModel, runtime: str) -> tuple[str, ...]:
    """The precisions ``runtime`` runs this artifact at: its own and those its gate verified on that runtime."""
    from sdk.artifact_choice import gated_offers

    offered = gated_offers([(Path(artifact.path), artifact.metadata)], runtime)
    return tuple(p for p in PRECISIONS if p == artifact.precision or (p in offered and p in PRECISIONS))


def plan_artifact_rows(
    artifact: ArtifactModel, targets: Sequence[str] | None, precisions: Sequence[str] | None
) -> tuple[list[Row], list[str]]:
    """(rows to run, one line per target x precision that cannot run the artifact). ``targets`` None: every runtime
    of ours that opens an artifact (peers only when named)."""
    if targets is None:
        targets = [t for t, kind in BENCHMARK_TARGETS.items() if kind.family == "m2f" and kind.runtime != "torch"]
    rows: list[Row] = []
    skipped: list[str] = []
    for name in dict.fromkeys(targets):
        kind = BENCHMARK_TARGETS[name]
        device = kind.devices[0]
        if kind.family == "litert":
            rows += [Row.planned(name, device, p) for p in kind.precisions[device]]
            continue
        why = _cannot_open(artifact, name)
        if why is None:
            from sdk.targets import runtime_usable

            why = runtime_usable(kind.runtime, device)
        if why is not None:
            skipped.append(f"{name}: {why}")
            continue
        runs = [p for p in runtime_precisions(artifact, kind.runtime) if p in kind.precisions[device]]
        for precision in runs:
            if precisions is None or precision in precisions:
                rows.append(Row.planned(name, device, precision))
            else:
                skipped.append(f"{name} {precision}: not among --precisions {' '.join(precisions)}")
        if not runs:
            skipped.append(f"{name}: runs none of this {artifact.precision} artifact's precisions")
    return rows, skipped


def _cannot_open(artifact: ArtifactModel, name: str) -> str | None:
    """Why our target ``name`` cannot run this artifact at all, or None."""
    kind = BENCHMARK_TARGETS[name]
    if kind.family == "hf":
        return artifact.peer_error
    opens = RUNTIMES[kind.runtime].artifact_targets
    if not opens:
        return f"{kind.runtime} runs a checkpoint, not an artifact"
    if artifact.target not in opens:
        return f"cannot run a {artifact.target} artifact (it runs {', '.join(opens)} artifacts)"
    return None
