"""``make gpu-check`` (``tools.gpu_check``) starts and runs every step on a CPU at toy sizes, without OpenVINO or
pycocotools, as it must on the lent GPU image; tools stay out of the wheel."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

from tests.conftest import REPO_ROOT


def test_tools_stay_out_of_the_wheel() -> None:
    """tools/ is a checkout-only room: setup.py's package list leaves it out (and benchmarks never import it:
    tests/test_import_rules.py)."""
    setup = ast.parse((REPO_ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(setup) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    packages = next(k.value for k in call.keywords if k.arg == "packages")
    include = ast.literal_eval(next(k.value for k in packages.keywords if k.arg == "include"))
    shipped = find_packages(str(REPO_ROOT), include=include)
    assert "benchmarks" in shipped and "sdk" in shipped
    assert not [name for name in shipped if name.split(".")[0] == "tools"]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_cpu_without_openvino_or_pycocotools(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "out"
    command = [
        *("make", "-s", "-C", str(REPO_ROOT), "gpu-check", f"GPU_PY={sys.executable}", f"GPU_CHECK_OUT={out}"),
        "GPU_CHECK_ARGS=--device cpu --tiny --train-iters 2 --warmup 1 --runs 1 "
        "--absent openvino,pycocotools,tensorrt,nncf --tests-timeout 600",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert steps["MSDA CUDA kernel build"]["status"] == "skipped: no CUDA device"
    assert steps["pytest -m gpu"]["status"] == "ok"
    assert "skipped" in steps["pytest -m gpu"]["summary"]  # every GPU test collected, and skipped without CUDA
    assert "error" not in steps["pytest -m gpu"]["summary"]
    assert steps["train the edge model"]["status"] == "ok"
    assert report["training"]["images_per_s"] > 0
    profiled = report["training"]["profile"]  # where a step's time goes, for the GPU run to tell
    assert profiled["step_ms"] > 0 and profiled["top_host"] and profiled["host_syncs_per_step"] >= 1  # the loss read
    for name, model in report["latency"].items():
        rows = model["rows"]
        assert rows["torch eager fp32"]["model_ms"] > 0 and rows["torch eager fp32"]["agreement"] == 1.0, name
        assert rows["CUDA graph fp16"] == {"error": "needs CUDA"}
    swin = report["latency"]["Swin-T ADE20K (random weights)"]["rows"]
    assert swin["HF eager fp32"]["e2e_ms"] > 0  # the peer ran on the same device
    markdown = (out / "gpu_check.md").read_text()
    assert "| torch eager fp32 |" in markdown and "images/s" in markdown and "Profiled (" in markdown
    assert (out / "pytest_gpu.log").exists()
