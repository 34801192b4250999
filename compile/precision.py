"""Float precisions of an exported graph (fp16 for GPUs, bf16 and fp32 as they are), the one file format every
precision pass writes, and a smaller storage of the same graph.

Every pass takes the fp32 ``.onnx`` that ``compile.onnx_export`` wrote and writes ONE self-contained ``.onnx``
(no external data) with the same inputs and outputs (uint8 ``images`` in; uint8 ``labels`` or float
``pred_logits``/``pred_masks`` out) and exactly the ``metadata_props`` of the source (the compiler's JSON):
:func:`save_model`. int8 is a per-target quantiser (``compile.quantize_onnxruntime``, ``compile.quantize_openvino``,
configured by ``compile.quantization.QuantizationConfig``); ``compile.export`` picks it from the target's row.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtimes.artifact import METADATA_KEY, write_metadata

logger = logging.getLogger(__name__)


# convert_float_to_float16's own default block list names ML-classical and integer-ish ops (TreeEnsemble, TopK,
# Range, CumSum, Min/Max, ...), none of which occurs in our graph; we add nothing. fp16 storage of every tensor
# (fp16_rounding_model) kept 99.965% of CamVid labels and 99.99% on generated scenes with nothing blocked; the
# largest activation is 255 (the raw image; 65504 is fp16's limit). Blocking an op would not change that: its
# fp32 output is cast back to fp16 for the next op, and GPU fp16 kernels of Softmax, LayerNormalization and
# MatMul already accumulate in fp32. Each blocked op would only cost two Casts and an fp32 kernel.
FP16_OP_BLOCK_LIST: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------- files


def load_model(src: str | Path) -> onnx.ModelProto:
    """The ONNX model at ``src``; FileNotFoundError naming the path when there is none."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}")
    return onnx.load(str(src))


def save_model(model: onnx.ModelProto, dst: str | Path, metadata_from: onnx.ModelProto) -> Path:
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


def check_io_unchanged(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """RuntimeError when a precision pass changed the graph's input or output names or types."""

    def io(m: onnx.ModelProto) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]

    if io(before) != io(after):
        raise RuntimeError(f"precision conversion changed the graph's inputs/outputs: {io(before)} -> {io(after)}")


# --------------------------------------------------------------------------------------------- float precisions


def write_float_precision(src: str | Path, dst: str | Path, precision: str) -> Path:
    """The fp32 graph at ``src`` written to ``dst`` at a float ``precision``: fp16 converted (:func:`convert_fp16`),
    fp32 and bf16 as they are (bf16 is the OpenVINO execution hint; the graph stays fp32); returns ``dst``."""
    if precision == "fp16":
        return convert_fp16(src, dst)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"{precision} is not a float precision; int8 is the target's quantiser")
    shutil.copyfile(src, dst)
    return Path(dst)


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

    source = load_model(src)
    model = onnx.shape_inference.infer_shapes(source)
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
    model = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=blocked,
        node_block_list=list(node_block_list),
        disable_shape_infer=True,
    )
    check_io_unchanged(source, model)
    n_fp32 = sum(n.op_type in blocked or n.name in node_block_list for n in model.graph.node)
    logger.info("fp16: %s -> %s (%d nodes kept in fp32)", src, dst, n_fp32)
    return save_model(model, dst, source)


def fp16_rounding_model(src: str | Path, dst: str | Path) -> Path:
    """An fp32 model that rounds every weight and every float tensor to fp16 (Cast pairs): fp16 numerics on a CPU.

    Each op still computes in fp32 (as GPU fp16 kernels of MatMul, Conv, Softmax and LayerNormalization accumulate
    in fp32), but every tensor between ops is stored in fp16, so overflow past 65504, underflow and the rounding
    of each intermediate show up as in :func:`convert_fp16`'s output on a GPU (with its default, empty block list).
    """
    source = load_model(src)
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
    return save_model(model, dst, source)


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
