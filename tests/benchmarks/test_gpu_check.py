"""``make gpu-check`` starts and runs every step on a CPU at toy sizes, without OpenVINO or pycocotools, as it must
on the lent GPU image; the HF peer runner casts and places the model as asked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_cpu_without_openvino_or_pycocotools(tmp_path: Path) -> None:
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


def test_hf_runner_places_and_casts_the_model() -> None:
    from benchmarks.peers import hf_runner, random_hf_model
    from tests.benchmarks.test_harness import TINY_HF_CONFIG

    model = random_hf_model(TINY_HF_CONFIG, seed=0)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = model(pixel_values=pixel_values).masks_queries_logits
    _, masks = hf_runner(model, "cpu", "fp32")(pixel_values)
    torch.testing.assert_close(masks, want)
    _, masks = hf_runner(model, "cpu", "bf16")(pixel_values)
    assert next(model.parameters()).dtype == torch.bfloat16  # cast weights, as torch_dtype does
    assert masks.dtype == torch.float32 and masks.device.type == "cpu"
    assert torch.corrcoef(torch.stack([masks.flatten(), want.flatten()]))[0, 1] > 0.99
    with pytest.raises(ValueError, match="runs precision fp32, fp16, bf16, not 'int8'"):
        hf_runner(model, "cpu", "int8")
