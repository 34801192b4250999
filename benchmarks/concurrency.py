"""Throughput from concurrency: ``Segmenter.predict_batch`` (OpenVINO THROUGHPUT hint, one request per stream)
against a one-request LATENCY-mode ``predict`` loop, same model, same frames, same run.

    python -m benchmarks.concurrency [--precisions int8 fp32] [--frames 16] [--rounds 3] [--threads 2]
        [--data ../shared/data/camvid] [--out benchmarks/results/concurrency]

Each round times both modes back to back over the same CamVid val frames (480x360, the default model's input
size), so load on a shared machine hits both alike; the report gives the median frames/s per mode and their
ratio, whether every batch label map equals the latency-mode one, and the load average while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from benchmarks.paths import DATA_ROOT
from runtimes.openvino_backend import openvino_version
from sdk.artifact_choice import default_model
from sdk.segmenter import Segmenter

DEFAULT_DATA = DATA_ROOT / "camvid"


def read_frames(data: Path, count: int) -> list[np.ndarray]:
    """``count`` CamVid val frames (BGR, 360x480) spread over the split."""
    paths = sorted((data / "val").glob("*.png"))
    if len(paths) < count:
        raise SystemExit(f"need {count} frames in {data / 'val'}, found {len(paths)}: pass --data CAMVID_FOLDER")
    return [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in paths[:: len(paths) // count][:count]]


def frames_per_second(run: Callable[[], object], frames: int) -> float:
    start = time.perf_counter()
    run()
    return frames / (time.perf_counter() - start)


def measure(precision: str, frames: list[np.ndarray], rounds: int, threads: int) -> dict:
    """Median frames/s of a LATENCY predict loop and a THROUGHPUT predict_batch, interleaved per round."""
    latency = Segmenter("openvino", precision=precision, threads=threads, performance_mode="latency")
    batch = Segmenter("openvino", precision=precision, threads=threads, performance_mode="throughput")
    with latency, batch:
        latency_labels = [latency.predict(frame).semantic for frame in frames]  # also warms both up
        batch_labels = [result.semantic for result in batch.predict_batch(frames)]
        fps: dict[str, list[float]] = {"latency_predict": [], "throughput_predict_batch": []}
        for _ in range(rounds):
            fps["latency_predict"].append(
                frames_per_second(lambda: [latency.predict(frame) for frame in frames], len(frames))
            )
            fps["throughput_predict_batch"].append(frames_per_second(lambda: batch.predict_batch(frames), len(frames)))
        requests = {
            "latency_predict": latency.backend.concurrency,
            "throughput_predict_batch": batch.backend.concurrency,
        }
    median = {mode: statistics.median(values) for mode, values in fps.items()}
    return {
        "model": default_model(precision).name,
        "precision": precision,
        "requests": requests,
        "fps_median": {mode: round(value, 2) for mode, value in median.items()},
        "fps_rounds": {mode: [round(v, 2) for v in values] for mode, values in fps.items()},
        "ratio": round(median["throughput_predict_batch"] / median["latency_predict"], 3),
        "labels_equal": all(np.array_equal(a, b) for a, b in zip(latency_labels, batch_labels, strict=True)),
    }


MEASURED_PRECISIONS = ("int8", "fp32")  # the packaged default's two artifacts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=list(MEASURED_PRECISIONS), choices=MEASURED_PRECISIONS)
    parser.add_argument("--frames", type=int, default=16, help="frames per timed pass [16]")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per mode, interleaved [3]")
    parser.add_argument("--threads", type=int, default=2, help="OpenVINO inference threads [2]")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"CamVid folder with val/ [{DEFAULT_DATA}]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/concurrency"))
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--frames, --rounds and --threads must be positive")
    frames = read_frames(args.data, args.frames)
    load_before = os.getloadavg()
    rows = []
    for precision in args.precisions:
        rows.append(measure(precision, frames, args.rounds, args.threads))
        print(json.dumps(rows[-1]))
    report = {
        "command": "python -m benchmarks.concurrency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "frames": args.frames,
        "frame_size": list(frames[0].shape[:2]),
        "rounds": args.rounds,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "openvino": openvino_version(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concurrency.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
