"""A backbone rebuilt from a TFLite file's own graph: its convolutions, residual ADDs and fused activations, in
operator order, for architectures no library here builds (Coral's Cityscapes DeepLab runs a MobileNet-EdgeTPU
whose channel widths match no timm model).

The body is the file's convolutional trunk (``TFLiteWeights.body_end``: it stops before the first pooling or
concatenation, so DeepLab's ASPP head and a classifier's pooling stay out). Feature maps are tapped at strides 4,
8, 16 and 32: the last block output at each. A DeepLab body runs atrous (output stride 16 or 8: a stride dropped, later
kernels dilated); it is rebuilt undilated (the stride put back on the spatial convolution that lost it, the
dilations divided out), DeepLab's own equivalence run backwards, so it reaches stride 32 like any backbone here.

The structure is computed once from the file (``graph_spec``) and kept in ``TFLiteGraphConfig.graph``: a trained
checkpoint rebuilds from its config alone, without the file. BatchNorm arrives folded: each convolution keeps the
file's bias and trains as conv + bias.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.model.backbones.tflite_weights import (
    Conv2dTFSame,
    TFLiteAdd,
    TFLiteLayer,
    TFLiteWeights,
    read_tflite_weights,
)
from train.model.config import TFLiteGraphConfig

STRIDES = (4, 8, 16, 32)
_ACTIVATION_FUNCTIONS = {"none": None, "relu": F.relu, "relu6": F.relu6}


def graph_spec(weights: TFLiteWeights, undilate: bool = True, strides: tuple[int, ...] = STRIDES) -> dict[str, Any]:
    """``{"input": tensor id, "ops": [...], "taps": [tensor id at each of strides]}`` of the file's body.

    A tap is the last block output at its stride (a residual ADD or a linear projection: what timm's
    ``features_only`` gives for MobileNets); operators after the last tap are left out. ``undilate=False`` keeps
    the file's atrous layout (the network as the file runs it: what LiteRT's own tensors can be compared with).
    Raises ``ValueError`` naming the operator when the body cannot be rebuilt: an activation we do not run, a
    residual ADD across a stride we put back, no block output at one of the strides.
    """
    body = sorted(
        [layer for layer in weights.layers if layer.index < weights.body_end and layer.kind != "fully_connected"]
        + [add for add in weights.adds if add.index < weights.body_end],
        key=lambda op: op.index,
    )
    if not body or isinstance(body[0], TFLiteAdd):
        raise ValueError(f"{weights.path}: the graph does not start with a convolution")
    spatial = [op for op in body if isinstance(op, TFLiteLayer) and max(op.weight.shape[2:]) > 1]
    extra_stride: dict[int, int] = {}  # operator index -> the stride DeepLab took away from it
    divide: dict[int, int] = {}  # operator index -> the dilation factor divided out
    absorbed, previous = 1, None
    for op in spatial if undilate else []:
        rate = op.dilation[0]
        if rate > absorbed:
            if previous is None or rate % absorbed:
                raise ValueError(f"{weights.path}: operator {op.index} ({op.name}) is dilated from the start")
            extra_stride[previous.index] = extra_stride.get(previous.index, 1) * (rate // absorbed)
            absorbed = rate
        divide[op.index] = absorbed
        previous = op
    stride_of = {body[0].input: 1}
    ops = []
    for op in body:
        if isinstance(op, TFLiteAdd):
            joined = {stride_of.get(t) for t in op.inputs}
            if len(joined) != 1 or None in joined:
                raise ValueError(f"{weights.path}: the ADD at operator {op.index} joins tensors at strides {joined}")
            if op.activation not in _ACTIVATION_FUNCTIONS:
                raise ValueError(f"{weights.path}: operator {op.index} has activation {op.activation}")
            stride_of[op.output] = joined.pop()
            ops.append({"op": "add", "index": op.index, "inputs": list(op.inputs), "output": op.output,
                        "act": op.activation})  # fmt: skip
            continue
        if op.input not in stride_of:
            raise ValueError(f"{weights.path}: operator {op.index} ({op.name}) reads a tensor outside the body")
        if op.activation not in _ACTIVATION_FUNCTIONS:
            raise ValueError(f"{weights.path}: operator {op.index} ({op.name}) has activation {op.activation}")
        stride = op.stride[0] * extra_stride.get(op.index, 1)
        dilation = op.dilation[0] // divide.get(op.index, 1)  # a 1x1 conv is never dilated
        if op.index in extra_stride:
            for add in weights.adds:  # a residual around the block that got its stride back cannot hold
                if add.index < weights.body_end and op.input in add.inputs:
                    raise ValueError(f"{weights.path}: undilating operator {op.index} breaks the ADD {add.index}")
        groups = op.weight.shape[0] if op.kind == "depthwise" else 1
        out_channels = op.weight.shape[0]
        in_channels = op.weight.shape[1] * groups
        stride_of[op.output] = stride_of[op.input] * stride
        ops.append({
            "op": op.kind, "index": op.index, "name": op.name, "inputs": [op.input], "output": op.output,
            "in_channels": in_channels, "out_channels": out_channels, "kernel": list(op.weight.shape[2:]),
            "stride": stride, "dilation": dilation, "groups": groups, "padding": op.padding, "act": op.activation,
        })  # fmt: skip
    taps = []
    for s in strides:
        at = [op["output"] for op in ops if stride_of[op["output"]] == s and op["act"] == "none"]
        if not at:
            have = sorted(set(stride_of.values()))
            raise ValueError(f"{weights.path}: the body has no block output at stride {s} (it has strides {have})")
        taps.append(at[-1])
    last = max(i for i, op in enumerate(ops) if op["output"] in taps)
    return {"input": body[0].input, "ops": ops[: last + 1], "taps": taps}


class TFLiteGraphBackbone(nn.Module):
    """(B, 3, H, W) -> the body's feature maps at strides 4, 8, 16, 32 (see the module docstring)."""

    strides = STRIDES

    def __init__(self, config: TFLiteGraphConfig) -> None:
        super().__init__()
        if config.graph is None:
            if config.weights is None:
                raise ValueError("a tflite backbone needs weights (the .tflite file) or a graph (from a checkpoint)")
            config = dataclasses.replace(config, graph=graph_spec(read_tflite_weights(config.weights)))
        self.resolved_config = config  # with the graph: what a checkpoint stores
        graph = config.graph
        self.input_tensor, self.ops, self.taps = int(graph["input"]), list(graph["ops"]), list(graph["taps"])
        self.convs = nn.ModuleDict()
        channels = {}
        for op in self.ops:
            if op["op"] == "add":
                channels[op["output"]] = channels[op["inputs"][0]]
                continue
            kernel, stride, dilation = tuple(op["kernel"]), op["stride"], op["dilation"]
            if op["padding"] == "SAME" and stride > 1:
                conv = Conv2dTFSame(op["in_channels"], op["out_channels"], kernel, stride, 0, dilation, op["groups"])
            else:
                padding = tuple((k - 1) * dilation // 2 for k in kernel) if op["padding"] == "SAME" else 0
                conv = nn.Conv2d(op["in_channels"], op["out_channels"], kernel, stride, padding, dilation, op["groups"])
            self.convs[str(op["index"])] = conv
            channels[op["output"]] = op["out_channels"]
        self.channels = tuple(channels[t] for t in self.taps)

    def load_weights(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Copy the file's weights and biases in; returns the (mean, std) normalisation the file expects."""
        config = self.resolved_config
        if config.weights is None:
            return None
        weights = read_tflite_weights(config.weights)
        by_index = {layer.index: layer for layer in weights.layers}
        with torch.no_grad():
            for key, conv in self.convs.items():
                src = by_index.get(int(key))
                if src is None or tuple(src.weight.shape) != tuple(conv.weight.shape):
                    got = None if src is None else tuple(src.weight.shape)
                    here = tuple(conv.weight.shape)
                    raise ValueError(f"{config.weights}: operator {key} is {got} in the file, {here} in the network: "
                                     "not the graph it was built from")  # fmt: skip
                conv.weight.copy_(torch.from_numpy(src.weight))
                conv.bias.copy_(torch.from_numpy(src.bias) if src.bias is not None else torch.zeros_like(conv.bias))
        return weights.pixel_mean, weights.pixel_std

    def forward(self, x: Tensor) -> list[Tensor]:
        tensors = {self.input_tensor: x}
        for op in self.ops:
            if op["op"] == "add":
                y = tensors[op["inputs"][0]] + tensors[op["inputs"][1]]
            else:
                y = self.convs[str(op["index"])](tensors[op["inputs"][0]])
            act = _ACTIVATION_FUNCTIONS[op["act"]]
            tensors[op["output"]] = act(y) if act is not None else y
        return [tensors[t] for t in self.taps]
