"""``m2f export`` (reached through ``sdk.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from runtimes.geometry import parse_input_size
from runtimes.registry import ARTIFACT_TARGETS, RUNTIMES, TARGETS, artifact_target_for
from runtimes.vocabulary import PRECISIONS, TASKS

logger = logging.getLogger(__name__)


def _export_target(name: str) -> str:
    """A profile or runtime name that has something to export (argparse type: the name itself)."""
    try:
        artifact_target_for(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def export_main(argv: Sequence[str]) -> int:
    """``m2f export CHECKPOINT --target T --precision P (--input-size HxW | --dynamic) [--calib DIR] --out FILE``."""
    from compile.export import CALIB_IMAGES, GATE_IMAGES, MAX_DROP, export
    from compile.gate import GateError

    parser = argparse.ArgumentParser(prog="m2f export", description=export_main.__doc__)
    parser.add_argument("checkpoint", help="our .pt (m2f train output or `m2f convert` result)")
    parser.add_argument(
        "--target",
        required=True,
        type=_export_target,
        help=f"a profile ({', '.join(p for p in TARGETS if p not in RUNTIMES)}: what runs there) or a runtime "
        f"({', '.join(ARTIFACT_TARGETS)})",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="default: a profile's own (jetson: fp16), fp32 for a runtime name"
    )
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--input-size", type=parse_input_size, help="static HxW (frames are letterboxed into it)")
    size.add_argument("--dynamic", action="store_true", help="any H and W (frames resized by shortest edge)")
    parser.add_argument("--calib", help="folder of real images for int8 calibration (and the gate without --val-data)")
    parser.add_argument("--val-data", help="dataset root for the checkpoint's validation spec, or a JSON spec")
    parser.add_argument(
        "--max-drop", type=float, default=MAX_DROP, help=f"metric drop budget in points (default {MAX_DROP})"
    )
    parser.add_argument(
        "--calib-images", type=int, default=CALIB_IMAGES, help=f"int8 calibration images (default {CALIB_IMAGES})"
    )
    parser.add_argument("--gate-images", type=int, default=GATE_IMAGES,
                        help=f"images the gate compares on (default {GATE_IMAGES})")  # fmt: skip
    parser.add_argument(
        "--compact", action="store_true", help="smaller file: uniform constants folded, fp32 weights stored as fp16"
    )
    parser.add_argument(
        "--no-native-ops",
        action="store_true",
        help="MSDA as standard ops even where our OpenVINO CPU extension is built (default: the fused node for a "
        "static fp32 OpenVINO export when `m2f build-plugins` has built it)",
    )
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--out", required=True, help="artifact path (.onnx)")
    args = parser.parse_args(list(argv))
    try:
        val = val_spec(args.checkpoint, args.val_data) if args.val_data else None
        runtime = artifact_target_for(args.target)
        profile = args.target if args.target not in RUNTIMES else None
        precision = args.precision or (TARGETS[profile].precision if profile else "fp32")
        if runtime != args.target:
            print(f"m2f export: {args.target} runs {runtime} artifacts; exporting one at {precision}", file=sys.stderr)
        path = export(
            args.checkpoint,
            runtime,
            precision,
            args.out,
            input_size=None if args.dynamic else args.input_size,
            task=args.task,
            calib_dir=args.calib,
            val_data=val,
            max_drop=args.max_drop,
            calib_images=args.calib_images,
            gate_images=args.gate_images,
            compact=args.compact,
            native_ops=False if args.no_native_ops else None,
        )
    except (ValueError, FileNotFoundError, GateError) as err:
        print(f"m2f export: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def val_spec(checkpoint: str, value: str) -> dict:
    """``--val-data``: a JSON dataset spec, or a root that replaces the one in the checkpoint's validation spec."""
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
