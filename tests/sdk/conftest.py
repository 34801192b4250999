"""SDK fixtures: a tiny checkpoint and its semantic / panoptic ONNX Runtime artifacts (128x160 input)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compile.export import export
from tests.tiny_models import tiny_architecture
from train.data.synthetic import synthetic_meta
from train.model import Mask2Former, Mask2FormerConfig, save_checkpoint

TINY = tiny_architecture()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **TINY})).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, meta)


@pytest.fixture(scope="module")
def artifacts(checkpoint, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("artifacts")
    return {
        task: export(checkpoint, "onnxruntime", "fp32", out / f"{task}.onnx", input_size=(128, 160), task=task)
        for task in ("semantic", "panoptic")
    }
