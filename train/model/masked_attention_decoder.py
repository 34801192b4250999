"""Mask2Former's multi-scale masked-attention transformer decoder.

Each layer: masked cross-attention to one pixel-decoder scale (round-robin 1/32, 1/16, 1/8), then
self-attention among the queries, then an FFN. Class logits and masks are predicted from the learnable query
features before the first layer and after every layer; each prediction's mask, resized to the next layer's
scale and thresholded at 0.5, is that layer's attention mask. A query whose mask is empty attends everywhere.

Sub-module names follow the official ``MultiScaleMaskedTransformerDecoder`` so official weights map by prefix.
Sequences are (L, B, C) as in ``nn.MultiheadAttention``'s default layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.model.config import TransformerDecoderConfig
from train.model.position_encoding import PositionEmbeddingSine


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_init(self)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        q = k = x + query_pos
        tgt = tgt + self.dropout(self.self_attn(q, k, value=x, need_weights=False)[0])
        return tgt if self.pre_norm else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_init(self)

    def forward(self, tgt: Tensor, memory: Tensor, attn_mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        """tgt (Q, B, C), memory (HW, B, C), attn_mask (B*heads, Q, HW) bool, True = may not attend."""
        x = self.norm(tgt) if self.pre_norm else tgt
        attended = self.multihead_attn(
            x + query_pos, memory + pos, value=memory, attn_mask=attn_mask, need_weights=False
        )
        tgt = tgt + self.dropout(attended[0])
        return tgt if self.pre_norm else self.norm(tgt)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_init(self)

    def forward(self, tgt: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.pre_norm else self.norm(tgt)


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, [*dims[1:], output_dim], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    num_feature_levels = 3

    def __init__(self, config: TransformerDecoderConfig, in_channels: int, mask_dim: int, num_classes: int) -> None:
        super().__init__()
        c = config
        self.num_heads = c.num_heads
        self.num_layers = c.num_layers
        self.pe_layer = PositionEmbeddingSine(c.hidden_dim // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(c.hidden_dim, c.num_heads, c.dropout, c.pre_norm) for _ in range(c.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(c.hidden_dim, c.num_heads, c.dropout, c.pre_norm) for _ in range(c.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(c.hidden_dim, c.ffn_dim, c.dropout, c.pre_norm) for _ in range(c.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(c.hidden_dim)
        self.query_feat = nn.Embedding(c.num_queries, c.hidden_dim)  # learnable query features
        self.query_embed = nn.Embedding(c.num_queries, c.hidden_dim)  # learnable query positions
        self.level_embed = nn.Embedding(self.num_feature_levels, c.hidden_dim)
        projections: list[nn.Module] = []
        for _ in range(self.num_feature_levels):
            if in_channels != c.hidden_dim or c.enforce_input_proj:
                conv = nn.Conv2d(in_channels, c.hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.constant_(conv.bias, 0)
                projections.append(conv)
            else:
                projections.append(nn.Sequential())
        self.input_proj = nn.ModuleList(projections)
        self.class_embed = nn.Linear(c.hidden_dim, num_classes + 1)
        self.mask_embed = MLP(c.hidden_dim, c.hidden_dim, mask_dim, 3)

    def forward(self, multi_scale_features: Sequence[Tensor], mask_features: Tensor, aux: bool = True) -> dict:
        """multi_scale_features [1/32, 1/16, 1/8] each (B, C, h, w); mask_features (B, mask_dim, H/4, W/4).

        Returns pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4) of the last layer and aux_outputs, a list
        of the same two for the query features and every layer but the last. ``aux=False`` (inference, export):
        no aux_outputs, and the earlier layers' attention masks come from the mask features resized to each
        attention size, not from full-size masks resized: the same linear maps in the other order (bilinear
        resizing and the mask product commute), without the full-size products nobody reads.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}")
        src, pos, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            sizes.append((x.shape[-2], x.shape[-1]))
            pos.append(self.pe_layer(x).flatten(2).permute(2, 0, 1))  # (HW, B, C)
            level = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))  # (HW, B, C)
        B = mask_features.shape[0]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, B, 1)  # (Q, B, C)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, B, 1)  # (Q, B, C)

        resized: dict[int, Tensor] = {}  # aux=False: the mask features at each level's size, resized once

        def at_level(level: int) -> Tensor | None:
            if aux:
                return None
            if level not in resized:
                resized[level] = F.interpolate(mask_features, size=sizes[level], mode="bilinear", align_corners=False)
            return resized[level]

        classes, masks = [], []
        first = None if self.num_layers == 0 else at_level(0)  # with no layers the first prediction is the last
        logits, mask, attn_mask = self.prediction_heads(output, mask_features, sizes[0], first)
        classes.append(logits)
        masks.append(mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # a query whose mask is empty everywhere attends everywhere
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](output, src[level], attn_mask, pos[level], query_embed)
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            level = (i + 1) % self.num_feature_levels
            last = i == self.num_layers - 1
            logits, mask, attn_mask = self.prediction_heads(
                output, mask_features, sizes[level], None if last else at_level(level)
            )
            classes.append(logits)
            masks.append(mask)
        if not aux:
            return {"pred_logits": classes[-1], "pred_masks": masks[-1], "aux_outputs": []}
        earlier = [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1], strict=True)]
        return {"pred_logits": classes[-1], "pred_masks": masks[-1], "aux_outputs": earlier}

    def prediction_heads(
        self, output: Tensor, mask_features: Tensor, attn_mask_size: tuple[int, int], resized: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """(Q, B, C) queries -> class logits (B, Q, K+1), mask logits (B, Q, H/4, W/4), attention mask
        (B*heads, Q, h*w) for the next layer (True where the mask is below 0.5). With ``resized`` (the mask
        features already at ``attn_mask_size``) the attention mask is computed from it and no mask logits (None)."""
        decoded = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        logits = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        if resized is None:
            masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
            attn = F.interpolate(masks, size=attn_mask_size, mode="bilinear", align_corners=False)
        else:
            masks, attn = None, torch.einsum("bqc,bchw->bqhw", mask_embed, resized)
        attn = attn.sigmoid().flatten(2) < 0.5  # (B, Q, h*w)
        attn_mask = attn.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1).detach()
        return logits, masks, attn_mask
