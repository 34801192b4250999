"""compile/tensorrt_rules.py: TensorRT's ONNX parser rules on a hand-built graph with today's violations (uint8
Transpose before the Cast, uint8 Q/DQ), the exact rewrites, and the packaged artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile import tensorrt_rules
from compile.tensorrt_rules import VERSIONS, lint, rewrite_for_tensorrt, support_table
from runtimes.artifact import read_metadata, write_metadata
from sdk.model_registry import MODELS_DIR

H, W = 6, 8


def violating_graph(zero_point: int = 3) -> onnx.ModelProto:
    """The pattern our export and the packaged models had: ``images (uint8 NHWC) -> Transpose -> Cast``, then a
    uint8 Q/DQ activation pair and a Conv whose weights are a uint8 initializer behind a DequantizeLinear, then
    ``ArgMax -> Cast(uint8)`` as the output (legal: a graph output)."""
    rng = np.random.default_rng(0)
    weight_q = rng.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)  # (C_out, C_in, kh, kw)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "act_scale"),
        numpy_helper.from_array(np.array(zero_point, np.uint8), "act_zero"),
        numpy_helper.from_array(weight_q, "w_q"),
        numpy_helper.from_array(np.full((4,), 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array([120, 128, 131, 140], np.uint8), "w_zero"),
    ]
    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw_u8"], perm=[0, 3, 1, 2], name="layout"),
        helper.make_node("Cast", ["nchw_u8"], ["nchw"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("QuantizeLinear", ["nchw", "act_scale", "act_zero"], ["x_q"], name="q"),
        helper.make_node("DequantizeLinear", ["x_q", "act_scale", "act_zero"], ["x_dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0, name="w_dq"),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ArgMax", ["y"], ["arg"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["arg"], ["labels"], to=TensorProto.UINT8, name="to_labels"),
    ]
    graph = helper.make_graph(
        nodes,
        "violating",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, H, W, 3])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, [1, H, W])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images}), strict=True))


def _rules(model: onnx.ModelProto | Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for violation in lint(model):
        found[violation.rule] = found.get(violation.rule, 0) + 1
    return found


def test_support_table_is_data_with_sources() -> None:
    data = json.loads(tensorrt_rules.SUPPORT_FILE.read_text())
    for version in VERSIONS:
        table = support_table(version)
        assert "onnx-tensorrt" in table.source or "10.3 table" in table.source
        assert "UINT8" in table.operators["Cast"] and "UINT8" not in table.operators["Transpose"]
        assert table.operators["DequantizeLinear"] >= {"INT8"} and "UINT8" not in table.operators["DequantizeLinear"]
        assert table.operators["GridSample"] == {"FP32", "FP16"}
    assert "commit" in data["versions"]["10.3"]["source"]
    assert support_table("10.3").opset == (9, 20) and support_table("11").opset[1] >= 24
    assert "Swish" in support_table("11").operators and "Swish" not in support_table("10.3").operators
    with pytest.raises(ValueError, match="no TensorRT support table"):
        support_table("8.6")


def test_lint_reports_todays_pattern() -> None:
    rules = _rules(violating_graph())
    # Transpose on uint8: an intermediate uint8 tensor, and a type the Transpose row does not list
    # Q/DQ: uint8 zero points (and the uint8 weights into a DQ), the Q's uint8 output, non-zero zero points
    assert rules == {"dtype": 3, "uint8": 2, "qdq-uint8": 3, "qdq-zero-point": 3}
    messages = [str(v) for v in lint(violating_graph())]
    assert any("nchw_u8" in m and "UINT8 intermediate" in m and "10.3, 11" in m for m in messages)


def test_lint_reports_unknown_ops_opset_and_types() -> None:
    model = violating_graph()
    model.graph.node[6].op_type = "Unique"  # "N" in every table: the parser has no importer for it
    model.graph.node[6].ClearField("attribute")
    model.opset_import[0].version = 22
    rules = _rules(model)
    assert rules["opset"] == 1 and rules["operator"] == 1
    opset = next(v for v in lint(model) if v.rule == "opset")
    assert opset.versions == ("10.3",)  # 11.x parses opset 22
    plugin = violating_graph()
    plugin.graph.node[6].op_type = "M2F_MultiscaleDeformableAttn"  # a known plugin: imported from the registry
    assert "operator" not in _rules(plugin)


@pytest.mark.parametrize("zero_point", [3, 128])
def test_rewrite_is_exact_and_leaves_only_the_asymmetry(zero_point: int) -> None:
    model = violating_graph(zero_point)
    images = np.random.default_rng(1).integers(0, 256, (1, H, W, 3), dtype=np.uint8)
    before = _run(model, images)
    done = rewrite_for_tensorrt(model)
    onnx.checker.check_model(model, full_check=True)
    assert [line.split(":")[0] for line in done] == ["cast_before_transpose", "qdq_uint8_to_int8"]
    after = _run(model, images)
    np.testing.assert_array_equal(after["labels"], before["labels"])
    # weights (120, 128, 131, 140) are asymmetric in any type; the activation is symmetric only for z = 128
    assert _rules(model) == {"qdq-zero-point": 1 + (zero_point != 128) * 2}
    types = tensorrt_rules.tensor_types(model)
    assert TensorProto.UINT8 not in {types[n] for node in model.graph.node for n in node.output if n != "labels"}


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.onnx"
    onnx.save(violating_graph(128), str(src))
    assert tensorrt_rules._main([str(src)]) == 1
    assert "[uint8] nchw_u8" in capsys.readouterr().out
    model = violating_graph(128)
    model.graph.initializer[4].CopyFrom(numpy_helper.from_array(np.full((4,), 128, np.uint8), "w_zero"))
    rewrite_for_tensorrt(model)  # 128 in uint8 is 0 in int8: symmetric everywhere
    good = tmp_path / "good.onnx"
    onnx.save(model, str(good))
    assert tensorrt_rules._main([str(good)]) == 0
    assert tensorrt_rules._main([str(tmp_path / "missing.onnx")]) == 2


def test_cli_rewrite_writes_and_lists_what_is_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = violating_graph(3)  # asymmetric activations survive the rewrite
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    onnx.save(model, str(src))
    assert tensorrt_rules._main(["--rewrite", str(src), str(dst)]) == 2  # not an m2f artifact: a message
    assert "not an m2f artifact" in capsys.readouterr().err and not dst.exists()
    write_metadata(model, read_metadata(MODELS_DIR / "default_int8.onnx"))
    onnx.save(model, str(src))
    assert tensorrt_rules._main(["--rewrite", str(src), str(dst)]) == 0  # written: what is left is listed
    out = capsys.readouterr().out
    assert "qdq_uint8_to_int8" in out and "not counted in the exit status" in out and "qdq-zero-point" in out
    assert read_metadata(dst)["rewrites"][-1]["by"] == "compile.tensorrt_rules"
    assert tensorrt_rules._main(["--rewrite", str(src), str(dst), str(dst)]) == 1  # named in FILES: it counts
    assert tensorrt_rules._main(["--rewrite", str(tmp_path / "missing.onnx"), str(dst)]) == 2


@pytest.mark.parametrize("name", ["default_fp32.onnx", "default_int8.onnx"])
def test_packaged_models_pass_the_parser_rules(name: str) -> None:
    path = MODELS_DIR / name
    if not path.exists():
        pytest.skip(f"{path} is not packaged")
    rules = _rules(path)
    metadata = read_metadata(path)
    if metadata["precision"] == "int8":
        # an OpenVINO artifact: NNCF's asymmetric / unsigned activations are int8 with non-zero zero points, the
        # same arithmetic as before; TensorRT takes symmetric Q/DQ only (its int8 is a ModelOpt artifact)
        assert set(rules) == {"qdq-zero-point"}
    else:
        assert rules == {}
    if metadata.get("rewrites"):  # a file the export left something to fix in was rewritten by the rule's tool
        assert metadata["rewrites"][-1]["by"] == "compile.tensorrt_rules"
    assert metadata["accuracy"]["images"] == 101  # the export gate's figures are kept


def test_cli_reader_leaving_early_is_quiet(tmp_path: Path) -> None:
    """``python -m compile.tensorrt_rules FILES | head``: no BrokenPipeError traceback."""
    import subprocess
    import sys

    src = tmp_path / "bad.onnx"
    onnx.save(violating_graph(3), str(src))
    process = subprocess.Popen(  # enough lines to fill the pipe's buffer before the reader leaves
        [sys.executable, "-m", "compile.tensorrt_rules", *[str(src)] * 400],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().startswith(str(src))
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr and process.returncode == 0, stderr[-2000:]
