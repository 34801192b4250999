"""One prepared check of the GPU path on a fresh GPU machine: ``make gpu-check`` (``python -m tools.gpu_check``).

Steps, each timed and written to ``OUT/gpu_check.md`` (+ ``gpu_check.json``) as soon as it ends
(``tools.gpu_report``):

1. build the MSDA CUDA extension (``plugins.msda.extension``);
2. ``pytest -m gpu`` over tests/ (every GPU test; on a machine without CUDA they all skip);
3. train the edge model (configs/camvid_edge.yaml's model, augmentation and solver) for ``--train-iters`` on
   generated 360x480 street-like scenes, ``num_workers: auto``: training images/s (``tools.gpu_steps``);
4. latency, median ms, end to end (letterbox + model + post-processing, ``Segmenter.predict``) and model only
   (the runtime call on the letterboxed input): our torch runtime eager fp32 / fp16 and as a CUDA graph fp16 /
   bf16, HF transformers eager fp32 / fp16 on the same device, for Swin-T ADE20K at 512x512 (seeded random
   weights, the same function in both) and the trained edge model at 360x480 (HF has no timm backbone: no peer)
   (``tools.gpu_latency``).

It needs torch, timm, transformers, opencv and pyyaml, never OpenVINO, pycocotools, TensorRT or the internet, and
uses the python it is started with (no virtual environment): the lent GPU image has all it needs.
``--device cpu --tiny`` runs every step at toy sizes on a CPU (the CPU test of this script).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.paths import REPO_ROOT
from tools.gpu_latency import bench_model, prepare_swin, untrained_edge
from tools.gpu_report import Report
from tools.gpu_steps import build_kernel, run_gpu_tests, train_edge, write_scenes

FRAME_SIZE = (360, 480)  # CamVid-like camera frames, letterboxed to each model's input
GPU_CHECK_PARTS = ("kernel", "tests", "train", "latency")  # what --skip can leave out


def machine_facts(device: str) -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "gpu_check")
    parser.add_argument("--device", default=None, help="cuda (default when there is a GPU) or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy models and sizes (the CPU test of this script)")
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip", action="append", default=[], choices=GPU_CHECK_PARTS)
    parser.add_argument("--tests-timeout", type=int, default=300, help="seconds for pytest -m gpu")
    parser.add_argument(
        "--absent",
        default="",
        help="comma-separated packages to treat as not installed (openvino,pycocotools): proves the check "
        "runs on an image without them",
    )
    return parser


def run_steps(args: argparse.Namespace, report: Report, device: str, absent: tuple[str, ...], work: Path) -> None:
    """Every step not skipped, each recorded in ``report`` whether it passes or fails."""
    if "kernel" not in args.skip:
        with report.step("MSDA CUDA kernel build") as record:
            build_kernel(device, record)
    if "tests" not in args.skip:
        with report.step("pytest -m gpu") as record:
            run_gpu_tests(record, absent, args.tests_timeout, args.out / "pytest_gpu.log")
    frame_size = (48, 64) if args.tiny else FRAME_SIZE
    scenes = write_scenes(work / "scenes", 8 if args.tiny else 64, frame_size)
    edge = None
    if "train" not in args.skip:
        with report.step("train the edge model") as record:
            report.data["training"] = record
            edge = train_edge(device, args.train_iters, scenes, frame_size, work / "train", args.tiny, record)
    if "latency" in args.skip:
        return
    import cv2

    frames = [cv2.imread(str(p)) for p in sorted((scenes / "images").iterdir())[:8]]
    n = (args.warmup, args.runs)
    with report.step("latency: edge model") as record:
        report.data["latency"]["edge model (camvid_edge)"] = record
        edge = edge or untrained_edge(work / "edge.pt")
        bench_model("edge", edge, None, frame_size, device, frames, n, record)
    with report.step("latency: Swin-T ADE20K") as record:
        report.data["latency"]["Swin-T ADE20K (random weights)"] = record
        swin = prepare_swin(work, args.tiny)
        size = (64, 64) if args.tiny else (512, 512)
        peer = swin if swin.hf_dir else None
        bench_model("swin-t", Path(swin.checkpoint), peer, size, device, frames, n, record)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    absent = tuple(name for name in args.absent.split(",") if name)
    sys.modules.update(dict.fromkeys(absent))  # None: `import name` raises ImportError
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = Report(args.out, machine_facts(device))
    with tempfile.TemporaryDirectory(prefix="m2f-gpu-check-") as tmp:
        run_steps(args, report, device, absent, Path(tmp))
    report.write()
    print((args.out / "gpu_check.md").read_text())
    failed = [name for name, step in report.data["steps"].items() if step["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
