"""HF transformers Mask2Former (``Mask2FormerForUniversalSegmentation``) -> our config and state dict.

Works from the plain ``config.json`` dict and a state dict, so loading an HF folder does not need
``transformers`` installed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from train.model.backbones.resnet import resnet_state_dict_from_hf
from train.model.backbones.swin_hf import swin_state_dict_from_hf
from train.model.config import (
    BackboneConfig,
    Mask2FormerConfig,
    PixelDecoderConfig,
    ResNetConfig,
    SwinConfig,
    TransformerDecoderConfig,
)

HF_BACKBONE_STATE: dict[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]] = {
    "swin": swin_state_dict_from_hf,
    "resnet": resnet_state_dict_from_hf,
}


def _backbone_from_hf(bb: dict[str, Any]) -> BackboneConfig:
    kind = bb.get("model_type")
    if kind == "swin":
        return SwinConfig(
            embed_dim=int(bb["embed_dim"]),
            depths=tuple(bb["depths"]),
            num_heads=tuple(bb["num_heads"]),
            window_size=int(bb["window_size"]),
            mlp_ratio=float(bb.get("mlp_ratio", 4.0)),
            patch_size=int(bb.get("patch_size", 4)),
            qkv_bias=bool(bb.get("qkv_bias", True)),
            drop_path_rate=float(bb.get("drop_path_rate", 0.1)),
            absolute_pos_embed=bool(bb.get("use_absolute_embeddings", False)),
            pretrain_img_size=int(bb.get("image_size", 224)),
        )
    if kind == "resnet":
        hidden = list(bb["hidden_sizes"])
        if bb.get("layer_type", "bottleneck") != "bottleneck" or bb.get("downsample_in_first_stage", False):
            raise ValueError("only bottleneck HF ResNets without a stride in the first stage are supported")
        if any(b != 2 * a for a, b in itertools.pairwise(hidden)):
            raise ValueError(f"HF ResNet hidden_sizes {hidden} do not double per stage")
        return ResNetConfig(
            depths=tuple(bb["depths"]),
            stem_channels=int(bb["embedding_size"]),
            bottleneck_channels=hidden[0] // 4,
            out_channels=hidden[0],
            stride_in_1x1=bool(bb.get("downsample_in_bottleneck", False)),
        )
    raise ValueError(f"HF Mask2Former backbone {kind!r} is not supported (swin and resnet are)")


def config_from_hf(hf_config: dict[str, Any]) -> tuple[Mask2FormerConfig, list[str]]:
    """HF ``config.json`` dict -> (our architecture config, class names in classifier order)."""
    if hf_config.get("model_type") != "mask2former":
        raise ValueError(f"not a Mask2Former config (model_type={hf_config.get('model_type')!r})")
    id2label = {int(k): v for k, v in hf_config.get("id2label", {}).items()}
    num_classes = len(id2label) if id2label else int(hf_config["num_labels"])
    class_names = [id2label.get(i, f"class_{i}") for i in range(num_classes)]
    heads = int(hf_config.get("num_attention_heads", 8))
    config = Mask2FormerConfig(
        num_classes=num_classes,
        backbone=_backbone_from_hf(hf_config["backbone_config"]),
        pixel_decoder=PixelDecoderConfig(
            conv_dim=int(hf_config.get("feature_size", 256)),
            mask_dim=int(hf_config.get("mask_feature_size", 256)),
            num_layers=int(hf_config.get("encoder_layers", 6)),
            num_heads=heads,
            ffn_dim=int(hf_config.get("encoder_feedforward_dim", 1024)),
            dropout=float(hf_config.get("dropout", 0.0)),
        ),
        decoder=TransformerDecoderConfig(
            hidden_dim=int(hf_config.get("hidden_dim", 256)),
            num_queries=int(hf_config.get("num_queries", 100)),
            num_heads=heads,
            num_layers=int(hf_config.get("decoder_layers", 10)) - 1,
            ffn_dim=int(hf_config.get("dim_feedforward", 2048)),
            dropout=float(hf_config.get("dropout", 0.0)),
            pre_norm=bool(hf_config.get("pre_norm", False)),
            enforce_input_proj=bool(hf_config.get("enforce_input_projection", False)),
        ),
    )
    return config, class_names


# (HF pattern, our replacement) for everything but the backbone and the fused self-attention projections
_RENAMES: list[tuple[str, str]] = [
    (r"^model\.pixel_level_module\.decoder\.level_embed$", "pixel_decoder.transformer.level_embed"),
    (r"^model\.pixel_level_module\.decoder\.input_projections\.", "pixel_decoder.input_proj."),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.",
        r"pixel_decoder.transformer.encoder.layers.\1.self_attn.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        r"pixel_decoder.transformer.encoder.layers.\1.norm1.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc1\.",
        r"pixel_decoder.transformer.encoder.layers.\1.linear1.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc2\.",
        r"pixel_decoder.transformer.encoder.layers.\1.linear2.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
        r"pixel_decoder.transformer.encoder.layers.\1.norm2.",
    ),
    (r"^model\.pixel_level_module\.decoder\.mask_projection\.", "pixel_decoder.mask_features."),
    (r"^model\.pixel_level_module\.decoder\.(adapter|layer)_(\d+)\.0\.", r"pixel_decoder.\1_\2."),
    (r"^model\.pixel_level_module\.decoder\.(adapter|layer)_(\d+)\.1\.", r"pixel_decoder.\1_\2.norm."),
    (r"^model\.transformer_module\.queries_embedder\.", "transformer_decoder.query_embed."),
    (r"^model\.transformer_module\.queries_features\.", "transformer_decoder.query_feat."),
    (r"^model\.transformer_module\.level_embed\.", "transformer_decoder.level_embed."),
    (r"^model\.transformer_module\.input_projections\.(\d+)\.", r"transformer_decoder.input_proj.\1."),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.",
        r"transformer_decoder.transformer_self_attention_layers.\1.self_attn.out_proj.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        r"transformer_decoder.transformer_self_attention_layers.\1.norm.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.",
        r"transformer_decoder.transformer_cross_attention_layers.\1.multihead_attn.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.",
        r"transformer_decoder.transformer_cross_attention_layers.\1.norm.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.fc([12])\.",
        r"transformer_decoder.transformer_ffn_layers.\1.linear\2.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d+)\.final_layer_norm\.",
        r"transformer_decoder.transformer_ffn_layers.\1.norm.",
    ),
    (r"^model\.transformer_module\.decoder\.layernorm\.", "transformer_decoder.decoder_norm."),
    (
        r"^model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.",
        r"transformer_decoder.mask_embed.layers.\1.",
    ),
    (r"^class_predictor\.", "transformer_decoder.class_embed."),
]
_SELF_ATTN_QKV = re.compile(
    r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$"
)
_BACKBONE_PREFIX = "model.pixel_level_module.encoder."
_DROPPED = ("criterion.empty_weight",)


def state_dict_from_hf(hf_state: dict[str, Tensor], backbone_kind: str) -> dict[str, Tensor]:
    """HF ``Mask2FormerForUniversalSegmentation`` state dict -> our ``Mask2Former`` state dict."""
    out: dict[str, Tensor] = {}
    backbone: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unmapped = []
    for key, value in hf_state.items():
        if key in _DROPPED:
            continue
        if key.startswith(_BACKBONE_PREFIX):
            backbone[key[len(_BACKBONE_PREFIX) :]] = value
            continue
        match = _SELF_ATTN_QKV.match(key)
        if match:
            layer, which, kind = match.groups()
            qkv.setdefault((layer, kind), {})[which] = value
            continue
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"unrecognised HF Mask2Former keys: {unmapped[:10]}{' ...' if len(unmapped) > 10 else ''}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"decoder layer {layer} self-attention {kind} lacks one of q/k/v")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
        out[f"transformer_decoder.transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"] = fused
    if backbone_kind not in HF_BACKBONE_STATE:
        raise ValueError(f"no HF backbone converter for {backbone_kind!r}")
    out.update({f"backbone.{k}": v for k, v in HF_BACKBONE_STATE[backbone_kind](backbone).items()})
    return out
