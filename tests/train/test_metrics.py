"""Metrics (train.evaluation): self-consistency, hand-checked values and the COCO panoptic sample fixtures.

panopticapi is not on PyPI, so the oracles are hand-computed cases (exact numbers derived in the comments) and,
for the COCO fixtures, numbers produced once by panopticapi's own ``pq_compute_single_core`` (evaluation.py at
cocodataset/panopticapi master) on the same GT PNGs and the same perturbed prediction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from train.data.sample import Sample
from train.evaluation import (
    InstanceEvaluator,
    PanopticEvaluator,
    SemanticEvaluator,
    evaluate,
    panoptic_gt_from_sample,
    semantic_gt_from_sample,
)
from train.model.config import ModelMeta

NAMES = ("person", "car", "sky", "road", "tree")
THINGS = (0, 1)
META = ModelMeta(class_names=NAMES, thing_ids=THINGS)


# ---------------------------------------------------------------------------------------------------- helpers


def sample_from_id_map(ids: np.ndarray, segments: dict[int, tuple[int, bool]], image_id: str = "x") -> Sample:
    """A ``Sample`` from an (H, W) segment-id map (0 = void) and ``{id: (label, iscrowd)}``, in id order."""
    keys = [k for k in sorted(segments) if (ids == k).any()]
    h, w = ids.shape
    masks = np.stack([ids == k for k in keys]) if keys else np.zeros((0, h, w), bool)
    return Sample(
        image=torch.zeros((3, h, w), dtype=torch.uint8),
        labels=torch.tensor([segments[k][0] for k in keys], dtype=torch.int64),
        masks=torch.from_numpy(masks),
        iscrowd=torch.tensor([segments[k][1] for k in keys], dtype=torch.bool),
        image_id=image_id,
    )


def synthetic_scene(rng: np.random.Generator, h: int = 32, w: int = 40) -> Sample:
    """Stuff bands (sky, tree, road), one person and one car at least, a crowd of persons and void pixels."""
    ids = np.zeros((h, w), np.int64)
    segs: dict[int, tuple[int, bool]] = {1: (2, False), 2: (4, False), 3: (3, False)}
    a, b = sorted(rng.choice(np.arange(6, h - 6), 2, replace=False))
    ids[:a], ids[a:b], ids[b:] = 1, 2, 3
    labels = [0, 1, *rng.choice(THINGS, rng.integers(0, 3)).tolist()]
    for n, label in enumerate(labels):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        ids[y : y + rng.integers(4, 9), x : x + rng.integers(4, 9)] = 10 + n
        segs[10 + n] = (int(label), False)
    y, x = rng.integers(0, h - 6), rng.integers(0, w - 10)
    ids[y : y + 6, x : x + 10] = 9  # crowd of persons, painted over some things
    segs[9] = (0, True)
    y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
    ids[y : y + 4, x : x + 4] = 0  # void
    return sample_from_id_map(ids, segs)


def perfect_outputs(sample: Sample, num_classes: int, thing_ids: tuple[int, ...]) -> dict[str, Any]:
    """What a perfect model's post-processing would return for ``sample``, for every task at once."""
    labels, masks, crowd = sample["labels"], sample["masks"], sample["iscrowd"]
    h, w = masks.shape[-2:]
    sem = semantic_gt_from_sample(labels, masks, crowd, h, w)  # (H, W)
    pan = np.zeros((h, w), np.int32)
    info = []
    for i, (label, mask) in enumerate(zip(labels.tolist(), masks, strict=True)):
        pan[mask.numpy()] = i + 1
        info.append({"id": i + 1, "isthing": label in thing_ids, "category_id": label})
    keep = torch.tensor([lab in thing_ids for lab in labels.tolist()], dtype=torch.bool) & ~crowd
    n = int(keep.sum())
    instances = {"masks": masks[keep], "scores": torch.linspace(1.0, 0.5, n), "labels": labels[keep]}
    semantic = torch.from_numpy(np.clip(sem, 0, num_classes - 1))  # ignored pixels: any class
    return {"semantic": semantic, "panoptic": torch.from_numpy(pan), "segments_info": info, "instances": instances}


def instance_gt(boxes: list[tuple[int, int, int, int, int, bool]], h: int = 20, w: int = 20) -> Sample:
    """Sample of rectangles ``(label, y0, y1, x0, x1, iscrowd)``."""
    ids = np.zeros((h, w), np.int64)
    segs = {}
    for i, (label, y0, y1, x0, x1, crowd) in enumerate(boxes):
        ids[y0:y1, x0:x1] = i + 1
        segs[i + 1] = (label, crowd)
    return sample_from_id_map(ids, segs)


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------------------------------------------- GT vs itself


@pytest.mark.parametrize("task,metric", [("semantic", "mIoU"), ("panoptic", "PQ"), ("instance", "AP")])
def test_ground_truth_against_itself_scores_100(task: str, metric: str) -> None:
    rng = np.random.default_rng(0)
    samples = [synthetic_scene(rng) for _ in range(4)]
    pairs = [(s, perfect_outputs(s, len(NAMES), THINGS)) for s in samples]
    res = evaluate(pairs, task, META)
    assert res[metric] == pytest.approx(100.0)
    if task == "panoptic":
        assert res["PQ_th"] == pytest.approx(100.0) and res["PQ_st"] == pytest.approx(100.0)
        assert res["mIoU"] == pytest.approx(100.0)  # semantic present in the outputs, so scored too
    if task == "semantic":
        assert res["pACC"] == pytest.approx(100.0) and res["mACC"] == pytest.approx(100.0)
    if task == "instance":
        assert res["AP50"] == pytest.approx(100.0) and res["AP75"] == pytest.approx(100.0)
        assert set(k for k in res if k.startswith("AP-")) == {"AP-person", "AP-car"}  # things only


# ---------------------------------------------------------------------------------------------------- semantic


def test_semantic_shift_by_two_columns() -> None:
    # 10x10; GT class 0 on columns 0-4, class 1 on 5-9; prediction shifted right by 2: class 0 on 0-6, 1 on 7-9.
    # class 0: TP 50, pred 70, GT 50 -> IoU 50/70;  class 1: TP 30, pred 30, GT 50 -> IoU 30/50.
    # mIoU = (5/7 + 3/5) / 2 = 46/70; pACC = 80/100; mACC = (50/50 + 30/50) / 2 = 0.8;
    # fwIoU = 0.5 * 5/7 + 0.5 * 3/5 = 46/70 (equal class frequencies).
    gt = np.zeros((10, 10), np.int64)
    gt[:, 5:] = 1
    pred = np.zeros((10, 10), np.int64)
    pred[:, 7:] = 1
    ev = SemanticEvaluator(3, class_names=["a", "b", "c"])
    ev.update(pred, gt)
    res = ev.compute()
    assert res["IoU-a"] == pytest.approx(100 * 5 / 7)
    assert res["IoU-b"] == pytest.approx(100 * 3 / 5)
    assert math.isnan(res["IoU-c"])  # absent from GT and predictions: NaN, not in the mean
    assert res["mIoU"] == pytest.approx(100 * 46 / 70)
    assert res["fwIoU"] == pytest.approx(100 * 46 / 70)
    assert res["pACC"] == pytest.approx(80.0)
    assert res["mACC"] == pytest.approx(80.0)


def test_semantic_ignore_pixels_and_predicted_class_without_gt() -> None:
    # Same GT but column 9 is ignore (255): 90 labelled pixels. Prediction: class 0 on columns 0-3, class 2 on
    # column 4 (no GT pixel of class 2 anywhere), class 1 on 5-9.
    # class 0: TP 40, GT 50, pred 40 -> IoU 40/50;  class 1: TP 40 (cols 5-8), GT 40, pred on labelled pixels 40
    # -> IoU 1;  class 2: no GT -> NaN and out of the mean, though its 10 pixels still cost class 0 its TP.
    # mIoU = (0.8 + 1) / 2 = 0.9; pACC = 80/90; fwIoU = 50/90 * 0.8 + 40/90 * 1 = 80/90.
    gt = np.zeros((10, 10), np.int64)
    gt[:, 5:] = 1
    gt[:, 9] = 255
    pred = np.zeros((10, 10), np.int64)
    pred[:, 4] = 2
    pred[:, 5:] = 1
    ev = SemanticEvaluator(3)
    ev.update(torch.from_numpy(pred), torch.from_numpy(gt))  # tensors are accepted too
    res = ev.compute()
    assert res["IoU-0"] == pytest.approx(80.0)
    assert res["IoU-1"] == pytest.approx(100.0)
    assert math.isnan(res["IoU-2"]) and math.isnan(res["ACC-2"])
    assert res["mIoU"] == pytest.approx(90.0)
    assert res["pACC"] == pytest.approx(100 * 80 / 90)
    assert res["fwIoU"] == pytest.approx(100 * 80 / 90)
    assert res["mACC"] == pytest.approx(100 * (0.8 + 1.0) / 2)


def test_semantic_accumulates_over_images_and_rejects_bad_input() -> None:
    ev = SemanticEvaluator(2)
    gt = np.zeros((4, 4), np.int64)
    ev.update(gt, gt)  # class 0 perfect
    ev.update(np.zeros((4, 4), np.int64), np.ones((4, 4), np.int64))  # class 1 all missed
    res = ev.compute()
    assert res["IoU-0"] == pytest.approx(50.0)  # TP 16, GT 16, pred 32
    assert res["IoU-1"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="predicted class ids"):
        ev.update(np.full((4, 4), 2), gt)
    empty = SemanticEvaluator(2)
    empty.update(np.zeros((2, 2), np.int64), np.full((2, 2), 255))
    assert math.isnan(empty.compute()["mIoU"])


def test_semantic_gt_from_sample_crowd_keeps_its_class_and_void_is_ignored() -> None:
    ids = np.array([[1, 1, 2], [0, 3, 3]])
    s = sample_from_id_map(ids, {1: (4, False), 2: (0, False), 3: (1, True)})
    gt = semantic_gt_from_sample(s["labels"], s["masks"], s["iscrowd"], 2, 3, ignore_index=255)
    np.testing.assert_array_equal(gt, [[4, 4, 0], [255, 1, 1]])
    gt = semantic_gt_from_sample(s["labels"], s["masks"], s["iscrowd"], 2, 3, 255, crowd_as_ignore=True)
    np.testing.assert_array_equal(gt, [[4, 4, 0], [255, 255, 255]])


# ---------------------------------------------------------------------------------------------------- panoptic


def panoptic_scores(ev: PanopticEvaluator, pred: np.ndarray, info: list[dict], gt: Sample) -> dict[str, float]:
    ev.update(pred, info, gt["labels"], gt["masks"], gt["iscrowd"])
    return ev.compute()


def test_panoptic_one_tp_one_fp_one_fn() -> None:
    # 10x10, class 0 thing, class 1 stuff.
    # GT: g1 thing rows 0-1 x cols 0-4 (10 px), g2 thing rows 8-9 x cols 5-9 (10 px), stuff s elsewhere (80 px).
    # Prediction: p1 thing rows 0-1 x cols 0-2 (6 px, inside g1; rest of g1 predicted VOID) -> IoU 6/10 = 0.6, TP;
    # p2 thing rows 4-5 x cols 0-4 (10 px, on stuff) -> FP; ps stuff = s minus p2 (70 px) plus g2 (10 px)
    # -> g2 is not matched (FN); IoU(s, ps) = 70 / (80 + 80 - 70) = 7/9, TP.
    # thing: PQ = 0.6 / (1 + 0.5 + 0.5) = 0.3, SQ = 0.6, RQ = 0.5;  stuff: PQ = SQ = 7/9, RQ = 1.
    gt_ids = np.full((10, 10), 3)
    gt_ids[0:2, 0:5] = 1
    gt_ids[8:10, 5:10] = 2
    gt = sample_from_id_map(gt_ids, {1: (0, False), 2: (0, False), 3: (1, False)})
    pred = np.full((10, 10), 3, np.int32)
    pred[0:2, 0:5] = 0
    pred[0:2, 0:3] = 1
    pred[4:6, 0:5] = 2
    info = [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 0}, {"id": 3, "category_id": 1}]
    ev = PanopticEvaluator(2, thing_ids=[0], class_names=["thing", "stuff"])
    res = panoptic_scores(ev, pred, info, gt)
    assert (ev.tp.tolist(), ev.fp.tolist(), ev.fn.tolist()) == ([1, 1], [1, 0], [1, 0])
    assert res["PQ_th"] == pytest.approx(30.0) and res["SQ_th"] == pytest.approx(60.0)
    assert res["RQ_th"] == pytest.approx(50.0)
    assert res["PQ_st"] == pytest.approx(100 * 7 / 9) and res["RQ_st"] == pytest.approx(100.0)
    assert res["PQ"] == pytest.approx(100 * (0.3 + 7 / 9) / 2)
    assert res["PQ-thing"] == res["PQ_th"]


def test_panoptic_void_is_left_out_of_the_union_and_excuses_false_positives() -> None:
    # 10x10, class 0 thing, 1 stuff. GT: thing g rows 0-1 x cols 0-4 (10 px); VOID rows 2-4 (30 px); stuff the
    # rest (rows 0-1 x cols 5-9 and rows 5-9: 60 px).
    # p1 = g plus rows 2-3 x cols 0-4 (10 px on VOID): union = 20 + 10 - 10 - 10 (VOID) = 10 -> IoU 1, TP.
    # p3 thing rows 3-5 x cols 5-7 (9 px): 6 on VOID (rows 3-4), 3 on stuff -> 6/9 > 0.5 VOID -> ignored, not FP.
    # p2 thing rows 4-5 x cols 5-9 minus p3 (4 px): 2 on VOID (row 4), 2 on stuff -> 2/4 is not > 0.5 -> FP.
    # Stuff prediction: the 60 GT stuff pixels minus row 5 x cols 5-9 (taken by p2/p3) = 55 -> IoU 55/60, TP.
    # thing: PQ = 1 / (1 + 0.5) (one TP at IoU 1, one FP); stuff: PQ = 55/60.
    gt_ids = np.full((10, 10), 2)
    gt_ids[0:2, 0:5] = 1
    gt_ids[2:5] = 0
    gt = sample_from_id_map(gt_ids, {1: (0, False), 2: (1, False)})
    pred = np.where(gt_ids == 2, 4, 0).astype(np.int32)
    pred[0:4, 0:5] = 1
    pred[4:6, 5:10] = 2
    pred[3:6, 5:8] = 3
    info = [{"id": i, "category_id": 0} for i in (1, 2, 3)] + [{"id": 4, "category_id": 1}]
    ev = PanopticEvaluator(2, thing_ids=[0])
    res = panoptic_scores(ev, pred, info, gt)
    assert (ev.tp.tolist(), ev.fp.tolist(), ev.fn.tolist()) == ([1, 1], [1, 0], [0, 0])
    assert ev.iou[0] == pytest.approx(1.0)
    assert ev.iou[1] == pytest.approx(55 / 60)
    assert res["PQ_th"] == pytest.approx(100 * 1.0 / (1 + 0.5))
    assert res["PQ_st"] == pytest.approx(100 * 55 / 60)


def test_panoptic_crowd_region_gives_no_fn_and_absorbs_its_own_class_only() -> None:
    # 10x10: classes 0, 1 things, 2 stuff. GT: crowd of class 0 on rows 0-3 x cols 0-4 (20 px), stuff elsewhere.
    # p1 class 0 on rows 0-3 x cols 0-3 less the 3 px p4 takes (13 px, all on the crowd of its class) -> not FP.
    # p2 class 1 on rows 0-3 x col 4 (4 px on the class-0 crowd) -> crowd of another class does not excuse: FP.
    # p3 class 0 on rows 4-5 x cols 0-4: no crowd or VOID pixel -> FP.
    # p4 class 0: 3 px on the class-0 crowd + 3 px on VOID (row 9 is VOID in GT) + 4 px on stuff -> (3 + 3) / 10
    # > 0.5 -> not FP (VOID and own-class crowd add up).
    # Class 0: tp 0, fp 1, fn 0 (crowd never FN) -> PQ 0; class 1: fp 1 -> PQ 0; stuff matched (IoU > 0.5).
    gt_ids = np.full((10, 10), 2)
    gt_ids[0:4, 0:5] = 1
    gt_ids[9] = 0
    gt = sample_from_id_map(gt_ids, {1: (0, True), 2: (2, False)})
    pred = np.where(gt_ids == 2, 5, 0).astype(np.int32)
    pred[0:4, 0:4] = 1
    pred[0:4, 4] = 2
    pred[4:6, 0:5] = 3
    pred[3, 5:9] = 4  # 4 px on stuff
    pred[3, 0:3] = 4  # 3 px on the class-0 crowd (taken from p1)
    pred[9, 0:3] = 4  # 3 px on VOID
    info = [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 1}, {"id": 3, "category_id": 0},
            {"id": 4, "category_id": 0}, {"id": 5, "category_id": 2}]  # fmt: skip
    ev = PanopticEvaluator(3, thing_ids=[0, 1])
    panoptic_scores(ev, pred, info, gt)
    assert ev.fn.tolist() == [0, 0, 0]
    assert ev.fp.tolist() == [1, 1, 0]  # p3 and p2; p1 and p4 are excused
    assert ev.tp.tolist() == [0, 0, 1]


def test_panoptic_crowd_only_category_is_not_counted_and_errors_are_clear() -> None:
    # A crowd GT predicted exactly: class 0 has tp = fp = fn = 0, so it is absent from the averages (NaN
    # per class) and PQ_th is NaN (no thing category counted); the stuff class scores 100.
    gt_ids = np.full((6, 6), 2)
    gt_ids[:3] = 1
    gt = sample_from_id_map(gt_ids, {1: (0, True), 2: (1, False)})
    info = [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 1}, {"id": 7, "category_id": 1}]  # 7: no pixel
    ev = PanopticEvaluator(2, thing_ids=[0], class_names=["p", "s"])
    res = panoptic_scores(ev, gt_ids.astype(np.int32), info, gt)
    assert math.isnan(res["PQ-p"]) and math.isnan(res["PQ_th"])
    assert res["PQ"] == pytest.approx(100.0) and res["PQ_st"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="not in its segments list"):
        ev.update(gt_ids, info[:1], gt["labels"], gt["masks"], gt["iscrowd"])
    with pytest.raises(ValueError, match="unknown category_id"):
        ev.update(gt_ids, [{"id": 1, "category_id": 5}], gt["labels"], gt["masks"], gt["iscrowd"])


def test_panoptic_gt_conversion_shares_one_id_per_crowd_category() -> None:
    ids = np.array([[1, 2, 3, 0]])
    s = sample_from_id_map(ids, {1: (0, True), 2: (0, True), 3: (0, False)})
    id_map, segs = panoptic_gt_from_sample(s["labels"], s["masks"], s["iscrowd"])
    assert id_map.tolist() == [[1, 1, 3, 0]]
    assert segs == {1: (0, True), 3: (0, False)}


# ---------------------------------------------------------------------------------------------------- instance


def instance_ap(gt: Sample, masks: list[np.ndarray], scores: list[float], labels: list[int]) -> dict[str, float]:
    ev = InstanceEvaluator(len(NAMES), NAMES, thing_ids=THINGS)
    h, w = gt["masks"].shape[-2:]
    pm = np.stack(masks) if masks else np.zeros((0, h, w), bool)
    ev.update(pm, np.array(scores), np.array(labels, np.int64), gt["labels"], gt["masks"], gt["iscrowd"])
    return ev.compute()


def test_instance_perfect_with_extra_low_score_false_positive_is_100() -> None:
    # The FP ranks last: precision is 1 up to recall 1, and COCO's interpolated precision (max over recall >= r)
    # stays 1 at every recall threshold.
    gt = instance_gt([(0, 0, 8, 0, 8, False), (1, 10, 18, 10, 18, False)])
    masks = [*(m.numpy() for m in gt["masks"]), rect(20, 20, 0, 5, 12, 19)]
    res = instance_ap(gt, masks, [0.9, 0.8, 0.05], [0, 1, 0])
    assert res["AP"] == pytest.approx(100.0)
    assert res["AP-person"] == pytest.approx(100.0) and res["AP-car"] == pytest.approx(100.0)


def test_instance_wrong_class_is_0_and_no_prediction_is_0() -> None:
    gt = instance_gt([(0, 0, 8, 0, 8, False)])
    res = instance_ap(gt, [gt["masks"][0].numpy()], [0.9], [1])
    assert res["AP"] == pytest.approx(0.0)  # person AP 0; car has no GT, so NaN and not averaged
    assert math.isnan(res["AP-car"])
    res = instance_ap(gt, [], [], [])
    assert res["AP"] == pytest.approx(0.0) and res["AP-person"] == pytest.approx(0.0)


def test_instance_detection_on_crowd_is_not_a_false_positive() -> None:
    # The crowd detection even outranks the true one; matched to the crowd GT it is ignored, not an FP.
    gt = instance_gt([(0, 0, 8, 0, 8, False), (0, 10, 20, 0, 20, True)])
    res = instance_ap(gt, [gt["masks"][0].numpy(), rect(20, 20, 12, 18, 2, 18)], [0.5, 0.95], [0, 0])
    assert res["AP"] == pytest.approx(100.0)


def test_instance_without_ground_truth_is_nan() -> None:
    gt = instance_gt([])
    res = instance_ap(gt, [rect(20, 20, 0, 5, 0, 5)], [0.9], [0])
    assert math.isnan(res["AP"]) and math.isnan(res["AP-person"])
    assert math.isnan(InstanceEvaluator(2).compute()["AP"])


# ---------------------------------------------------------------------------------------------------- COCO fixtures


def load_coco_samples(root: Path) -> tuple[list[Sample], ModelMeta, list[list[int]]]:
    """The two COCO panoptic examples as ``Sample`` s, their meta and each segment's COCO id (segments order)."""
    base = root / "coco_panoptic_samples"
    if not base.is_dir():
        pytest.skip(f"{base} is absent")
    data = base / "sample_data"
    annotations = json.loads((data / "panoptic_examples.json").read_text())
    segment_ids = [[s["id"] for s in a["segments_info"]] for a in annotations["annotations"]]
    try:
        from train.data.coco_panoptic import CocoPanopticDataset
    except ImportError:
        CocoPanopticDataset = None
    if CocoPanopticDataset is not None:
        ds = CocoPanopticDataset(data / "input_images", data / "panoptic_examples.json", data / "panoptic_examples")
        samples = [ds[i] for i in range(len(ds))]
        assert [len(s["labels"]) for s in samples] == [len(ids) for ids in segment_ids]  # none dropped
        return samples, ds.meta, segment_ids
    categories = json.loads((base / "panoptic_coco_categories.json").read_text())
    to_label = {c["id"]: i for i, c in enumerate(categories)}
    meta = ModelMeta(
        class_names=tuple(c["name"] for c in categories),
        thing_ids=tuple(i for i, c in enumerate(categories) if c["isthing"]),
    )
    samples = []
    for ann in annotations["annotations"]:
        rgb = np.asarray(Image.open(data / "panoptic_examples" / ann["file_name"]).convert("RGB"), np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
        segs = {s["id"]: (to_label[s["category_id"]], bool(s["iscrowd"])) for s in ann["segments_info"]}
        order = [s["id"] for s in ann["segments_info"]]
        masks = np.stack([ids == k for k in order])
        samples.append(
            Sample(
                image=torch.zeros((3, *ids.shape), dtype=torch.uint8),
                labels=torch.tensor([segs[k][0] for k in order]),
                masks=torch.from_numpy(masks),
                iscrowd=torch.tensor([segs[k][1] for k in order]),
                image_id=str(ann["image_id"]),
            )
        )
    return samples, meta, segment_ids


@pytest.mark.data
def test_coco_panoptic_examples_against_themselves(shared_data: Path) -> None:
    samples, meta, _ = load_coco_samples(shared_data)
    assert any(bool(s["iscrowd"].any()) for s in samples)  # the crowd path is exercised
    k = len(meta.class_names)
    pairs = [(s, perfect_outputs(s, k, meta.thing_ids)) for s in samples]
    res = evaluate(pairs, "panoptic", meta)
    assert res["PQ"] == pytest.approx(100.0)
    assert res["PQ_th"] == pytest.approx(100.0) and res["PQ_st"] == pytest.approx(100.0)
    assert res["mIoU"] == pytest.approx(100.0)
    assert evaluate(pairs, "instance", meta)["AP"] == pytest.approx(100.0)


# panopticapi's pq_compute_single_core on the two GT PNGs against predictions made by ``perturbed_prediction``
# (same segment ids as the GT PNG), categories = panoptic_coco_categories.json: 100 * pq_average(...).
# Per category (tp, fp, fn) there: person 12/10/14, car 0/2/0, horse 7/4/4, sports ball 0/1/1, truck 2/0/0,
# stuff 184/187/193 2/0/0 each, 125 1/0/0.
PANOPTICAPI_PERTURBED = {
    "PQ": 50.72662588897212,
    "SQ": 56.95140851907264,
    "RQ": 68.18181818181819,
    "PQ_th": 28.623373801850864,
    "SQ_th": 39.82798253603181,
    "RQ_th": 42.72727272727273,
    "PQ_st": 78.3556909978737,
    "SQ_st": 78.3556909978737,
    "RQ_st": 100.0,
}


def perturbed_prediction(sample: Sample, segment_ids: list[int]) -> tuple[np.ndarray, list[dict[str, int]]]:
    """The GT segments with their COCO ids, shifted by (3, 5) pixels (wrapping), the 4th segment dropped (VOID)
    and the 6th given class ``car`` (contiguous 2); crowd segments are predicted like any other."""
    h, w = sample["masks"].shape[-2:]
    pan = np.zeros((h, w), np.int64)
    info = []
    for n, (seg_id, label, mask) in enumerate(
        zip(segment_ids, sample["labels"].tolist(), sample["masks"].numpy(), strict=True)
    ):
        if n == 3:
            continue
        pan[mask] = seg_id
        info.append({"id": seg_id, "category_id": 2 if n == 5 else label})
    return np.roll(pan, (3, 5), axis=(0, 1)), info


@pytest.mark.data
def test_coco_panoptic_examples_perturbed_match_panopticapi(shared_data: Path) -> None:
    samples, meta, segment_ids = load_coco_samples(shared_data)
    ev = PanopticEvaluator(len(meta.class_names), meta.thing_ids, meta.class_names)
    for sample, ids in zip(samples, segment_ids, strict=True):
        pan, info = perturbed_prediction(sample, ids)
        ev.update(pan, info, sample["labels"], sample["masks"], sample["iscrowd"])
    res = ev.compute()
    for key, value in PANOPTICAPI_PERTURBED.items():
        assert res[key] == pytest.approx(value, abs=1e-9), key
