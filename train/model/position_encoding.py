"""Sine positional encoding for 2-D feature maps (DETR style, normalised to [0, 2*pi])."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """(B, C, H, W) feature map -> (B, 2 * num_pos_feats, H, W) encoding of its pixel positions."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        eps = 1e-6
        ones = torch.ones((B, H, W), dtype=torch.float32, device=x.device)
        y_embed = ones.cumsum(1)  # (B, H, W)
        x_embed = ones.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)  # (B, 2F, H, W)
