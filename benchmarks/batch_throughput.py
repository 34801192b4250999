"""Batch throughput (issue 40): frames/s of ``sdk.batch`` with 1 and 2 local workers and on a local Ray cluster,
beside the one-stream baseline (``Segmenter.stream`` over the same clips one after another, nothing written).

    python -m benchmarks.batch_throughput [CLIP] [--seconds 3] [--copies 2] [--target cpu] [--no-ray]

The archive: ``--copies`` clips of the first ``--seconds`` of CLIP (default: the demo's street clip). Every batch
row writes label PNGs into a fresh destination; frames/s is over the row's wall time (model loading, and on Ray
the cluster's start, included), "busy" per worker over the time the worker spent on its units. The engine threads
are shared out: one stream and one worker get every core, two workers half each, a Ray actor one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

import sdk
from sdk.demo import find_clip
from sdk.sources import frame_rate, open_source, release


def cut_clips(clip: Path, folder: Path, seconds: float, copies: int) -> list[Path]:
    """``copies`` mp4 files of the first ``seconds`` of ``clip``."""
    capture = open_source(clip)
    fps = frame_rate(capture) or 25.0
    frames = []
    while len(frames) < round(seconds * fps):
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    release(capture)
    paths = []
    for index in range(copies):
        path = folder / f"clip{index}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
        for frame in frames:
            writer.write(frame)
        writer.release()
        paths.append(path)
    return paths


def one_stream(target: str, clips: list[Path]) -> dict[str, Any]:
    """The baseline: one ``Segmenter`` on every core, its stream over each clip in turn."""
    started = time.perf_counter()
    frames = 0
    with sdk.Segmenter(target, threads=os.cpu_count()) as seg:
        for clip in clips:
            frames += sum(1 for _ in seg.stream(clip))
    wall = time.perf_counter() - started
    return {"row": "one stream (no files written)", "workers": 1, "frames": frames, "wall_s": wall, "load": load()}


def batch_row(name: str, clips: list[Path], out: Path, target: str, **options: Any) -> dict[str, Any]:
    report = sdk.batch(clips, out, {"target": target}, **options)
    busy = [figures["frames_per_s"] for figures in report.workers.values()]
    assert not report.failed, report.summary()
    return {"row": name, "workers": len(busy), "frames": report.frames, "wall_s": report.wall_s,
            "busy_fps_per_worker": busy, "load": load()}  # fmt: skip


def load() -> float:
    """The 1-minute load average as a row ends (this machine is shared: other work shows here)."""
    return round(os.getloadavg()[0], 2)


def cpu_name() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def one_round(args: argparse.Namespace, clips: list[Path], folder: Path, round_: int) -> list[dict[str, Any]]:
    """Every row once, in turn (rounds interleave the rows: a shared machine's load changes by the minute)."""
    rows = [one_stream(args.target, clips)]
    for workers in (1, 2):
        rows.append(batch_row(f"m2f batch, {workers} local worker(s)", clips, folder / f"local{workers}_{round_}",
                              args.target, workers=workers, chunk_frames=args.chunk_frames))  # fmt: skip
    if not args.no_ray:
        import ray

        cores = os.cpu_count() or 1
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})  # fmt: skip
        try:
            rows.append(batch_row(f"m2f batch --ray, local cluster of {cores} CPUs", clips, folder / f"ray_{round_}",
                                  args.target, ray=True, chunk_frames=args.chunk_frames))  # fmt: skip
        finally:
            ray.shutdown()
    for row in rows:
        row.update(round=round_, frames_per_s=round(row["frames"] / row["wall_s"], 2), wall_s=round(row["wall_s"], 2))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", nargs="?", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--chunk-frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch"))
    args = parser.parse_args(argv)
    clip = args.clip or find_clip()
    with tempfile.TemporaryDirectory() as tmp:
        clips = cut_clips(clip, Path(tmp), args.seconds, args.copies)
        one_stream(args.target, clips[:1])  # warm the engine cache and the decoder
        rows = [row for k in range(1, args.rounds + 1) for row in one_round(args, clips, Path(tmp), k)]
    cores = os.cpu_count() or 1
    record = {
        **{"cpu": cpu_name(), "cores": cores, "clip": str(clip), "target": args.target, "rounds": args.rounds},
        **{"seconds": args.seconds, "copies": args.copies, "chunk_frames": args.chunk_frames, "rows": rows},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_throughput.json").write_text(json.dumps(record, indent=1) + "\n")
    table = [
        f"CPU: {record['cpu']} ({cores} cores), target {args.target}, {args.copies} clips x {args.seconds:g} s "
        f"of {clip.name}, chunk_frames {args.chunk_frames}.",
        "",
        "load avg: the 1-minute load average as the row ended (other work on this shared machine shows there)",
        "",
        "| round | run | workers | frames | wall s | frames/s | busy frames/s per worker | load avg |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        busy = ", ".join(f"{v:.2f}" for v in row.get("busy_fps_per_worker", [])) or "-"
        table.append(f"| {row['round']} | {row['row']} | {row['workers']} | {row['frames']} | {row['wall_s']} | "
                     f"{row['frames_per_s']} | {busy} | {row['load']} |")  # fmt: skip
    (args.out / "batch_throughput.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
