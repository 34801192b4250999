"""Backbones. Each returns the 1/4, 1/8, 1/16, 1/32 feature maps as a list and exposes ``channels``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from train.model.backbones.resnet import ResNet
from train.model.backbones.swin import SwinTransformer
from train.model.backbones.tflite_graph import TFLiteGraphBackbone
from train.model.backbones.timm_backbone import TimmBackbone
from train.model.config import BackboneConfig

BACKBONES: dict[str, Callable[[BackboneConfig], nn.Module]] = {
    "resnet": ResNet,
    "swin": SwinTransformer,
    "timm": TimmBackbone,
    "tflite": TFLiteGraphBackbone,
}


def build_backbone(config: BackboneConfig) -> nn.Module:
    """Build the backbone named by ``config.kind``."""
    try:
        builder = BACKBONES[config.kind]
    except KeyError:
        raise ValueError(f"unknown backbone kind {config.kind!r}; expected one of {sorted(BACKBONES)}") from None
    return builder(config)
