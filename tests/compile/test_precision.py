"""Reduced precisions on a tiny Mask2Former trained for a few seconds on generated scenes: fp16 on OpenVINO
(``compile.precision``), int8 for ONNX Runtime and for OpenVINO (NNCF: ``compile.quantize_onnxruntime``,
``compile.quantize_openvino``, with ``compile.quantization`` and the ``compile.keep_float`` rules), each against
the fp32 ONNX on held-out scenes.

The figures in the comments were measured on this fixture (128x128 scenes, 12 held-out, 32 calibration images);
the >= 99% agreement / <= 1 mIoU gate on real data runs in ``compile.export`` on the shipped CamVid model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from compile import keep_float, precision, quantization
from compile.onnx_export import export_onnx
from compile.quantization import QuantizationConfig
from compile.quantize_onnxruntime import calibration_chunk, float_activation_bytes, quantize_onnxruntime_int8
from compile.quantize_openvino import openvino_runtime_precisions, quantize_openvino_int8
from tests.train.test_training import tiny_train_config
from train.data.synthetic import write_synthetic_dataset
from train.model import load_pretrained
from train.train_config import TrainConfig
from train.trainer import Trainer

SIZE = (128, 128)
METADATA = {"m2f_artifact": '{"format": "m2f-onnx", "task": "semantic"}', "producer_note": "kept"}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path | list[np.ndarray]]:
    """fp32 exports (semantic and panoptic, with metadata) of a briefly trained tiny model, and its images."""
    root = tmp_path_factory.mktemp("precision")
    write_synthetic_dataset(root / "train", num_images=48, size=SIZE, seed=1)
    write_synthetic_dataset(root / "val", num_images=12, size=SIZE, seed=2)  # held out: other seed
    config = tiny_train_config(root, max_iters=60, val_data=None, solver={"batch_size": 6})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever OMP_NUM_THREADS is: the fp16 bounds were measured on them
    try:
        Trainer(TrainConfig.from_dict(config), root / "run", progress=False).run()
    finally:
        torch.set_num_threads(threads)
    loaded = load_pretrained(root / "run" / "model_final.pt")
    out: dict[str, Path | list[np.ndarray]] = {}
    for task in ("semantic", "panoptic"):
        path = export_onnx(loaded.model, loaded.meta, task, root / f"{task}.onnx", input_size=SIZE)
        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, METADATA)
        onnx.save(model, str(path))
        out[task] = path
    for split in ("train", "val"):
        out[split] = [cv2.imread(str(p)) for p in sorted((root / split / "images").glob("*.png"))]
    return out


def _ort(path: Path, images: list[np.ndarray]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, {"images": image[None]}) for image in images]


def _openvino(path: Path, images: list[np.ndarray]) -> list[list[np.ndarray]]:
    import openvino as ov

    # f32 explicitly: on bf16-capable CPUs OpenVINO's default would run the float parts in bf16
    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    request = compiled.create_infer_request()
    outs = []
    for image in images:
        result = request.infer({0: image[None]})
        outs.append([result[o].copy() for o in compiled.outputs])
    return outs


def _agreement(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> float:
    return float(np.mean([np.mean(x[0] == y[0]) for x, y in zip(a, b, strict=True)]))


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _io(path: Path) -> list[tuple[str, int]]:
    graph = onnx.load(str(path)).graph
    return [(v.name, v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output]]


def _argmax_axes(path: Path) -> list[int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [a.i for n in graph.node if n.op_type == "ArgMax" for a in n.attribute if a.name == "axis"]


def test_calibration_inputs_batch_one_image_each():
    images = [np.zeros((4, 6, 3), np.uint8), np.ones((4, 6, 3), np.uint8)]
    feeds = list(quantization.calibration_inputs(images))
    assert [f["images"].shape for f in feeds] == [(1, 4, 6, 3)] * 2 and feeds[1]["images"].dtype == np.uint8
    with pytest.raises(ValueError, match="uint8"):
        list(quantization.calibration_inputs([np.zeros((4, 6, 3), np.float32)]))
    with pytest.raises(ValueError, match="shape"):
        list(quantization.calibration_inputs([np.zeros((4, 6), np.uint8)]))


@pytest.mark.slow
def test_fp16_semantic_runs_on_openvino_and_keeps_labels(scenes, tmp_path):
    src = scenes["semantic"]
    dst = precision.convert_fp16(src, tmp_path / "fp16.onnx")
    model = onnx.load(str(dst))
    assert _io(dst) == _io(src)  # uint8 in, uint8 labels out
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert not any(i.data_type == onnx.TensorProto.FLOAT for i in model.graph.initializer if len(i.dims) > 1)
    weights = {p: sum(len(i.raw_data) for i in onnx.load(str(p)).graph.initializer) for p in (src, dst)}
    assert weights[dst] <= 0.51 * weights[src]  # the rest of the file is graph (node names, stack traces)
    assert _metadata(dst) == METADATA
    reference = _ort(src, scenes["val"])
    # OpenVINO CPU computes an f16 graph in f32 (this checks the fp16 weights and the graph): measured 99.98%
    assert _agreement(_openvino(dst, scenes["val"]), reference) >= 0.99
    # fp16 storage of every tensor as on a GPU (fp16_rounding_model): measured 99.93%
    rounded = precision.fp16_rounding_model(src, tmp_path / "rounded.onnx")
    assert _agreement(_ort(rounded, scenes["val"]), reference) >= 0.99


def _semantic_view(logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(B, Q, K+1) logits, (B, Q, h, w) mask logits -> (B, h, w) labels, as the official semantic inference."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = probs[..., :-1] / probs.sum(-1, keepdims=True)
    return np.einsum("bqk,bqhw->bkhw", probs, 1 / (1 + np.exp(-masks))).argmax(1)


@pytest.mark.slow
def test_fp16_panoptic_outputs_close(scenes, tmp_path):
    src = scenes["panoptic"]
    dst = precision.convert_fp16(src, tmp_path / "fp16.onnx")
    assert _io(dst) == _io(src)  # float32 pred_logits / pred_masks, as the SDK expects
    got, want = _openvino(dst, scenes["val"]), _ort(src, scenes["val"])
    d_logits = np.concatenate([np.abs(g[0] - w[0]).ravel() for g, w in zip(got, want, strict=True)])
    # fp16 weights (11-bit mantissa) keep the bulk of the logits within ~0.01 (measured p99 0.004; 0.017 for a
    # model trained longer) on logits of magnitude ~6. The worst case is looser by nature: each decoder layer
    # binarises the mask logits at 0 for its attention mask, so a pixel that flips sign moves one query's outputs
    # (measured max 0.03; 0.17 in 1 of 192 queries for the longer-trained model). Hence a tight bound on the
    # bulk, a loose one on the maximum, and the decisions themselves.
    assert np.percentile(d_logits, 99) <= 0.05, np.percentile(d_logits, 99)
    assert d_logits.max() <= 1.0
    for g, w in zip(got, want, strict=True):
        assert np.mean((g[1] > 0) == (w[1] > 0)) >= 0.999  # mask pixels: measured 99.99%
        assert np.mean(_semantic_view(*g) == _semantic_view(*w)) >= 0.99  # measured 99.98%


@pytest.mark.slow
def _outside_qdq(path) -> list:
    """TensorRT parser-rule violations of the artifact at ``path`` other than its (CPU-typed) Q/DQ nodes'."""
    from compile.tensorrt_rules import lint

    def qdq(violation) -> bool:  # a rule on a Q/DQ node, or the uint8 output of a QuantizeLinear
        text = f"{violation.where} {violation.message}"
        return violation.rule.startswith("qdq") or "QuantizeLinear" in text or "DequantizeLinear" in text

    return [v for v in lint(path) if not qdq(v)]


def test_onnxruntime_int8_is_small_and_agrees(scenes, tmp_path):
    src = scenes["semantic"]
    calibration = quantization.calibration_inputs(scenes["train"][:32])
    dst = quantize_onnxruntime_int8(src, tmp_path / "ort_int8.onnx", QuantizationConfig(calibration))
    assert not _outside_qdq(dst)  # the uint8 frame is cast before the layout change, quantised or not
    model = onnx.load(str(dst))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer) >= 20  # per-channel weights
    assert dst.stat().st_size < 0.4 * src.stat().st_size  # measured 0.33 (0.28 for a CamVid ResNet-18 model)
    assert _io(dst) == _io(src) and _metadata(dst) == METADATA
    agreement = _agreement(_ort(dst, scenes["val"]), _ort(src, scenes["val"]))
    logging.getLogger(__name__).info(
        "ORT int8 label agreement %.4f, size %.3f of fp32", agreement, dst.stat().st_size / src.stat().st_size
    )
    # measured 99.66% (99.48% on CamVid for a ResNet-18 model): a model trained for seconds has many near-ties
    assert agreement >= 0.99


@pytest.mark.slow
def test_openvino_int8_runs_int8_kernels_and_agrees(scenes, tmp_path):
    src = scenes["semantic"]
    calibration = quantization.calibration_inputs(scenes["train"][:32])
    dst = quantize_openvino_int8(src, tmp_path / "ov_int8.onnx", QuantizationConfig(calibration))
    assert not _outside_qdq(dst)
    assert dst.stat().st_size < 0.4 * src.stat().st_size  # weights folded to int8 initializers; measured 0.32
    assert _io(dst) == _io(src) and _metadata(dst) == METADATA
    # the tail's argmax stays over the class axis: with the Transpose before it folded in, OpenVINO runs a slow
    # last-axis TopK (compile.quantization.preprocess)
    assert _argmax_axes(dst) == _argmax_axes(src) == [-3]
    layers = openvino_runtime_precisions(dst)
    int8 = {k: v for k, v in layers.items() if k[1] in ("u8", "i8")}
    assert int8.get(("Convolution", "u8"), 0) + int8.get(("Convolution", "i8"), 0) >= 20
    assert int8.get(("FullyConnected", "i8"), 0) + int8.get(("FullyConnected", "u8"), 0) >= 30
    assert layers[("Convolution", "f32")] == 1  # the image conv, kept float on purpose
    agreement = _agreement(_openvino(dst, scenes["val"]), _openvino(src, scenes["val"]))
    logging.getLogger(__name__).info(
        "OpenVINO int8 label agreement %.4f, size %.3f of fp32, layers %s",
        agreement,
        dst.stat().st_size / src.stat().st_size,
        int8,
    )
    assert agreement >= 0.99  # measured 99.48% (99.63% on CamVid for a ResNet-18 model)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_int8_execution_check_tells_int8_from_float(scenes, tmp_path, target):
    """The runtime's own profiler: each quantiser's artifact spends most of its time in int8 kernels on its own
    runtime; the fp32 file and the other quantiser's file on the wrong runtime fall below the floor."""
    from compile.gate import INT8_SHARE_FLOOR, GateError, check_int8_execution

    src = scenes["semantic"]
    config = QuantizationConfig(quantization.calibration_inputs(scenes["train"][:16]))
    quantize = quantize_openvino_int8 if target == "openvino" else quantize_onnxruntime_int8
    dst = quantize(src, tmp_path / f"{target}_int8.onnx", config)
    image = scenes["val"][0]
    record = check_int8_execution(target, str(dst), image)
    logging.getLogger(__name__).info("%s int8 execution: %s", target, record)
    assert record["int8_share"] >= INT8_SHARE_FLOOR[target]
    with pytest.raises(GateError, match="not fused"):
        check_int8_execution(target, str(src), image)  # an fp32 graph: no int8 kernel at all


@pytest.mark.slow
def test_keep_float_rules_find_the_image_conv_and_attention_products(scenes, tmp_path, caplog):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(scenes["semantic"]), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    convs = keep_float.image_convs(model)
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert convs == [first_conv.name]
    # 3 decoder layers x (masked cross-attention + self-attention) x (Q.K^T, softmax.V), and the semantic tail's
    # two class-score products (labels, 1/4-size scores: float as the Einsums they were)
    assert len(keep_float.attention_matmuls(model)) == 12 + 2
    assert keep_float.linear_bottlenecks(model) == [] and keep_float.depthwise_convs(model) == []  # a ResNet has none
    with caplog.at_level(logging.WARNING, logger="compile.keep_float"):
        assert keep_float.stem_convs(model) == convs  # a ResNet pools to a quarter right after its image conv
    assert "size is unknown" not in caplog.text  # the sizes were known
    with pytest.raises(ValueError, match="unknown keep-float rule"):
        keep_float.keep_float_nodes(model, ["stem"])


@pytest.mark.slow
def test_bad_inputs_are_refused_with_a_reason(scenes, tmp_path):
    src = scenes["semantic"]
    with pytest.raises(ValueError, match="calibration data"):
        quantize_onnxruntime_int8(src, tmp_path / "x.onnx", QuantizationConfig([]))
    with pytest.raises(ValueError, match="wants uint8"):
        quantize_openvino_int8(
            src, tmp_path / "x.onnx", QuantizationConfig([{"images": np.zeros((1, *SIZE, 3), np.float32)}])
        )
    with pytest.raises(ValueError, match="takes"):
        quantize_onnxruntime_int8(
            src, tmp_path / "x.onnx", QuantizationConfig([{"pixels": np.zeros((1, *SIZE, 3), np.uint8)}])
        )
    with pytest.raises(ValueError, match="model input size"):
        quantize_onnxruntime_int8(
            src, tmp_path / "x.onnx", QuantizationConfig([{"images": np.zeros((1, 64, 64, 3), np.uint8)}])
        )
    with pytest.raises(ValueError, match="calibration method"):
        QuantizationConfig(quantization.calibration_inputs(scenes["train"][:1]), method="KL")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activation_type"):
        QuantizationConfig([], activation_type="s8")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        precision.convert_fp16(tmp_path / "missing.onnx", tmp_path / "x.onnx")


def test_calibration_chunk_shrinks_to_fit_memory_and_divides_the_set():
    """ORT keeps a chunk's intermediates in RAM: the chunk shrinks with the memory, and always divides the set."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 512, 512])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 512, 512])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["h"]), onnx.helper.make_node("Relu", ["h"], ["y"])], "g", [x], [y]
    )
    model = onnx.shape_inference.infer_shapes(onnx.helper.make_model(graph))
    per_input = 3 * 512 * 512 * 4
    assert float_activation_bytes(model) == per_input  # "h" only: inputs/outputs are not value_info
    assert calibration_chunk(model, 32, available_bytes=1 << 40) == 16
    assert calibration_chunk(model, 30, available_bytes=1 << 40) == 15
    assert calibration_chunk(model, 32, available_bytes=4 * 5 * per_input) == 4  # 5 fit, 4 divides 32
    assert calibration_chunk(model, 32, available_bytes=per_input) == 1


def test_compact_storage_folds_uniform_constants_and_halves_weights():
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 64)).astype(np.float32)
    zeros = np.zeros((64, 64), np.float32)
    scale = np.full((64,), 0.5, np.float32)  # small: left alone
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64, 64])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "w"], ["h"]),
        onnx.helper.make_node("Add", ["h", "z"], ["h2"]),
        onnx.helper.make_node("Mul", ["h2", "s"], ["y"]),
    ]
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in ((weight, "w"), (zeros, "z"), (scale, "s"))]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[onnx.helper.make_opsetid("", 17)]
    )
    feed = {"x": rng.normal(size=(64, 64)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    size, original = model.ByteSize(), model.SerializeToString()
    compact = precision.compact_storage(model, fp16_weights=True)
    onnx.checker.check_model(compact)
    after = ort.InferenceSession(compact.SerializeToString()).run(None, feed)[0]
    assert compact.ByteSize() < 0.3 * size  # zeros gone, weights halved
    assert {n.op_type for n in compact.graph.node} >= {"ConstantOfShape", "Cast"}
    np.testing.assert_allclose(after, before, rtol=1e-2, atol=1e-2)  # weights rounded to fp16
    exact = precision.compact_storage(onnx.load_from_string(original), fp16_weights=False)
    assert np.array_equal(ort.InferenceSession(exact.SerializeToString()).run(None, feed)[0], before)


def test_linear_bottleneck_rule_finds_mobilenet_projections():
    """depthwise -> ReLU6 -> 1x1 projection -> residual Add: the projection; the expand conv (activated) is not."""
    from onnx import TensorProto, helper

    def conv(name, x, y, c_in, c_out, group=1, k=1):
        weight = helper.make_tensor(
            f"{name}_w", TensorProto.FLOAT, [c_out, c_in // group, k, k], [0.1] * (c_out * c_in // group * k * k)
        )
        return helper.make_node("Conv", [x, weight.name], [y], name=name, group=group, pads=[k // 2] * 4), weight

    nodes, inits = [], []
    for args in [("expand", "x", "e", 8, 16), ("dw", "e6", "d", 16, 16, 16, 3), ("project", "d6", "p", 16, 8)]:
        node, weight = conv(*args)
        nodes.append(node)
        inits.append(weight)
    nodes.insert(1, helper.make_node("Clip", ["e"], ["e6"], name="relu6_e"))
    nodes.insert(3, helper.make_node("Clip", ["d"], ["d6"], name="relu6_d"))
    nodes.append(helper.make_node("Add", ["p", "x"], ["y"], name="residual"))
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph)
    assert keep_float.linear_bottlenecks(model) == ["project"]
    assert keep_float.depthwise_convs(model) == ["dw"]
    assert "project" in keep_float.keep_float_nodes(model)  # a default rule


def _conv_chain(size: int | str) -> onnx.ModelProto:
    """image -> 3x3/2 conv -> 1x1 -> 3x3/2 -> 1x1: the stem of a MobileNet-EdgeTPU in miniature."""
    from onnx import TensorProto, helper

    nodes, inits = [], []
    for name, x, y, c_in, c_out, k, stride in [
        ("image", "x", "a", 3, 8, 3, 2),  # reads the image
        ("project", "a", "b", 8, 4, 1, 1),  # at half resolution: stem
        ("expand", "b", "c", 4, 16, 3, 2),  # reads half resolution, writes a quarter: stem
        ("late", "c", "y", 16, 8, 1, 1),  # at a quarter: not stem
    ]:
        weight = helper.make_tensor(f"{name}_w", TensorProto.FLOAT, [c_out, c_in, k, k], [0.1] * (c_out * c_in * k * k))
        pads = [k // 2] * 4
        nodes.append(helper.make_node("Conv", [x, weight.name], [y], name=name, strides=[stride] * 2, pads=pads))
        inits.append(weight)
    graph = helper.make_graph(
        nodes, "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, None, None])],
        inits,
    )  # fmt: skip
    return onnx.helper.make_model(graph)


def test_config_scopes_add_to_the_keep_float_rules():
    """``exclude_nodes`` (regexes) and ``exclude_op_types`` come first, then the rules' nodes, each name once."""
    model = _conv_chain(64)
    rules = ["image", "project", "expand"]  # the default rules' nodes (stem_conv)
    assert quantization.float_nodes(model, QuantizationConfig([])) == rules
    assert quantization.float_nodes(model, QuantizationConfig([], exclude_nodes=("^la",))) == ["late", *rules]
    assert quantization.float_nodes(model, QuantizationConfig([], exclude_nodes=("proj",), keep_float=())) == [
        "project"
    ]
    every = ["image", "project", "expand", "late"]
    assert quantization.float_nodes(model, QuantizationConfig([], exclude_op_types=("Conv",))) == every
    config = QuantizationConfig(iter([{"images": np.zeros((1, 2, 2, 3), np.uint8)}]))
    assert isinstance(config.calibration, tuple) and len(config.calibration) == 1  # an iterator is read once


def test_stem_rule_keeps_the_convs_at_half_resolution_or_finer(caplog):
    model = _conv_chain(64)
    assert keep_float.stem_convs(model) == ["image", "project", "expand"]
    assert keep_float.keep_float_nodes(model)[:3] == ["image", "project", "expand"]  # a default rule
    with caplog.at_level(logging.WARNING, logger="compile.keep_float"):
        assert keep_float.stem_convs(_conv_chain("side")) == ["image"]  # sizes unknown: the image convs, said so
    assert "size is unknown" in caplog.text
