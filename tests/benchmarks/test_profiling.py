"""benchmarks.profiling's command: each artifact on its runtime's own profiler, the int8 share told apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import profiling
from compile.gate import INT8_SHARE_FLOOR
from sdk.model_registry import MODELS_DIR

FP32 = MODELS_DIR / "default_fp32.onnx"
ORT_INT8 = MODELS_DIR / "default_ort_int8.onnx"
pytestmark = pytest.mark.skipif(not ORT_INT8.exists(), reason="needs the packaged default models")


def test_profiles_tell_int8_from_fp32(tmp_path: Path) -> None:
    argv = [str(FP32), str(ORT_INT8), "--runtime", "onnxruntime", "--runs", "1", "--threads", "1"]
    assert profiling.main([*argv, "--out", str(tmp_path)]) == 0
    fp32, int8 = json.loads((tmp_path / "profiles.json").read_text())
    assert fp32["int8_share"] == 0 and fp32["precision"] == "fp32"
    assert int8["int8_share"] >= INT8_SHARE_FLOOR["onnxruntime"] and int8["runtime"] == "onnxruntime"
    assert any(op["op"].startswith("QLinear") for op in int8["ops"])
    assert "in int8 kernels" in (tmp_path / "profiles.md").read_text()


def test_bad_input_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert profiling.main([str(FP32), "--image", str(tmp_path / "missing.png")]) == 2
    assert "cannot read an image" in capsys.readouterr().err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    assert profiling.main([str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err


def test_int8_share_takes_each_node_at_its_fastest() -> None:
    """Load from other processes only adds time, to whichever op runs: one slow run of a float node must not
    drag the share (the sum over both runs would say 25 %, each node at its fastest 50 %)."""
    from runtimes.profiling import int8_time_share

    def is_int8(op: str, exec_type: str) -> bool:
        return exec_type.endswith("I8")

    runs = [("conv", "Convolution", 100.0, "brgconv_I8"), ("sample", "GridSample", 100.0, "jit_f32")]
    slowed = [("conv", "Convolution", 100.0, "brgconv_I8"), ("sample", "GridSample", 500.0, "jit_f32")]
    assert int8_time_share(runs + slowed, is_int8) == pytest.approx(0.5)
    assert int8_time_share([], is_int8) == 0.0
