"""``m2f demo``: a real clip streamed through a model, the per-target table, and a clear error without a clip."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sdk import demo
from sdk.segmenter import Segmenter
from sdk.sources import read_video_frames
from tests.conftest import data_root

CLIP = data_root() / "videos" / "car-detection.mp4"


@pytest.mark.data
@pytest.mark.skipif(not CLIP.exists(), reason=f"needs the shared street clips ({CLIP})")
def test_demo_streams_writes_the_video_and_tables_every_cpu_target(artifacts, tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    argv = [str(CLIP), "--model", str(artifacts["semantic"]), "--max-frames", "12", "--table-frames", "3"]
    assert demo.demo_main([*argv, "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(printed.strip().splitlines()[-1])
    assert figures["stream"]["frames"] == 12 and figures["stream"]["written"] == 12
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    capture.release()
    rows = {(r["target"], r["precision"]): r for r in figures["table"]}
    assert set(rows) == {("openvino", "fp32"), ("onnxruntime", "fp32")}
    # agreement of each row with the first (OpenVINO), recomputed here from our own predictions on the same frames
    table_frames = read_video_frames(CLIP, 3)
    labels = {}
    for target in ("openvino", "onnxruntime"):
        with Segmenter(target, model=artifacts["semantic"], precision="fp32") as seg:
            labels[target] = [seg.predict(frame).semantic for frame in table_frames]
    same = sum(int((a == b).sum()) for a, b in zip(labels["openvino"], labels["onnxruntime"], strict=True))
    expected = 100.0 * same / sum(a.size for a in labels["openvino"])
    assert rows["onnxruntime", "fp32"]["agreement"] == pytest.approx(expected, abs=0.05)
    assert rows["onnxruntime", "fp32"]["agreement"] > 99.0  # the same fp32 artifact on another runtime
    assert all(r["p50_ms"] > 0 and not r["error"] for r in rows.values())
    assert "| onnxruntime | onnxruntime | fp32 |" in printed


def test_demo_without_a_clip_says_where_it_looked(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(demo, "CLIP_CANDIDATES", (tmp_path / "nothing.mp4",))
    assert demo.demo_main(["--model", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no demo clip found" in err and "nothing.mp4" in err


def test_demo_reports_an_unreadable_source(artifacts, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    assert demo.demo_main([str(bad), "--model", str(artifacts["semantic"]), "--out", str(tmp_path / "o.mp4")]) == 2
    assert "m2f demo:" in capsys.readouterr().err


def test_read_video_frames_missing_and_undecodable(tmp_path):
    with pytest.raises(FileNotFoundError, match="no video"):
        read_video_frames(tmp_path / "missing.mp4", 3)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="decoded no frame"):
        read_video_frames(tmp_path / "bad.mp4", 3)


def test_the_table_adds_the_precision_a_target_picks_by_itself(monkeypatch):
    """On a bf16 CPU OpenVINO can run the packaged fp32 file in bf16 (its gate verified it; int8 is the choice
    there): the demo's table shows that row too."""
    from sdk.demo import _default_precision, packaged_precisions

    listed = packaged_precisions()
    assert listed == ["fp32", "int8"]  # from the files' metadata: two int8 files (OpenVINO's, ORT's), one row each
    monkeypatch.setenv("M2F_CPU_FLAGS", "avx512f avx512_bf16 avx512_vnni")
    assert _default_precision("openvino", None, listed) == ["bf16"]
    assert _default_precision("onnxruntime", None, listed) == []  # its choice, fp32, is listed already
    monkeypatch.setenv("M2F_CPU_FLAGS", "")
    assert _default_precision("openvino", None, listed) == []  # no bf16: fp32, listed


def test_read_video_frames_consecutive_or_spread(tmp_path):
    from tests.sdk.clips import write_clip

    clip = write_clip(tmp_path / "clip.mp4", 20)
    spread, first = read_video_frames(clip, 4), read_video_frames(clip, 4, consecutive=True)
    every = read_video_frames(clip, 20, consecutive=True)
    assert len(every) == 20 and len(spread) == len(first) == 4
    assert all(np.array_equal(a, b) for a, b in zip(first, every[:4], strict=True))  # frames 0, 1, 2, 3
    assert np.array_equal(spread[-1], every[-1]) and not np.array_equal(spread[1], every[1])  # 0, 6, 13, 19
