"""``m2f benchmark``: latency, throughput, memory and accuracy per target x precision, beside the HF peers.

    m2f benchmark --model ade20k-semantic-swin-t --data ../shared/data/camvid --out benchmarks/results/swin_t_ade_512
    m2f benchmark --model runs/camvid_edge/model_final.pt --targets openvino --precisions fp32 int8 --data ... --out ...
    m2f benchmark --model sdk/models/default_int8.onnx --targets cpu --data ... --out ...   # an artifact: no torch
    m2f benchmark --model street-default --peers litert-deeplab --data ... --out ...   # a packaged model, by name
    m2f benchmark family --images ../shared/data/camvid/val --out ...   # every packaged model and the peer: chart
    python -m benchmarks.cli ...            # the same without the m2f entry point

Prints the Markdown table; writes benchmark.md / .csv / .json / .png (and profile.md with --profile) to --out.
``family`` compares models rather than one model's runtimes: ``benchmarks.model_family`` (its own options).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from benchmarks.artifact_rows import named_artifact
from benchmarks.harness import BenchmarkOptions, run_benchmark
from benchmarks.rows import PEERS, benchmark_targets
from sdk.cli_fields import add_field_option

logger = logging.getLogger(__name__)
FAMILY_COMMAND = "family"  # m2f benchmark family ...: the packaged models and the peer on one chart


def build_parser() -> argparse.ArgumentParser:
    """``m2f benchmark``'s options: one per ``BenchmarkOptions`` field with a help (its default, help and choices
    are the field's), and ``--peers``, which joins ``--targets``."""
    parser = argparse.ArgumentParser(
        prog="m2f benchmark", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    hints = typing.get_type_hints(BenchmarkOptions)
    for option in dataclasses.fields(BenchmarkOptions):
        if "help" in option.metadata:
            add_field_option(parser, option, hints[option.name])
        if option.name == "targets":
            help_text = "what a user would run instead, beside ours"
            parser.add_argument("--peers", nargs="+", choices=PEERS, default=argparse.SUPPRESS, help=help_text)
    return parser


def benchmark_main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2f benchmark``; returns 0 when the report was written (error rows included)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FAMILY_COMMAND]:
        from benchmarks import model_family

        return model_family.main(argv[1:], prog=f"m2f benchmark {FAMILY_COMMAND}")
    values = vars(build_parser().parse_args(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        targets = benchmark_targets(values.pop("targets", None), values.pop("peers", None))
        artifact = named_artifact(values["model"], targets)  # a packaged model's name -> the file it runs
        if artifact != values["model"]:
            values.setdefault("title", f"{values['model']} ({Path(artifact).name})")
            values["model"] = artifact
        rows = run_benchmark(BenchmarkOptions(**values, targets=targets))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"m2f benchmark: {err}", file=sys.stderr)
        return 2
    from benchmarks.report import markdown_table

    print(markdown_table(rows))
    failed = [r["id"] for r in rows if "error" in r]
    if failed:
        logger.warning("%d row(s) failed: %s (see the notes column)", len(failed), ", ".join(failed))
    return 0


if __name__ == "__main__":
    raise SystemExit(benchmark_main())
