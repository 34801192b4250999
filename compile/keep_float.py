"""Which nodes of an fp32 graph both int8 quantisers (``compile.quantize_onnxruntime``,
``compile.quantize_openvino``) keep in float: structural rules over the ONNX graph, each a function from the model
to node names, chosen by name (:data:`KEEP_FLOAT`, ``QuantizationConfig.keep_float``).

What stays in float, and why (label agreement with fp32 on 50 CamVid val images at 240x320, a ResNet-18
Mask2Former trained 600 iterations, calibrated on 64 CamVid train images):

* ``image_conv``: the convolution(s) that read the normalised image. ORT 99.19% -> 99.41% (MinMax),
  NNCF 99.53% -> 99.63%. Both halves matter: int8 weights alone cost 0.12 pt, the per-tensor uint8 input alone
  0.18 pt (one grid for three channels of different mean/std). Price: ORT runs a 7x7 conv in fp32, about
  +9 ms median (+14%) at 240x320 on one core; OpenVINO showed no measurable cost. For speed over margin pass
  ``QuantizationConfig(keep_float=("attention_matmul",))``.
* ``stem_conv`` (a default; it includes ``image_conv``): every convolution that reads a map at half the image's
  resolution or finer (:func:`stem_convs`). A ResNet or Swin pools to a quarter right after the image conv, so
  for them it is ``image_conv``; a MobileNet keeps its first block or two float. On the MobileNet-EdgeTPU CamVid
  model of fold 0001TP the two after the image conv held the whole int8 loss (OpenVINO int8 58.91 -> 62.19 mIoU,
  fp32 62.24); the three folds as shipped: ``benchmarks/results/loso_edgetpu/``.
* ``attention_matmul``: MatMuls without a constant weight, i.e. the decoder's Q.K^T and softmax.V products.
  ORT 99.12% -> 99.19% (98.99% -> 99.38% on the same model at 300 iterations); NNCF/OpenVINO 98.89% -> 99.53%
  (OpenVINO runs them in int8; the same QDQ file on ORT gave 99.54% either way).
* With both rules: ORT 99.48% (Percentile calibration), OpenVINO 99.63%; mIoU 45.26 (fp32) -> 45.22 / 45.27.
* ``linear_bottleneck``: MobileNet's pointwise projections after a depthwise conv, with no activation after them
  (see :func:`linear_bottlenecks`); a ResNet has none. ``depthwise_conv`` (the depthwise convs themselves) is a
  rule too but not a default: keeping them float measured 87.7 % vs 88.3 % on the same MobileNetV2 model.
* Not excluded because it measured no difference: the deformable-attention sampling-offset projections that feed
  GridSample (99.117% vs 99.112%) and the mask-embedding head before the final einsum (+0.02 pt). GridSample,
  Softmax, LayerNormalization and the argmax are never quantised (not in
  ``compile.quantize_onnxruntime.ORT_OP_TYPES``; NNCF's transformer preset leaves them float); the semantic tail's
  class-score MatMuls stay float by the ``attention`` rule (two non-constant operands), as the Einsums they
  replaced did.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

import onnx

logger = logging.getLogger(__name__)

# structural rules for what stays float in both int8 paths (see the module docstring for the measurements)
KEEP_FLOAT: tuple[str, ...] = ("stem_conv", "attention_matmul", "linear_bottleneck")
_COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def image_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions that read the image: reached from a graph input without passing another Conv/MatMul/Gemm.

    Only data edges count: Shape/Size outputs (dynamic-size graphs compute resize targets from the input's shape)
    are not followed.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, seen = [], set()
    queue = deque(i.name for i in model.graph.input)
    while queue:
        for node in consumers.get(queue.popleft(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in _COMPUTE:
                if node.op_type.startswith("Conv"):
                    found.append(node.name)
                continue
            if node.op_type not in ("Shape", "Size"):
                queue.extend(node.output)
    return found


def attention_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose second operand is not a constant: attention's Q.K^T and softmax.V (no weight to quantise),
    and the semantic tail's class probabilities x masks."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in constants]


def depthwise_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions with one group per channel (MobileNet's depthwise 3x3s): few FLOPs, per-channel ranges that a
    per-tensor int8 activation grid serves badly."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]


def linear_bottlenecks(model: onnx.ModelProto, fused: bool = False) -> list[str]:
    """MobileNet's linear bottlenecks: pointwise convolutions that read a depthwise convolution's activation and
    whose output goes on without one (into the residual sum). Their unclipped outputs span wide ranges that a
    per-tensor int8 grid serves badly: on a CamVid MobileNetV2 model, NNCF int8 labels agreed with fp32 on 88.3 %
    of 20 held-out frames with them quantised, 98.0 % with them float (99.6 % with the whole backbone float)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    depthwise = set(depthwise_convs(model))
    expanding = set(_expanding_spatial_convs(model)) if fused else set()
    activations = ("Relu", "Clip", "HardSwish", "Sigmoid", "LeakyRelu")
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name in depthwise:
            continue
        source = producer.get(node.input[0])
        if source is not None and source.op_type in activations:
            source = producer.get(source.input[0])
        reads_expansion = source is not None and (source.name in depthwise or source.name in expanding)
        activated = any(op in activations for op in consumers.get(node.output[0], []))
        if reads_expansion and not activated and node.name not in expanding:
            found.append(node.name)
    return found


def fused_linear_bottlenecks(model: onnx.ModelProto) -> list[str]:
    """:func:`linear_bottlenecks` plus the projections of fused inverted bottlenecks (MobileNet-EdgeTPU: a full
    spatial convolution expands the channels where MobileNetV2 has a 1x1 expansion and a depthwise one)."""
    return linear_bottlenecks(model, fused=True)


def _expanding_spatial_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions with a kernel larger than 1x1, one group, and more output than input channels."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        shape = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if shape is not None and len(shape) == 4 and max(shape[2:]) > 1 and groups == 1 and shape[0] > shape[1]:
            found.append(node.name)
    return found


def stem_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions that read a map at half the image's resolution or finer: the stem (the image convolutions and,
    in MobileNets, the layers before the first stride-4 map). Few channels carry every later feature there; on
    the MobileNet-EdgeTPU CamVid model of fold 0001TP two of them (a 1x1 projection 24 -> 16 and the first fused
    3x3 expansion 16 -> 128) held the whole int8 loss: 62.24 fp32, 58.91 int8, 62.19 with them float. The
    resolution comes from ONNX shape inference against the image convolutions' input; a graph whose shapes stay
    unknown keeps only the image convolutions (logged)."""
    images = image_convs(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    spatial: dict[str, tuple[int, int]] = {}
    for value in [*graph.value_info, *graph.input]:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if len(dims) == 4 and all(dims[2:]):
            spatial[value.name] = (dims[2], dims[3])
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    full = [spatial.get(convs[name].input[0]) for name in images if name in convs]
    if not full or None in full:
        logger.warning("stem_conv: the image's size is unknown after shape inference; keeping only image convs")
        return images
    height, width = max(h for h, _ in full), max(w for _, w in full)
    stem = [
        name
        for name, node in convs.items()
        if name not in images
        and (size := spatial.get(node.input[0])) is not None
        and 2 * size[0] >= height
        and 2 * size[1] >= width
    ]
    return images + stem


_RULES = {
    "image_conv": image_convs,
    "stem_conv": stem_convs,
    "attention_matmul": attention_matmuls,
    "depthwise_conv": depthwise_convs,
    "linear_bottleneck": linear_bottlenecks,
    "fused_linear_bottleneck": fused_linear_bottlenecks,
}


def keep_float_nodes(model: onnx.ModelProto, rules: Iterable[str] = KEEP_FLOAT) -> list[str]:
    """Node names that the structural ``rules`` (names in ``KEEP_FLOAT``) keep out of int8."""
    names: list[str] = []
    for rule in rules:
        if rule not in _RULES:
            raise ValueError(f"unknown keep-float rule {rule!r}; expected some of {sorted(_RULES)}")
        names += [n for n in _RULES[rule](model) if n not in names]
    return names
