"""``m2f benchmark``: latency, throughput, memory and accuracy per target x precision, beside the HF peers.

    m2f benchmark --model ade20k-semantic-swin-t --data ../shared/data/camvid --out benchmarks/results/swin_t_ade_512
    m2f benchmark --model runs/camvid_edge/model_final.pt --targets openvino --precisions fp32 int8 --data ... --out ...
    python -m benchmarks.cli ...            # the same without the m2f entry point

Prints the Markdown table; writes benchmark.md / .csv / .json / .png (and profile.md with --profile) to --out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks.harness import (
    BENCH_CALIB_IMAGES,
    BENCH_GATE_IMAGES,
    BENCHMARK_TARGETS,
    DATA_FORMATS,
    PEERS,
    BenchmarkOptions,
    benchmark_targets,
    run_benchmark,
)
from runtimes.geometry import parse_input_size
from runtimes.vocabulary import PRECISIONS

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2f benchmark", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="ade20k-semantic-swin-t",
        help="model-zoo name or HF config.json (random seeded weights; HF peers get the same), an HF folder with "
        "weights, or our .pt checkpoint (no HF peers) [ade20k-semantic-swin-t]",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        metavar="TARGET",
        help="profiles (cpu, cuda, jetson: every runtime there) or runtimes "
        f"({', '.join(t for t in BENCHMARK_TARGETS if t not in PEERS)}); default: every available one and the peers",
    )
    parser.add_argument("--peers", nargs="+", choices=PEERS, help="what a user would run instead, beside ours")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, help="default: fp32 bf16 int8")
    parser.add_argument(
        "--data", type=Path, help="CamVid/ADE20K/Cityscapes root (labelled: mIoU) or a folder of images"
    )
    parser.add_argument("--data-format", choices=DATA_FORMATS, default="auto")
    parser.add_argument("--split", default="val", help="dataset split for the frames [val]")
    parser.add_argument("--video", type=Path, help="take the frames from a video file instead")
    parser.add_argument("--images", type=int, default=10, help="frames for timing, agreement and mIoU [10]")
    parser.add_argument("--input-size", type=parse_input_size, default=(512, 512), help="model input HxW [512x512]")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per row [10]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first, in every round [3]")
    parser.add_argument("--rounds", type=int, default=3,
                        help="split the timed runs into rounds, rows in a rotated order each round [3]")  # fmt: skip
    parser.add_argument("--threads", type=int, help="threads per engine [all cores]")
    parser.add_argument("--calib", type=Path, help="int8 calibration images [--data's train split if any]")
    parser.add_argument(
        "--calib-images", type=int, default=BENCH_CALIB_IMAGES, help=f"calibration images [{BENCH_CALIB_IMAGES}]"
    )
    parser.add_argument("--gate-images", type=int, default=BENCH_GATE_IMAGES,
                        help=f"images for the compiler's own gate [{BENCH_GATE_IMAGES}]")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights [0]")
    parser.add_argument("--cache", type=Path, help="artifacts, logs, frames [$M2F_CACHE/benchmarks]")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per job (export or row) [3600]")
    parser.add_argument("--profile", action="store_true", help="per-op-type profile of every row (profile.md)")
    parser.add_argument("--no-stream", action="store_true", help="skip the pipelined sdk.stream throughput")
    parser.add_argument("--title", help="report title")
    parser.add_argument("--out", type=Path, required=True, help="report folder (md, csv, json, png)")
    return parser


def benchmark_main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2f benchmark``; returns 0 when the report was written (error rows included)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        targets = benchmark_targets(args.targets, args.peers)
    except ValueError as err:
        print(f"m2f benchmark: {err}", file=sys.stderr)
        return 2
    options = BenchmarkOptions(
        out=args.out,
        model=args.model,
        targets=targets,
        precisions=args.precisions,
        data=args.data,
        data_format=args.data_format,
        split=args.split,
        video=args.video,
        images=args.images,
        input_size=args.input_size,
        runs=args.runs,
        warmup=args.warmup,
        rounds=args.rounds,
        calib=args.calib,
        calib_images=args.calib_images,
        gate_images=args.gate_images,
        seed=args.seed,
        cache=args.cache,
        timeout_s=args.timeout,
        profile=args.profile,
        stream=not args.no_stream,
        title=args.title,
    )
    if args.threads:
        options.threads = args.threads
    try:
        rows = run_benchmark(options)
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
