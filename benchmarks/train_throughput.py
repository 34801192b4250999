"""Training throughput (images/s) of one configuration in fp32 and, where the CPU has native bf16, bf16 autocast.

    python -m benchmarks.train_throughput [--config benchmarks/configs/train_edge.yaml] [--iters 20] [--out DIR]

Data are generated scenes at the config's crop size (the trainer reads real files either way). Prints a
Markdown table and writes ``train_throughput.json`` when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from train.data.synthetic import write_synthetic_dataset
from train.train_config import load_train_config
from train.trainer import Trainer, native_bf16

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train_edge.yaml"


def measure(config_path: Path, amp: str, iters: int, warmup: int, data_root: Path) -> dict[str, float]:
    """Images/s over ``iters`` steps after ``warmup`` steps (data loading included, as in a real run)."""
    config = load_train_config(config_path).with_overrides(str(data_root))
    config = dataclasses.replace(config, solver=dataclasses.replace(config.solver, amp=amp))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, out, progress=False)
        batches = iter(trainer.loader())
        for i in range(warmup):
            trainer.train_step(next(batches), i)
        start = time.perf_counter()
        for i in range(iters):
            trainer.train_step(next(batches), warmup + i)
        elapsed = time.perf_counter() - start
    images = iters * config.solver.batch_size
    return {"amp": trainer.amp, "images_per_s": images / elapsed, "s_per_iter": elapsed / iters, "iters": iters}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    config = load_train_config(args.config)
    size = config.augmentation.get("crop_size") or config.augmentation.get("image_size") or 256
    size = tuple(size) if isinstance(size, list | tuple) else (int(size), int(size))
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(Path(tmp), num_images=4 * config.solver.batch_size, size=size, seed=0)
        # the trainer trains bf16 only where the CPU computes it natively (else it would run fp32 again)
        modes = ("none", "bf16") if native_bf16(torch.device("cpu")) else ("none",)
        rows = [measure(args.config, amp, args.iters, args.warmup, Path(tmp)) for amp in modes]
    report = {
        "config": str(args.config),
        "batch_size": config.solver.batch_size,
        "image_size": list(size),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "results": rows,
    }
    print(
        f"training throughput, {args.config.name}, batch {config.solver.batch_size}, {size[0]}x{size[1]}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| precision | images/s | s/iter |\n|---|---|---|")
    for row in rows:
        name = "fp32" if row["amp"] == "none" else "bf16 autocast"
        print(f"| {name} | {row['images_per_s']:.2f} | {row['s_per_iter']:.3f} |")
    if len(rows) == 1:
        print("(no bf16 row: this CPU has no AVX512-BF16/AMX, so training runs in fp32)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_throughput.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
