"""Pretrained weights from LiteRT (TFLite) flatbuffers, loaded into a PyTorch network in graph order.

The only pretrained vision weights these machines can have are quantized TFLite files (Coral's test data, see
``../shared/third_party/pretrained/README.md``). They carry BatchNorm folded into each convolution (one bias per
conv) and were trained with TF's "SAME" padding, which pads stride-2 convolutions asymmetrically. So a network that
takes them is built TF-style (``tf_style``): every BatchNorm becomes a frozen per-channel affine (identity scale, the
file's folded bias, statistics fixed: a batch of 8 street crops must not re-normalise ImageNet features), and every
stride-2 convolution pads ``(0, 1)`` like TF does on even sizes. Mask2Former pads its input to a multiple of 32,
so every stride-2 convolution inside it sees even sizes and the padding is exact there.

The flatbuffer is read with PyPI's ``tflite`` package (the schema in pure Python, no interpreter binary): the
loader needs the graph (operator order, strides, padding) besides the constant tensors, and it runs on any host
that trains, aarch64 included. LiteRT's interpreter (``ai-edge-litert``) is the oracle in the tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

TFLITE_SUFFIX = ".tflite"
# builtin operator codes of the TFLite schema (tflite.BuiltinOperator) that carry weights we load
_ADD, _CONV_2D, _DEPTHWISE_CONV_2D, _FULLY_CONNECTED = 0, 3, 4, 9
_OP_KINDS = {_CONV_2D: "conv", _DEPTHWISE_CONV_2D: "depthwise", _FULLY_CONNECTED: "fully_connected"}
_TF_PADDING = {0: "SAME", 1: "VALID"}
_UINT8, _INT8 = 3, 9  # tflite.TensorType
_ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}  # tflite.ActivationFunctionType a network can take here


@dataclass(frozen=True)
class TFLiteLayer:
    """One weighted operator of the file, dequantized to float32 and laid out as PyTorch wants it."""

    index: int  # operator index in the graph
    kind: str  # "conv", "depthwise" or "fully_connected"
    name: str
    weight: np.ndarray  # conv (O, I, kh, kw); depthwise (C, 1, kh, kw); fully connected (O, I)
    bias: np.ndarray | None  # (O,)
    stride: tuple[int, int]
    padding: str  # "SAME" or "VALID"
    dilation: tuple[int, int] = (1, 1)
    input: int = -1  # graph tensor ids: what it reads, what it writes
    output: int = -1
    activation: str = "none"  # fused: "none", "relu", "relu6" (anything else: "unsupported:<code>")


@dataclass(frozen=True)
class TFLiteAdd:
    """An elementwise ADD of two graph tensors (a residual connection), with its fused activation."""

    index: int
    inputs: tuple[int, int]
    output: int
    activation: str = "none"


@dataclass(frozen=True)
class TFLiteWeights:
    """The weighted layers of a TFLite graph in execution order, and the input normalisation the file expects.

    ``adds`` and ``body_end`` describe the convolutional body for a network rebuilt from the graph itself
    (``train.model.backbones.tflite_graph``): the body is every operator from the first weighted one up to
    ``body_end``, the first operator that is neither a convolution nor an ADD (a pooling, a concatenation, ...).
    """

    path: str
    layers: tuple[TFLiteLayer, ...]
    pixel_mean: tuple[float, float, float]  # RGB, 0-255 scale: real = (pixel - mean) / std
    pixel_std: tuple[float, float, float]
    adds: tuple[TFLiteAdd, ...] = ()
    body_end: int = 0


def read_tflite_weights(path: str | Path) -> TFLiteWeights:
    """Parse ``path`` and dequantize every conv / depthwise / fully connected weight (per tensor or per channel)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TFLite weights at {path}")
    try:
        import tflite
    except ImportError as err:
        raise ImportError("reading .tflite weights needs the 'tflite' package: pip install tflite") from err
    buf = path.read_bytes()
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
        n_ops = graph.OperatorsLength()
    except Exception as err:  # a truncated or foreign file fails somewhere inside flatbuffers
        raise ValueError(f"{path} is not a readable TFLite flatbuffer ({type(err).__name__}: {err})") from None
    if model.SubgraphsLength() != 1 or n_ops == 0:
        raise ValueError(f"{path}: expected one subgraph with operators, got {model.SubgraphsLength()} subgraph(s)")

    def tensor_array(index: int) -> tuple[np.ndarray, object]:
        tensor = graph.Tensors(index)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int):  # flatbuffers returns 0 for an empty buffer: an activation, not a constant
            raise ValueError(f"{path}: tensor {tensor.Name().decode()} has no constant data")
        dtype = {_UINT8: np.uint8, _INT8: np.int8, 2: np.int32, 0: np.float32}.get(tensor.Type())
        if dtype is None:
            raise ValueError(f"{path}: tensor {tensor.Name().decode()} has unsupported type {tensor.Type()}")
        return np.frombuffer(data.tobytes(), dtype=dtype).reshape(tensor.ShapeAsNumpy()), tensor

    def activation(options: object) -> str:
        code = options.FusedActivationFunction()
        return _ACTIVATIONS.get(code, f"unsupported:{code}")

    layers, adds, body_end = [], [], None
    for i in range(n_ops):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        kind = _OP_KINDS.get(builtin)
        inputs = [op.Inputs(j) for j in range(op.InputsLength())]
        if builtin == _ADD and len(inputs) == 2:
            options = tflite.AddOptions()
            table = op.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            adds.append(TFLiteAdd(i, (inputs[0], inputs[1]), op.Outputs(0), activation(options)))
            continue
        if kind is None or kind == "fully_connected":
            if layers and body_end is None:
                body_end = i
            if kind is None:
                continue
        raw, w_tensor = tensor_array(inputs[1])
        weight = _dequantize(raw, w_tensor)
        bias = None
        if len(inputs) > 2 and inputs[2] >= 0:
            raw_b, b_tensor = tensor_array(inputs[2])
            bias = _dequantize(raw_b, b_tensor)
        stride, padding, dilation, act = (1, 1), "VALID", (1, 1), "none"
        if kind != "fully_connected":
            options_cls = tflite.Conv2DOptions if kind == "conv" else tflite.DepthwiseConv2DOptions
            options = options_cls()
            table = op.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            stride, padding = (options.StrideH(), options.StrideW()), _TF_PADDING[options.Padding()]
            dilation = (options.DilationHFactor(), options.DilationWFactor())
            act = activation(options)
        if kind == "conv":  # OHWI -> OIHW
            weight = weight.transpose(0, 3, 1, 2)
        elif kind == "depthwise":  # 1HWC -> C1HW
            weight = weight.transpose(3, 0, 1, 2)
        name = w_tensor.Name().decode().split(";")[0]
        layers.append(
            TFLiteLayer(i, kind, name, np.ascontiguousarray(weight), bias, stride, padding, dilation,
                        inputs[0], op.Outputs(0), act)
        )  # fmt: skip

    in_tensor = graph.Tensors(graph.Inputs(0))
    mean, std = _input_normalisation(in_tensor)
    end = n_ops if body_end is None else body_end
    return TFLiteWeights(str(path), tuple(layers), (mean,) * 3, (std,) * 3, tuple(adds), end)


def _dequantize(raw: np.ndarray, tensor: object) -> np.ndarray:
    """real = scale * (q - zero_point), per tensor or per channel along the quantized dimension."""
    if raw.dtype == np.float32:
        return raw.astype(np.float32)
    q = tensor.Quantization()
    scale = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else None
    if scale is None:
        raise ValueError(f"tensor {tensor.Name().decode()} is {raw.dtype} without quantization parameters")
    zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros_like(scale)
    shape = [1] * raw.ndim
    if scale.size > 1:
        shape[q.QuantizedDimension()] = scale.size
    return ((raw.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def _input_normalisation(tensor: object) -> tuple[float, float]:
    """(mean, std) on 0-255 pixels from the input's quantization; a float input gets TF's usual x / 127.5 - 1."""
    q = tensor.Quantization()
    if tensor.Type() in (_UINT8, _INT8) and q is not None and q.ScaleLength():
        zero = float(q.ZeroPointAsNumpy()[0]) + (128.0 if tensor.Type() == _INT8 else 0.0)
        return zero, 1.0 / float(q.ScaleAsNumpy()[0])
    return 127.5, 127.5


class Conv2dTFSame(nn.Conv2d):
    """A strided convolution with TF "SAME" padding: ``ceil(n / s)`` outputs, the odd zero after, never before.

    On sizes that are a multiple of the stride a 3x3 stride-2 conv pads ``(0, 1)``. Inside Mask2Former the input is
    padded to a multiple of 32, so a symbolic size (a dynamic-shape export) takes that case and the graph keeps
    constant pads; concrete sizes (eager, fixed-size exports, odd sizes like DeepLab's 513) are computed exactly.
    """

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        sizes = (x.shape[-1], x.shape[-2])
        for n, k, s, d in zip(sizes, reversed(self.kernel_size), reversed(self.stride), reversed(self.dilation),
                              strict=True):  # fmt: skip
            span = (k - 1) * d + 1
            total = max((-(-n // s) - 1) * s + span - n, 0) if isinstance(n, int) else max(span - s, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


class FrozenNorm(nn.Module):
    """A BatchNorm with fixed statistics and affine (buffers, not parameters), plus the activation timm fuses in.

    State-dict keys are BatchNorm's (``num_batches_tracked`` is dropped on load).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, act: nn.Module | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.full((num_features,), 1.0 - eps))  # identity with the eps
        self.act = act if act is not None else nn.Identity()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return self.act(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))


def tf_style(module: nn.Module) -> nn.Module:
    """Rebuild ``module`` in place as TF trained it: TF "SAME" stride-2 convs, every BatchNorm a ``FrozenNorm``.

    Keys stay as they were (BatchNorm's ``num_batches_tracked`` aside), so a checkpoint of the TF-style network
    loads back into it. timm's ``BatchNormAct2d`` keeps its activation (its dropout is identity in eval anyway and
    zero in every timm default).
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and not isinstance(child, Conv2dTFSame) and max(child.stride) > 1:
                conv = Conv2dTFSame(
                    child.in_channels, child.out_channels, child.kernel_size, child.stride, 0,
                    child.dilation, child.groups, child.bias is not None,
                )  # fmt: skip
                conv.load_state_dict(child.state_dict())
                setattr(parent, name, conv)
            elif isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, FrozenNorm(child.num_features, child.eps, getattr(child, "act", None)))
    return module


def load_tflite_weights(
    module: nn.Module, weights: TFLiteWeights, require_all: bool = True, undilate: bool = False
) -> int:
    """Copy the file's layers, in graph order, into ``module``'s Conv2d/Linear layers in module order.

    The BatchNorm (frozen, see ``tf_style``) after each conv takes the file's folded bias. Raises ``ValueError``
    naming the first layer whose kind, shape, stride or dilation differs, or when the counts differ
    (``require_all=False`` lets the file have more layers than the module, e.g. a classifier's head behind a
    ``features_only`` body). ``undilate=True`` loads a segmentation file's atrous stages (DeepLab drops a stride
    to 1 and dilates every later kernel by 2: output stride 16) into the plain network (the stride kept, no
    dilation): the same weights at half the resolution, DeepLab's own equivalence run backwards (logged).
    Returns the number of layers loaded.
    """
    targets = _weighted_layers(module)
    if len(weights.layers) < len(targets) or (require_all and len(weights.layers) != len(targets)):
        raise ValueError(
            f"{weights.path} has {len(weights.layers)} conv/fully-connected layers, the network "
            f"{len(targets)}: not the same architecture"
        )
    scale = 1  # the module's output stride over the file's, so far
    for position, ((name, layer, norm), src) in enumerate(zip(targets, weights.layers, strict=False)):
        scale = _check_layer(position, name, layer, src, weights.path, undilate, scale)
        if norm is None and layer.bias is None and src.bias is not None and np.any(src.bias):
            raise ValueError(f"{weights.path}: layer {src.name} has a bias, {name} has neither bias nor norm")
    with torch.no_grad():
        for (_name, layer, norm), src in zip(targets, weights.layers, strict=False):
            layer.weight.copy_(torch.from_numpy(_as_torch(src, layer)))
            bias = torch.from_numpy(src.bias) if src.bias is not None else torch.zeros(layer.weight.shape[0])
            if norm is not None:
                norm.weight.fill_(1.0)
                norm.bias.copy_(bias)
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
            elif layer.bias is not None:
                layer.bias.copy_(bias)
    logger.info("loaded %d layers from %s", len(targets), weights.path)
    if scale > 1:
        logger.info("the file's dilated layers loaded undilated: the module's output stride is %dx the file's", scale)
    return len(targets)


def _weighted_layers(module: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """(name, Conv2d or Linear, the frozen norm that follows it or None), in module registration order."""
    out: list[tuple[str, nn.Module, nn.Module | None]] = []
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d | nn.Linear):
            out.append((name, child, None))
        elif isinstance(child, FrozenNorm) and out and out[-1][2] is None:
            out[-1] = (out[-1][0], out[-1][1], child)
        elif isinstance(child, nn.BatchNorm2d):
            raise ValueError(f"{name} is a trainable BatchNorm: build the network with tf_style() first (BN folded)")
    return out


def _as_torch(src: TFLiteLayer, layer: nn.Module) -> np.ndarray:
    """The file's weight shaped for ``layer`` (a 1x1 conv's (O, I, 1, 1) for a Linear's (O, I))."""
    if isinstance(layer, nn.Linear) and src.weight.ndim == 4:
        return src.weight.reshape(src.weight.shape[:2])
    return src.weight


def _check_layer(
    position: int, name: str, layer: nn.Module, src: TFLiteLayer, path: str, undilate: bool, scale: int
) -> int:
    """Raise on the first difference; returns how much lower the file's resolution is here than the module's after
    this layer (1 unless ``undilate`` took a stride the file had replaced by dilation, see ``load_tflite_weights``).
    """
    where = f"{path}: layer {position} ({src.kind} {src.name}, operator {src.index}) vs {name}"
    if isinstance(layer, nn.Linear):  # a classifier may be stored as a 1x1 conv after the pooling
        expected_kind = ("fully_connected",) + (("conv",) if src.weight.shape[2:] == (1, 1) else ())
    elif layer.groups == layer.in_channels and layer.groups > 1:
        expected_kind = ("depthwise",)
    else:
        expected_kind = ("conv",)
    if src.kind not in expected_kind:
        raise ValueError(f"{where}: the file has a {src.kind} layer, the network a {expected_kind[0]}")
    if tuple(layer.weight.shape) != _as_torch(src, layer).shape:
        raise ValueError(f"{where}: weight shape {src.weight.shape} in the file, {tuple(layer.weight.shape)} here")
    if not isinstance(layer, nn.Conv2d):
        return scale
    stride, dilation = tuple(layer.stride), tuple(layer.dilation)
    pointwise = tuple(layer.kernel_size) == (1, 1)  # a 1x1 kernel's dilation means nothing
    dilation_ok = pointwise or src.dilation == tuple(d * scale for d in dilation)
    gain = stride[0] // src.stride[0] if stride[0] % src.stride[0] == 0 and stride[0] == stride[1] else 0
    if not (dilation_ok and (stride == src.stride or (undilate and gain > 1))):
        atrous = gain > 1 or max(src.dilation) > 1
        hint = " (a dilated segmentation backbone? load it with undilate=True)" if atrous else ""
        raise ValueError(
            f"{where}: stride {src.stride} dilation {src.dilation} in the file, "
            f"stride {stride} dilation {dilation} here{hint}"
        )
    same_strided = src.padding == "SAME" and max(stride) > 1
    if same_strided and not isinstance(layer, Conv2dTFSame):
        raise ValueError(f"{where}: TF 'SAME' strided padding needs tf_style() (asymmetric padding)")
    return scale * max(gain, 1)
