"""Where the time goes: per-op-type profiles of one model on OpenVINO, ONNX Runtime (``runtimes.profiling``, the
engines' own profilers) or eager torch (``torch.profiler``), all in the same result shape.

``python -m benchmarks.profiling ARTIFACT... [--runtime onnxruntime] [--image frame.png]``: each artifact on its
runtime (by default the one it was compiled for), the top op types and the share of kernel time in int8 kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.profiling import PROFILED_RUNTIMES, profile_on, profile_onnxruntime, profile_openvino, summarise

__all__ = ["profile_onnxruntime", "profile_openvino", "profile_torch"]


def profile_torch(call: Callable[[], Any], runs: int = 1) -> dict[str, Any]:
    """torch.profiler CPU self time per aten op (eager models)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            call()
    per_node = [
        (evt.key, evt.key, float(evt.self_cpu_time_total), "")
        for evt in prof.key_averages()
        if evt.self_cpu_time_total > 0
    ]
    # key_averages already sums over calls: one "node" per op; counts come from the averages
    result = summarise(f"torch {torch.__version__} eager", per_node, runs)
    calls = {evt.key: evt.count // max(runs, 1) for evt in prof.key_averages()}
    for op in result["ops"]:
        op["count"] = calls.get(op["op"], op["count"])
    result["nodes"] = []
    return result


def profile_artifact(path: Path, runtime: str | None, frame: np.ndarray | None, threads: int, runs: int) -> dict:
    """The profile of one artifact on ``runtime`` (its own target when None) with ``frame`` letterboxed to its
    input (mid-grey when None); ``artifact``, ``runtime`` and ``precision`` added."""
    from runtimes.artifact import read_metadata
    from sdk.preprocess import fit_to_input

    meta = read_metadata(path)
    runtime = runtime or (meta["target"] if meta["target"] in PROFILED_RUNTIMES else PROFILED_RUNTIMES[0])
    if frame is None:
        frame = np.full((*(meta["input"].get("size") or (480, 640)), 3), 128, np.uint8)
    feed = {meta["input"]["name"]: fit_to_input(frame, meta["input"])[0][None]}
    profile = profile_on(runtime, path, feed, meta["precision"], threads, runs)
    return {"artifact": str(path), "runtime": runtime, "precision": meta["precision"], **profile}


def markdown(profiles: list[dict], top: int) -> str:
    lines = []
    for p in profiles:
        lines += [
            f"### {p['artifact']} on {p['engine']} ({p['precision']} artifact)",
            "",
            f"{p['per_inference_ms']:.1f} ms of kernel time per inference, "
            f"{100 * p['int8_share']:.1f} % of it in int8 kernels.",
            "",
            "| op | ms | share | count | executed as |",
            "|---|---|---|---|---|",
            *(
                f"| {o['op']} | {o['ms']:.2f} | {100 * o['share']:.1f} % | {o['count']} | {o['exec']} |"
                for o in p["ops"][:top]
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-op profiles of artifacts by their runtime's own profiler")
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--runtime", choices=PROFILED_RUNTIMES, help="default: each artifact's target")
    parser.add_argument("--image", type=Path, help="a frame to feed (default: mid-grey)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=10, help="op types listed per artifact")
    parser.add_argument("--out", type=Path, help="folder for profiles.md / profiles.json")
    args = parser.parse_args(argv)
    frame = None
    if args.image is not None:
        import cv2

        frame = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
        if frame is None:
            print(f"error: cannot read an image from {args.image}", file=sys.stderr)
            return 2
    profiles = []
    for path in args.artifacts:
        try:
            profiles.append(profile_artifact(path, args.runtime, frame, args.threads, args.runs))
        except (OSError, ValueError, RuntimeError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2
    text = markdown(profiles, args.top)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profiles.md").write_text(text)
        (args.out / "profiles.json").write_text(json.dumps(profiles, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
