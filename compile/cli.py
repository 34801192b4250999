"""``m2f export`` (reached through ``sdk.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from runtimes.geometry import parse_input_size
from runtimes.vocabulary import PRECISIONS, TASKS

logger = logging.getLogger(__name__)


def export_main(argv: Sequence[str]) -> int:
    """``m2f export CHECKPOINT --target T --precision P (--input-size HxW | --dynamic) [--calib DIR] --out FILE``."""
    from compile.export import SUPPORTED, export
    from compile.gate import GateError

    parser = argparse.ArgumentParser(prog="m2f export", description=export_main.__doc__)
    parser.add_argument("checkpoint", help="our .pt (m2f train output or `m2f convert` result)")
    parser.add_argument("--target", required=True, choices=sorted(SUPPORTED))
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--input-size", type=parse_input_size, help="static HxW (frames are letterboxed into it)")
    size.add_argument("--dynamic", action="store_true", help="any H and W (frames resized by shortest edge)")
    parser.add_argument("--calib", help="folder of real images for int8 calibration (and the gate without --val-data)")
    parser.add_argument("--val-data", help="dataset root for the checkpoint's validation spec, or a JSON spec")
    parser.add_argument("--max-drop", type=float, default=1.0, help="metric drop budget in points (default 1.0)")
    parser.add_argument("--calib-images", type=int, default=64, help="int8 calibration images (default 64)")
    parser.add_argument("--gate-images", type=int, default=32, help="images the gate compares on (default 32)")
    parser.add_argument(
        "--compact", action="store_true", help="smaller file: uniform constants folded, fp32 weights stored as fp16"
    )
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--out", required=True, help="artifact path (.onnx)")
    args = parser.parse_args(list(argv))
    try:
        val = _val_spec(args.checkpoint, args.val_data) if args.val_data else None
        path = export(
            args.checkpoint,
            args.target,
            args.precision,
            args.out,
            input_size=None if args.dynamic else args.input_size,
            task=args.task,
            calib_dir=args.calib,
            val_data=val,
            max_drop=args.max_drop,
            calib_images=args.calib_images,
            gate_images=args.gate_images,
            compact=args.compact,
        )
    except (ValueError, FileNotFoundError, GateError) as err:
        print(f"m2f export: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _val_spec(checkpoint: str, value: str) -> dict:
    if value.lstrip().startswith("{"):
        return json.loads(value)
    from train.model.checkpoint import read_checkpoint

    stored = read_checkpoint(checkpoint).val_data
    if not stored:
        raise ValueError(
            "the checkpoint stores no validation spec: pass --val-data as JSON, e.g. "
            '\'{"format": "camvid", "root": "DIR", "split": "val"}\''
        )
    return {**stored, "root": value}
