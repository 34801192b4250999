"""benchmarks.cpu_precisions: every row timed in its own process, the report says so, a broken row is a message."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import cpu_precisions
from benchmarks.litert_peer import default_peer_path
from sdk.model_registry import MODELS_DIR

FP32 = MODELS_DIR / "default_fp32.onnx"
pytestmark = pytest.mark.skipif(not FP32.exists(), reason="needs the packaged default model")


def _frames(folder: Path, count: int = 2) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index}.png"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    return folder


def test_rows_run_in_their_own_processes(tmp_path: Path) -> None:
    images = _frames(tmp_path / "frames")
    argv = ["--fp32", str(FP32), "--images", str(images), "--frames", "2", "--rounds", "2", "--threads", "1"]
    assert cpu_precisions.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cpu_precisions.json").read_text())
    assert report["mode"] == "one process per row and round"
    assert {"OpenVINO fp32", "ONNX Runtime fp32"} <= set(report["rows"])
    assert report["rows"]["OpenVINO fp32"]["vs_base"] == 1.0
    assert all(row["end_to_end_ms"] >= row["inference_ms"] > 0 for row in report["rows"].values())
    try:
        import ai_edge_litert  # noqa: F401

        peer_here = default_peer_path().exists()
    except ImportError:
        peer_here = False
    assert (cpu_precisions.PEER_ROW in report["rows"]) == peer_here
    assert "one process per row and round" in (tmp_path / "cpu_precisions.md").read_text()
    assert cpu_precisions.main([*argv, "--in-process", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "cpu_precisions.json").read_text())
    assert one["mode"] == "interleaved in one process" and set(one["rows"]) == set(report["rows"])


def test_a_row_that_fails_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _frames(tmp_path / "frames", 1)
    broken = tmp_path / "broken_int8.onnx"
    broken.write_bytes(b"not an onnx file")
    argv = ["--fp32", str(FP32), "--openvino-int8", str(broken), "--images", str(images), "--frames", "1"]
    assert cpu_precisions.main([*argv, "--rounds", "1", "--threads", "1"]) == 2
    assert "row 'OpenVINO int8' failed" in capsys.readouterr().err
    assert cpu_precisions.main(["--fp32", str(FP32), "--images", str(tmp_path / "nothing")]) == 2
    assert "no images under" in capsys.readouterr().err


def test_packaged_models_by_name_against_the_peer(tmp_path: Path) -> None:
    """``--models NAME``: one row per packaged model as Segmenter("cpu") runs it; ratios against the peer."""
    pytest.importorskip("ai_edge_litert")
    if not default_peer_path().exists():
        pytest.skip("the LiteRT peer's file is not under ../shared")
    images = _frames(tmp_path / "frames", 1)
    argv = ["--models", "street-default", "--images", str(images), "--frames", "1", "--rounds", "1"]
    assert cpu_precisions.main([*argv, "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cpu_precisions.json").read_text())
    assert report["base"] == cpu_precisions.PEER_ROW and set(report["rows"]) == {"street-default", report["base"]}
    assert report["rows"][cpu_precisions.PEER_ROW]["vs_base"] == 1.0
