"""Keeping up with a live camera: a clip played on a 30 fps clock through ``Segmenter.stream``, with and without
``carry``, against the model run on every frame.

    python -m benchmarks.live [--model ARTIFACT] [--target cpu] [--clips CLIP ...] [--fps 30] [--frames 150] \
        --out benchmarks/results/live

Per clip: (1) every frame through ``predict`` (the reference labels, and the median model time); (2) the clip
released on an ``--fps`` clock (``sdk.sources.RealTimeReader``) and streamed live with ``carry``: output fps,
capture-to-result latency p50 / p90 (capture: the moment the clock released the frame), model vs carried frames,
and the share of pixels of carried frames whose label equals the every-frame model's on the same frame; (3) the
same live stream without carry (the newest frame only, the rest dropped). Each live stream runs with the
stabiliser (the default) and without. Writes ``live.md/.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.temporal import DEFAULT_CLIPS
from runtimes.cpu_features import cpu_features
from runtimes.vocabulary import VOID
from sdk.segmenter import Segmenter
from sdk.sources import RealTimeReader, read_video_frames


def reference(seg: Segmenter, clip: Path, frames: int) -> tuple[list[np.ndarray], float]:
    """Labels of the first ``frames`` frames, each through the model, and the median model time (ms)."""
    labels, times = [], []
    for frame in read_video_frames(clip, frames, consecutive=True):
        result = seg.predict(frame)
        labels.append(result.semantic)
        times.append(result.timings["inference_ms"])
    return labels, float(np.median(times[1:] or times))


def self_agreement(truth: list[np.ndarray]) -> float:
    """% of (non-void) pixels whose every-frame label equals the previous frame's: how far a carried label can
    agree with a model that changes its own mind from frame to frame."""
    same = total = 0
    for previous, current in itertools.pairwise(truth):
        valid = (previous != VOID) & (current != VOID)
        same += int(((previous == current) & valid).sum())
        total += int(valid.sum())
    return round(100 * same / total, 2) if total else float("nan")


def live_run(
    seg: Segmenter, clip: Path, fps: float, frames: int, carry: bool, stabilize: bool, truth: list[np.ndarray]
) -> dict:
    """The clip on an ``fps`` clock through a live stream; figures, and agreement with ``truth`` per frame kind."""
    reader = RealTimeReader(cv2.VideoCapture(str(clip)), fps)
    run = seg.stream(reader, live=True, carry=carry, stabilize=stabilize, max_frames=frames)
    agree = {"model": [0, 0], "carried": [0, 0]}
    for result in run:
        index = result.frame_index
        if index >= len(truth):
            continue
        valid = truth[index] != VOID
        kind = "carried" if result.carried_from is not None else "model"
        agree[kind][0] += int(((result.semantic == truth[index]) & valid).sum())
        agree[kind][1] += int(valid.sum())
    stats = run.stats
    decoded = max(stats.frames_decoded, 1)
    return {
        "carry": carry,
        "stabilize": stabilize,
        "source_fps": fps,
        "output_fps": round(stats.fps, 2),
        "results_per_decoded_frame": round(stats.frames / decoded, 3),
        "frames": stats.frames,
        "dropped": stats.dropped,
        "model_frames": stats.frames - stats.frames_carried,
        "carried_frames": stats.frames_carried,
        "latency_p50_ms": round(stats.latency_ms.get("p50", float("nan")), 1),
        "latency_p90_ms": round(stats.latency_ms.get("p90", float("nan")), 1),
        "inference_ms_mean": round(stats.stage_ms.get("inference", float("nan")), 1),
        "carry_ms_mean": round(stats.stage_ms.get("carry", float("nan")), 1) if carry else None,
        "agree_model_pct": round(100 * agree["model"][0] / agree["model"][1], 2) if agree["model"][1] else None,
        "agree_carried_pct": round(100 * agree["carried"][0] / agree["carried"][1], 2) if agree["carried"][1] else None,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Live source simulated at {report['fps']:g} fps ({report['cpu']}, {report['threads']} threads; model "
        f"{report['model']} on {report['runtime']} {report['precision']}); `python -m benchmarks.live`",
        "",
        "| clip | carry | stabiliser | model ms (every frame, median) | output fps | results / decoded frame | dropped "
        "| model / carried frames | latency p50 / p90 ms | p90 / model ms | carried frames = every-frame model "
        "(% pixels) | every-frame model = its own previous frame (% pixels) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        agree = row["agree_carried_pct"]
        lines.append(
            f"| {row['clip']} | {'on' if row['carry'] else 'off'} | {'on' if row['stabilize'] else 'off'} "
            f"| {row['model_ms']:.1f} | {row['output_fps']:.1f} "
            f"| {row['results_per_decoded_frame']:.2f} | {row['dropped']} | {row['model_frames']} / "
            f"{row['carried_frames']} | {row['latency_p50_ms']:.0f} / {row['latency_p90_ms']:.0f} | "
            f"{row['latency_p90_ms'] / row['model_ms']:.2f} | {'-' if agree is None else f'{agree:.2f}'} | "
            f"{row['model_next_frame_agree_pct']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="artifact (default: the packaged model)")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--clips", nargs="+", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--fps", type=float, default=30.0, help="the simulated camera's frame rate")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    missing = [str(clip) for clip in args.clips if not clip.is_file()]
    if missing:
        parser.error(f"no such clip: {', '.join(missing)}")
    rows = []
    with Segmenter(args.target, model=args.model) as seg:
        for clip in args.clips:
            truth, model_ms = reference(seg, clip, args.frames)
            for carry, stabilize in itertools.product((True, False), (True, False)):  # a live default: off
                row = live_run(seg, clip, args.fps, args.frames, carry, stabilize, truth)
                rows.append({"clip": clip.name, "model_ms": round(model_ms, 1),
                             "model_next_frame_agree_pct": self_agreement(truth), **row})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
        report = {
            "cpu": cpu_features().describe(),
            "machine": platform.node(),
            "threads": os.environ.get("OMP_NUM_THREADS", "all"),
            "model": Path(seg.model_path).name if seg.model_path else None,
            "runtime": seg.runtime,
            "precision": seg.precision,
            "fps": args.fps,
            "frames": args.frames,
            "rows": rows,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "live.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
