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

import sdk

# command -> (entry point "module:function" taking argv, one-line help, pip extra it needs)
HOST_COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": ("train.cli:convert_main", "official detectron2 / HF checkpoint -> our .pt format", "train"),
    "train": ("train.cli:train_main", "train Mask2Former from a config (torchrun for several processes)", "train"),
    "eval": ("train.cli:eval_main", "metrics (mIoU / PQ / AP) of a checkpoint on a dataset", "train"),
    "export": ("compile.cli:export_main", "checkpoint -> verified ONNX artifact per target and precision", "train"),
}

OPTIONAL_PACKAGES = ("torch", "onnxruntime", "openvino", "tensorrt", "cv2", "transformers", "timm")


def info() -> dict[str, object]:
    """Versions of this package, Python and the optional runtimes (None where absent)."""
    versions: dict[str, object] = {"m2f": sdk.__version__, "python": platform.python_version()}
    for name in OPTIONAL_PACKAGES:
        if importlib.util.find_spec(name) is None:
            versions[name] = None
            continue
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except Exception as err:  # a broken install is still worth reporting, not crashing on
            versions[name] = f"error: {err}"
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
    info_parser = sub.add_parser("info", help="versions and available runtimes")
    info_parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.command == "info":
        versions = info()
        if args.json:
            print(json.dumps(versions))
        else:
            for key, value in versions.items():
                print(f"{key:>14}: {value if value is not None else 'not installed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
