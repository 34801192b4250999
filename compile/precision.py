"""Reduced-precision variants of an exported graph: fp16 for GPUs, int8 (QDQ) for ONNX Runtime and OpenVINO.

Every function takes the fp32 ``.onnx`` that ``compile.onnx_export`` wrote and writes ONE self-contained ``.onnx``
(no external data) with the same inputs and outputs (uint8 ``images`` in; uint8 ``labels`` or float
``pred_logits``/``pred_masks`` out) and exactly the ``metadata_props`` of the source (the compiler's JSON).

These int8 artifacts are CPU artifacts (ONNX Runtime, OpenVINO) and keep the quantisers' own Q/DQ types: uint8
activations (ORT's asymmetric ones, NNCF's unsigned ones after ReLU), int8 weights. They are not TensorRT graphs,
whatever their types: TensorRT takes symmetric int8 Q/DQ only (all-zero zero points; ``compile.tensorrt_rules``),
and TensorRT int8 is a ModelOpt artifact (``compile.tensorrt_export.check_tensorrt_request``). Storing uint8 as int8
(zero point z -> z - 128, the same arithmetic: ``compile.tensorrt_rules.qdq_uint8_to_int8``) was measured and not
adopted: ONNX Runtime's reference kernels give identical labels, but OpenVINO then runs 11 of the tiny test model's
FullyConnected layers with i8 instead of u8 activations and its labels agree with fp32 on 97.24% instead of 99.28%
(``tests/compile/test_precision.py`` model; on the packaged CamVid model the rewrite changed no label).

Both int8 paths first run ``quant_pre_process`` (ONNX Runtime's basic graph optimisation, constant folding,
ONNX shape inference): the export slices ``nn.MultiheadAttention``'s packed ``in_proj_weight`` at run time, so
before folding the q/k/v projections are MatMuls on a *computed* weight, which the quantisers treat as an
activation (per-tensor, calibrated) or leave in fp32. After folding they are Gemms on constants with per-channel
int8 weights (NNCF artifact 2.3 MB -> 1.25 MB on the tiny test model, 17 fully connected layers f32 -> i8).

What stays in float, and why (label agreement with fp32 on 50 CamVid val images at 240x320, a ResNet-18
Mask2Former trained 600 iterations, calibrated on 64 CamVid train images):

* ``image_conv``: the convolution(s) that read the normalised image. ORT 99.19% -> 99.41% (MinMax),
  NNCF 99.53% -> 99.63%. Both halves matter: int8 weights alone cost 0.12 pt, the per-tensor uint8 input alone
  0.18 pt (one grid for three channels of different mean/std). Price: ORT runs a 7x7 conv in fp32, about
  +9 ms median (+14%) at 240x320 on one core; OpenVINO showed no measurable cost. For speed over margin pass
  ``keep_float=("attention_matmul",)``.
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
  Softmax, LayerNormalization and the argmax are never quantised (not in ``ORT_OP_TYPES``; NNCF's transformer
  preset leaves them float); the semantic tail's class-score MatMuls stay float by the ``attention`` rule (two
  non-constant operands), as the Einsums they replaced did.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtimes.artifact import METADATA_KEY, write_metadata
from runtimes.vocabulary import INPUT_NAME

if TYPE_CHECKING:
    import nncf

logger = logging.getLogger(__name__)


# convert_float_to_float16's own default block list names ML-classical and integer-ish ops (TreeEnsemble, TopK,
# Range, CumSum, Min/Max, ...), none of which occurs in our graph; we add nothing. fp16 storage of every tensor
# (fp16_rounding_model) kept 99.965% of CamVid labels and 99.99% on generated scenes with nothing blocked; the
# largest activation is 255 (the raw image; 65504 is fp16's limit). Blocking an op would not change that: its
# fp32 output is cast back to fp16 for the next op, and GPU fp16 kernels of Softmax, LayerNormalization and
# MatMul already accumulate in fp32. Each blocked op would only cost two Casts and an fp32 kernel.
FP16_OP_BLOCK_LIST: tuple[str, ...] = ()

# ONNX Runtime int8: the ops that carry the FLOPs and have int8 kernels (QLinearConv / QLinearMatMul / QGemm).
# ORT's default (every op it knows: also Add, Mul, Sigmoid, Softmax, Where, Resize, ArgMax, ...) measured 97.00%
# vs 99.12% label agreement on CamVid, and met zero-range tensors (NaN zero points).
ORT_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm")

# ORT calibration: Percentile (99.999th) beat MinMax by 0.05-0.08 pt on two CamVid models (99.49% vs 99.41%);
# Entropy gave results identical to MinMax. Symmetric int8 activations: 99.02% (MinMax) vs 99.41% for uint8.
ORT_CALIBRATION = "Percentile"
ORT_CALIBRATION_CHUNK = 16  # images per histogram update: ORT keeps every intermediate tensor of a chunk in RAM
ORT_CALIBRATION_RAM_SHARE = 0.25  # of the available memory, for one chunk's intermediate tensors

# structural rules for what stays float in both int8 paths (see the module docstring for the measurements)
KEEP_FLOAT: tuple[str, ...] = ("stem_conv", "attention_matmul", "linear_bottleneck")
_COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")


# --------------------------------------------------------------------------------------------- helpers


def calibration_inputs(images: Iterable[np.ndarray], input_name: str = INPUT_NAME) -> Iterator[dict[str, np.ndarray]]:
    """HxWx3 uint8 BGR images (already at the model input size) -> ``{input_name: (1, H, W, 3) uint8}`` feeds."""
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"calibration image {i} has shape {image.shape}; expected (H, W, 3) BGR")
        if image.dtype != np.uint8:
            raise ValueError(f"calibration image {i} has dtype {image.dtype}; expected uint8 (0-255 BGR)")
        yield {input_name: np.ascontiguousarray(image[None])}


def _load(src: str | Path) -> onnx.ModelProto:
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}")
    return onnx.load(str(src))


def _save(model: onnx.ModelProto, dst: str | Path, metadata_from: onnx.ModelProto) -> Path:
    """Write ``model`` as one file carrying exactly ``metadata_from``'s metadata_props (tools add their own); an m2f
    document gets this graph's ``graph_sha256``."""
    del model.metadata_props[:]
    for prop in metadata_from.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    document = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if document is not None:
        write_metadata(model, json.loads(document))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dst), save_as_external_data=False)
    return dst


def _preprocess(src: Path, work: Path, keep_transposes: bool = False) -> Path:
    """``quant_pre_process``: ONNX Runtime's basic graph optimisation (constant folding: q/k/v weights become
    initializers; MatMul+Add -> Gemm), then ONNX shape inference.

    ``keep_transposes`` (the OpenVINO path) leaves ONNX Runtime's transpose optimiser out of that optimisation.
    It pushes the semantic tail's last Transpose into the ArgMax, an argmax over the last axis of (B, H, W, K),
    which OpenVINO runs as a slow last-axis TopK (the int8 file's tail became slower than the fp32 file's, whose
    graph never went through it; ``benchmarks/results/issue20_int8_tail/``). ONNX Runtime's own ArgMax takes
    either axis alike, so its path keeps the optimiser and its file is unchanged. Symbolic shape inference is
    skipped: it fails on the dynamo exporter's graphs and ONNX shape inference is enough for static and dynamic
    inputs alike.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    if not keep_transposes:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        return out
    import onnxruntime as ort

    optimized = work / "optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(
        str(src), options, providers=["CPUExecutionProvider"], disabled_optimizers=["TransposeOptimizer"]
    )
    quant_pre_process(str(optimized), str(out), skip_optimization=True, skip_symbolic_shape=True)
    return out


def float_activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the float tensors whose shapes ONNX shape inference knows: one input's worth of intermediates."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
    total = 0
    for info in model.graph.value_info:
        tensor = info.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]
        if tensor.elem_type in floats and dims and all(d > 0 for d in dims):
            total += int(np.prod(dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
    return total


def calibration_chunk(model: onnx.ModelProto, n_feeds: int, available_bytes: int | None = None) -> int:
    """Images per calibration update: at most ORT_CALIBRATION_CHUNK, within a RAM share, dividing ``n_feeds``.

    ORT's histogram calibration keeps every collected intermediate tensor of a chunk in memory: 16 images of a
    Swin-T model at 512x512 were killed for memory on a 24 GiB machine.
    """
    if available_bytes is None:
        available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    per_input = max(float_activation_bytes(model), 1)
    limit = int(max(1, min(ORT_CALIBRATION_CHUNK, ORT_CALIBRATION_RAM_SHARE * available_bytes // per_input)))
    return max(d for d in range(1, limit + 1) if n_feeds % d == 0)


def _calibration_list(calibration: Iterable[dict[str, np.ndarray]], model: onnx.ModelProto) -> list[dict]:
    """The calibration feeds as a list, checked against the model's inputs."""
    feeds = list(calibration)
    if not feeds:
        raise ValueError("int8 quantisation needs calibration data: got no input dicts (see calibration_inputs)")
    init = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in init}
    for k, feed in enumerate(feeds):
        if set(feed) != set(inputs):
            raise ValueError(f"calibration feed {k} has inputs {sorted(feed)}; the model takes {sorted(inputs)}")
        for name, value in feed.items():
            value = np.asarray(value)
            tensor_type = inputs[name].type.tensor_type
            want = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            if value.dtype != want:
                raise ValueError(f"calibration feed {k}: {name!r} is {value.dtype}, the model wants {want}")
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            if len(dims) != value.ndim or any(d not in (None, v) for d, v in zip(dims, value.shape, strict=True)):
                raise ValueError(
                    f"calibration feed {k}: {name!r} has shape {value.shape}, the model takes {dims}; bring the "
                    "images to the model input size first (as the SDK's preprocessing does)"
                )
    return feeds


def _match_nodes(model: onnx.ModelProto, op_types: Iterable[str] = (), patterns: Iterable[str] = ()) -> list[str]:
    """Names of the nodes whose op type is in ``op_types`` or whose name matches one of the regex ``patterns``."""
    op_types, regexes = set(op_types), [re.compile(p) for p in patterns]
    return [n.name for n in model.graph.node if n.op_type in op_types or any(r.search(n.name) for r in regexes)]


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


# --------------------------------------------------------------------------------------------- fp16


def convert_fp16(
    src: str | Path,
    dst: str | Path,
    op_block_list: Sequence[str] = FP16_OP_BLOCK_LIST,
    node_block_list: Sequence[str] = (),
) -> Path:
    """fp16 weights and activations for GPU targets (TensorRT, CUDA, OpenVINO GPU); returns ``dst``.

    The uint8 ``images`` input and the outputs keep their types (float outputs are cast back to float32), so
    the artifact is a drop-in replacement. ``op_block_list`` / ``node_block_list``: op types / node names kept
    in fp32 (Casts around them). On a CPU the result runs on OpenVINO (which computes f16 graphs in f32 or
    bf16 unless the CPU has native fp16) and on ONNX Runtime (which has CPU fp16 kernels only for data movement
    and LayerNormalization and wraps every other op in Casts to fp32): neither checks fp16 arithmetic; see
    :func:`fp16_rounding_model` for that.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    source = _load(src)
    model = onnx.shape_inference.infer_shapes(source)
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
    model = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=blocked,
        node_block_list=list(node_block_list),
        disable_shape_infer=True,
    )
    _check_io_unchanged(source, model)
    n_fp32 = sum(n.op_type in blocked or n.name in node_block_list for n in model.graph.node)
    logger.info("fp16: %s -> %s (%d nodes kept in fp32)", src, dst, n_fp32)
    return _save(model, dst, source)


def fp16_rounding_model(src: str | Path, dst: str | Path) -> Path:
    """An fp32 model that rounds every weight and every float tensor to fp16 (Cast pairs): fp16 numerics on a CPU.

    Each op still computes in fp32 (as GPU fp16 kernels of MatMul, Conv, Softmax and LayerNormalization accumulate
    in fp32), but every tensor between ops is stored in fp16, so overflow past 65504, underflow and the rounding
    of each intermediate show up as in :func:`convert_fp16`'s output on a GPU (with its default, empty block list).
    """
    source = _load(src)
    model = onnx.shape_inference.infer_shapes(source)
    float_values = {
        v.name
        for v in [*model.graph.value_info, *model.graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        for i, name in enumerate(node.output):
            if name not in float_values:
                continue
            node.output[i] = f"{name}__fp32"
            nodes.append(helper.make_node("Cast", [f"{name}__fp32"], [f"{name}__fp16"], to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return _save(model, dst, source)


def _check_io_unchanged(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    def io(m: onnx.ModelProto) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]

    if io(before) != io(after):
        raise RuntimeError(f"precision conversion changed the graph's inputs/outputs: {io(before)} -> {io(after)}")


# --------------------------------------------------------------------------------------------- int8: ORT


def quantize_onnxruntime_int8(
    src: str | Path,
    dst: str | Path,
    calibration: Iterable[dict[str, np.ndarray]],
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    keep_float: Sequence[str] = KEEP_FLOAT,
    op_types: Sequence[str] = ORT_OP_TYPES,
    method: str = ORT_CALIBRATION,
    activation_type: str = "uint8",
) -> Path:
    """Static post-training int8 quantisation for ONNX Runtime (QDQ, per-channel int8 weights); returns ``dst``.

    ``calibration``: input dicts (see :func:`calibration_inputs`), real images of the deployment scene at the
    model's input size (a few hundred; more costs time, not memory). Quantised: ``op_types`` minus
    ``exclude_op_types``, minus the nodes of the structural ``keep_float`` rules (see :data:`KEEP_FLOAT`) and those
    whose name matches a regex in ``exclude_nodes`` (names after ``quant_pre_process``). ``method``: "Percentile",
    "MinMax" or "Entropy". ``activation_type``: "uint8" (default; x86 CPUs multiply u8 x s8 with VPMADDUBSW /
    VNNI, and asymmetric u8 uses the full range after ReLU) or "int8" (symmetric; ARM, TensorRT).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {m.name: m for m in CalibrationMethod if m.name in ("MinMax", "Percentile", "Entropy")}
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {sorted(methods)}")
    act_types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activation_type not in act_types:
        raise ValueError(f"activation_type must be 'uint8' or 'int8', got {activation_type!r}")
    source = _load(src)
    feeds = _calibration_list(calibration, source)

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(feeds[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="m2f_ort_int8_") as tmp:
        prepared = _preprocess(Path(src), Path(tmp))
        model = onnx.load(str(prepared))
        # calibrate in chunks that divide the set evenly (ORT's strided calibration requires it)
        chunk = calibration_chunk(model, len(feeds))
        excluded = _match_nodes(model, exclude_op_types, exclude_nodes)
        excluded += [n for n in keep_float_nodes(model, keep_float) if n not in excluded]
        logger.info(
            "ORT int8: %s, %s calibration over %d inputs (%d per update), %d nodes kept float",
            src,
            method,
            len(feeds),
            chunk,
            len(excluded),
        )
        out = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepared),
            str(out),
            _Feeds(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=[t for t in op_types if t not in set(exclude_op_types)],
            per_channel=True,
            # 7-bit weights: u8 x s8 products summed in pairs saturate int16 (VPMADDUBSW) on x86 CPUs without VNNI
            # (e.g. AVX2-only EPYC: 98.5 % labels equal to fp32 with 8-bit weights); the file may run on any CPU
            reduce_range=True,
            activation_type=act_types[activation_type],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": activation_type == "int8", "CalibStridedMinMax": chunk},
        )
        model = onnx.load(str(out))
    _check_io_unchanged(source, model)
    return _save(model, dst, source)


# --------------------------------------------------------------------------------------------- int8: OpenVINO


def quantize_openvino_int8(
    src: str | Path,
    dst: str | Path,
    calibration: Iterable[dict[str, np.ndarray]],
    ignored_scope: nncf.IgnoredScope | None = None,
    subset_size: int = 300,
    keep_float: Sequence[str] = KEEP_FLOAT,
) -> Path:
    """NNCF post-training int8 quantisation (ONNX backend, transformer preset) to a QDQ ``.onnx``; returns ``dst``.

    OpenVINO reads the QuantizeLinear/DequantizeLinear pairs and runs the convolutions and fully connected layers
    in u8/i8 (check with :func:`openvino_runtime_precisions`); ONNX Runtime runs the same file. ``ignored_scope``:
    an ``nncf.IgnoredScope`` added to the structural ``keep_float`` rules (node names are those after
    ``quant_pre_process``). ``subset_size``: how many of the ``calibration`` inputs NNCF uses.
    """
    import nncf

    source = _load(src)
    feeds = _calibration_list(calibration, source)
    with tempfile.TemporaryDirectory(prefix="m2f_ov_int8_") as tmp:
        model = onnx.load(str(_preprocess(Path(src), Path(tmp), keep_transposes=True)))
    user = ignored_scope or nncf.IgnoredScope()
    scope = nncf.IgnoredScope(
        names=[*user.names, *(n for n in keep_float_nodes(model, keep_float) if n not in user.names)],
        patterns=list(user.patterns),
        types=list(user.types),
        subgraphs=list(user.subgraphs),
        validate=user.validate,
    )
    subset = min(subset_size, len(feeds))
    logger.info(
        "OpenVINO int8 (NNCF %s): %s, %d calibration inputs, %d nodes kept float",
        nncf.__version__,
        src,
        subset,
        len(scope.names),
    )
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=subset,
        ignored_scope=scope,
        # 7-bit weights in every layer (NNCF's default fixes the first only): u8 x i8 pair sums saturate on x86
        # CPUs without VNNI (an AVX2-only EPYC gave 98.96 % labels equal to fp32 on CamVid), and the file may run
        # on any CPU; the same choice as ``reduce_range`` for ONNX Runtime
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )
    _check_io_unchanged(source, quantized)
    return _save(quantized, dst, source)


def openvino_runtime_precisions(path: str | Path, device: str = "CPU") -> Counter[tuple[str, str]]:
    """(layer type, runtime precision) counts of the model as OpenVINO compiled it, e.g. ("Convolution", "u8").

    Compiled with ``INFERENCE_PRECISION_HINT=f32`` so that non-quantised layers show as f32, not the bf16 that
    OpenVINO picks by default on bf16-capable CPUs.
    """
    from runtimes.openvino_backend import openvino_core

    core = openvino_core(path)
    config = {"INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" else {}
    compiled = core.compile_model(str(path), device, config)
    counts: Counter[tuple[str, str]] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        counts[(layer, precision)] += 1
    return counts


COMPACT_MIN_ELEMENTS = 4096  # scales, zero points and biases stay as they are


def compact_storage(model: onnx.ModelProto, fp16_weights: bool) -> onnx.ModelProto:
    """Smaller file, same graph semantics: uniform float constants become ``ConstantOfShape`` (lossless), and
    with ``fp16_weights`` other large float32 initializers are stored as fp16 behind a ``Cast`` to float32.

    The second is OpenVINO's own IR convention (fp16-compressed weights, fp32 inference): the graph computes in
    fp32 on weights rounded to fp16. Tensors read by Quantize/DequantizeLinear and values beyond fp16's range
    are left alone. In place; returns ``model``.
    """
    graph = model.graph
    qdq_inputs = {name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for name in n.input}
    kept, new_nodes = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in qdq_inputs:
            kept.append(init)
            continue
        array = numpy_helper.to_array(init)
        if array.size < COMPACT_MIN_ELEMENTS:
            kept.append(init)
        elif np.all(array == array.flat[0]):
            shape = numpy_helper.from_array(np.asarray(array.shape, np.int64), f"{init.name}__shape")
            kept.append(shape)
            value = numpy_helper.from_array(np.asarray([array.flat[0]], np.float32))
            new_nodes.append(helper.make_node("ConstantOfShape", [shape.name], [init.name], value=value))
        elif fp16_weights and np.abs(array).max() < 65504:
            kept.append(numpy_helper.from_array(array.astype(np.float16), f"{init.name}__fp16"))
            new_nodes.append(helper.make_node("Cast", [f"{init.name}__fp16"], [init.name], to=TensorProto.FLOAT))
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*new_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return model
