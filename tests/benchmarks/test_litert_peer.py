"""The off-the-shelf LiteRT peer: its class mapping, its letterbox, and its accuracy on a CamVid drive."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.litert_peer import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_TO_CAMVID,
    PEER_FILE,
    LiteRtDeepLab,
    PeerNotAvailable,
    camvid_lookup,
)

CAMVID = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)


def test_every_cityscapes_class_maps_once():
    lut = camvid_lookup(CAMVID)
    assert lut.shape == (19,) and lut.max() < 11
    sources = [c for group in CITYSCAPES_TO_CAMVID.values() for c in group]
    assert sorted(sources) == sorted(CITYSCAPES_CLASSES)
    assert CAMVID[lut[CITYSCAPES_CLASSES.index("train")]] == "Car"
    with pytest.raises(PeerNotAvailable, match="CamVid"):
        camvid_lookup(("road", "car", "sky"))


@pytest.mark.data
def test_mapping_agrees_with_camvid_suggestion(shared_data: Path):
    """CamVid's classes.csv suggests Cityscapes trainIds per class; ours adds only train -> Car."""
    with (shared_data / "camvid" / "classes.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["name"] in CAMVID]
    lut = camvid_lookup(CAMVID)
    suggested = {
        int(part.split("(")[0]): CAMVID.index(r["name"])
        for r in rows
        for part in r["suggested_cityscapes_trainIds"].split(";")
    }
    assert {i: int(lut[i]) for i in suggested} == suggested
    assert set(range(19)) - set(suggested) == {CITYSCAPES_CLASSES.index("train")}


@pytest.mark.data
@pytest.mark.slow
def test_peer_scores_a_camvid_drive(shared_data: Path, pretrained_dir: Path):
    """Every 4th frame of drive 0006R0 (26 frames): measured 47.7 mIoU (all 101 frames: see the LOSO table)."""
    pytest.importorskip("ai_edge_litert")
    from train.data import build_dataset
    from train.evaluation.semantic import SemanticEvaluator, semantic_gt_from_sample

    spec = {"format": "camvid", "root": str(shared_data / "camvid"), "split": "trainval", "sequences": ["0006R0"]}
    dataset = build_dataset(spec)
    peer = LiteRtDeepLab(pretrained_dir / PEER_FILE, dataset.meta.class_names, threads=1)
    evaluator = SemanticEvaluator(11, 255)
    for i in range(0, len(dataset), 4):
        sample = dataset[i]
        frame = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy()[..., ::-1])  # BGR
        h, w = frame.shape[:2]
        labels, stages = peer.predict(frame)
        assert labels.shape == (h, w) and labels.dtype == np.uint8
        assert set(stages) == {"preprocess_ms", "inference_ms", "postprocess_ms"}
        evaluator.update(labels, semantic_gt_from_sample(sample["labels"], sample["masks"], sample["iscrowd"], h, w))
    assert 44.0 < evaluator.compute()["mIoU"] < 52.0


def test_missing_file_is_a_clear_error(tmp_path: Path):
    pytest.importorskip("ai_edge_litert")
    with pytest.raises(PeerNotAvailable, match="M2F_PRETRAINED"):
        LiteRtDeepLab(tmp_path / PEER_FILE, CAMVID)
