"""Frozen dataclass configs for Mask2Former and the metadata a checkpoint carries.

Architecture (``Mask2FormerConfig``) is kept apart from what the weights were trained on (``ModelMeta``:
class names, which classes are things, colours, normalisation) and from the post-processing thresholds
(``InferenceConfig``). All three round-trip through plain dicts so checkpoints stay readable without pickle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from runtimes.vocabulary import OBJECT_MASK_THRESHOLD, OVERLAP_THRESHOLD, TOPK

# ImageNet statistics in the 0-255 RGB scale, as every official Mask2Former config uses.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ResNetConfig:
    """Detectron2-layout bottleneck ResNet (official Mask2Former R50/R101: stride in the 3x3 conv)."""

    depths: tuple[int, ...] = (3, 4, 6, 3)
    stem_channels: int = 64
    bottleneck_channels: int = 64  # of res2; doubles every stage
    out_channels: int = 256  # of res2; doubles every stage
    stride_in_1x1: bool = False
    norm: str = "FrozenBN"  # official; "BN" to train from scratch
    kind: str = "resnet"


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer as in the official Mask2Former backbone (``D2SwinTransformer``)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    patch_size: int = 4
    qkv_bias: bool = True
    drop_path_rate: float = 0.3
    absolute_pos_embed: bool = False
    pretrain_img_size: int = 224
    kind: str = "swin"


@dataclass(frozen=True)
class TimmConfig:
    """Any timm model with ``features_only=True`` that has feature maps at strides 4, 8, 16, 32.

    ``out_indices=None`` picks them from timm's ``feature_info``; explicit indices must give exactly those strides.
    ``weights``: a local pretrained file (``.tflite``: BatchNorm folded, TF padding; the network is built TF-style
    to match, see ``train.model.backbones.tflite_weights``). It is read when training starts (``build_model``),
    never when a trained checkpoint is rebuilt, so the path need not exist where the checkpoint is used.
    ``pretrained=True`` is timm's hub download, which cannot work offline.
    """

    model_name: str = "resnet18"
    out_indices: tuple[int, ...] | None = None
    pretrained: bool = False
    weights: str | None = None
    kind: str = "timm"


@dataclass(frozen=True)
class TFLiteGraphConfig:
    """A backbone rebuilt from a ``.tflite`` file's own graph (``train.model.backbones.tflite_graph``).

    ``weights``: the file, read when training starts. ``graph``: the structure computed from it (operators, taps);
    left empty in a training config, filled in when the model is built, so a checkpoint rebuilds without the file.
    """

    weights: str | None = None
    graph: dict[str, Any] | None = None
    kind: str = "tflite"


BackboneConfig = ResNetConfig | SwinConfig | TimmConfig | TFLiteGraphConfig
BACKBONE_CONFIGS: dict[str, type] = {
    "resnet": ResNetConfig, "swin": SwinConfig, "timm": TimmConfig, "tflite": TFLiteGraphConfig,
}  # fmt: skip


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Multi-scale deformable-attention encoder over 1/8, 1/16, 1/32 plus the FPN step to 1/4."""

    conv_dim: int = 256
    mask_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    num_groups: int = 32  # GroupNorm groups


@dataclass(frozen=True)
class TransformerDecoderConfig:
    """Masked-attention decoder: ``num_layers`` layers (official DEC_LAYERS - 1), round-robin over 3 scales."""

    hidden_dim: int = 256
    num_queries: int = 100
    num_heads: int = 8
    num_layers: int = 9
    ffn_dim: int = 2048
    dropout: float = 0.0
    pre_norm: bool = False
    enforce_input_proj: bool = False


@dataclass(frozen=True)
class Mask2FormerConfig:
    """Whole-model architecture. ``num_classes`` excludes the "no object" class."""

    num_classes: int
    backbone: BackboneConfig = field(default_factory=ResNetConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: TransformerDecoderConfig = field(default_factory=TransformerDecoderConfig)
    size_divisibility: int = 32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mask2FormerConfig:
        backbone = dict(data["backbone"])
        kind = backbone.get("kind")
        if kind not in BACKBONE_CONFIGS:
            raise ValueError(f"unknown backbone kind {kind!r}; expected one of {sorted(BACKBONE_CONFIGS)}")
        return cls(
            num_classes=int(data["num_classes"]),
            backbone=_from_fields(BACKBONE_CONFIGS[kind], backbone),
            pixel_decoder=_from_fields(PixelDecoderConfig, data.get("pixel_decoder", {})),
            decoder=_from_fields(TransformerDecoderConfig, data.get("decoder", {})),
            size_divisibility=int(data.get("size_divisibility", 32)),
        )


@dataclass(frozen=True)
class InferenceConfig:
    """Post-processing thresholds; the defaults are the official ones."""

    object_mask_threshold: float = OBJECT_MASK_THRESHOLD
    overlap_threshold: float = OVERLAP_THRESHOLD
    topk_per_image: int = TOPK


@dataclass(frozen=True)
class ModelMeta:
    """What the weights mean: classes, things, colours and the input normalisation."""

    class_names: tuple[str, ...]
    thing_ids: tuple[int, ...] = ()  # contiguous ids (0..K-1) of "thing" classes
    colors: tuple[tuple[int, int, int], ...] = ()  # RGB per class
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, 0-255 scale
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    input_format: str = "RGB"  # channel order the model expects after normalisation
    dataset: str = ""
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        k = len(self.class_names)
        bad = [i for i in self.thing_ids if not 0 <= i < k]
        if bad:
            raise ValueError(f"thing ids {bad} out of range for {k} classes")
        if self.colors and len(self.colors) != k:
            raise ValueError(f"{len(self.colors)} colours given for {k} classes")
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {self.input_format!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        data = dict(data)
        data["class_names"] = tuple(data["class_names"])
        data["thing_ids"] = tuple(int(i) for i in data.get("thing_ids", ()))
        data["colors"] = tuple(tuple(int(v) for v in c) for c in data.get("colors", ()))
        for key in ("pixel_mean", "pixel_std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        data["inference"] = _from_fields(InferenceConfig, data.get("inference", {}))
        return _from_fields(cls, data)


def _from_fields(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass from a dict, turning lists into tuples and refusing unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
