"""A/B of two artifacts that should give the same labels (a graph rewrite, a re-export): per runtime, the share of
pixels whose label is equal and the end-to-end ``predict`` latency of each, interleaved frame by frame in one run.

``python -m benchmarks.artifact_ab OLD.onnx NEW.onnx --images DIR [--count 20] [--runtimes openvino onnxruntime]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sdk.segmenter import Segmenter


def compare(
    old: Path, new: Path, frames: Sequence[np.ndarray], runtime: str, repeats: int = 3, precision: str | None = None
) -> dict:
    """Labels equal (share of pixels) and p50 ``predict`` ms of ``old`` and ``new`` on ``runtime`` (at
    ``precision``; default: what the Segmenter picks)."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    equal = total = 0
    with (
        Segmenter(runtime, model=old, precision=precision) as a,
        Segmenter(runtime, model=new, precision=precision) as b,
    ):
        a.predict(frames[0]), b.predict(frames[0])  # warm-up
        for frame in frames:
            labels = {}
            for _ in range(repeats):  # A B A B ...: drift on a shared machine hits both alike
                for key, seg in (("old", a), ("new", b)):
                    start = time.perf_counter()
                    labels[key] = seg.predict(frame).semantic
                    times[key].append((time.perf_counter() - start) * 1000)
            equal += int((labels["old"] == labels["new"]).sum())
            total += labels["old"].size
    return {
        "runtime": runtime,
        "labels_equal": equal / total,
        "old_p50_ms": float(np.median(times["old"])),
        "new_p50_ms": float(np.median(times["new"])),
        "frames": len(frames),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--images", type=Path, required=True, help="folder of frames (e.g. CamVid val)")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    parser.add_argument("--precision", default=None, help="default: what each runtime's Segmenter picks")
    args = parser.parse_args(argv)
    paths = sorted(args.images.glob("*.png"))
    paths = paths[:: max(1, len(paths) // args.count)][: args.count]
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    from runtimes.cpu_features import cpu_features

    print(f"{args.old} -> {args.new} on {cpu_features().describe()}, precision {args.precision or 'as chosen'}")
    print("| runtime | frames | labels equal | old p50 ms | new p50 ms | new / old |")
    print("|---|---|---|---|---|---|")
    for runtime in args.runtimes:
        r = compare(args.old, args.new, frames, runtime, args.repeats, args.precision)
        print(
            f"| {runtime} | {r['frames']} | {100 * r['labels_equal']:.3f} % | {r['old_p50_ms']:.1f} | "
            f"{r['new_p50_ms']:.1f} | {r['new_p50_ms'] / r['old_p50_ms']:.3f} |"
        )


if __name__ == "__main__":
    main()
