"""CUDA kernel vs pure-torch reference: time per call of multi-scale deformable attention on Mask2Former shapes.

Run on a GPU machine from the repository root::

    python -m plugins.msda.benchmark                      # forward, float32 and float16, all cases
    python -m plugins.msda.benchmark --backward --dtype float32 --json msda_bench.json

Times are medians over CUDA-event-timed calls after a warm-up; the extension is built (once) before timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from plugins.msda.extension import build_error, cuda_kernel_available, ms_deform_attn_cuda
from plugins.msda.reference import ms_deform_attn_reference

__all__ = ["CASES", "BenchCase", "benchmark_case", "main", "make_inputs", "time_cuda"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchCase:
    """One MSDA call: batch, (H, W) per level, heads M, channels per head D, points P, queries (default S)."""

    name: str
    batch: int
    levels: tuple[tuple[int, int], ...]
    heads: int = 8
    channels: int = 32
    points: int = 4
    queries: int | None = None

    @property
    def positions(self) -> int:
        return sum(h * w for h, w in self.levels)


def pyramid(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """Mask2Former pixel-decoder levels of an input image (padded to a multiple of 32, as the model pads it):
    strides 8, 16, 32."""
    height, width = -(-height // 32) * 32, -(-width // 32) * 32
    return tuple((height // s, width // s) for s in (8, 16, 32))


CASES: tuple[BenchCase, ...] = (
    BenchCase("m2f_512x512_b1", 1, pyramid(512, 512)),
    BenchCase("m2f_512x512_b4", 4, pyramid(512, 512)),
    BenchCase("m2f_1024x1024_b1", 1, pyramid(1024, 1024)),
    BenchCase("m2f_1024x2048_b1", 1, pyramid(1024, 2048)),  # Cityscapes
    BenchCase("ddetr_4levels_q300", 2, (*pyramid(800, 1088), (13, 17)), queries=300),
    BenchCase("odd_channels_d30", 1, pyramid(512, 512), channels=30),
)


def make_inputs(
    case: BenchCase, dtype: torch.dtype, device: torch.device | str, requires_grad: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(value, spatial_shapes, sampling_locations, attention_weights) for a case, locations partly off the map."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    N, M, D, P, L = case.batch, case.heads, case.channels, case.points, len(case.levels)
    Lq = case.queries or case.positions
    value = torch.randn(N, case.positions, M, D, generator=generator)
    locations = torch.rand(N, Lq, M, L, P, 2, generator=generator) * 1.1 - 0.05
    weights = torch.rand(N, Lq, M, L * P, generator=generator).softmax(-1).view(N, Lq, M, L, P)
    shapes = torch.tensor(case.levels, dtype=torch.int64, device=device)
    tensors = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (value, locations, weights)]
    return tensors[0], shapes, tensors[1], tensors[2]


def time_cuda(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()`` measured with CUDA events, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def benchmark_case(
    case: BenchCase, dtype: torch.dtype, backward: bool = False, warmup: int = 10, iters: int = 50
) -> dict[str, Any]:
    """Kernel and reference time (ms) for one case and dtype, forward or forward + backward, and their max diff."""
    value, shapes, locations, weights = make_inputs(case, dtype, "cuda", requires_grad=backward)
    grad = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], device="cuda", dtype=dtype)

    def run(op: Callable[..., Tensor]) -> Callable[[], Tensor]:
        def call() -> Tensor:
            out = op(value, shapes, None, locations, weights)
            if backward:
                for t in (value, locations, weights):
                    t.grad = None
                out.backward(grad)
            return out

        return call

    with torch.no_grad() if not backward else torch.enable_grad():
        kernel_out = run(ms_deform_attn_cuda)()
        reference_out = run(ms_deform_attn_reference)()
        max_diff = (kernel_out.float() - reference_out.float()).abs().max().item()
        kernel_ms = time_cuda(run(ms_deform_attn_cuda), warmup, iters)
        reference_ms = time_cuda(run(ms_deform_attn_reference), warmup, iters)
    return {
        **asdict(case),
        "dtype": str(dtype).removeprefix("torch."),
        "pass": "forward+backward" if backward else "forward",
        "kernel_ms": kernel_ms,
        "reference_ms": reference_ms,
        "speedup": reference_ms / kernel_ms if kernel_ms > 0 else float("nan"),
        "max_abs_diff": max_diff,
        "device": torch.cuda.get_device_name(),
    }


DTYPES = ("float32", "float16")  # the kernel's two types


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: benchmark the cases, log a table, optionally write JSON; 2 when no kernel can run."""
    parser = argparse.ArgumentParser(prog="python -m plugins.msda.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--backward", action="store_true", help="time forward + backward (float32 only)")
    parser.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], help="default: all")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not torch.cuda.is_available():
        _LOG.error("no CUDA device: the benchmark compares the CUDA kernel with the reference on a GPU")
        return 2
    if not cuda_kernel_available():
        _LOG.error("the MSDA CUDA extension is not available: %s", build_error())
        return 2
    dtypes = [getattr(torch, name) for name in args.dtype]
    if args.backward:
        dtypes = [torch.float32]  # the kernel's backward is float32 (float16 runs it after a cast)
    cases = [c for c in CASES if args.cases is None or c.name in args.cases]
    results = []
    _LOG.info(
        "%-22s %-8s %-17s %11s %14s %8s %10s",
        "case",
        "dtype",
        "pass",
        "kernel ms",
        "reference ms",
        "speedup",
        "max diff",
    )
    for case in cases:
        for dtype in dtypes:
            row = benchmark_case(case, dtype, args.backward, args.warmup, args.iters)
            results.append(row)
            _LOG.info(
                "%-22s %-8s %-17s %11.3f %14.3f %7.1fx %10.2e",
                case.name,
                row["dtype"],
                row["pass"],
                row["kernel_ms"],
                row["reference_ms"],
                row["speedup"],
                row["max_abs_diff"],
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        _LOG.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
