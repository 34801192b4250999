"""A packaged model's four files from one checkpoint, as ``sdk/models/`` ships them, in one command:

    VAL='{"format": "camvid", "root": "../shared/data/camvid", "split": "val"}'
    python -m compile.package checkpoints/street_fast.pt --prefix street_fast --input-size 240x320 \\
        --calib ../shared/data/camvid/train --val-data "$VAL" --gate-images 101 --out-dir sdk/models

writes ``<prefix>_fp32.onnx`` (OpenVINO fp32, standard ops), ``<prefix>_int8.onnx`` (OpenVINO int8, standard ops),
``<prefix>_int8_msda.onnx`` (OpenVINO int8 with the fused deformable-attention node) and ``<prefix>_ort_int8.onnx``
(ONNX Runtime int8), each gated against torch on ``--val-data`` and compacted; both OpenVINO int8 files go through
``compile.tensorrt_rules``' exact rewrites. The registry entry (``sdk/models/registry.json``) names the files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from runtimes.geometry import parse_input_size

logger = logging.getLogger(__name__)


class PackagedFile(NamedTuple):
    """One file of a packaged model: how it is exported."""

    suffix: str
    target: str
    precision: str
    fused_msda: bool
    tensorrt_rewrite: bool


PACKAGED_FILES = (
    PackagedFile("fp32", "openvino", "fp32", False, False),
    PackagedFile("int8", "openvino", "int8", False, True),
    PackagedFile("int8_msda", "openvino", "int8", True, True),
    PackagedFile("ort_int8", "onnxruntime", "int8", False, False),
)


def package_model(
    checkpoint: str | Path,
    prefix: str,
    input_size: tuple[int, int],
    calib_dir: str | Path,
    val_data: dict,
    out_dir: str | Path,
    gate_images: int,
    calib_images: int,
) -> list[Path]:
    """Export and gate every file of :data:`PACKAGED_FILES` into ``out_dir``; returns their paths. Refuses before
    exporting anything when the fused op's extension is not built here (its file could not be made)."""
    from compile.export import export
    from compile.tensorrt_rules import rewrite_artifact
    from plugins.msda import openvino_extension

    reason = openvino_extension.unavailable_reason()
    if reason is not None:
        raise ValueError(f"the {prefix}_int8_msda file needs the fused MSDA op: {reason}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in PACKAGED_FILES:
            path = out_dir / f"{prefix}_{spec.suffix}.onnx"
            logger.info("packaging %s (%s %s)", path, spec.target, spec.precision)
            exported = export(
                checkpoint,
                spec.target,
                spec.precision,
                Path(tmp) / path.name if spec.tensorrt_rewrite else path,
                input_size=input_size,
                calib_dir=calib_dir if spec.precision == "int8" else None,
                val_data=val_data,
                gate_images=gate_images,
                calib_images=calib_images,
                compact=True,
                native_ops=spec.fused_msda,
            )
            if spec.tensorrt_rewrite:
                rewrite_artifact(exported, path)
            paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m compile.package CHECKPOINT --prefix P --input-size HxW --calib DIR --val-data ROOT|JSON``."""
    from compile.cli import val_spec
    from compile.export import CALIB_IMAGES, GATE_IMAGES
    from compile.gate import GateError

    parser = argparse.ArgumentParser(prog="python -m compile.package", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="the trained checkpoint (.pt)")
    parser.add_argument("--prefix", required=True, help="file name prefix, e.g. street_fast")
    parser.add_argument("--input-size", required=True, type=parse_input_size, help="static HxW of every file")
    parser.add_argument("--calib", required=True, help="folder of real images for int8 calibration")
    parser.add_argument("--val-data", required=True, help="dataset root for the checkpoint's validation spec, or JSON")
    parser.add_argument("--gate-images", type=int, default=GATE_IMAGES)
    parser.add_argument("--calib-images", type=int, default=CALIB_IMAGES)
    parser.add_argument("--out-dir", default="sdk/models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        val = val_spec(args.checkpoint, args.val_data)
        paths = package_model(args.checkpoint, args.prefix, args.input_size, args.calib, val, args.out_dir,
                              args.gate_images, args.calib_images)  # fmt: skip
    except (ValueError, FileNotFoundError, GateError) as err:
        print(f"python -m compile.package: {err}", file=sys.stderr)
        return 2
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
