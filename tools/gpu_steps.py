"""The GPU check's steps before latency (``tools.gpu_check``): build the MSDA CUDA kernel, run ``pytest -m gpu``,
train the edge model on generated scenes and profile its training steps."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.paths import REPO_ROOT

logger = logging.getLogger(__name__)

EDGE_CONFIG = REPO_ROOT / "configs" / "camvid_edge.yaml"
PROFILED_STEPS = 4
HOST_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def build_kernel(device: str, record: dict[str, Any]) -> None:
    if not device.startswith("cuda"):
        record["status_override"] = "skipped: no CUDA device"
        return
    from plugins.msda import extension

    extension.load_extension()
    record["build_dir"] = str(extension.build_directory())


def run_gpu_tests(record: dict[str, Any], block: tuple[str, ...], timeout_s: int, log: Path) -> None:
    """``pytest -m gpu tests`` in a subprocess (``block``ed packages absent there too); its output to ``log``."""
    args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra --strict-markers", "tests"]
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({list(block)!r})); "
        f"import pytest; sys.exit(pytest.main({args!r}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    record["summary"] = lines[-1] if lines else done.stderr.strip()[-300:]
    record["failures"] = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:30]
    record["returncode"] = done.returncode
    log.write_text(done.stdout + done.stderr)
    if done.returncode not in (0, 5):  # 5: nothing collected (no GPU tests selected)
        raise RuntimeError(f"pytest -m gpu: {record['summary']}")


def write_scenes(root: Path, count: int, size: tuple[int, int]) -> Path:
    from train.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root, num_images=count, size=size, seed=0)
    return root


def edge_train_config(iters: int, scenes: Path, tiny: bool) -> Any:
    """configs/camvid_edge.yaml's model, augmentation and solver for ``iters`` iterations on the generated scenes."""
    from train.train_config import load_train_config

    config = load_train_config(EDGE_CONFIG)
    solver = dataclasses.replace(config.solver, max_iters=iters, num_workers="auto", warmup_iters=min(10, iters))
    augmentation = dict(config.augmentation)
    if tiny:  # toy sizes for the CPU run of the check
        augmentation.update(min_sizes=[96], crop_size=[64, 64])
        solver = dataclasses.replace(solver, batch_size=2)
    return dataclasses.replace(
        config,
        train_data={"format": "synthetic_semantic", "root": str(scenes)},
        val_data=None,
        augmentation=augmentation,
        solver=solver,
        checkpoint_every=iters,
        log_every=max(1, iters // 6),
    )


def train_edge(
    device: str, iters: int, scenes: Path, scene_size: tuple[int, int], out: Path, tiny: bool, record: dict[str, Any]
) -> Path:
    """configs/camvid_edge.yaml on generated scenes; returns the final checkpoint."""
    from train.trainer import Trainer, resolve_num_workers

    config = edge_train_config(iters, scenes, tiny)
    trainer = Trainer(config, out, progress=False)
    if trainer.dist.device.type != device.split(":")[0]:
        raise RuntimeError(f"the trainer picked {trainer.dist.device}, the check asked for {device}")
    record.update(
        scenes="x".join(map(str, scene_size)),
        device=str(trainer.dist.device),
        workers=resolve_num_workers("auto"),
        batch_size=config.solver.batch_size,
        amp=config.solver.amp,
        iters=iters,
        crop=list(config.augmentation.get("crop_size", [])),
    )
    start = time.perf_counter()
    trainer.run()
    record["wall_s"] = round(time.perf_counter() - start, 1)
    with (out / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("images_per_s")]
    steady = [float(r["images_per_s"]) for r in rows[1:]] or [float(r["images_per_s"]) for r in rows]
    record["images_per_s"] = round(statistics.mean(steady), 1)  # the windows after the first (start-up, warm-up)
    record["loss_first_last"] = [round(float(rows[0]["loss"]), 3), round(float(rows[-1]["loss"]), 3)]
    record["profile"] = profile_steps(Trainer(config, out / "profiled", progress=False), PROFILED_STEPS)
    return out / "model_final.pt"


def profile_steps(trainer: Any, steps: int) -> dict[str, Any]:
    """Where a training step's time goes: ``torch.profiler`` over ``steps`` steps of a fresh trainer (batches
    loaded first, one warm-up step): ms per step, device-busy ms, how often the host reads a device value (on CUDA a
    wait: ``.item()``, a copy to the host), and the top ops by self device and self host time (ms per step)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.dist.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    loader = iter(trainer.loader())
    batches = [next(loader) for _ in range(steps + 1)]
    trainer.train_step(batches[0], 0)
    sync()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for i, batch in enumerate(batches[1:], start=1):
            trainer.train_step(batch, i)
        sync()
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    averages = prof.key_averages()

    def top(attr: str) -> list[list]:
        ranked = sorted(averages, key=lambda e: getattr(e, attr), reverse=True)[:10]
        return [[e.key, round(getattr(e, attr) / 1000 / steps, 2)] for e in ranked if getattr(e, attr) > 0]

    return {
        "steps": steps,
        "step_ms": round(wall_ms, 1),
        "device_busy_ms": round(sum(e.self_device_time_total for e in averages) / 1000 / steps, 1),
        "host_syncs_per_step": sum(e.count for e in averages if e.key in HOST_SYNCS) / steps,
        "top_device": top("self_device_time_total"),
        "top_host": top("self_cpu_time_total"),
    }
