"""What both int8 quantisers share: their typed configuration, the calibration feeds and the graph preparation.

The quantisers themselves are ``compile.quantize_onnxruntime`` (ONNX Runtime's static QDQ quantisation) and
``compile.quantize_openvino`` (NNCF, for OpenVINO); what they keep in float is ``compile.keep_float``. Each takes
the fp32 ``.onnx`` that ``compile.onnx_export`` wrote and a :class:`QuantizationConfig`, and writes ONE
self-contained ``.onnx`` with the same inputs, outputs and ``metadata_props`` (``compile.precision.save_model``).

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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnx
from onnx import helper

from compile.keep_float import KEEP_FLOAT, keep_float_nodes
from runtimes.vocabulary import INPUT_NAME

# ONNX Runtime int8: the ops that carry the FLOPs and have int8 kernels (QLinearConv / QLinearMatMul / QGemm).
# ORT's default (every op it knows: also Add, Mul, Sigmoid, Softmax, Where, Resize, ArgMax, ...) measured 97.00%
# vs 99.12% label agreement on CamVid, and met zero-range tensors (NaN zero points).
ORT_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm")

# ORT calibration: Percentile (99.999th) beat MinMax by 0.05-0.08 pt on two CamVid models (99.49% vs 99.41%);
# Entropy gave results identical to MinMax. Symmetric int8 activations: 99.02% (MinMax) vs 99.41% for uint8.
CalibrationMethod = Literal["Percentile", "MinMax", "Entropy"]
ActivationType = Literal["uint8", "int8"]

NNCF_SUBSET_SIZE = 300  # how many of the calibration inputs NNCF uses at most


@dataclass(frozen=True)
class QuantizationConfig:
    """What an int8 quantiser takes besides the graph; every option a typed field.

    ``calibration``: input dicts (see :func:`calibration_inputs`), real images of the deployment scene at the
    model's input size (a few hundred; more costs time, not memory); any iterable, kept as a tuple.

    Kept in float by both quantisers: the nodes of the structural ``keep_float`` rules (``compile.keep_float``),
    the nodes whose op type is in ``exclude_op_types`` or whose name matches a regex in ``exclude_nodes`` (names
    after ``quant_pre_process``).

    ONNX Runtime only: ``op_types`` (what is quantised, minus ``exclude_op_types``); ``method``, the calibration;
    ``activation_type``: "uint8" (x86 CPUs multiply u8 x s8 with VPMADDUBSW / VNNI, and asymmetric u8 uses the full
    range after ReLU) or "int8" (symmetric; ARM, TensorRT). OpenVINO (NNCF) only: ``subset_size``, how many of the
    calibration inputs it uses.
    """

    calibration: Sequence[Mapping[str, np.ndarray]]
    keep_float: tuple[str, ...] = KEEP_FLOAT
    exclude_op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ORT_OP_TYPES
    method: CalibrationMethod = "Percentile"
    activation_type: ActivationType = "uint8"
    subset_size: int = NNCF_SUBSET_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "calibration", tuple(self.calibration))  # an iterator is read once, here
        if self.method not in get_args(CalibrationMethod):
            methods = sorted(get_args(CalibrationMethod))
            raise ValueError(f"unknown calibration method {self.method!r}; expected one of {methods}")
        if self.activation_type not in get_args(ActivationType):
            raise ValueError(f"activation_type must be 'uint8' or 'int8', got {self.activation_type!r}")


def calibration_inputs(images: Iterable[np.ndarray], input_name: str = INPUT_NAME) -> Iterator[dict[str, np.ndarray]]:
    """HxWx3 uint8 BGR images (already at the model input size) -> ``{input_name: (1, H, W, 3) uint8}`` feeds."""
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"calibration image {i} has shape {image.shape}; expected (H, W, 3) BGR")
        if image.dtype != np.uint8:
            raise ValueError(f"calibration image {i} has dtype {image.dtype}; expected uint8 (0-255 BGR)")
        yield {input_name: np.ascontiguousarray(image[None])}


def checked_feeds(config: QuantizationConfig, model: onnx.ModelProto) -> list[dict]:
    """The calibration feeds as a list, checked against the model's inputs."""
    feeds = [dict(feed) for feed in config.calibration]
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


def float_nodes(model: onnx.ModelProto, config: QuantizationConfig) -> list[str]:
    """Names of the nodes ``config`` keeps in float: ``exclude_op_types`` and ``exclude_nodes`` first, then the
    ``keep_float`` rules' nodes."""
    op_types, regexes = set(config.exclude_op_types), [re.compile(p) for p in config.exclude_nodes]
    names = [n.name for n in model.graph.node if n.op_type in op_types or any(r.search(n.name) for r in regexes)]
    return names + [n for n in keep_float_nodes(model, config.keep_float) if n not in names]


def preprocess(src: Path, work: Path, keep_transposes: bool = False) -> Path:
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
