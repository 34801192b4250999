"""Mask2Former pixel decoder: a multi-scale deformable-attention encoder over the 1/8, 1/16, 1/32 features,
then one FPN step to the 1/4 mask features.

Sub-module names follow the official ``MSDeformAttnPixelDecoder`` so official weights map by prefix only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.msda import ms_deform_attn
from train.model.config import PixelDecoderConfig
from train.model.position_encoding import PositionEmbeddingSine

# (value (N, S, M, D), spatial shapes, level start index or None, locations (N, Lq, M, L, P, 2),
#  weights (N, Lq, M, L, P)) -> (N, Lq, M*D): the signature of plugins.msda.ms_deform_attn
MSDAFunction = Callable[[Tensor, Sequence[tuple[int, int]], Tensor | None, Tensor, Tensor], Tensor]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention layer (Deformable DETR) around the op ``msda``: by default
    ``plugins.msda.ms_deform_attn`` (the CUDA kernel or the pure-torch reference); a caller that needs another
    implementation of the same op builds the layer with it (the TensorRT export: one opaque custom op per layer)."""

    def __init__(
        self, d_model: int, n_levels: int, n_heads: int, n_points: int, msda: MSDAFunction = ms_deform_attn
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.msda = msda
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on rings of radius 1..P around the reference point."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """query (N, Lq, C), reference_points (N, Lq, L, 2) in [0, 1], value (N, S, C) -> (N, Lq, C)."""
        N, Lq, _ = query.shape
        S = value.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value).view(N, S, M, self.d_model // M)  # (N, S, M, D)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        # softmax over the L*P weights with the queries innermost (contiguous), back to the op's layout: exported
        # graphs fuse the two transposes with the op's own, and an innermost 12-wide softmax is slow on OpenVINO
        weights = self.attention_weights(query).view(N, Lq, M, L * P).permute(0, 2, 3, 1).softmax(2)
        weights = weights.permute(0, 3, 1, 2).reshape(N, Lq, M, L, P)
        # offsets are in pixels of each level: divide by (W, H)
        if not offsets.is_cuda and all(isinstance(n, int) for shape in spatial_shapes for n in shape):
            # one division by a constant: per-level slices and stacks cost a Gather and a Concat each in exports
            # (not on CUDA, where the op is the CUDA kernel: the constant is a host copy, which a graph capture forbids)
            sizes = torch.tensor([(w, h) for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device)
            scaled = offsets / sizes[:, None, :]  # (N, Lq, M, L, P, 2)
        else:  # per level: symbolic sizes (a dynamic-size export) cannot form a tensor
            scaled = torch.stack(
                [
                    torch.stack((offsets[:, :, :, lvl, :, 0] / w, offsets[:, :, :, lvl, :, 1] / h), -1)
                    for lvl, (h, w) in enumerate(spatial_shapes)
                ],
                3,
            )
        locations = reference_points[:, :, None, :, None, :] + scaled  # (N, Lq, M, L, P, 2)
        out = self.msda(value, spatial_shapes, None, locations, weights)  # (N, Lq, C)
        return self.output_proj(out)


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    def __init__(self, layers: list[MSDeformAttnEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], batch: int, device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (B, S, L, 2) as (x, y)."""
        points = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
        ref = torch.cat(points, 0)  # (S, 2)
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        reference_points = self.reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds level embeddings to the positions, runs the encoder."""

    def __init__(self, config: PixelDecoderConfig, n_levels: int) -> None:
        super().__init__()
        c = config
        self.encoder = MSDeformAttnEncoder(
            [
                MSDeformAttnEncoderLayer(c.conv_dim, c.ffn_dim, c.dropout, n_levels, c.num_heads, c.num_points)
                for _ in range(c.num_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, c.conv_dim))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor], pos_embeds: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """srcs/pos_embeds: per level (B, C, H, W) -> memory (B, S, C) and the (H, W) of each level."""
        spatial_shapes = [(s.shape[2], s.shape[3]) for s in srcs]  # ints, or symbolic sizes in export
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, C)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)],
            1,
        )
        return self.encoder(src_flat, pos_flat, spatial_shapes), spatial_shapes


class ConvNorm(nn.Conv2d):
    """Conv2d with a norm and an optional ReLU after it (detectron2's ``Conv2d(norm=..., activation=...)``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, num_groups: int, relu: bool) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(num_groups, out_ch)
        self.apply_relu = relu
        nn.init.kaiming_uniform_(self.weight, a=1)  # c2_xavier_fill

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.apply_relu else x


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features [1/4, 1/8, 1/16, 1/32] -> mask features (B, mask_dim, H/4, W/4) and the three
    encoder outputs [1/32, 1/16, 1/8] (lowest resolution first) that the transformer decoder attends to."""

    num_transformer_levels = 3

    def __init__(self, config: PixelDecoderConfig, in_channels: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"pixel decoder needs 4 backbone levels (1/4..1/32), got {len(in_channels)}")
        c = config
        # deformable encoder inputs, lowest resolution first
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, c.conv_dim, kernel_size=1), nn.GroupNorm(c.num_groups, c.conv_dim))
            for ch in reversed(in_channels[1:])
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = MSDeformAttnTransformerEncoderOnly(c, self.num_transformer_levels)
        self.pe_layer = PositionEmbeddingSine(c.conv_dim // 2)
        self.mask_features = nn.Conv2d(c.conv_dim, c.mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)
        # one FPN step from 1/8 to 1/4 (official names adapter_1 / layer_1)
        self.adapter_1 = ConvNorm(in_channels[0], c.conv_dim, 1, c.num_groups, relu=False)
        self.layer_1 = ConvNorm(c.conv_dim, c.conv_dim, 3, c.num_groups, relu=True)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """features [(B, C1, H/4, W/4), ..., (B, C4, H/32, W/32)] -> (mask_features, [1/32, 1/16, 1/8] maps)."""
        with torch.autocast(device_type=features[0].device.type, enabled=False):  # deformable attention in fp32
            return self._forward_fp32([f.float() for f in features])

    def _forward_fp32(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        levels = features[:0:-1]  # 1/32, 1/16, 1/8
        srcs = [proj(x) for proj, x in zip(self.input_proj, levels, strict=True)]
        pos = [self.pe_layer(x) for x in levels]
        memory, spatial_shapes = self.transformer(srcs, pos)  # (B, S, C)
        B = memory.shape[0]
        sizes = [h * w for h, w in spatial_shapes]
        outs = [
            z.transpose(1, 2).reshape(B, -1, h, w)
            for z, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes, strict=True)
        ]
        lateral = self.adapter_1(features[0])  # (B, C, H/4, W/4)
        fpn = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        fpn = self.layer_1(fpn)
        return self.mask_features(fpn), outs
