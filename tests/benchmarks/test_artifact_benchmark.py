"""``m2f benchmark --model ARTIFACT.onnx``: what is deployed, measured where it runs (no export, no torch)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.artifact_rows import ArtifactModel, plan_artifact_rows, read_artifact
from benchmarks.paths import DATA_ROOT
from plugins.msda import openvino_extension
from tests.conftest import REPO_ROOT

ARTIFACT = REPO_ROOT / "sdk" / "models" / "default_int8.onnx"
CAMVID = DATA_ROOT / "camvid"
needs_camvid = pytest.mark.skipif(not (CAMVID / "classes.csv").exists(), reason="CamVid not under $M2F_DATA")
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
# few frames, few runs: the packaged model is 360x480
QUICK = ["--images", "2", "--runs", "2", "--warmup", "1", "--rounds", "1", "--threads", "1", "--no-stream"]


def _argv(tmp_path: Path, *targets: str) -> list[str]:
    paths = ["--data", str(CAMVID), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    return ["--model", str(ARTIFACT), "--targets", *targets, *paths, *QUICK]


def _rows(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in json.loads((out / "benchmark.json").read_text())["rows"]}


def _fake_artifact(target: str, precision: str, **meta: dict) -> ArtifactModel:
    meta = {"target": target, "precision": precision, "accuracy": {"drop": 0.0}, **meta}
    return ArtifactModel(
        path="x.onnx",
        target=target,
        precision=precision,
        task="semantic",
        input_size=(64, 64),
        class_names=("a", "b"),
        metadata=meta,
    )


def test_an_artifact_plans_only_the_runtimes_its_target_allows():
    """A TensorRT artifact on the CPU runtimes, torch and an HF peer: every one a skip line with its reason, no row."""
    rows, skipped = plan_artifact_rows(_fake_artifact("tensorrt", "fp16"), ["openvino", "torch", "hf-eager"], None)
    assert rows == []
    assert skipped == [
        "openvino: cannot run a tensorrt artifact (it runs openvino, onnxruntime artifacts)",
        "torch: torch runs a checkpoint, not an artifact",
        "hf-eager: the HF peers need the model's weights (a zoo name, an HF config.json or folder), not an artifact",
    ]


def test_an_artifact_runs_at_its_own_precision_and_the_verified_ones():
    """An fp32 OpenVINO artifact whose gate verified bf16 on OpenVINO: fp32 and bf16 there, fp32 only on ONNX
    Runtime; a precision left out by --precisions is a skip line."""
    artifact = _fake_artifact("openvino", "fp32", verified_precisions={"bf16": {"runtime": "openvino", "drop": 0.1}})
    rows, _ = plan_artifact_rows(artifact, ["openvino", "onnxruntime"], None)
    assert [r.id for r in rows] == ["m2f-openvino-fp32", "m2f-openvino-bf16", "m2f-onnxruntime-fp32"]
    rows, skipped = plan_artifact_rows(artifact, ["openvino"], ["fp32"])
    assert [r.id for r in rows] == ["m2f-openvino-fp32"]
    assert skipped == ["openvino bf16: not among --precisions fp32"]


@needs_camvid
def test_camvid_frames_without_torch_match_the_training_dataset():
    """The eval set reads CamVid in numpy (no torch on an edge device): the frames and ground truth the training
    dataset gives, so mIoU is the same number either way."""
    pytest.importorskip("torch")
    from benchmarks import eval_set

    ours = eval_set._camvid_frames(CAMVID, "camvid", "val", 3)
    theirs = eval_set._dataset_frames(CAMVID, "camvid", "val", 3)
    assert ours[2:] == theirs[2:]  # class names, images in the split
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1], strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)


@needs_camvid
@needs_openvino
def test_benchmark_an_artifact(tmp_path, capsys):
    """The packaged int8 file on the CPU: latency, throughput, memory and mIoU rows, the LiteRT peer beside it where
    its runtime is installed, and a target that cannot run it named with its reason in the report."""
    from benchmarks.cli import benchmark_main

    peers = ["--peers", "litert-deeplab"] if importlib.util.find_spec("ai_edge_litert") else []
    assert benchmark_main(_argv(tmp_path, "openvino", "torch") + peers) == 0
    rows = _rows(tmp_path / "out")
    row = rows["m2f-openvino-int8"]
    for key in ("p50_ms", "p90_ms", "fps", "peak_rss_mb", "mIoU"):
        assert np.isfinite(row[key]), key
    assert row["run_precision"] == "int8" and "error" not in row
    if peers:
        assert np.isfinite(rows["litert-deeplab-int8"]["mIoU"])
    report = (tmp_path / "out" / "benchmark.md").read_text()
    assert "- skipped torch: torch runs a checkpoint, not an artifact" in report
    assert "360x480" in report and "m2f-torch-fp32" not in rows  # its own input size, no torch reference


@needs_camvid
@needs_openvino
def test_benchmark_an_artifact_with_torch_blocked(tmp_path):
    """`m2f benchmark --model street-default` (a packaged model's name) where torch cannot be imported (every
    process: a sitecustomize blocks it): the file the SDK runs of it on OpenVINO is measured, with its mIoU."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])}
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "import of torch halted" in blocked.stderr
    code = "import sys, sdk.cli; sys.exit(sdk.cli.main(['benchmark', *sys.argv[1:]]))"
    argv = _argv(tmp_path, "openvino")
    argv[argv.index("--model") + 1] = "street-default"
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = _rows(tmp_path / "out")["m2f-openvino-int8"]
    assert "error" not in row and np.isfinite(row["mIoU"]) and np.isfinite(row["p50_ms"])
    runs = "default_int8.onnx" if openvino_extension.unavailable_reason() else "default_int8_msda.onnx"  # fused op
    assert f"street-default ({runs})" in (tmp_path / "out" / "benchmark.md").read_text()


def test_a_packaged_model_name_is_the_file_the_sdk_runs():
    """A name resolves per runtime, as ``Segmenter(target, model=NAME)`` chooses; any other --model is as given."""
    from benchmarks.artifact_rows import named_artifact
    from sdk import Segmenter

    for target in ("onnxruntime", "openvino"):
        with Segmenter(target, model="street-default") as seg:
            assert named_artifact("street-default", [target, "litert-deeplab"]) == str(seg.model_path)
    assert named_artifact("ade20k-semantic-swin-t", None) == "ade20k-semantic-swin-t"


def test_a_target_that_cannot_run_the_artifact_gives_its_reason(tmp_path, capsys):
    """Nothing asked for can run it: exit 2 with the skip reasons, before any frame is read."""
    from benchmarks.cli import benchmark_main

    argv = ["--model", str(ARTIFACT), "--targets", "torch", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert benchmark_main(argv) == 2
    err = capsys.readouterr().err
    assert "torch: torch runs a checkpoint, not an artifact" in err


def test_a_corrupt_artifact_is_one_line_and_exit_2(tmp_path, capsys):
    from benchmarks.cli import benchmark_main

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(ARTIFACT.read_bytes()[:5000])
    assert benchmark_main(["--model", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2f benchmark: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "broken.onnx" in err
    with pytest.raises(ValueError):
        read_artifact(str(bad))
