"""Latency of one checkpoint per target x precision on this machine, beside the torch model.

    python -m benchmarks.latency CHECKPOINT --input-size 360x480 --calib DIR [--runs 30] [--out DIR]

Exports each artifact (cached in ``--out``), then times ``backend.run`` on one uint8 frame: warm-up, then
p50/p90/p99 over ``--runs``. The torch row runs the same in-graph pre/post-processing module eagerly.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compile.export import export, stored_task
from compile.onnx_export import DeployableMask2Former
from runtimes import load_backend
from train.model import load_pretrained

logger = logging.getLogger(__name__)

ROWS = [
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """Milliseconds per call: p50/p90/p99/mean after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    t = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "fps": float(1000 / t.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--input-size", required=True, help="HxW")
    parser.add_argument("--calib", type=Path, help="images for int8 calibration (int8 rows are skipped without)")
    parser.add_argument("--task", default=None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    h, w = (int(v) for v in args.input_size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)

    loaded = load_pretrained(args.checkpoint)
    task = args.task or stored_task(args.checkpoint) or "semantic"
    module = DeployableMask2Former(loaded.model, loaded.meta, task).eval()
    results = []
    with torch.inference_mode():
        row = time_calls(lambda: module(torch.from_numpy(frame)), args.runs, args.warmup)
    results.append({"target": "torch (eager)", "precision": "fp32", **row})
    for target, precision in ROWS:
        if precision == "int8" and args.calib is None:
            continue
        path = args.out / f"{target}_{precision}.onnx"
        try:
            if not path.exists():
                export(args.checkpoint, target, precision, path, input_size=(h, w), task=task, calib_dir=args.calib)
            with load_backend(target, path) as backend:
                row = time_calls(lambda b=backend: b.run({"images": frame}), args.runs, args.warmup)
            results.append({"target": target, "precision": precision, **row})
        except Exception as err:  # a failing row is reported, the run goes on
            logger.exception("%s %s failed", target, precision)
            results.append({"target": target, "precision": precision, "error": str(err)})
    base = results[0]["mean_ms"]
    lines = [
        f"latency, {args.checkpoint.name}, {task}, {h}x{w}, batch 1, {torch.get_num_threads()} threads, "
        f"{platform.machine()}",
        "| target | precision | p50 ms | p90 ms | p99 ms | FPS | speed-up vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['target']} | {r['precision']} | error: {r['error'][:60]} | | | | |")
        else:
            lines.append(
                f"| {r['target']} | {r['precision']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {r['fps']:.1f} | {base / r['mean_ms']:.2f}x |"
            )
    table = "\n".join(lines)
    print(table)
    (args.out / "latency.md").write_text(table + "\n")
    (args.out / "latency.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
