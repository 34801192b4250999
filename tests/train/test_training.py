"""The training stack end to end on generated scenes: it learns, DDP matches one process, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_architecture
from train.data.synthetic import synthetic_panoptic, write_synthetic_dataset
from train.evaluation.runner import evaluate_model
from train.model import Mask2Former, Mask2FormerConfig, load_pretrained
from train.train_config import TrainConfig
from train.trainer import (
    MAX_AUTO_WORKERS,
    GlobalBatchSampler,
    Trainer,
    effective_amp,
    native_bf16,
    resolve_num_workers,
)

TINY_MODEL = tiny_architecture(width=64, queries=16, encoder_layers=2, decoder_layers=3)


def tiny_train_config(root: Path, max_iters: int, **overrides) -> dict:
    config = {
        "task": "panoptic",
        "model": {"config": TINY_MODEL},
        "train_data": {"format": "synthetic_panoptic", "root": str(root / "train")},
        "val_data": {"format": "synthetic_panoptic", "root": str(root / "val")},
        "solver": {
            "batch_size": 8,
            "max_iters": max_iters,
            "lr": 1e-3,
            "clip_grad_norm": 1.0,
            "num_workers": 0,
        },
        "criterion": {"num_points": 2048},
        "checkpoint_every": 1000,
        "eval_every": 1000,
        "log_every": 1,
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "train", num_images=64, seed=1)
    write_synthetic_dataset(root / "val", num_images=16, seed=2)  # held out: other seed, other scenes
    return root


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig.from_dict(tiny_train_config(scenes, max_iters=200))
    metrics = Trainer(config, out, progress=False).run()
    return out, metrics


@pytest.mark.slow
def test_tiny_model_learns_what_an_untrained_one_cannot(scenes, trained):
    out, metrics = trained
    loaded = load_pretrained(out / "model_final.pt")
    val = synthetic_panoptic(scenes / "val")
    semantic = evaluate_model(loaded.model, val, loaded.meta, "semantic", progress=False)
    untrained = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": loaded.meta.num_classes, **TINY_MODEL}))
    before_pq = evaluate_model(untrained, val, loaded.meta, "panoptic", progress=False)["PQ"]
    before_miou = evaluate_model(untrained, val, loaded.meta, "semantic", progress=False)["mIoU"]
    assert metrics["PQ"] > 55 and semantic["mIoU"] > 70, (metrics["PQ"], semantic["mIoU"])
    assert before_pq < 10 and before_miou < 30, (before_pq, before_miou)
    log = (out / "metrics.csv").read_text().splitlines()
    assert len(log) > 200 and "loss_dice" in log[0]


def test_eval_cli_prints_json_last_line(scenes, trained):
    out, metrics = trained
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdk.cli",
            "eval",
            str(out / "model_final.pt"),
            "--data-root",
            str(scenes / "val"),
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["PQ"] == pytest.approx(metrics["PQ"], abs=1e-3)


def test_global_batches_are_the_same_for_any_process_count():
    one = iter(GlobalBatchSampler(20, 4, rank=0, world=1, seed=3))
    two = [iter(GlobalBatchSampler(20, 4, rank=r, world=2, seed=3)) for r in range(2)]
    whole = [next(one) for _ in range(12)]  # 12 batches of 4 from 20 images: three epochs
    for batch in whole:
        rank0, rank1 = next(two[0]), next(two[1])
        assert sorted(batch) == sorted(rank0 + rank1) and len(rank0) == len(rank1) == 2
    assert len({i for b in whole[:5] for i, _ in b}) == 20  # an epoch covers every image once
    # starting late yields exactly the continuation (resume)
    late = iter(GlobalBatchSampler(20, 4, rank=0, world=1, seed=3, start_iter=7))
    assert [next(late) for _ in range(5)] == whole[7:12]
    with pytest.raises(ValueError, match="split evenly"):
        GlobalBatchSampler(20, 3, rank=0, world=2, seed=0)


def test_num_workers_auto_is_the_usable_cores_less_one():
    cores = len(os.sched_getaffinity(0))
    assert resolve_num_workers("auto") == max(0, min(cores - 1, MAX_AUTO_WORKERS))
    assert resolve_num_workers("auto", world_size=cores) == 0  # one core per process: the loop keeps it
    assert resolve_num_workers(3) == 3
    assert TrainConfig.from_dict(tiny_train_config(Path("x"), 1, solver={"num_workers": "auto"})).solver.num_workers
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(ValueError, match=r"solver\.num_workers must be 'auto' or an int >= 0"):
            TrainConfig.from_dict(tiny_train_config(Path("x"), 1, solver={"num_workers": bad}))


def test_trains_with_auto_workers(scenes, tmp_path):
    config = tiny_train_config(scenes, max_iters=3, val_data=None, solver={"num_workers": "auto"})
    trainer = Trainer(TrainConfig.from_dict(config), tmp_path / "built", progress=False)
    assert trainer.config.solver.num_workers == "auto"
    loader = trainer.loader()  # built, not iterated: no worker process starts here
    assert loader.num_workers == resolve_num_workers("auto")
    assert loader.pin_memory == torch.cuda.is_available()
    # the run itself in a child process: iterating a multi-worker loader in the test process installs torch's
    # process-wide SIGCHLD handler (see tests/conftest.py)
    _train_cli(config, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "run" / "model_final.pt").exists()


def _train_cli(config: dict, out: Path, *extra: str, nproc: int = 1, wait: bool = True):
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    launcher = [sys.executable, "-m", "sdk.cli"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launcher += ["-m", "sdk.cli"]
    cmd = [*launcher, "train", str(path), "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(out: Path) -> list[float]:
    import csv

    with (out / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(scenes, tmp_path):
    # FrozenBN: per-process batch statistics would otherwise differ from the global batch's by design
    model = {**TINY_MODEL, "backbone": {**TINY_MODEL["backbone"], "norm": "FrozenBN"}}
    config = tiny_train_config(scenes, max_iters=12, model={"config": model}, val_data=None)
    config["criterion"] = {"num_points": 12544}
    _train_cli(config, tmp_path / "one")
    _train_cli(config, tmp_path / "two", nproc=2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 12
    # same images, augmentation and weights; only the random loss points differ between the runs
    for a, b in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=0.03)
    w1 = load_pretrained(tmp_path / "one" / "model_final.pt").model.state_dict()
    w2 = load_pretrained(tmp_path / "two" / "model_final.pt").model.state_dict()
    drift = max((w1[k] - w2[k]).abs().max().item() for k in w1 if w1[k].is_floating_point())
    assert drift < 5e-3


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(scenes, tmp_path):
    config = tiny_train_config(
        scenes,
        max_iters=16,
        val_data=None,
        checkpoint_every=4,
        augmentation={"name": "lsj", "image_size": 96, "min_scale": 0.5, "max_scale": 1.5},
        solver={"num_workers": 1},
    )
    _train_cli(config, tmp_path / "straight")
    proc = _train_cli(config, tmp_path / "killed", wait=False)
    checkpoint = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "model_final.pt").exists()
    _train_cli(config, tmp_path / "killed", "--resume")
    straight = load_pretrained(tmp_path / "straight" / "model_final.pt").model.state_dict()
    resumed = load_pretrained(tmp_path / "killed" / "model_final.pt").model.state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0, msg=key)


def test_bf16_autocast_only_where_the_hardware_has_it():
    """bf16 on a CPU without AVX512-BF16/AMX is emulated (a step ~100x slower): such a CPU trains in fp32."""
    cpu = torch.device("cpu")
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to check against")
    assert native_bf16(cpu) == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert effective_amp("bf16", cpu) == ("bf16" if native_bf16(cpu) else "none")
    assert effective_amp("fp16", cpu) == "fp16" and effective_amp("none", cpu) == "none"
