"""Which artifact a ``Segmenter`` runs: a packaged model's files (by name, ``sdk.model_registry``), the gated
precisions each offers, and a checkpoint compiled on first use into the cache (keyed on the checkpoint and the
compiler's code).

The policy the ``Segmenter`` applies before it opens a backend; it never opens one itself.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from plugins.msda import openvino_extension
from runtimes import read_metadata
from runtimes.cache import cache_root, file_sha256, graph_code_key
from runtimes.registry import RUNTIMES, TargetSpec, export_precisions
from runtimes.vocabulary import INT8_BF16
from sdk import host
from sdk.model_registry import is_packaged, named_model, named_models
from sdk.targets import PrecisionChoice, choose_precision

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pkl")


def cache_dir() -> Path:
    """Where compiled artifacts and engines are cached (``runtimes.cache.cache_root``)."""
    return cache_root()


def packaged_artifacts(name: str | None = None) -> list[tuple[Path, dict]]:
    """(path, metadata) of every artifact of the packaged model ``name`` (the default when None)."""
    return named_model(name).artifacts()


def runnable_packaged(name: str | None, runtime: str) -> tuple[list[tuple[Path, dict]], str]:
    """The packaged model's artifacts ``runtime`` can run here, its fused-op files first, and what was left out.

    A file with the fused MSDA node (``native_ops``) runs on OpenVINO through our extension; where it is not built,
    the model's standard-op files stand in and the second item says so (the ``Segmenter``'s repr shows it);
    otherwise it is "". Other runtimes get the standard-op files.
    """
    artifacts = packaged_artifacts(name)
    fused = [item for item in artifacts if item[1].get("native_ops")]
    if not fused:
        return artifacts, ""
    standard = [item for item in artifacts if not item[1].get("native_ops")]
    if runtime != "openvino":
        return standard, ""  # the fused op is OpenVINO's: another runtime runs what it always ran
    reason = openvino_extension.unavailable_reason()
    if reason is None:
        return fused + standard, ""
    return standard, f"standard-op file (the fused MSDA op's OpenVINO extension: {reason})"


def default_model(precision: str, runtime: str = "openvino") -> Path:
    """The default packaged model's artifact ``runtime`` runs ``precision`` from (see :func:`artifact_for`)."""
    return artifact_for(packaged_artifacts(), runtime, precision)


def unknown_model_error(model: str | Path) -> FileNotFoundError:
    """No file ``model`` and no packaged model of that name: say both, with the names."""
    names = ", ".join(named_models()) or "none in this build"
    return FileNotFoundError(f"no model at {model} (a file), and no packaged model of that name (names: {names})")


def artifact_for(artifacts: list[tuple[Path, dict]], runtime: str, precision: str) -> Path:
    """The artifact to run ``precision`` from: one made at that precision (compiled for ``runtime`` first), else an
    fp32 one (runtimes with a ``precision`` option lower it), else the first ``runtime`` opens."""
    opens = [(path, meta) for path, meta in artifacts if meta["target"] in RUNTIMES[runtime].artifact_targets]
    if not opens:
        raise ValueError(f"none of {[str(p) for p, _ in artifacts]} can be opened by {runtime}")

    def rank(item: tuple[Path, dict]) -> tuple[int, int]:
        meta = item[1]
        return (0 if meta["precision"] == precision else 1 if meta["precision"] == "fp32" else 2,
                0 if meta["target"] == runtime else 1)  # fmt: skip

    return min(opens, key=rank)[0]


FLOAT_OPS_BF16 = "its float ops in bf16, as its gate verified"  # said of an int8 file run so (repr, m2f info)


def gated_offers(artifacts: list[tuple[Path, dict]], runtime: str) -> dict[str, Path]:
    """precision -> artifact, for each precision whose accuracy gate passed for ``runtime``.

    An artifact offers its own precision when its metadata carries the gate's record (an export whose gate fails
    is never written); an int8 artifact only to the runtime it was quantised for (NNCF's Q/DQ layout runs slower
    than fp32 on ONNX Runtime, ORT's is not what OpenVINO fuses best). An fp32 artifact also offers the
    precisions the gate verified the runtime lowering it to (``verified_precisions``, e.g. OpenVINO bf16). An int8
    artifact's bf16 lowering is how its float ops run, not another precision: it is offered as ``INT8_BF16`` too,
    which the speed order places where that runs faster than int8 with f32 float ops.
    """
    offers: dict[str, Path] = {}
    for path, meta in sorted(artifacts, key=lambda item: item[1]["target"] != runtime):
        if meta["target"] not in RUNTIMES[runtime].artifact_targets or "accuracy" not in meta:
            continue
        if meta["precision"] != "int8" or meta["target"] == runtime:
            offers.setdefault(meta["precision"], path)
        for lowered, record in (meta.get("verified_precisions") or {}).items():
            if record.get("runtime") != runtime:
                continue
            if meta["precision"] == "fp32":
                offers.setdefault(lowered, path)
            elif meta["precision"] == "int8" and lowered == "bf16" and meta["target"] == runtime:
                offers.setdefault(INT8_BF16, path)
    return offers


def choose_artifact(
    model: str | Path | None,
    runtime: str,
    precision: str | None,
    spec: TargetSpec,
    input_size: tuple[int, int] | None,
) -> PrecisionChoice:
    """The artifact and precision to run: as asked; else on a CPU the fastest gated one (``choose_precision``);
    else the profile's precision. A checkpoint is compiled at the asked or the profile's precision."""
    fallback = ""
    if is_packaged(model):
        artifacts, fallback = runnable_packaged(model, runtime)
    else:
        path = Path(model)
        if not path.exists():
            raise unknown_model_error(model)
        if path.suffix != ".onnx":
            if path.is_dir():
                raise ValueError(f"{path} is a directory: pass an artifact (.onnx) or a checkpoint file inside it")
            if path.suffix not in CHECKPOINT_SUFFIXES:
                raise ValueError(
                    f"{path}: expected an artifact (.onnx) or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
                )
            wanted = precision or spec.precision
            artifact = compile_checkpoint(path, runtime, wanted, input_size)
            return PrecisionChoice(wanted, artifact, asked_reason(precision, spec))
        artifacts = [(path, read_metadata(path))]  # names a damaged file or a foreign model
    if precision is not None:
        choice = PrecisionChoice(precision, artifact_for(artifacts, runtime, precision), "asked for")
    else:
        offers = gated_offers(artifacts, runtime)
        if spec.device == "cpu" and offers:
            choice = choose_precision(runtime, offers)
        else:
            choice = PrecisionChoice(
                spec.precision, artifact_for(artifacts, runtime, spec.precision),
                asked_reason(None, spec)
                + ("" if offers else " (no artifact with a passed accuracy gate to choose from)"),
            )  # fmt: skip
    return replace(choice, reason=f"{choice.reason}; {fallback}") if fallback else choice


def artifact_target(model: str | Path | None) -> str | None:
    """What ``model`` was compiled for (a packaged model's fp32 artifact's target for a name or None); None for a
    checkpoint, or a file the backend will refuse with its own message."""
    try:
        if is_packaged(model):
            return next(meta["target"] for _, meta in packaged_artifacts(model) if meta["precision"] == "fp32")
        path = Path(model)
        if path.suffix in CHECKPOINT_SUFFIXES or not path.is_file():
            return None
        return read_metadata(path, validate=False).get("target")
    except (FileNotFoundError, ValueError, OSError, StopIteration):
        return None


def asked_reason(precision: str | None, spec: TargetSpec) -> str:
    """Why a precision runs when it was not chosen by speed: asked for, or the profile's default."""
    return "asked for" if precision else f"profile {spec.name}'s default"


def compile_checkpoint(checkpoint: Path, runtime: str, precision: str, input_size: tuple[int, int] | None) -> Path:
    """The checkpoint's artifact for ``runtime`` (the artifact target named after it), compiled once and cached.

    The artifact is made at ``precision`` where the export makes it for that target, else at fp32 (which the
    runtime then lowers where it can). A fixed-size export (TensorRT) without ``input_size`` gets the checkpoint's.
    """
    export = host.compiler()
    if precision not in export_precisions(runtime):
        precision = "fp32"
    if input_size is None and export.EXPORT_FORMATS[runtime].fixed_input_size:
        input_size = export.default_input_size(checkpoint)
    digest = file_sha256(checkpoint)[:16]
    size = "x".join(map(str, input_size)) if input_size else "dynamic"
    # the compiler's code is part of the key: after a change to it the checkpoint compiles anew
    out = cache_dir() / "artifacts" / f"{digest}-code{graph_code_key()}-{runtime}-{precision}-{size}.onnx"
    if out.exists():
        return out
    logger.info("compiling %s for %s %s (cached as %s)", checkpoint, runtime, precision, out)
    export.export(checkpoint, runtime, precision, out, input_size=input_size)
    return out
