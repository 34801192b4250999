"""The packaged models by name (``sdk.model_registry``): every file registered once, each name runnable, and an
unknown name or a broken registry refused with the names."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from sdk import Segmenter
from sdk.cli import info
from sdk.model_registry import (
    MODELS_DIR,
    REGISTRY_FILE,
    _registry,
    default_model_name,
    is_model_name,
    named_model,
    named_models,
    with_checkpoint_for_name,
)
from tests.conftest import REPO_ROOT


def test_every_packaged_file_belongs_to_one_model_and_agrees_with_its_siblings():
    """No orphan .onnx in the package, no file listed twice; a model's files share task, classes and input size (the
    registry does not repeat them: the metadata is their one source); each model stays small enough to ship."""
    listed = [name for model in named_models().values() for name in model.files]
    assert sorted(listed) == sorted(path.name for path in MODELS_DIR.glob("*.onnx"))
    assert len(listed) == len(set(listed))
    for model in named_models().values():
        metas = [meta for _, meta in model.artifacts()]
        assert {meta["task"] for meta in metas} == {"semantic"}
        assert len({tuple(meta["class_names"]) for meta in metas}) == 1
        assert len({tuple(meta["input"]["size"]) for meta in metas}) == 1
        assert {meta["precision"] for meta in metas} >= {"fp32", "int8"}
        # at most fp32, OpenVINO int8 with the fused op and without, ORT int8: ~9 MB each
        assert sum(path.stat().st_size for path in model.paths()) <= 40 * 2**20
        if model.checkpoint:  # in a source checkout the weights it was exported from are committed
            assert (REPO_ROOT / model.checkpoint).is_file() and (REPO_ROOT / model.recipe).is_file()


def test_a_name_runs_the_same_file_the_default_does():
    default = default_model_name()
    assert is_model_name(default) and not is_model_name(f"{default}.onnx") and not is_model_name(None)
    with Segmenter("onnxruntime") as plain, Segmenter("onnxruntime", model=default) as named:
        assert plain.model_path == named.model_path
        assert f"model={default!r} ({named.model_path.name})" in repr(named)


def test_an_unknown_name_lists_the_names():
    with pytest.raises(FileNotFoundError, match="no packaged model of that name") as caught:
        Segmenter("onnxruntime", model="street-fats")
    assert default_model_name() in str(caught.value)
    with pytest.raises(ValueError, match="no packaged model named 'street-fats'"):
        named_model("street-fats")


def test_the_cli_takes_a_name_and_refuses_an_unknown_one_in_one_line(tmp_path):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((90, 120, 3), 120, np.uint8))
    run = [sys.executable, "-m", "sdk.cli", "predict", str(image), "--target", "onnxruntime", "--out", str(tmp_path)]
    done = subprocess.run([*run, "--model", default_model_name()], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "frame_seg.png").is_file()
    refused = subprocess.run([*run, "--model", "street-fats"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "no packaged model of that name" in refused.stderr.strip().splitlines()[-1]


def test_info_lists_every_model_with_its_input_size():
    listed = info()["models"]
    for name in named_models():
        line = listed.get(name) or listed[f"{name} (default)"]
        assert "classes" in line and "MiB" in line


def test_a_registry_whose_default_is_not_registered_is_refused(tmp_path):
    bad = tmp_path / "registry.json"
    bad.write_text(json.dumps({"default": "nope", "models": json.loads(REGISTRY_FILE.read_text())["models"]}))
    with pytest.raises(ValueError, match="the default 'nope' is not a registered model"):
        _registry(bad)
    bad.write_text(json.dumps({"default": "x", "models": {"x": {"files": []}}}))
    with pytest.raises(ValueError, match="lacks summary, licence"):
        _registry(bad)


def test_export_by_name_uses_the_committed_checkpoint():
    """``m2f export NAME``: the name stands for the checkpoint the packaged files came from (source checkout)."""
    model = named_model(default_model_name())
    argv = with_checkpoint_for_name([model.name, "--target", "cpu", "--input-size", "360x480"])
    assert argv == [str(REPO_ROOT / model.checkpoint), "--target", "cpu", "--input-size", "360x480"]
    assert with_checkpoint_for_name(["runs/x.pt"]) == ["runs/x.pt"]
