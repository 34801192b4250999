"""Mask2Former: backbone -> pixel decoder -> masked-attention transformer decoder."""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from train.model.backbones import build_backbone
from train.model.config import Mask2FormerConfig
from train.model.masked_attention_decoder import MultiScaleMaskedTransformerDecoder
from train.model.pixel_decoder import MSDeformAttnPixelDecoder


def pad_to_multiple(images: Tensor, divisor: int) -> Tensor:
    """Zero-pad (B, C, H, W) at the bottom and right so H and W are multiples of ``divisor``."""
    H, W = images.shape[-2:]
    # unconditional (a zero pad is a no-op) so symbolic sizes need no branch in export
    return F.pad(images, (0, (-W) % divisor, 0, (-H) % divisor))


class Mask2Former(nn.Module):
    """``model(pixel_values)``: float (B, 3, H, W), normalised as the checkpoint's ``ModelMeta`` says.

    Returns ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, Hp/4, Wp/4) where (Hp, Wp) is (H, W) padded up
    to ``size_divisibility`` (32), and ``aux_outputs``: the same pair for every earlier prediction.
    """

    def __init__(self, config: Mask2FormerConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone)
        resolved = getattr(self.backbone, "resolved_config", None)  # e.g. a graph read from a weights file
        if resolved is not None:
            self.config = config = dataclasses.replace(config, backbone=resolved)
        self.pixel_decoder = MSDeformAttnPixelDecoder(config.pixel_decoder, self.backbone.channels)
        self.transformer_decoder = MultiScaleMaskedTransformerDecoder(
            config.decoder,
            in_channels=config.pixel_decoder.conv_dim,
            mask_dim=config.pixel_decoder.mask_dim,
            num_classes=config.num_classes,
        )

    def forward(self, pixel_values: Tensor, aux: bool = True) -> dict:
        """``aux=False`` (inference, export): the last prediction only, computed without the earlier layers'
        full-size masks (``MultiScaleMaskedTransformerDecoder.forward``)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"expected pixel_values of shape (B, 3, H, W), got {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise TypeError(f"expected normalised float pixel_values, got {pixel_values.dtype}")
        features = self.backbone(pad_to_multiple(pixel_values, self.config.size_divisibility))
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.transformer_decoder(multi_scale, mask_features, aux=aux)
