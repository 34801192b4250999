"""Bottleneck ResNet in detectron2's layout (``stem``, ``res2``..``res5``; convs carry their norm as ``.norm``),
so official Mask2Former R50/R101 weights load under the ``backbone.`` prefix unchanged."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from train.model.config import ResNetConfig

NORMS: dict[str, type[nn.Module]] = {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d}


class ConvNorm(nn.Conv2d):
    """Bias-free conv followed by a batch norm (detectron2's ``Conv2d(norm=...)``); frozen for fine-tuning
    pretrained weights (official), trainable ("BN") for training from scratch."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, norm: str = "FrozenBN") -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        if norm not in NORMS:
            raise ValueError(f"unknown ResNet norm {norm!r}; expected one of {sorted(NORMS)}")
        self.norm = NORMS[norm](out_ch)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class BottleneckBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bottleneck: int, stride: int, stride_in_1x1: bool, norm: str) -> None:
        super().__init__()
        self.shortcut = ConvNorm(in_ch, out_ch, 1, stride, norm) if in_ch != out_ch else None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_ch, bottleneck, 1, s1, norm)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, s3, norm)
        self.conv3 = ConvNorm(bottleneck, out_ch, 1, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class BasicStem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max-pool: stride 4."""

    def __init__(self, out_ch: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_ch, 7, 2, norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """(B, 3, H, W) -> [res2 (1/4), res3 (1/8), res4 (1/16), res5 (1/32)]."""

    strides = (4, 8, 16, 32)

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        if len(config.depths) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got {config.depths}")
        self.stem = BasicStem(config.stem_channels, config.norm)
        in_ch, out_ch, mid = config.stem_channels, config.out_channels, config.bottleneck_channels
        channels = []
        for stage, depth in enumerate(config.depths):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BottleneckBlock(in_ch, out_ch, mid, stride, config.stride_in_1x1, config.norm))
                in_ch = out_ch
            self.add_module(f"res{stage + 2}", nn.Sequential(*blocks))
            channels.append(out_ch)
            out_ch, mid = out_ch * 2, mid * 2
        self.channels = tuple(channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


def resnet_state_dict_from_hf(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF transformers ``ResNetBackbone`` keys (``embedder.embedder.convolution.weight``,
    ``encoder.stages.S.layers.I.layer.J.normalization.running_mean``, ...) -> our detectron2 layout."""
    out = {}
    for key, value in hf_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[:2] == ["embedder", "embedder"]:
            prefix, rest = "stem.conv1", parts[2:]
        elif parts[0] == "encoder" and parts[1] == "stages":
            stage, block = int(parts[2]), parts[4]
            if parts[5] == "shortcut":
                prefix, rest = f"res{stage + 2}.{block}.shortcut", parts[6:]
            elif parts[5] == "layer":
                prefix, rest = f"res{stage + 2}.{block}.conv{int(parts[6]) + 1}", parts[7:]
            else:
                raise ValueError(f"unexpected HF ResNet key {key!r}")
        else:
            raise ValueError(f"unexpected HF ResNet key {key!r}")
        if rest[0] == "convolution":
            out[f"{prefix}.weight"] = value
        elif rest[0] == "normalization":
            out[f"{prefix}.norm.{rest[1]}"] = value
        else:
            raise ValueError(f"unexpected HF ResNet key {key!r}")
    return out
