"""compile/tensorrt_export.py: MSDA as the TensorRT plugin node, checked on ONNX Runtime against torch.

The plugin op runs in ONNX Runtime as an onnxruntime-extensions Python op computing ``ms_deform_attn_numpy``, which
is first checked against the torch reference (``plugins.msda.reference``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import train.model.pixel_decoder as pixel_decoder
from compile.export import export
from compile.onnx_export import DeployableMask2Former
from compile.tensorrt_export import (
    PLUGIN_DOMAIN,
    PluginReferenceBackend,
    _register_onnxruntime_ops,
    export_tensorrt_onnx,
    model_with_msda_op,
    ms_deform_attn_numpy,
    onnxruntime_reference_model,
    plugin_nodes,
)
from compile.tensorrt_rules import lint
from plugins.msda import ms_deform_attn
from plugins.msda.reference import ms_deform_attn_reference
from runtimes.artifact import read_metadata, write_metadata
from tests.tiny_models import tiny_architecture
from train.data.synthetic import synthetic_meta
from train.model import Mask2Former, Mask2FormerConfig, load_pretrained, save_checkpoint

ENCODER_LAYERS = 2
TINY = tiny_architecture(encoder_layers=ENCODER_LAYERS)
INPUT = (96, 128)
TASK = "panoptic"
PARITY = 1e-4


# --------------------------------------------------------------------------------------------- shared helpers


def export_tiny_tensorrt(folder: Path, plugin: str, calib_dir: Path | None = None) -> Path:
    """A tiny panoptic Mask2Former as a TensorRT artifact ``folder/<plugin>.onnx`` (checkpoint beside it, .pt).

    "m2f" goes through ``compile.export.export`` (simplified, metadata, gated when ``calib_dir`` is given);
    "builtin" through ``export_tensorrt_onnx`` plus the same metadata.
    """
    torch.manual_seed(0)
    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **TINY})).eval()
    checkpoint = save_checkpoint(folder / f"{plugin}.pt", model, meta)
    out = folder / f"{plugin}.onnx"
    if plugin == "m2f":
        return export(checkpoint, "tensorrt", "fp32", out, input_size=INPUT, task=TASK, calib_dir=calib_dir)
    from compile.export import build_metadata, input_spec

    loaded = load_pretrained(checkpoint)
    export_tensorrt_onnx(loaded.model, loaded.meta, TASK, out, INPUT, plugin=plugin)
    graph = onnx.load(str(out))
    spec = input_spec(loaded.meta, INPUT)
    write_metadata(graph, build_metadata(loaded, TASK, "tensorrt", "fp32", spec, checkpoint, 18))
    onnx.save(graph, str(out))
    return out


def torch_outputs(artifact: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """The torch model's raw outputs (MSDA by the reference) for the artifact's checkpoint."""
    loaded = load_pretrained(artifact.with_suffix(".pt"))
    wrapper = DeployableMask2Former(loaded.model, loaded.meta, TASK).eval()
    with torch.no_grad():
        logits, masks = wrapper(torch.from_numpy(image))
    return {"pred_logits": logits.numpy(), "pred_masks": masks.numpy()}


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, calib_dir: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("trt_export")
    return {plugin: export_tiny_tensorrt(folder, plugin, calib_dir) for plugin in ("m2f", "builtin")}


def _msda_inputs(shapes: list[tuple[int, int]], N: int, Lq: int, M: int, D: int, P: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(N, S, M, D, generator=g)
    locations = torch.rand(N, Lq, M, L, P, 2, generator=g) * 1.4 - 0.2  # some fall outside: zero padding
    weights = torch.rand(N, Lq, M, L, P, generator=g).flatten(-2).softmax(-1).view(N, Lq, M, L, P)
    spatial = torch.tensor(shapes, dtype=torch.int32)
    starts = torch.tensor([0, *np.cumsum([h * w for h, w in shapes])[:-1]], dtype=torch.int32)
    return value, spatial, starts, locations, weights


# --------------------------------------------------------------------------------------------- the numpy reference

SHAPES = [
    ([(3, 4)], 1, 5, 1, 1, 1),
    ([(6, 8), (3, 4), (2, 2)], 2, 7, 2, 4, 4),
    ([(12, 16), (6, 8), (3, 4)], 1, 11, 8, 32, 4),
    ([(1, 1), (5, 3)], 1, 3, 3, 3, 2),
]


@pytest.mark.parametrize(("shapes", "N", "Lq", "M", "D", "P"), SHAPES)
def test_numpy_msda_matches_torch_reference(shapes, N, Lq, M, D, P) -> None:
    inputs = _msda_inputs(shapes, N, Lq, M, D, P, seed=len(shapes) + D)
    want = ms_deform_attn_reference(*inputs).numpy()
    got = ms_deform_attn_numpy(*(t.numpy() for t in inputs))
    assert got.shape == (N, Lq, M * D) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_numpy_msda_rejects_shapes_that_do_not_cover_value() -> None:
    value, _, starts, locations, weights = (t.numpy() for t in _msda_inputs([(3, 4)], 1, 2, 1, 2, 1, seed=0))
    with pytest.raises(ValueError, match="cover 20 positions, value has 12"):
        ms_deform_attn_numpy(value, np.array([[4, 5]], np.int32), starts, locations, weights)


def test_custom_op_runs_the_reference_eagerly() -> None:
    inputs = _msda_inputs([(6, 8), (3, 4)], 1, 9, 2, 4, 2, seed=1)
    torch.testing.assert_close(torch.ops.m2f.ms_deform_attn(*inputs), ms_deform_attn_reference(*inputs))


def test_the_export_model_routes_msda_to_the_op_and_leaves_the_model_alone() -> None:
    """A copy built for export: its MSDA layers call the custom op around the same Parameters, the model given and
    the model code keep the default op, and the copy computes what the model does."""
    torch.manual_seed(0)
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": 3, **TINY})).eval()
    rng = torch.random.get_rng_state()
    exported = model_with_msda_op(model)
    assert torch.equal(torch.random.get_rng_state(), rng)  # building it draws no random weights
    layers = [m for m in model.modules() if isinstance(m, pixel_decoder.MSDeformAttn)]
    op_layers = [m for m in exported.modules() if isinstance(m, pixel_decoder.MSDeformAttn)]
    assert len(layers) == len(op_layers) == ENCODER_LAYERS
    assert all(layer.msda is ms_deform_attn for layer in layers)
    assert all(layer.msda is not ms_deform_attn for layer in op_layers)
    assert pixel_decoder.ms_deform_attn is ms_deform_attn  # nothing process-wide was swapped
    assert all(a.value_proj.weight is b.value_proj.weight for a, b in zip(layers, op_layers, strict=True))
    assert {id(t) for t in model.state_dict(keep_vars=True).values()} == {
        id(t) for t in exported.state_dict(keep_vars=True).values()
    }  # no weight duplicated
    images = torch.rand(1, 3, *INPUT)
    with torch.no_grad():
        want, got = model(images, aux=False), exported(images, aux=False)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(got[key], want[key])


def test_reference_model_runs_fp16_plugin_nodes() -> None:
    """An fp16 plugin node (what convert_fp16 makes of the graph) runs through Casts around the float32 op."""
    node = helper.make_node(
        "M2F_MultiscaleDeformableAttn", ["v", "s", "i", "l", "w"], ["y"], domain=PLUGIN_DOMAIN, plugin_version="1"
    )
    f16 = TensorProto.FLOAT16
    graph = helper.make_graph(
        [node],
        "fp16",
        [helper.make_tensor_value_info(n, f16, None) for n in ("v", "l", "w")],
        [helper.make_tensor_value_info("y", f16, None)],
        [
            numpy_helper.from_array(np.array([[6, 8], [3, 4]], np.int32), "s"),
            numpy_helper.from_array(np.array([0, 48], np.int32), "i"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(PLUGIN_DOMAIN, 1)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(_register_onnxruntime_ops())
    session = ort.InferenceSession(onnxruntime_reference_model(model).SerializeToString(), options)
    value, spatial, starts, locations, weights = (t.numpy() for t in _msda_inputs([(6, 8), (3, 4)], 1, 5, 2, 4, 2, 3))
    half = {"v": value.astype(np.float16), "l": locations.astype(np.float16), "w": weights.astype(np.float16)}
    (got,) = session.run(None, half)
    want = ms_deform_attn_numpy(*(a.astype(np.float32) for a in (half["v"], spatial, starts, half["l"], half["w"])))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-3, rtol=0)


# --------------------------------------------------------------------------------------------- the export


@pytest.mark.parametrize("plugin", ["m2f", "builtin"])
def test_plugin_nodes(artifacts: dict[str, Path], plugin: str) -> None:
    model = onnx.load(str(artifacts[plugin]))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[PLUGIN_DOMAIN] == 1
    nodes = plugin_nodes(model)
    op_type = {"m2f": "M2F_MultiscaleDeformableAttn", "builtin": "MultiscaleDeformableAttnPlugin_TRT"}[plugin]
    assert len(nodes) == ENCODER_LAYERS
    initializers = {t.name: t for t in model.graph.initializer}
    h, w = INPUT
    levels = [(h // 32, w // 32), (h // 16, w // 16), (h // 8, w // 8)]  # the encoder's 1/32, 1/16, 1/8 maps
    for node in nodes:
        assert node.op_type == op_type and node.domain == PLUGIN_DOMAIN
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_version": b"1", "plugin_namespace": b""}
        shapes, starts = (initializers[name] for name in node.input[1:3])
        assert shapes.data_type == starts.data_type == TensorProto.INT32
        assert numpy_helper.to_array(shapes).tolist() == [list(level) for level in levels]
        assert numpy_helper.to_array(starts).tolist() == [0, 12, 60]
        consumers = [n.op_type for n in model.graph.node if node.output[0] in n.input]
        if plugin == "builtin":
            assert consumers == ["Reshape"]  # (N, Lq, M, D) -> (N, Lq, M*D)
    assert not any(n.op_type == "GridSample" for n in model.graph.node)  # MSDA is not lowered anywhere


@pytest.mark.parametrize("plugin", ["m2f", "builtin"])
def test_parity_with_torch_on_onnxruntime(artifacts: dict[str, Path], plugin: str) -> None:
    image = np.random.default_rng(1).integers(0, 256, (1, *INPUT, 3), dtype=np.uint8)
    want = torch_outputs(artifacts[plugin], image)
    with PluginReferenceBackend(artifacts[plugin], threads=1) as backend:
        got = backend.run({"images": image})
    for name, expected in want.items():
        assert got[name].shape == expected.shape
        diff = float(np.abs(got[name] - expected).max())
        assert diff < PARITY, f"{plugin} {name}: max abs diff {diff:.2e}"


def test_export_gates_tensorrt_artifact_on_the_reference(artifacts: dict[str, Path]) -> None:
    metadata = read_metadata(artifacts["m2f"])
    assert metadata["target"] == "tensorrt" and metadata["input"]["size"] == list(INPUT)
    accuracy = metadata["accuracy"]
    assert accuracy["images"] == 2 and accuracy["label_agreement"] == 1.0
    assert max(accuracy["max_abs_diff"].values()) < PARITY


@pytest.mark.parametrize("plugin", ["m2f", "builtin"])
def test_tensorrt_artifacts_pass_the_parser_rules(artifacts: dict[str, Path], plugin: str) -> None:
    """uint8 only at the graph's input and output (cast before the layout change), every op and type in TensorRT
    10.3's and 11's tables, the plugin nodes known: nothing TensorRT's ONNX parser would reject that we can see."""
    assert lint(artifacts[plugin]) == []
    model = onnx.load(str(artifacts[plugin]))
    first = next(n for n in model.graph.node if "images" in n.input)
    assert first.op_type == "Cast"  # the uint8 frame is cast before anything else touches it


def test_export_gate_refuses_a_graph_tensorrt_rejects(tmp_path: Path) -> None:
    from compile.export import EXPORT_FORMATS
    from tests.compile.test_tensorrt_rules import violating_graph

    path = tmp_path / "bad.onnx"
    onnx.save(violating_graph(), str(path))
    check = EXPORT_FORMATS["tensorrt"].check_artifact
    assert check is not None
    with pytest.raises(ValueError, match=r"breaks TensorRT's ONNX parser rules \(11\):\n  \[dtype\] Transpose"):
        check(path)


def test_tensorrt_export_needs_a_static_size() -> None:
    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **TINY})).eval()
    with pytest.raises(ValueError, match="static: give an input size"):
        export_tensorrt_onnx(model, meta, TASK, "unused.onnx", None)
    with pytest.raises(ValueError, match="unknown plugin"):
        export_tensorrt_onnx(model, meta, TASK, "unused.onnx", INPUT, plugin="nope")


def test_tensorrt_int8_points_to_modelopt(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Q/DQ artifact made with NVIDIA ModelOpt"):
        export(tmp_path / "never_read.pt", "tensorrt", "int8", tmp_path / "out.onnx", input_size=INPUT)


def test_fp16_artifact_feeds_the_plugin_fp16(tmp_path: Path, calib_dir: Path, artifacts: dict[str, Path]) -> None:
    """fp16 (the jetson profile's precision): the whole graph, the plugin's three float inputs included, is fp16."""
    checkpoint = artifacts["m2f"].with_suffix(".pt")
    out = export(
        checkpoint, "tensorrt", "fp16", tmp_path / "fp16.onnx", input_size=INPUT, task=TASK, calib_dir=calib_dir
    )
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    nodes = plugin_nodes(model)
    assert len(nodes) == ENCODER_LAYERS
    for node in nodes:
        assert [types.get(name) for name in node.input] == [TensorProto.FLOAT16, None, None] + [TensorProto.FLOAT16] * 2
        assert {t.name: t.data_type for t in model.graph.initializer}[node.input[1]] == TensorProto.INT32
    assert lint(out) == []  # the fp16 graph too: Cast(uint8 -> fp16) first, fp16 everywhere TensorRT allows it
    accuracy = read_metadata(out)["accuracy"]  # gated on ONNX Runtime, the plugin by the reference (in float32)
    assert accuracy["label_agreement"] > 0.99 and max(accuracy["max_abs_diff"].values()) < 2e-2
