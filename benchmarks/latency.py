"""Latency of one checkpoint per target x precision: now a shortcut to ``m2f benchmark`` (``benchmarks/cli.py``).

    python -m benchmarks.latency CHECKPOINT --data DIR --out DIR [any other m2f benchmark option]

is ``m2f benchmark --model CHECKPOINT --targets torch onnxruntime openvino ...``: our targets only, no HF peers,
unless ``--targets`` is given.
"""

from __future__ import annotations

import sys

from benchmarks.cli import benchmark_main

OUR_TARGETS = ("torch", "onnxruntime", "openvino")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    checkpoint, rest = argv[0], argv[1:]
    if "--targets" not in rest:
        rest += ["--targets", *OUR_TARGETS]
    return benchmark_main(["--model", checkpoint, *rest])


if __name__ == "__main__":
    raise SystemExit(main())
