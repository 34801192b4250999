"""The ``m2f`` command line.

Device-side commands live here. Host-side commands (``convert``, later ``train``/``export``) belong to
train/ and compile/, which the SDK must not import: they are named here as ``module:function`` strings and
imported only when invoked, so ``m2f`` works on an edge install without torch and says what is missing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import platform
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sdk

if TYPE_CHECKING:
    from sdk.segmenter import Segmenter
    from sdk.stream import StreamStats

# command -> (entry point "module:function" taking argv, one-line help, pip extra it needs)
HOST_COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": ("train.cli:convert_main", "official detectron2 / HF checkpoint -> our .pt format", "train"),
    "train": ("train.cli:train_main", "train Mask2Former from a config (torchrun for several processes)", "train"),
    "eval": ("train.cli:eval_main", "metrics (mIoU / PQ / AP) of a checkpoint on a dataset", "train"),
    "cross-validate": (
        "train.cli:cross_validate_main",
        "leave-one-sequence-out training and scoring (honest validation on video datasets)",
        "train",
    ),
    "export": ("compile.cli:export_main", "checkpoint -> verified ONNX artifact per target and precision", "train"),
    "benchmark": ("benchmarks.cli:benchmark_main", "latency / memory / accuracy per target x precision", "train"),
    # device-side, but with its own parser: a street clip through the packaged model, then the per-target table
    "demo": ("sdk.demo:demo_main", "stream a street clip through the default model; per-target table", "openvino"),
}

OPTIONAL_PACKAGES = ("torch", "onnxruntime", "openvino", "tensorrt", "cv2", "transformers", "timm")


def info() -> dict[str, object]:
    """Versions of this package, Python and the optional runtimes (None where absent)."""
    from sdk.targets import TARGETS, TargetNotAvailable, resolve_target

    versions: dict[str, object] = {"m2f": sdk.__version__, "python": platform.python_version()}
    for name in OPTIONAL_PACKAGES:
        if importlib.util.find_spec(name) is None:
            versions[name] = None
            continue
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except Exception as err:  # a broken install is still worth reporting, not crashing on
            versions[name] = f"error: {err}"
    targets = {}
    for name in TARGETS:
        try:
            targets[name] = resolve_target(name)[1]
        except TargetNotAvailable as err:
            targets[name] = f"unavailable: {err}"
    versions["targets"] = targets
    return versions


def _run_host_command(name: str, argv: list[str]) -> int:
    target, _, extra = HOST_COMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        print(f"m2f {name} needs the [{extra}] extra (pip install 'm2f-edge[{extra}]'): {err}", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in HOST_COMMANDS:
        return _run_host_command(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="m2f", description="Mask2Former from training to the edge")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, _) in HOST_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    info_parser = sub.add_parser("info", help="versions, available runtimes and targets")
    info_parser.add_argument("--json", action="store_true", help="print one JSON object")
    for name, help_text in (("predict", "segment image files"), ("stream", "segment a video, camera or stream")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("source", nargs="+" if name == "predict" else None, help="image file(s) / video source")
        p.add_argument("--target", default="auto", help="target profile (default: auto)")
        p.add_argument("--model", help="artifact (.onnx) or checkpoint; default: the packaged model")
        p.add_argument("--task", choices=("semantic", "instance", "panoptic"))
        p.add_argument("--out", help="output folder (predict) or annotated video file (stream)")
        p.add_argument("--json", action="store_true", help="last line: one JSON object with the results / stats")
    stream_parser = sub.choices["stream"]
    stream_parser.add_argument("--max-frames", type=int, help="stop after N frames")
    stream_parser.add_argument("--live", action="store_true", default=None, help="treat as live: keep newest frame")
    args = parser.parse_args(argv)
    if args.command in ("predict", "stream"):
        return _segment(args)
    if args.command == "info":
        versions = info()
        if args.json:
            print(json.dumps(versions))
        else:
            for key, value in versions.items():
                print(f"{key:>14}: {value if value is not None else 'not installed'}")
    return 0


def drain_stream(seg: Segmenter, command: str, source: Any, **options: Any) -> StreamStats | None:
    """Run ``seg.stream(source, **options)`` to its end; its StreamStats, or None after printing why it failed."""
    try:
        running = seg.stream(source, **options)
        for _ in running:
            pass
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"m2f {command}: {err}", file=sys.stderr)
        return None
    return running.stats


def _segment(args: argparse.Namespace) -> int:
    """``m2f predict`` / ``m2f stream``."""
    from pathlib import Path

    import cv2

    from sdk.preprocess import as_bgr
    from sdk.segmenter import Segmenter

    try:
        seg = Segmenter(args.target, model=args.model, task=args.task)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        print(f"m2f {args.command}: {err}", file=sys.stderr)
        return 2
    with seg:
        if args.command == "predict":
            out = Path(args.out) if args.out else None
            summaries = []
            for path in args.source:
                frame = cv2.imread(path, cv2.IMREAD_UNCHANGED)
                if frame is None:
                    print(f"m2f predict: cannot read image {path}", file=sys.stderr)
                    return 2
                result = seg.predict(frame)
                summaries.append({"file": path, **result.to_dict()})
                if out:
                    out.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(out / (Path(path).stem + "_seg.png")), result.overlay(as_bgr(frame)))
            if args.json:
                print(json.dumps(summaries if len(summaries) > 1 else summaries[0]))
            return 0
        source = int(args.source) if str(args.source).isdigit() else args.source
        stats = drain_stream(seg, "stream", source, output=args.out, max_frames=args.max_frames, live=args.live)
        if stats is None:
            return 2
        logging.getLogger("m2f").info(stats.summary())
        if args.json:
            lat = stats.latency_ms
            print(
                json.dumps(
                    {
                        "frames": stats.frames,
                        "dropped": stats.dropped,
                        "fps": round(stats.fps, 2),
                        "latency_ms_p50": round(lat.get("p50", 0.0), 2),
                        "latency_ms_p99": round(lat.get("p99", 0.0), 2),
                        "target": seg.target.name,
                        "runtime": seg.runtime,
                        "output": args.out,
                    }
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
