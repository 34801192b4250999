"""The deployable Mask2Former module and its artifact metadata, as the "torch" target builds them from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from compile.export import reference_model
from compile.onnx_export import DeployableMask2Former
from tests.tiny_models import tiny_architecture
from train.data.synthetic import synthetic_meta
from train.model import Mask2Former, Mask2FormerConfig, save_checkpoint


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
    return reference_model(checkpoint, task, input_size)
