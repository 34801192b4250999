"""The deployable Mask2Former module and its artifact metadata, as the "torch" target builds them from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from compile.export import _input_spec, build_metadata
from compile.onnx_export import DEFAULT_OPSET, DeployableMask2Former
from tests.tiny_models import tiny_architecture
from train.data.synthetic import synthetic_meta
from train.model import Mask2Former, Mask2FormerConfig, load_pretrained, save_checkpoint


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny random Mask2Former checkpoint (ResNet backbone, synthetic classes)."""
    torch.manual_seed(seed)
    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **tiny_architecture()})).eval()
    return save_checkpoint(path, model, meta)


def deployable(
    checkpoint: Path, task: str = "semantic", input_size: tuple[int, int] | None = (128, 160)
) -> tuple[DeployableMask2Former, dict]:
    """(uint8 NHWC frames -> task outputs module, its metadata); ``input_size=None`` gives a dynamic-size input."""
    loaded = load_pretrained(checkpoint)
    module = DeployableMask2Former(loaded.model, loaded.meta, task).eval()
    spec = _input_spec(loaded.meta, input_size, 512, 2048)
    return module, build_metadata(loaded, task, "onnxruntime", "fp32", spec, checkpoint, DEFAULT_OPSET)
