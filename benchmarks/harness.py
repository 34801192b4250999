"""Benchmark harness: every target x precision of one model beside its peers, one subprocess per row.

    from benchmarks.harness import BenchmarkOptions, run_benchmark
    rows = run_benchmark(BenchmarkOptions(model="ade20k-semantic-swin-t", data=Path(".../camvid"), out=Path(...)))

Rows, in order (``benchmarks.rows``): our eager torch model (the fp32 reference every row's label agreement is
measured against), the HF transformers model eager and its own ONNX export on OpenVINO (the peers, same architecture
and weights), then our artifacts per target x precision. Each row is measured in its own process
(``benchmarks.jobs``, ``benchmarks.measure``), so its peak memory is its own and a crashing runtime only turns its
row into an error; artifacts and logs go to a cache folder, never into ``out`` (which gets Markdown, CSV, JSON and a
PNG plot: see ``benchmarks.report``). ``m2f benchmark`` (``benchmarks.cli``) builds its options from
``BenchmarkOptions``' fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.artifact_rows import ArtifactModel, is_artifact, plan_artifact_rows, read_artifact
from benchmarks.eval_set import DATA_FORMATS, EvalSet, detect_format, prepare_eval_set
from benchmarks.jobs import run_job
from benchmarks.litert_peer import default_peer_path
from benchmarks.models import PreparedModel
from benchmarks.rows import (
    BENCHMARK_TARGETS,
    DEFAULT_PRECISIONS,
    PEERS,
    MeasureSpec,
    Row,
    plan_rows,
    target_available,
)
from runtimes.cache import cache_root, graph_code_key
from runtimes.geometry import parse_input_size
from runtimes.vocabulary import PRECISIONS
from sdk.cli_fields import cli_field as _cli

logger = logging.getLogger(__name__)

# the benchmark's own exports time a file rather than ship it: fewer calibration images (int8 calibration is the
# slowest step of a row) and a gate on a few frames as a sanity check; what ships uses compile.export's defaults
BENCH_CALIB_IMAGES = 32
BENCH_GATE_IMAGES = 4


_OUR_TARGETS = ", ".join(t for t in BENCHMARK_TARGETS if t not in PEERS)


@dataclass(frozen=True, kw_only=True)
class BenchmarkOptions:
    """Everything one benchmark run needs; each default is written here once and ``m2f benchmark --help`` shows
    it."""

    model: str = field(
        default="ade20k-semantic-swin-t",
        metadata=_cli("model-zoo name or HF config.json (random seeded weights; HF peers get the same), an HF "
                      "folder with weights, our .pt checkpoint (no HF peers), or an exported .onnx artifact (run as "
                      "it is, no torch needed; its own input size)"),
    )  # fmt: skip
    targets: Sequence[str] | None = field(  # None: every available target
        default=None,
        metadata=_cli(f"profiles (cpu, cuda, jetson: every runtime there) or runtimes ({_OUR_TARGETS})",
                      metavar="TARGET", shown="every available one and the peers"),
    )  # fmt: skip
    precisions: Sequence[str] | None = field(
        default=None,
        metadata=_cli("our rows' precisions", choices=PRECISIONS,
                      shown=f"{' '.join(DEFAULT_PRECISIONS)}, and fp16 with a GPU row"),
    )  # fmt: skip
    data: Path | None = field(
        default=None, metadata=_cli("CamVid/ADE20K/Cityscapes root (labelled: mIoU) or a folder of images")
    )
    data_format: str = field(default="auto", metadata=_cli("the layout under --data", choices=DATA_FORMATS))
    split: str = field(default="val", metadata=_cli("dataset split for the frames"))
    video: Path | None = field(default=None, metadata=_cli("take the frames from a video file instead"))
    images: int = field(default=10, metadata=_cli("frames for timing, agreement and mIoU"))
    input_size: tuple[int, int] = field(
        default=(512, 512), metadata=_cli("model input HxW (an artifact runs at its own)", type=parse_input_size)
    )
    task: str = "semantic"  # the harness measures label maps: not an option
    runs: int = field(default=10, metadata=_cli("timed runs per row"))
    warmup: int = field(default=3, metadata=_cli("untimed runs first, in every round"))
    rounds: int = field(
        default=3, metadata=_cli("split the timed runs into rounds, rows in a rotated order each round")
    )
    threads: int = field(
        default_factory=lambda: os.cpu_count() or 1, metadata=_cli("threads per engine", shown="all cores")
    )
    calib: Path | None = field(
        default=None, metadata=_cli("int8 calibration images", shown="--data's train split if any")
    )
    calib_images: int = field(default=BENCH_CALIB_IMAGES, metadata=_cli("calibration images"))
    gate_images: int = field(default=BENCH_GATE_IMAGES, metadata=_cli("images for the compiler's own gate"))
    seed: int = field(default=0, metadata=_cli("seed of random weights"))
    cache: Path | None = field(default=None, metadata=_cli("artifacts, logs, frames", shown="$M2F_CACHE/benchmarks"))
    timeout_s: float = field(default=3600.0, metadata=_cli("seconds per job (export or row)", flag="--timeout"))
    peer_model: Path = field(default_factory=default_peer_path)  # the LiteRT peer's .tflite
    profile: bool = field(default=False, metadata=_cli("per-op-type profile of every row (profile.md)"))
    stream: bool = field(default=True, metadata=_cli("skip the pipelined sdk.stream throughput", flag="--no-stream"))
    title: str | None = field(default=None, metadata=_cli("report title"))
    out: Path = field(metadata=_cli("report folder (md, csv, json, png)"))


@dataclass(frozen=True)
class RunInfo:
    """The run's header: ``benchmark.json``'s ``"run"`` (``to_dict``), read by ``benchmarks.report.markdown``."""

    title: str
    model: str
    weights: str | None
    num_classes: int
    task: str
    input_size: tuple[int, int]
    evaluation: str  # where the frames came from (EvalSet.source)
    runs: int
    warmup: int
    rounds: int
    threads: int
    calibration: str | None
    skipped: tuple[str, ...]  # targets x precisions that cannot run the model, one line each: why
    started: str  # local time
    duration_s: float
    work_dir: str  # jobs, logs, frames and reference labels of this run
    environment: dict[str, Any]  # benchmarks.report.environment

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "input_size": list(self.input_size)}


@dataclass(frozen=True)
class _RunSetup:
    """What every row of one run shares: the options, the prepared model, the frames and where files go."""

    opts: BenchmarkOptions
    model: PreparedModel | ArtifactModel
    evaluation: EvalSet
    num_classes: int
    work: Path  # the run's jobs, logs and frames
    artifacts: Path  # the exports, cached per model and graph code
    calib: Path | None  # int8 calibration images

    @property
    def labels_match(self) -> bool:
        """The frames' labels use the model's classes: mIoU can be measured."""
        names = self.evaluation.class_names
        return self.evaluation.has_labels and names is not None and len(names) == self.num_classes

    def measure_spec(self, row: Row, artifact: Path | None = None, exporter: str | None = None) -> MeasureSpec:
        opts = self.opts
        return MeasureSpec(
            checkpoint=self.model.checkpoint,
            hf_dir=self.model.hf_dir,
            task=opts.task,
            input_size=opts.input_size,
            threads=opts.threads,
            runs=opts.runs,
            warmup=opts.warmup,
            eval=str(self.work / "eval.npz"),
            reference=str(self.work / "reference_labels.npz"),
            num_classes=self.num_classes,
            num_classes_match=self.labels_match,
            stream=opts.stream,
            video=opts.video is not None,
            profile=opts.profile,
            class_names=self.evaluation.class_names,
            peer_model=str(opts.peer_model),
            row=row,
            write_reference=row.is_reference,
            artifact=None if artifact is None else str(artifact),
            exporter=exporter,
        )


@dataclass(frozen=True)
class _BuiltRow:
    """A row ready to measure: its spec and what building it found (export time, the compiler's gate, ...)."""

    spec: MeasureSpec
    facts: dict[str, Any]


class _RowFailed(Exception):
    """A row that cannot be measured; ``facts`` (its error first) become its entry in the report."""

    def __init__(self, error: str, **facts: Any) -> None:
        super().__init__(error)
        self.facts = {"error": error, **facts}


# ---------------------------------------------------------------------------------------------- the run


def default_cache() -> Path:
    """``runtimes.cache.cache_root()``/benchmarks: artifacts, logs, evaluation frames."""
    return cache_root() / "benchmarks"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "model"


def model_key(model: str, seed: int) -> str:
    """Cache key of a benchmark model: its name, seed and (for files) content hash."""
    path = Path(model)
    digest = ""
    if path.is_file():
        digest = "-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        digest = "-" + hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:12]
    return f"{_slug(path.stem if (path.is_file() or path.is_dir()) else model)}{digest}-seed{seed}"


def run_benchmark(opts: BenchmarkOptions) -> list[dict]:
    """Run every planned row and write the report to ``opts.out``; returns the rows (see ``benchmarks.report``)."""
    from benchmarks.report import environment, write_report

    if opts.task != "semantic":
        raise ValueError("the harness measures semantic segmentation (label maps); --task semantic")
    if opts.runs < 1 or opts.warmup < 0 or opts.images < 1 or opts.rounds < 1:
        raise ValueError("need --runs >= 1, --warmup >= 0, --images >= 1 and --rounds >= 1")
    started = time.time()
    env = environment(opts.threads)
    opts, rows, skipped = _plan(opts)
    setup = _set_up(opts)
    if opts.targets is None and not _camvid_classes(setup.evaluation.class_names):
        rows = [row for row in rows if row.family != "litert"]  # the peer's classes map onto CamVid's only
    results: dict[str, dict] = {}
    built: dict[str, _BuiltRow] = {}
    for row in tqdm(rows, desc="building rows", unit="row"):
        try:
            built[row.id] = _build_row(row, setup)
        except _RowFailed as failed:
            results[row.id] = {**row.to_dict(), **failed.facts}
            logger.warning("row %s failed: %s", row.id, failed)
    _measure_rows(rows, built, results, setup.work, opts)
    results_list = [results[row.id] for row in rows]
    h, w = opts.input_size
    info = RunInfo(
        title=opts.title or f"{opts.model}, {h}x{w}, {opts.task}",
        model=opts.model,
        weights=setup.model.weights,
        num_classes=setup.num_classes,
        task=opts.task,
        input_size=opts.input_size,
        evaluation=setup.evaluation.source,
        runs=opts.runs,
        warmup=opts.warmup,
        rounds=len(round_runs(opts.runs, opts.rounds)),
        threads=opts.threads,
        calibration=f"{setup.calib} ({opts.calib_images} images, letterboxed)" if setup.calib else None,
        skipped=tuple(skipped),
        started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        duration_s=round(time.time() - started, 1),
        work_dir=str(setup.work),
        environment=env,
    )
    write_report(opts.out, results_list, info.to_dict())
    return results_list


def _plan(opts: BenchmarkOptions) -> tuple[BenchmarkOptions, list[Row], list[str]]:
    """(the options, the rows, one line per target x precision skipped). An artifact (what is deployed) runs at its
    own input size where its target allows, without an export or torch (``benchmarks.artifact_rows``)."""
    if not is_artifact(opts.model):
        return opts, plan_rows(opts.targets, opts.precisions), []
    artifact = read_artifact(opts.model)
    if artifact.task != opts.task:
        raise ValueError(f"--model {opts.model} is a {artifact.task} artifact; the harness measures semantic ones")
    rows, skipped = plan_artifact_rows(artifact, opts.targets, opts.precisions)
    if not rows:
        raise ValueError(f"nothing asked for can run {opts.model}: {'; '.join(skipped)}")
    for line in skipped:
        logger.info("skipped %s", line)
    return dataclasses.replace(opts, input_size=artifact.input_size), rows, skipped


def _set_up(opts: BenchmarkOptions) -> _RunSetup:
    """The model (prepared once per model key), the evaluation frames and the run's folders."""
    cache = (opts.cache or default_cache()).resolve()
    key = model_key(opts.model, opts.seed)
    work = cache / "runs" / _slug(str(opts.out.resolve()))
    work.mkdir(parents=True, exist_ok=True)
    if is_artifact(opts.model):
        model: PreparedModel | ArtifactModel = read_artifact(opts.model)
        num_classes = len(model.class_names)
    else:
        model = _prepared_model(opts, cache / "models" / key, work)
        num_classes = _num_classes(model.checkpoint)
    evaluation = prepare_eval_set(work / "eval.npz", opts.data, opts.video, opts.images, opts.data_format, opts.split)
    calib = opts.calib
    if calib is None and opts.data is not None and detect_format(opts.data, "train") == "camvid":
        calib = opts.data / "train"
    if isinstance(model, ArtifactModel):
        calib = None  # already exported
    (work / "reference_labels.npz").unlink(missing_ok=True)
    artifacts = cache / "artifacts" / key / f"code-{graph_code_key()}"
    setup = _RunSetup(opts, model, evaluation, num_classes, work, artifacts, calib)
    if evaluation.has_labels and not setup.labels_match:
        names = evaluation.class_names or ()
        logger.warning("no mIoU: the model has %d classes, the dataset %d", setup.num_classes, len(names))
    return setup


def _prepared_model(opts: BenchmarkOptions, model_dir: Path, work: Path) -> PreparedModel:
    """The benchmark model in ``model_dir``, prepared in a worker process the first time."""
    info_path = model_dir / "info.json"
    if info_path.exists():
        return PreparedModel.from_dict(json.loads(info_path.read_text()))
    logger.info("preparing model %s in %s", opts.model, model_dir)
    spec = {"model": opts.model, "dir": str(model_dir), "seed": opts.seed}
    result = run_job("prepare_model", spec, work, "prepare_model", opts.timeout_s, threads=opts.threads)
    if "error" in result:
        raise RuntimeError(f"cannot prepare --model {opts.model}: {result['error']}")
    model = PreparedModel.from_dict(result)
    info_path.write_text(json.dumps(model.to_dict(), indent=1))
    return model


def round_runs(runs: int, rounds: int) -> list[int]:
    """``runs`` timed frames spread over at most ``rounds`` rounds (earlier rounds take the remainder)."""
    rounds = max(1, min(rounds, runs))
    return [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]


def _measure_rows(
    rows: Sequence[Row], built: dict[str, _BuiltRow], results: dict[str, dict], work: Path, opts: BenchmarkOptions
) -> None:
    """Measure every built row in rounds, each row in its own process every time.

    Round 0 runs the rows in plan order (the reference's labels first) and measures everything (labels, accuracy,
    memory, stream, profile); later rounds time frames only, the order rotated by one row per round, so a machine
    that slows down or speeds up during the run touches every row alike. Rows never share a process: two runtimes'
    thread pools in one process compete for the cores (``benchmarks.cpu_precisions``: the LiteRT peer 75 ms a frame
    beside OpenVINO, 43-47 ms alone). Each row's latency figures come from all its rounds' frames.
    """
    order = [row for row in rows if row.id in built]
    for index, runs in enumerate(round_runs(opts.runs, opts.rounds)):
        shift = index % len(order) if order else 0
        for row in tqdm(order[shift:] + order[:shift], desc=f"round {index + 1}", unit="row"):
            if "error" in results.get(row.id, {}):
                continue
            logger.info("round %d: row %s (%s %s)", index + 1, row.id, row.target, row.precision)
            spec = dataclasses.replace(built[row.id].spec, runs=runs, latency_only=index > 0)
            name = row.id if index == 0 else f"{row.id}-round{index + 1}"
            measured = run_job("measure", spec.to_dict(), work, name, opts.timeout_s, threads=opts.threads)
            if index == 0:
                results[row.id] = {**row.to_dict(), **built[row.id].facts, **measured}
                if "error" in measured:
                    logger.warning("row %s failed: %s", row.id, measured["error"])
            elif "error" in measured:
                results[row.id].setdefault("round_errors", []).append(f"round {index + 1}: {measured['error']}")
            else:
                merge_round(results[row.id], measured)


def merge_round(result: dict, measured: dict) -> None:
    """Add a later round's timed frames to a row's result: latency figures, CPU time and stage means (pre-
    processing, inference, ...) over all its frames."""
    from benchmarks.measure import latency_figures

    before, added = len(result["times_ms"]), len(measured["times_ms"])
    times = result["times_ms"] + measured["times_ms"]
    for key in ("cpu_ms", *measured.get("stage_keys", ())):
        if isinstance(result.get(key), float) and isinstance(measured.get(key), float):
            result[key] = (result[key] * before + measured[key] * added) / len(times)
    result.update(latency_figures(times), times_ms=times, runs=len(times), rounds=result.get("rounds", 1) + 1)


def _camvid_classes(class_names: Sequence[str] | None) -> bool:
    from benchmarks.litert_peer import PeerNotAvailable, camvid_lookup

    try:
        camvid_lookup(list(class_names or ()))
    except PeerNotAvailable:
        return False
    return True


def _num_classes(checkpoint: str) -> int:
    from train.model.checkpoint import read_checkpoint

    return len(read_checkpoint(checkpoint).meta["class_names"])


# ---------------------------------------------------------------------------------------------- building rows


def _build_row(row: Row, setup: _RunSetup) -> _BuiltRow:
    """Build what the row needs (its artifact or the HF export, cached); raises ``_RowFailed`` when it cannot run."""
    if isinstance(setup.model, ArtifactModel) and row.family == "m2f":  # its runtime checked when planned
        return _BuiltRow(setup.measure_spec(row, Path(setup.model.path)), {})  # already exported
    why = target_available(row.target, row.device)
    if why is not None:
        raise _RowFailed(why)
    if row.family == "hf" and not setup.model.hf_dir:
        raise _RowFailed(setup.model.peer_error or "no HF model for this --model")
    if row.family == "litert" and not _camvid_classes(setup.evaluation.class_names):
        raise _RowFailed("the Cityscapes peer maps onto CamVid's 11 classes: evaluate on CamVid-labelled frames")
    if row.target == "hf-openvino":
        return _hf_export_row(row, setup)
    if row.family == "m2f" and row.runtime != "torch":
        return _export_row(row, setup)
    return _BuiltRow(setup.measure_spec(row), {})


def _hf_export_row(row: Row, setup: _RunSetup) -> _BuiltRow:
    """The HF peer's own ONNX export, run on OpenVINO."""
    opts = setup.opts
    path = setup.artifacts / f"hf-{'x'.join(map(str, opts.input_size))}.onnx"
    spec = {"hf_dir": setup.model.hf_dir, "input_size": list(opts.input_size), "threads": opts.threads}
    built = _cached_build(path, "hf_export", spec, setup.work, f"{row.id}-export", opts)
    if "error" in built:
        raise _RowFailed(f"HF ONNX export: {built['error']}", export_errors=built.get("export_errors"))
    facts = {
        "exporter": built["exporter"],
        "export_errors": built.get("errors") or None,
        "export_max_abs_diff": built.get("max_abs_diff"),
    }
    return _BuiltRow(setup.measure_spec(row, path, built["exporter"]), _known(facts))


def _export_row(row: Row, setup: _RunSetup) -> _BuiltRow:
    """Our artifact for the row's target x precision (int8 calibrated on ``setup.calib``)."""
    opts, precision = setup.opts, row.precision
    if precision == "int8" and setup.calib is None:
        raise _RowFailed("int8 needs calibration images: pass --calib DIR (or --data with a train split)")
    size = "x".join(map(str, opts.input_size))
    suffix = f"-calib{opts.calib_images}-{_slug(str(setup.calib))[-24:]}" if precision == "int8" else ""
    path = setup.artifacts / f"{row.target}-{precision}-{size}{suffix}.onnx"
    spec = {
        "checkpoint": setup.model.checkpoint,
        "target": row.target,
        "precision": precision,
        "task": opts.task,
        "input_size": list(opts.input_size),
        "calib_dir": str(setup.calib) if precision == "int8" else None,
        "calib_images": opts.calib_images,
        "gate_images": opts.gate_images,
    }
    built = _cached_build(path, "export", spec, setup.work, f"{row.id}-export", opts)
    if "error" in built:
        raise _RowFailed(f"export: {built['error']}")
    return _BuiltRow(
        setup.measure_spec(row, path), _known({"export_s": built.get("export_s"), "gate": built.get("gate")})
    )


def _known(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in facts.items() if v is not None}


def _cached_build(path: Path, job: str, spec: dict, work: Path, name: str, opts: BenchmarkOptions) -> dict:
    """An artifact built once per cache key; its build result is kept beside it as JSON."""
    record = path.with_suffix(".json")
    if path.exists() and record.exists():
        return json.loads(record.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    result = run_job(job, {**spec, "out": str(path)}, work, name, opts.timeout_s, threads=opts.threads)
    if "error" not in result:
        record.write_text(json.dumps(result, indent=1))
    return result
