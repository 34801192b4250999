"""Mask2Former as plain PyTorch modules, its configs, and checkpoint loading."""

from train.model.checkpoint import LoadedModel, load_pretrained, save_checkpoint
from train.model.config import (
    InferenceConfig,
    Mask2FormerConfig,
    ModelMeta,
    PixelDecoderConfig,
    ResNetConfig,
    SwinConfig,
    TimmConfig,
    TransformerDecoderConfig,
)
from train.model.mask2former import Mask2Former

__all__ = [
    "InferenceConfig",
    "LoadedModel",
    "Mask2Former",
    "Mask2FormerConfig",
    "ModelMeta",
    "PixelDecoderConfig",
    "ResNetConfig",
    "SwinConfig",
    "TimmConfig",
    "TransformerDecoderConfig",
    "load_pretrained",
    "save_checkpoint",
]
