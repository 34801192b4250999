"""Benchmark harness: every target x precision of one model beside its peers, one subprocess per row.

    from benchmarks.harness import BenchmarkOptions, run_benchmark
    rows = run_benchmark(BenchmarkOptions(model="ade20k-semantic-swin-t", data=Path(".../camvid"), out=Path(...)))

Rows, in order: our eager torch model (the fp32 reference every row's label agreement is measured against), the
HF transformers model eager and its own ONNX export on OpenVINO (the peers, same architecture and weights), then
our artifacts per target x precision. Each row is measured in its own process (``benchmarks.worker``), so its
peak memory is its own and a crashing runtime only turns its row into an error; artifacts and logs go to a cache
folder, never into ``out`` (which gets Markdown, CSV, JSON and a PNG plot: see ``benchmarks.report``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.litert_peer import PEER_LABEL, default_peer_path
from runtimes.cache import cache_root, graph_code_key
from runtimes.images import FrameError, read_image
from runtimes.registry import RUNTIMES, RuntimeSpec, runtimes_named, unknown_name
from runtimes.vocabulary import IMAGE_SUFFIXES, PRECISIONS, REPO_ROOT, image_files
from sdk.sources import evenly_spaced, read_video_frames

logger = logging.getLogger(__name__)

DATA_FORMATS = ("auto", "camvid", "ade20k", "cityscapes", "images")


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


REFERENCE = ("torch", "cpu", "fp32")
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8")  # fp16 joins when a GPU row runs
# the benchmark's own exports time a file rather than ship it: fewer calibration images (int8 calibration is the
# slowest step of a row) and a gate on a few frames as a sanity check; what ships uses compile.export's defaults
BENCH_CALIB_IMAGES = 32
BENCH_GATE_IMAGES = 4


@dataclass
class BenchmarkOptions:
    """Everything one benchmark run needs; ``m2f benchmark --help`` documents each field."""

    out: Path
    model: str = "ade20k-semantic-swin-t"
    targets: Sequence[str] | None = None  # None: every available target
    precisions: Sequence[str] | None = None  # None: DEFAULT_PRECISIONS (+ fp16 with a GPU target)
    data: Path | None = None
    data_format: str = "auto"
    split: str = "val"
    video: Path | None = None
    images: int = 10
    input_size: tuple[int, int] = (512, 512)
    task: str = "semantic"
    runs: int = 10
    warmup: int = 3
    rounds: int = 3  # the timed runs split into rounds, the rows' order rotated from round to round
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    calib: Path | None = None
    calib_images: int = BENCH_CALIB_IMAGES
    gate_images: int = BENCH_GATE_IMAGES
    seed: int = 0
    cache: Path | None = None
    timeout_s: float = 3600.0
    peer_model: Path = field(default_factory=default_peer_path)  # the LiteRT peer's .tflite
    profile: bool = False
    stream: bool = True
    title: str | None = None


# ---------------------------------------------------------------------------------------------- subprocess jobs


def run_job(
    job: str, spec: dict, work: Path, name: str, timeout_s: float, module: str = "benchmarks.worker", threads: int = 1
) -> dict:
    """Run ``python -m module job spec.json result.json`` and return its result (``{"error": ...}`` on failure).

    A timeout, a crash (signal) or a non-zero exit becomes an error message with the log's last line; the full
    log stays in ``work/logs/name.log``.
    """
    for sub in ("jobs", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = work / "jobs" / f"{name}.json", work / "jobs" / f"{name}.result.json", None
    log_path = work / "logs" / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=1, default=str))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", module, job, str(spec_path), str(result_path)]
    start = time.perf_counter()
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s (log: {log_path})"}
    elapsed = time.perf_counter() - start
    result: dict = json.loads(result_path.read_text()) if result_path.exists() else {}
    if proc.returncode != 0 and "error" not in result:
        if proc.returncode < 0:
            try:
                why = f"crashed with {signal.Signals(-proc.returncode).name}"
            except ValueError:
                why = f"crashed with signal {-proc.returncode}"
        else:
            why = f"exited with status {proc.returncode}"
        result = {"error": f"{job} {why}: {_last_line(log_path)} (log: {log_path})"}
    result.setdefault("job_s", elapsed)
    return result


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


# ---------------------------------------------------------------------------------------------- planning


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


def row_id(name: str, device: str, precision: str) -> str:
    """``m2f-openvino-int8``, ``hf-eager-fp32``; a device other than the target's first is named:
    ``m2f-torch-cuda-fp16``."""
    kind = BENCHMARK_TARGETS[name]
    where = "" if device == kind.devices[0] else f"-{device}"
    return f"{kind.family}-{name.removeprefix(kind.family + '-')}{where}-{precision}"


def plan_rows(targets: Sequence[str] | None, precisions: Sequence[str] | None) -> list[dict]:
    """The rows to run, reference first: ``{"id", "target", "family", "runtime", "device", "precision", "label"}``.

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
    return [
        {
            "id": row_id(t, d, p),
            "target": t,
            "family": BENCHMARK_TARGETS[t].family,
            "runtime": BENCHMARK_TARGETS[t].runtime,
            "device": d,
            "precision": p,
            "label": BENCHMARK_TARGETS[t].label + ("" if d == BENCHMARK_TARGETS[t].devices[0] else f" on {d.upper()}"),
        }
        for t, d, p in dict.fromkeys(rows)  # the reference once
    ]


# ---------------------------------------------------------------------------------------------- evaluation set


def _detect_format(data: Path, split: str) -> str:
    if (data / "classes.csv").exists() and (data / split).is_dir() and (data / f"{split}annot").is_dir():
        return "camvid"
    if (data / "images").is_dir() and (data / "annotations").is_dir():
        return "ade20k"
    if (data / "leftImg8bit").is_dir():
        return "cityscapes"
    return "images"


def prepare_eval_set(
    out: Path, data: Path | None, video: Path | None, count: int, data_format: str = "auto", split: str = "val"
) -> dict:
    """Write ``count`` frames (evenly spread over the source) and their ground truth, if any, to ``out`` (.npz).

    Returns ``{"source", "count", "has_labels", "class_names"}``.
    """
    frames: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    class_names: list[str] | None = None
    if video is not None:
        frames = read_video_frames(video, count)
        source = f"{video.name}: {len(frames)} frames"
    elif data is not None:
        if not data.is_dir():
            raise FileNotFoundError(f"--data {data} is not a folder")
        fmt = _detect_format(data, split) if data_format == "auto" else data_format
        if fmt == "images":
            files = image_files(data)
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {data}")
            for i in evenly_spaced(len(files), count):
                try:
                    frames.append(read_image(files[i]))
                except FrameError as err:
                    raise ValueError(f"cannot use image {files[i]}: {err}") from err
            source = f"{data.name}: {len(frames)} images (no labels)"
        else:
            from train.data import build_dataset
            from train.evaluation.semantic import semantic_gt_from_sample

            dataset = build_dataset({"format": fmt, "root": str(data), "split": split})
            class_names = list(dataset.meta.class_names)
            for i in evenly_spaced(len(dataset), count):
                sample = dataset[i]
                frames.append(np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy()[..., ::-1]))
                h, w = frames[-1].shape[:2]
                labels.append(semantic_gt_from_sample(sample["labels"], sample["masks"], sample["iscrowd"], h, w))
            source = f"{fmt} {split}: {len(frames)} of {len(dataset)} images, labelled"
    else:
        raise ValueError("pass --data DIR (CamVid/ADE20K/Cityscapes root or a folder of images) or --video FILE")
    arrays = {f"frame_{i}": f for i, f in enumerate(frames)}
    arrays.update({f"label_{i}": lab.astype(np.uint8 if lab.max() < 256 else np.int32) for i, lab in enumerate(labels)})
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, count=len(frames), **arrays)
    return {"source": source, "count": len(frames), "has_labels": bool(labels), "class_names": class_names}


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
    cache = (opts.cache or default_cache()).resolve()
    key = model_key(opts.model, opts.seed)
    work = cache / "runs" / _slug(str(opts.out.resolve()))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    env = environment(opts.threads)
    rows = plan_rows(opts.targets, opts.precisions)

    model_dir = cache / "models" / key
    info_path = model_dir / "info.json"
    if info_path.exists():
        model = json.loads(info_path.read_text())
    else:
        logger.info("preparing model %s in %s", opts.model, model_dir)
        model = run_job(
            "prepare_model",
            {"model": opts.model, "dir": str(model_dir), "seed": opts.seed},
            work,
            "prepare_model",
            opts.timeout_s,
            threads=opts.threads,
        )
        if "error" in model:
            raise RuntimeError(f"cannot prepare --model {opts.model}: {model['error']}")
        info_path.write_text(json.dumps(model, indent=1))

    eval_path = work / "eval.npz"
    evaluation = prepare_eval_set(eval_path, opts.data, opts.video, opts.images, opts.data_format, opts.split)
    num_classes = _num_classes(model["checkpoint"])
    match = (
        evaluation["has_labels"]
        and evaluation["class_names"] is not None
        and len(evaluation["class_names"]) == num_classes
    )
    if evaluation["has_labels"] and not match:
        logger.warning("no mIoU: the model has %d classes, the dataset %d", num_classes, len(evaluation["class_names"]))
    if opts.targets is None and not _camvid_classes(evaluation["class_names"]):
        rows = [row for row in rows if row["family"] != "litert"]  # the peer's classes map onto CamVid's only
    calib = opts.calib
    if calib is None and opts.data is not None and _detect_format(opts.data, "train") == "camvid":
        calib = opts.data / "train"
    reference = work / "reference_labels.npz"
    reference.unlink(missing_ok=True)

    common = {
        "checkpoint": model["checkpoint"],
        "hf_dir": model.get("hf_dir"),
        "task": opts.task,
        "input_size": list(opts.input_size),
        "threads": opts.threads,
        "runs": opts.runs,
        "warmup": opts.warmup,
        "eval": str(eval_path),
        "reference": str(reference),
        "num_classes": num_classes,
        "num_classes_match": match,
        "stream": opts.stream,
        "video": opts.video is not None,  # consecutive frames: the stream also measures temporal stability
        "profile": opts.profile,
        "class_names": evaluation["class_names"],
        "peer_model": str(opts.peer_model),
    }
    artifacts = cache / "artifacts" / key / f"code-{graph_code_key()}"
    results: dict[str, dict] = {}
    specs: dict[str, dict] = {}
    for row in tqdm(rows, desc="building rows", unit="row"):
        prepared = _prepare_row(row, common, model, artifacts, work, opts, calib)
        if "error" in prepared:
            results[row["id"]] = {**row, **prepared}
            logger.warning("row %s failed: %s", row["id"], prepared["error"])
        else:
            specs[row["id"]] = prepared
    _measure_rows(rows, specs, results, work, opts)
    results_list = [results[row["id"]] for row in rows]
    run_info = {
        "title": opts.title or f"{opts.model}, {opts.input_size[0]}x{opts.input_size[1]}, {opts.task}",
        "model": opts.model,
        "weights": model.get("weights"),
        "num_classes": num_classes,
        "task": opts.task,
        "input_size": list(opts.input_size),
        "evaluation": evaluation["source"],
        "runs": opts.runs,
        "warmup": opts.warmup,
        "rounds": len(round_runs(opts.runs, opts.rounds)),
        "threads": opts.threads,
        "calibration": f"{calib} ({opts.calib_images} images, letterboxed)" if calib else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "work_dir": str(work),
        "environment": env,
    }
    write_report(opts.out, results_list, run_info)
    return results_list


def round_runs(runs: int, rounds: int) -> list[int]:
    """``runs`` timed frames spread over at most ``rounds`` rounds (earlier rounds take the remainder)."""
    rounds = max(1, min(rounds, runs))
    return [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]


def _measure_rows(
    rows: Sequence[dict], specs: dict[str, dict], results: dict[str, dict], work: Path, opts: BenchmarkOptions
) -> None:
    """Measure every built row in rounds, each row in its own process every time.

    Round 0 runs the rows in plan order (the reference's labels first) and measures everything (labels, accuracy,
    memory, stream, profile); later rounds time frames only, the order rotated by one row per round, so a machine
    that slows down or speeds up during the run touches every row alike. Rows never share a process: two runtimes'
    thread pools in one process compete for the cores (``benchmarks.cpu_precisions``: the LiteRT peer 75 ms a frame
    beside OpenVINO, 43-47 ms alone). Each row's latency figures come from all its rounds' frames.
    """
    order = [row for row in rows if row["id"] in specs]
    by_id = {row["id"]: row for row in order}
    for index, runs in enumerate(round_runs(opts.runs, opts.rounds)):
        shift = index % len(order) if order else 0
        for row in tqdm(order[shift:] + order[:shift], desc=f"round {index + 1}", unit="row"):
            if "error" in results.get(row["id"], {}):
                continue
            logger.info("round %d: row %s (%s %s)", index + 1, row["id"], row["target"], row["precision"])
            spec = {**specs[row["id"]]["spec"], "runs": runs, "latency_only": index > 0}
            name = row["id"] if index == 0 else f"{row['id']}-round{index + 1}"
            measured = run_job("measure", spec, work, name, opts.timeout_s, threads=opts.threads)
            if index == 0:
                results[row["id"]] = {**by_id[row["id"]], **specs[row["id"]]["extra"], **measured}
                if "error" in measured:
                    logger.warning("row %s failed: %s", row["id"], measured["error"])
            elif "error" in measured:
                results[row["id"]].setdefault("round_errors", []).append(f"round {index + 1}: {measured['error']}")
            else:
                merge_round(results[row["id"]], measured)


def merge_round(result: dict, measured: dict) -> None:
    """Add a later round's timed frames to a row's result: latency figures, CPU time and stage means (pre-
    processing, inference, ...) over all its frames."""
    from benchmarks.worker import latency_figures

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


def _prepare_row(
    row: dict, common: dict, model: dict, artifacts: Path, work: Path, opts: BenchmarkOptions, calib: Path | None
) -> dict:
    """Build what the row needs (artifact / HF export, cached): ``{"spec": measure spec, "extra": build facts}``,
    or ``{"error": ...}``."""
    why = target_available(row["target"], row["device"])
    if why is not None:
        return {"error": why}
    if row["family"] == "hf" and not model.get("hf_dir"):
        return {"error": model.get("peer_error", "no HF model for this --model")}
    if row["family"] == "litert" and not _camvid_classes(common["class_names"]):
        return {"error": "the Cityscapes peer maps onto CamVid's 11 classes: evaluate on CamVid-labelled frames"}
    spec = {**common, "row": row, "write_reference": (row["target"], row["device"], row["precision"]) == REFERENCE}
    size = "x".join(map(str, opts.input_size))
    extra: dict[str, Any] = {}
    if row["target"] == "hf-openvino":
        path = artifacts / f"hf-{size}.onnx"
        built = _cached_build(
            path,
            "hf_export",
            {"hf_dir": model["hf_dir"], "input_size": common["input_size"], "threads": opts.threads},
            work,
            f"{row['id']}-export",
            opts,
        )
        if "error" in built:
            return {"error": f"HF ONNX export: {built['error']}", "export_errors": built.get("export_errors")}
        spec.update(artifact=str(path), exporter=built["exporter"])
        extra = {
            "exporter": built["exporter"],
            "export_errors": built.get("errors") or None,
            "export_max_abs_diff": built.get("max_abs_diff"),
        }
    elif row["family"] == "m2f" and row["runtime"] != "torch":
        precision = row["precision"]
        if precision == "int8" and calib is None:
            return {"error": "int8 needs calibration images: pass --calib DIR (or --data with a train split)"}
        suffix = f"-calib{opts.calib_images}-{_slug(str(calib))[-24:]}" if precision == "int8" else ""
        path = artifacts / f"{row['target']}-{precision}-{size}{suffix}.onnx"
        export_spec = {
            "checkpoint": model["checkpoint"],
            "target": row["target"],
            "precision": precision,
            "task": opts.task,
            "input_size": common["input_size"],
            "calib_dir": str(calib) if precision == "int8" else None,
            "calib_images": opts.calib_images,
            "gate_images": opts.gate_images,
        }
        built = _cached_build(path, "export", export_spec, work, f"{row['id']}-export", opts)
        if "error" in built:
            return {"error": f"export: {built['error']}"}
        spec["artifact"] = str(path)
        extra = {"export_s": built.get("export_s"), "gate": built.get("gate")}
    return {"spec": spec, "extra": {k: v for k, v in extra.items() if v is not None}}


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
