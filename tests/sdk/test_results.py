"""sdk.results: Instances, SegmentationResult views, COCO export, JSON summary and the overlay."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from sdk.postprocess import masks_to_boxes
from sdk.results import VOID, Instances, SegmentationResult

NAMES = ["person", "car", "road", "sky"]  # things 0, 1; stuff 2, 3
COLORS = [[220, 20, 60], [0, 0, 142], [128, 64, 128], [70, 130, 180]]  # RGB
H, W = 60, 80


def make_instances() -> Instances:
    masks = np.zeros((3, H, W), dtype=bool)  # (N, h, w)
    masks[0, 10:30, 5:25] = True
    masks[1, 35:50, 40:70] = True
    masks[2, 20:25, 60:62] = True
    masks[2, 40:42, 10:11] = True  # two parts: the box spans both
    return Instances(masks, masks_to_boxes(masks), np.array([0, 1, 0]), np.array([0.9, 0.8, 0.6]))


def make_panoptic() -> SegmentationResult:
    panoptic = np.zeros((H, W), dtype=np.int32)  # (h, w)
    panoptic[:20] = 1  # sky
    panoptic[40:] = 2  # road
    panoptic[25:35, 10:30] = 3  # person
    panoptic[45:55, 50:70] = 4  # car (on the road)
    segments = [
        {"id": 1, "isthing": False, "category_id": 3, "score": 0.95, "area": 20 * W},
        {"id": 2, "isthing": False, "category_id": 2, "score": 0.9, "area": 20 * W - 200},
        {"id": 3, "isthing": True, "category_id": 0, "score": 0.85, "area": 200},
        {"id": 4, "isthing": True, "category_id": 1, "score": 0.99, "area": 200},
    ]
    return SegmentationResult("panoptic", NAMES, COLORS, panoptic=panoptic, segments_info=segments, frame_index=7)


def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# instances and derived views


def test_instances_validate_their_fields():
    inst = make_instances()
    assert len(inst) == 3 and inst.boxes.dtype == np.float32 and inst.labels.dtype == np.int64
    assert len(inst.select(inst.scores > 0.7)) == 2
    with pytest.raises(ValueError, match="disagree on N"):
        Instances(inst.masks, inst.boxes[:2], inst.labels, inst.scores)
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        Instances(inst.masks[0], inst.boxes, inst.labels, inst.scores)


def test_masks_to_boxes_are_tight_and_exclusive():
    inst = make_instances()
    np.testing.assert_array_equal(inst.boxes[0], [5, 10, 25, 30])
    np.testing.assert_array_equal(inst.boxes[2], [10, 20, 62, 42])
    np.testing.assert_array_equal(masks_to_boxes(np.zeros((1, 4, 4), bool)), np.zeros((1, 4), np.float32))


def test_panoptic_result_derives_semantic_and_instances():
    result = make_panoptic()
    semantic = result.semantic
    assert semantic.shape == (H, W) and semantic.dtype == np.uint8
    assert semantic[0, 0] == 3 and semantic[50, 0] == 2 and semantic[30, 20] == 0 and semantic[50, 60] == 1
    assert semantic[22, 0] == VOID  # rows 20..39 outside the person: no segment
    assert result.semantic is semantic  # cached

    inst = result.instances
    assert len(inst) == 2
    np.testing.assert_array_equal(inst.labels, [0, 1])
    np.testing.assert_allclose(inst.scores, [0.85, 0.99])
    np.testing.assert_array_equal(inst.masks[1], result.panoptic == 4)
    np.testing.assert_array_equal(inst.boxes, [[10, 25, 30, 35], [50, 45, 70, 55]])


def test_result_needs_something_and_a_known_task():
    with pytest.raises(ValueError, match="at least one"):
        SegmentationResult("semantic", NAMES)
    with pytest.raises(ValueError, match="unknown task"):
        SegmentationResult("depth", NAMES, semantic=np.zeros((2, 2), np.uint8))


def test_from_postprocess_views():
    meta = {"task": "panoptic", "class_names": NAMES, "colors": COLORS, "thing_ids": [0, 1]}
    pan = make_panoptic()
    processed = {"task": "panoptic", "panoptic": pan.panoptic, "segments_info": pan.segments_info}
    result = SegmentationResult.from_postprocess(processed, meta)
    assert result.task == "panoptic" and result.size == (H, W) and result.colors == COLORS
    as_semantic = SegmentationResult.from_postprocess(processed, meta, task="semantic")
    np.testing.assert_array_equal(as_semantic.semantic, pan.semantic)

    inst = make_instances()
    processed = {"task": "instance", "instances": {k: getattr(inst, k) for k in ("masks", "boxes", "labels", "scores")}}
    result = SegmentationResult.from_postprocess(processed, {**meta, "task": "instance"}, frame_index=3)
    assert isinstance(result.instances, Instances) and result.semantic is None and result.frame_index == 3
    for task in ("panoptic", "semantic"):
        with pytest.raises(ValueError, match=f"a '{task}' result cannot be made from 'instance'"):
            SegmentationResult.from_postprocess(processed, meta, task=task)


# ---------------------------------------------------------------------------------------------------------------
# COCO


def test_to_coco_round_trips_masks_and_boxes():
    mask_util = pytest.importorskip("pycocotools.mask")
    inst = make_instances()
    result = SegmentationResult("instance", NAMES, COLORS, instances=inst)
    annotations = result.to_coco(image_id=42, category_ids=[1, 3, 7, 23])
    assert len(annotations) == 3
    json.dumps(annotations)
    for ann, mask, label, score in zip(annotations, inst.masks, inst.labels, inst.scores, strict=True):
        assert ann["image_id"] == 42 and ann["category_id"] == [1, 3, 7, 23][label]
        assert ann["score"] == pytest.approx(float(score))
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), mask)
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["bbox"] == pytest.approx(mask_util.toBbox(rle).tolist())
        assert ann["area"] == mask.sum()
    assert [a["category_id"] for a in result.to_coco(1)] == [0, 1, 0]  # class indices by default
    with pytest.raises(ValueError, match="category_ids"):
        result.to_coco(1, category_ids=[5])


def test_to_coco_of_panoptic_and_semantic_results():
    pytest.importorskip("pycocotools.mask")
    pan = make_panoptic()
    assert [a["category_id"] for a in pan.to_coco(1)] == [0, 1]  # the thing segments
    semantic = SegmentationResult("semantic", NAMES, semantic=pan.semantic)
    anns = semantic.to_coco(1)
    assert sorted(a["category_id"] for a in anns) == [0, 1, 2, 3] and all(a["score"] == 1.0 for a in anns)


def test_to_coco_panoptic_ids_read_back_as_panopticapi_reads_them():
    result = make_panoptic()
    bgr, annotation = result.to_coco_panoptic(7, "panoptic/000007.png")
    rgb = bgr[..., ::-1].astype(np.int64)  # cv2.imwrite takes BGR; panopticapi's rgb2id reads RGB
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2], result.panoptic)
    assert annotation["image_id"] == 7 and annotation["file_name"] == "panoptic/000007.png"
    segments = {s["id"]: s for s in annotation["segments_info"]}
    assert {i: s["area"] for i, s in segments.items()} == {1: 20 * W, 2: 20 * W - 200, 3: 200, 4: 200}
    assert segments[3]["bbox"] == [10, 25, 20, 10] and segments[3]["isthing"] and not segments[1]["isthing"]
    assert [s["category_id"] for s in segments.values()] == [3, 2, 0, 1]
    with pytest.raises(ValueError, match="needs a panoptic result"):
        SegmentationResult("semantic", NAMES, semantic=result.semantic).to_coco_panoptic(0, "x.png")


def test_to_coco_without_pycocotools_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        make_panoptic().to_coco(1)


# ---------------------------------------------------------------------------------------------------------------
# summary


@pytest.mark.parametrize("kind", ["panoptic", "instance", "semantic"])
def test_to_dict_is_json_safe(kind):
    pan = make_panoptic()
    result = {
        "panoptic": pan,
        "instance": SegmentationResult("instance", NAMES, COLORS, instances=make_instances()),
        "semantic": SegmentationResult("semantic", NAMES, COLORS, semantic=pan.semantic),
    }[kind]
    result.timings.update({"preprocess_ms": np.float64(1.5), "inference_ms": 10.0})
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["task"] == kind and summary["size"] == [H, W]
    assert summary["timings"]["preprocess_ms"] == 1.5
    fractions = {c["name"]: c["fraction"] for c in summary["classes"]}
    if kind != "instance":
        assert fractions["sky"] == pytest.approx(20 * W / (H * W))
        assert sum(fractions.values()) == pytest.approx((pan.semantic != VOID).mean(), abs=1e-5)
    if kind != "semantic":
        assert all("mask" not in i and len(i["box"]) == 4 for i in summary["instances"])
    if kind == "panoptic":
        assert [s["id"] for s in summary["segments"]] == [1, 2, 3, 4]


def test_class_histogram_largest_first():
    histogram = make_panoptic().class_histogram()
    assert list(histogram) == ["sky", "road", "person", "car"]
    assert histogram["person"] == pytest.approx(200 / (H * W))


# ---------------------------------------------------------------------------------------------------------------
# overlay


@pytest.mark.parametrize("kind", ["panoptic", "instance", "semantic"])
def test_overlay_changes_pixels_under_masks_only(kind):
    pan = make_panoptic()
    inst = make_instances()
    result, covered = {
        "panoptic": (pan, pan.panoptic > 0),
        "instance": (SegmentationResult("instance", NAMES, COLORS, instances=inst), inst.masks.any(0)),
        "semantic": (SegmentationResult("semantic", NAMES, COLORS, semantic=pan.semantic), pan.semantic != VOID),
    }[kind]
    image = frame()
    out = result.overlay(image, alpha=0.5, draw_boxes=False, draw_labels=False)
    assert out.shape == image.shape and out.dtype == np.uint8 and out is not image
    changed = (out != image).any(axis=2)
    assert not changed[~covered].any()
    assert changed[covered].mean() > 0.9  # blending moves (almost) every covered pixel
    np.testing.assert_array_equal(image, frame())  # the input is untouched


def test_overlay_colours_are_the_metadata_rgb_as_bgr():
    pan = make_panoptic()
    result = SegmentationResult("semantic", NAMES, COLORS, semantic=pan.semantic)
    black = np.zeros((H, W, 3), np.uint8)
    out = result.overlay(black, alpha=1.0)
    np.testing.assert_array_equal(out[0, 0], COLORS[3][::-1])  # sky, BGR
    np.testing.assert_array_equal(out[22, 0], [0, 0, 0])  # void


def test_overlay_draws_boxes_and_labels_outside_masks():
    inst = make_instances()
    result = SegmentationResult("instance", NAMES, COLORS, instances=inst)
    image = frame()
    plain = result.overlay(image, draw_boxes=False, draw_labels=False)
    boxed = result.overlay(image)
    extra = (boxed != plain).any(axis=2)
    assert extra[~inst.masks.any(0)].any()  # the boxes' text tags lie outside the masks
    low = result.overlay(image, draw_boxes=False, draw_labels=False, min_score=0.85)
    assert not (low != image).any(axis=2)[inst.masks[1]].any()  # the 0.8 car is not drawn


def test_overlay_checks_the_frame():
    result = make_panoptic()
    with pytest.raises(ValueError, match="pass the frame it was made from"):
        result.overlay(np.zeros((H + 1, W, 3), np.uint8))
    grey = result.overlay(np.zeros((H, W), np.uint8))  # grey frames are converted
    assert grey.shape == (H, W, 3)
