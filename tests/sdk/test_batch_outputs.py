"""sdk.batch's per-input formats (issue 40) with the tiny panoptic model of tests/sdk/conftest.py: overlay video and
PNG, class histograms, COCO and COCO panoptic JSON, every frame once in each, the same bytes whether a video is cut
into frame ranges or runs as one unit, and the same segments as ``Segmenter.predict`` gives; the Parquet summary."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import sdk
from runtimes.artifact import read_metadata, write_metadata
from sdk.batch_outputs import png_bytes
from tests.sdk.batch_archive import destination_files
from tests.sdk.clips import write_clip

FRAMES = 7
FORMATS = {"histograms": True, "coco": True, "panoptic": True}


def panoptic_ids(path: Path) -> np.ndarray:
    """A COCO panoptic PNG's segment ids as panopticapi's ``rgb2id`` reads them (R + 256 G + 256^2 B)."""
    rgb = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@pytest.fixture(scope="module")
def model(artifacts, tmp_path_factory) -> dict:
    """The tiny panoptic artifact keeping every query its classes claim (its random weights are never confident:
    at the shipped thresholds its frames would have no segment, and the formats nothing to show)."""
    pytest.importorskip("pycocotools.mask")
    onnx = pytest.importorskip("onnx")
    proto, meta = onnx.load(artifacts["panoptic"]), read_metadata(artifacts["panoptic"])
    meta["inference"] = {**meta["inference"], "object_mask_threshold": 0.0, "overlap_threshold": 0.0}
    write_metadata(proto, meta)
    path = tmp_path_factory.mktemp("confident") / "panoptic.onnx"
    onnx.save(proto, path)
    return {"target": "onnxruntime", "model": path}


def test_every_format_every_frame_once_and_cut_ranges_change_nothing(tmp_path: Path, model) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    write_clip(root / "clip.mp4", FRAMES)
    still = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "still.png"), still)
    cut = sdk.batch([root], tmp_path / "cut", model, chunk_frames=3, **FORMATS)
    whole = sdk.batch([root], tmp_path / "whole", model, chunk_frames=3, overlay=True, **FORMATS)
    assert [r["units"] for r in cut.inputs] == [3, 1] and [r["units"] for r in whole.inputs] == [1, 1]
    files = destination_files(tmp_path / "whole")
    overlays = {name: files.pop(name) for name in list(files) if "overlay" in name}
    assert sorted(overlays) == ["clip_seg/overlay.mp4", "still_seg/overlay.png"]
    assert destination_files(tmp_path / "cut") == files  # the ranges joined give what one stream gives
    clip, image = (tmp_path / "whole" / r["folder"] for r in whole.inputs)
    video = cv2.VideoCapture(str(clip / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    video.release()
    assert cv2.imread(str(image / "overlay.png")).shape == still.shape

    with sdk.Segmenter(**model) as seg:
        names = seg.metadata["class_names"]
        result = seg.predict(still)
    assert (image / "labels" / "000000.png").read_bytes() == png_bytes(result.semantic)
    panoptic = json.loads((image / "panoptic.json").read_text())
    _, expected = result.to_coco_panoptic(0, "panoptic/000000.png")
    assert panoptic["annotations"] == [json.loads(json.dumps(expected))]
    assert [c["name"] for c in panoptic["categories"]] == list(names)
    np.testing.assert_array_equal(panoptic_ids(image / "panoptic" / "000000.png"), result.panoptic)

    coco = json.loads((clip / "coco.json").read_text())
    assert [i["id"] for i in coco["images"]] == [i["frame"] for i in coco["images"]] == list(range(FRAMES))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert {a["image_id"] for a in coco["annotations"]} <= set(range(FRAMES))
    frames = json.loads((clip / "panoptic.json").read_text())["annotations"]
    assert [f["file_name"] for f in frames] == [f"panoptic/{k:06d}.png" for k in range(FRAMES)]
    assert any(frame["segments_info"] for frame in frames)  # something to check
    for frame in frames:
        ids = panoptic_ids(clip / frame["file_name"])
        assert {s["id"]: s["area"] for s in frame["segments_info"]} == {
            int(i): int((ids == i).sum()) for i in np.unique(ids) if i
        }
    rows = (clip / "histograms.csv").read_text().splitlines()
    assert rows[0].split(",") == ["frame", *names] and len(rows) == FRAMES + 1
    assert all(sum(map(float, row.split(",")[1:])) <= 1.0 + 1e-4 for row in rows[1:])


def test_the_summary_as_parquet(tmp_path: Path, model) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="the Parquet summary needs pyarrow (the fleet extra)")
    write_clip(tmp_path / "clip.mp4", 3)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    report = sdk.batch([tmp_path / "clip.mp4", tmp_path / "bad.mp4"], tmp_path / "out", model, summary="parquet")
    assert report.summary_path == tmp_path / "out" / "summary.parquet"
    table = pq.read_table(report.summary_path).to_pylist()
    assert [(row["status"], row["frames"]) for row in table] == [("done", 3), ("failed", 0)]
    assert table[1]["note"] and table[0]["frames_per_s"] > 0
