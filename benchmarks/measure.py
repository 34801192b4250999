"""One row measured in its own process (the worker's ``measure`` job): warm-up, timed frames, then every frame's
labels for agreement and mIoU, peak memory, ``sdk.stream`` throughput and, asked for, a per-op profile.

    result = measure(MeasureSpec.from_dict(json.loads(spec_path.read_text())))   # {"p50_ms": ..., "agreement": ...}

A later round of the harness (``latency_only``) times frames only; its figures are merged into the row's first
round with ``latency_figures``, the one definition of the percentiles for a round and for merged rounds.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.eval_set import load_eval_set
from benchmarks.pipelines import HfPipeline, SegmenterPipeline, build_pipeline
from benchmarks.rows import MeasureSpec, Row

logger = logging.getLogger(__name__)


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size so far.

    Linux: ``VmHWM``, the high-water mark of this program's memory map. Not ``ru_maxrss``: Linux carries it over
    ``fork`` + ``exec``, so a worker would report its parent's peak when its own is lower.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (bytes on macOS)
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def rss_mb() -> float:
    """This process's resident set size now (the peak so far where /proc is absent)."""
    return _proc_status_mb("VmRSS") or peak_rss_mb()


def latency_figures(times_ms: list[float]) -> dict[str, float]:
    """Percentiles, mean and FPS of per-frame latencies (ms): one definition for a round and for merged rounds."""
    t = np.asarray(times_ms, dtype=float)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "fps": float(1000 / t.mean()),
    }


class _FrameRunner:
    """Frames through a pipeline, each ``predict`` timed alone; then, untimed, the labels of a frame not seen before
    (and for HF rows the official post-processing of its raw outputs, ~1 s at 150 classes: it was inside the timed
    span once, inflating HF rows)."""

    def __init__(self, pipeline: Any, frames: list[np.ndarray], keep_labels: bool) -> None:
        self.pipeline = pipeline
        self.frames = frames
        self.keep_labels = keep_labels
        self.labels: dict[int, np.ndarray] = {}
        self.official: dict[int, np.ndarray] = {}  # HF rows: their raw outputs through our post-processing

    def run(self, i: int) -> tuple[dict[str, float], float, float]:
        """Frame ``i`` (cycling): its stages, wall ms and process CPU ms of ``predict`` alone."""
        index = i % len(self.frames)
        wall, cpu = time.perf_counter(), time.process_time()
        out, stages = self.pipeline.predict(self.frames[index])
        wall, cpu = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
        if self.keep_labels and index not in self.labels:
            self.labels[index] = out
            if isinstance(self.pipeline, HfPipeline):
                self.official[index] = self.pipeline.official_labels()
        return stages, wall, cpu

    def timed(self, warmup: int, runs: int) -> dict[str, Any]:
        """``warmup`` untimed frames, then ``runs`` timed ones: latency figures, CPU and per-stage means."""
        for i in range(warmup):
            self.run(i)
        times, stage_sums, cpu_total = [], {}, 0.0
        for i in range(warmup, warmup + runs):
            stages, wall, cpu = self.run(i)
            times.append(wall)
            cpu_total += cpu
            for k, v in stages.items():
                stage_sums[k] = stage_sums.get(k, 0.0) + v
        return {
            **latency_figures(times),
            "times_ms": times,
            "cpu_ms": cpu_total / runs,  # process CPU time per frame, all threads: less sensitive to a busy machine
            "stages": {k: v / runs for k, v in stage_sums.items()},
        }

    def every_label(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every frame's labels in order (frames the timed loop did not reach run now), and the HF rows' official
        ones (empty for the other rows)."""
        for i in range(len(self.frames)):
            if i not in self.labels:
                self.run(i)
        count = len(self.frames)
        return [self.labels[i] for i in range(count)], [self.official[i] for i in sorted(self.official)]


def measure(spec: MeasureSpec) -> dict[str, Any]:
    """One row: warm-up, ``runs`` timed frames (cycling the evaluation set), then every frame's labels.

    ``latency_only`` (a later round of the harness): warm-up and timed frames only; the labels, accuracy, stream
    and profile come from the row's first round.
    """
    frames, gt = load_eval_set(spec.eval)
    _preimport(spec.row)
    base_mb = rss_mb()
    t0 = time.perf_counter()
    pipeline, facts = build_pipeline(spec)
    load_s = time.perf_counter() - t0
    runner = _FrameRunner(pipeline, frames, keep_labels=not spec.latency_only)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    timed = runner.timed(spec.warmup, spec.runs)
    stages = timed.pop("stages")
    result: dict[str, Any] = {
        **facts,
        **timed,
        "runs": spec.runs,
        "warmup": spec.warmup,
        "load_s": load_s,
        "load_avg_1min": load_avg,
        **stages,
        "stage_keys": sorted(stages),  # the per-frame means above (preprocess_ms, ...): merged over rounds
    }
    if spec.latency_only:
        return result
    labels, official = runner.every_label()
    peak = peak_rss_mb()
    result.update(peak_rss_mb=peak, rss_delta_mb=peak - base_mb)
    result.update(_label_figures(spec, labels, official, gt))
    if spec.stream and isinstance(pipeline, SegmenterPipeline):
        result.update(_stream_figures(spec, pipeline, frames))
    if spec.profile:
        try:
            result["profile"] = _profile(spec, pipeline, frames[0])
        except Exception as err:
            logger.exception("profiling failed")
            result["profile_error"] = f"{type(err).__name__}: {err}"
    return result


def _label_figures(
    spec: MeasureSpec, labels: list[np.ndarray], official: list[np.ndarray], gt: list[np.ndarray] | None
) -> dict[str, Any]:
    """Agreement with the reference row's labels (the reference row writes them), the HF rows' model agreement
    (their raw outputs through our post-processing) and mIoU where the frames carry the model's classes."""
    if spec.write_reference:
        np.savez_compressed(spec.reference, **{f"labels_{i}": x for i, x in enumerate(labels)})
    figures: dict[str, Any] = _agreement(labels, spec.reference)
    if official:
        figures["model_agreement"] = _agreement(official, spec.reference).get("agreement")
    if gt is not None and spec.num_classes_match:
        from train.evaluation.semantic import SemanticEvaluator

        evaluator = SemanticEvaluator(spec.num_classes, 255)
        for pred, truth in zip(labels, gt, strict=True):
            evaluator.update(pred, truth)
        figures["mIoU"] = evaluator.compute()["mIoU"]
    return figures


def _agreement(labels: list[np.ndarray], reference: str) -> dict[str, float]:
    if not Path(reference).exists():
        return {}
    with np.load(reference) as ref:
        want = [ref[f"labels_{i}"] for i in range(len(labels))]
    same = sum(int((a.astype(np.int64) == b.astype(np.int64)).sum()) for a, b in zip(labels, want, strict=True))
    return {"agreement": same / sum(b.size for b in want)}


class _FrameReader:
    """A video source over frames already in memory (``read()`` like ``cv2.VideoCapture``)."""

    def __init__(self, frames: Iterable[np.ndarray]) -> None:
        self._frames = iter(frames)

    def read(self) -> tuple[bool, np.ndarray | None]:
        frame = next(self._frames, None)
        return frame is not None, frame


def _stream_figures(spec: MeasureSpec, pipeline: SegmenterPipeline, frames: list[np.ndarray]) -> dict[str, Any]:
    """Frames per second through ``sdk.stream`` (decode, inference and post-processing overlapped) and, over a
    video's frames in order, flicker and flow consistency with the stabiliser off and on. A failure is noted: the
    row keeps its latency figures."""
    from itertools import cycle, islice

    figures: dict[str, Any] = {}
    try:
        source = _FrameReader(islice(cycle(frames), spec.runs))
        running = pipeline.segmenter.stream(source, live=False, annotate=None)
        for _ in running:
            pass
        figures.update(stream_fps=running.stats.fps, stream_frames=running.stats.frames)
        if spec.video:
            figures.update(_stability(pipeline, frames))
    except Exception as err:
        figures["stream_error"] = f"{type(err).__name__}: {err}"
    return figures


def _stability(pipeline: SegmenterPipeline, frames: list[np.ndarray]) -> dict[str, float | None]:
    """Flicker and flow consistency of the row's labels over the video's frames in order, stabiliser off and on."""
    figures: dict[str, float | None] = {}
    for stabilize in (False, True):
        running = pipeline.segmenter.stream(
            _FrameReader(frames), live=False, stabilize=stabilize, measure_stability=True
        )
        for _ in running:
            pass
        suffix = "_stabilized" if stabilize else ""
        stability = running.stats.stability or {}
        figures[f"flicker_unchanged_pct{suffix}"] = stability.get("flicker_unchanged_pct")
        figures[f"flow_consistency_pct{suffix}"] = stability.get("flow_consistency_pct")
    return figures


def _preimport(row: Row) -> None:
    """Import what the row's engine needs before the memory baseline, so the delta is the model's own."""
    import sdk.segmenter  # noqa: F401

    if row.family == "hf" or row.runtime == "torch":
        import torch  # noqa: F401

        import compile.export  # noqa: F401
        import train.model  # noqa: F401
    if row.family == "hf":
        import transformers  # noqa: F401
    if row.family == "litert":
        import ai_edge_litert.interpreter  # noqa: F401
    elif row.runtime in ("openvino", "onnxruntime"):
        import importlib

        importlib.import_module(row.runtime)
        importlib.import_module(f"runtimes.{row.runtime}_backend")


def _profile(spec: MeasureSpec, pipeline: Any, frame: np.ndarray) -> dict:
    """Per-op-type profile of the row's model on one frame (``benchmarks.profiling``)."""
    from benchmarks import profiling
    from sdk.preprocess import fit_to_input

    row = spec.row
    if row.family == "litert":
        raise NotImplementedError("no per-op profile of the LiteRT peer")
    if row.family == "m2f":
        segmenter = pipeline.segmenter
        feed = {segmenter.input_name: fit_to_input(frame, segmenter.metadata["input"])[0][None]}
        if row.runtime in profiling.PROFILED_RUNTIMES:
            return profiling.profile_on(row.runtime, spec.artifact, feed, row.precision, spec.threads)
        return profiling.profile_torch(lambda: segmenter.backend.run(feed))
    image, _ = fit_to_input(frame, pipeline.input_spec)
    pixel_values = pipeline.processor(images=image[..., ::-1].copy(), return_tensors="pt")["pixel_values"]
    if row.runtime == "openvino":
        from benchmarks.peers import HF_INPUT

        return profiling.profile_openvino(spec.artifact, {HF_INPUT: pixel_values.numpy()}, "f32", spec.threads)
    return profiling.profile_torch(lambda: pipeline.run_model(pixel_values))
