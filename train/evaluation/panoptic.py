"""Panoptic quality (PQ, SQ, RQ) with the semantics of panopticapi's ``pq_compute``.

Follows ``panopticapi/evaluation.py`` (``pq_compute_single_core`` and ``PQStat.pq_average``) on in-memory maps
instead of PNG files:

* a (GT, prediction) pair of the same category matches when ``IoU > 0.5``, where the union leaves out the
  prediction's pixels on VOID: ``union = pred_area + gt_area - intersection - |pred ∩ VOID|``; crowd GT segments
  never match;
* unmatched non-crowd GT segments are false negatives; crowd GT segments never are;
* an unmatched prediction is a false positive unless more than half of its area lies on VOID plus the GT crowd
  region of its own category;
* per category ``PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU) / TP`` (0 without TP),
  ``RQ = TP / (TP + FP/2 + FN/2)``; a category counts in the averages only when ``TP + FP + FN > 0``.

VOID is prediction id 0 and every GT pixel in no segment. Numpy only, so it scores SDK outputs as well.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from train.evaluation.semantic import as_numpy, default_class_names

logger = logging.getLogger(__name__)

VOID_ID = 0


def panoptic_gt_from_sample(labels: Any, masks: Any, iscrowd: Any) -> tuple[np.ndarray, dict[int, tuple[int, bool]]]:
    """Turn a ``Sample``'s segments into an (H, W) int64 id map (0 = void) and ``{id: (category, iscrowd)}``.

    Non-crowd segment i gets id i + 1. All crowd segments of one category share one id, so there is one crowd
    region per category, which is what panopticapi assumes (its ``crowd_labels_dict`` keeps one crowd id per
    category; COCO has at most one). Segments without pixels are dropped: they cannot be matched or predicted
    (panopticapi would only ever see them through a JSON listing). Overlaps resolve to the later segment.
    """
    labels_np = as_numpy(labels).astype(np.int64).reshape(-1)  # (N,)
    crowd_np = as_numpy(iscrowd).astype(bool).reshape(-1)  # (N,)
    masks_np = as_numpy(masks).astype(bool)  # (N, H, W)
    if masks_np.ndim != 3 or not len(labels_np) == len(masks_np) == len(crowd_np):
        raise ValueError(
            f"expected labels (N,), masks (N, H, W) and iscrowd (N,), got {labels_np.shape}, {masks_np.shape} "
            f"and {crowd_np.shape}"
        )
    id_map = np.zeros(masks_np.shape[1:], dtype=np.int64)  # (H, W)
    crowd_ids: dict[int, int] = {}
    for i, (label, mask, crowd) in enumerate(zip(labels_np.tolist(), masks_np, crowd_np.tolist(), strict=True)):
        seg_id = crowd_ids.setdefault(label, i + 1) if crowd else i + 1
        id_map[mask] = seg_id
    segments: dict[int, tuple[int, bool]] = {}
    present = set(np.unique(id_map).tolist()) - {VOID_ID}
    for i, (label, crowd) in enumerate(zip(labels_np.tolist(), crowd_np.tolist(), strict=True)):
        if i + 1 in present:
            segments[i + 1] = (label, crowd)
    return id_map, segments


def _predicted_areas(pan_pred: np.ndarray, pred_cats: dict[int, int]) -> dict[int, int]:
    """{segment id: pixel count} of the predicted (H, W) id map, void left out; an id without a listed segment is an
    error, a listed segment without pixels is skipped."""
    ids, counts = np.unique(pan_pred, return_counts=True)
    pred_area: dict[int, int] = {}
    for seg_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
        if seg_id == VOID_ID:
            continue
        if seg_id not in pred_cats:
            raise ValueError(f"segment id {seg_id} is in the predicted map but not in its segments list")
        pred_area[seg_id] = count
    empty = sorted(set(pred_cats) - set(pred_area))
    if empty:
        logger.debug("skipping predicted segments without pixels: %s", empty)
    return pred_area


def _intersections(pan_gt: np.ndarray, pan_pred: np.ndarray) -> dict[tuple[int, int], int]:
    """{(GT id, predicted id): shared pixels} of every pair present, VOID_ID included on both sides."""
    offset = int(pan_pred.max(initial=0)) + 1
    pairs, inter = np.unique(pan_gt * offset + pan_pred, return_counts=True)
    return {(p // offset, p % offset): n for p, n in zip(pairs.tolist(), inter.tolist(), strict=True)}


class PanopticEvaluator:
    """Accumulates panopticapi's per-category TP/FP/FN/IoU sums over images; ``compute`` averages them.

    ``num_classes`` contiguous categories 0..K-1 (every one is a panopticapi "category"), ``thing_ids`` the
    thing ones (the rest are stuff). A prediction's own ``isthing`` is ignored, as in panopticapi.
    """

    def __init__(self, num_classes: int, thing_ids: Collection[int], class_names: Sequence[str] | None = None) -> None:
        self.num_classes = int(num_classes)
        self.thing_ids = {int(i) for i in thing_ids}
        bad = sorted(i for i in self.thing_ids if not 0 <= i < self.num_classes)
        if bad:
            raise ValueError(f"thing ids {bad} out of range for {self.num_classes} classes")
        self.class_names = default_class_names(self.num_classes, class_names)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        k = self.num_classes
        self.iou = np.zeros(k, dtype=np.float64)
        self.tp = np.zeros(k, dtype=np.int64)
        self.fp = np.zeros(k, dtype=np.int64)
        self.fn = np.zeros(k, dtype=np.int64)
        self.num_images = 0

    def update(
        self,
        pred_seg: Any,
        pred_segments: Sequence[Mapping[str, Any]],
        gt_labels: Any,
        gt_masks: Any,
        gt_iscrowd: Any,
    ) -> None:
        """Add one image.

        ``pred_seg`` (H, W) segment ids (0 = void) with ``pred_segments`` ``[{"id", "category_id", ...}]``;
        ground truth in ``Sample`` form: ``gt_labels`` (N,), ``gt_masks`` (N, H, W) bool, ``gt_iscrowd`` (N,).
        A pixel id missing from ``pred_segments`` is an error (panopticapi raises too); a listed segment with no
        pixel is skipped (panopticapi raises; resizing a map can legitimately erase a tiny segment).
        """
        pan_pred = as_numpy(pred_seg).astype(np.int64)  # (H, W)
        pan_gt, gt_segms = panoptic_gt_from_sample(gt_labels, gt_masks, gt_iscrowd)  # (H, W)
        if pan_pred.shape != pan_gt.shape:
            raise ValueError(f"prediction {pan_pred.shape} and ground truth {pan_gt.shape} differ in shape")
        if pan_pred.size and pan_pred.min() < 0:
            raise ValueError("predicted segment ids must be >= 0 (0 = void)")
        pred_cats = self._predicted_categories(pred_segments)
        pred_area = _predicted_areas(pan_pred, pred_cats)
        gt_ids, gt_counts = np.unique(pan_gt, return_counts=True)
        gt_area = dict(zip(gt_ids.tolist(), gt_counts.tolist(), strict=True))
        gt_pred_map = _intersections(pan_gt, pan_pred)
        gt_matched, pred_matched = self._count_matches(gt_pred_map, gt_segms, gt_area, pred_cats, pred_area)
        crowd_by_cat = self._count_false_negatives(gt_segms, gt_matched)
        self._count_false_positives(pred_cats, pred_area, pred_matched, gt_pred_map, crowd_by_cat)
        self.num_images += 1

    def _predicted_categories(self, pred_segments: Sequence[Mapping[str, Any]]) -> dict[int, int]:
        """{predicted segment id: category}, checked: no void or repeated id, no unknown category."""
        pred_cats: dict[int, int] = {}
        for seg in pred_segments:
            seg_id, cat = int(seg["id"]), int(seg["category_id"])
            if seg_id == VOID_ID or seg_id in pred_cats:
                raise ValueError(f"predicted segment id {seg_id} is void (0) or repeated")
            if not 0 <= cat < self.num_classes:
                raise ValueError(f"predicted segment {seg_id} has unknown category_id {cat}")
            pred_cats[seg_id] = cat
        return pred_cats

    def _count_matches(
        self,
        gt_pred_map: dict[tuple[int, int], int],
        gt_segms: dict[int, tuple[int, bool]],
        gt_area: dict[int, int],
        pred_cats: dict[int, int],
        pred_area: dict[int, int],
    ) -> tuple[set[int], set[int]]:
        """Count the true positives (same category, not crowd, IoU > 0.5 with the prediction's void pixels left out
        of the union) and their IoU; the matched (GT ids, prediction ids)."""
        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (gt_id, pred_id), intersection in gt_pred_map.items():
            if gt_id not in gt_segms or pred_id not in pred_area:
                continue
            gt_cat, gt_crowd = gt_segms[gt_id]
            if gt_crowd or gt_cat != pred_cats[pred_id]:
                continue
            union = pred_area[pred_id] + gt_area[gt_id] - intersection - gt_pred_map.get((VOID_ID, pred_id), 0)
            iou = intersection / union
            if iou > 0.5:
                self.tp[gt_cat] += 1
                self.iou[gt_cat] += iou
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)
        return gt_matched, pred_matched

    def _count_false_negatives(self, gt_segms: dict[int, tuple[int, bool]], gt_matched: set[int]) -> dict[int, int]:
        """Count every unmatched non-crowd GT segment as a false negative; {category: its crowd GT id}."""
        crowd_by_cat: dict[int, int] = {}
        for gt_id, (gt_cat, gt_crowd) in gt_segms.items():
            if gt_id in gt_matched:
                continue
            if gt_crowd:
                crowd_by_cat[gt_cat] = gt_id
                continue
            self.fn[gt_cat] += 1
        return crowd_by_cat

    def _count_false_positives(
        self,
        pred_cats: dict[int, int],
        pred_area: dict[int, int],
        pred_matched: set[int],
        gt_pred_map: dict[tuple[int, int], int],
        crowd_by_cat: dict[int, int],
    ) -> None:
        """Count every unmatched prediction as a false positive unless more than half of it lies on void plus the
        crowd region of its own category."""
        for pred_id, area in pred_area.items():
            if pred_id in pred_matched:
                continue
            cat = pred_cats[pred_id]
            ignored = gt_pred_map.get((VOID_ID, pred_id), 0)
            if cat in crowd_by_cat:
                ignored += gt_pred_map.get((crowd_by_cat[cat], pred_id), 0)
            if ignored / area > 0.5:
                continue
            self.fp[cat] += 1

    def _average(self, isthing: bool | None) -> tuple[float, float, float, int]:
        """panopticapi's ``pq_average`` over all, thing or stuff categories: (PQ, SQ, RQ, n) as fractions."""
        cats = [c for c in range(self.num_classes) if isthing is None or (c in self.thing_ids) == isthing]
        pq = sq = rq = 0.0
        n = 0
        for c in cats:
            tp, fp, fn, iou = int(self.tp[c]), int(self.fp[c]), int(self.fn[c]), float(self.iou[c])
            if tp + fp + fn == 0:
                continue
            n += 1
            denom = tp + 0.5 * fp + 0.5 * fn
            pq += iou / denom
            sq += iou / tp if tp != 0 else 0.0
            rq += tp / denom
        if n == 0:
            return float("nan"), float("nan"), float("nan"), 0
        return pq / n, sq / n, rq / n, n

    def compute(self) -> dict[str, float]:
        """``PQ``, ``SQ``, ``RQ`` (all categories), ``_th`` (things) and ``_st`` (stuff), in percent.

        Also per class ``PQ-<name>``, ``SQ-<name>``, ``RQ-<name>``. A category with ``TP + FP + FN = 0`` is left
        out of the averages and reported as NaN (panopticapi reports 0.0 there but also leaves it out); an
        average over no category is NaN (panopticapi would divide by zero).
        """
        res: dict[str, float] = {}
        counts: dict[str, int] = {}
        for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
            pq, sq, rq, n = self._average(isthing)
            res[f"PQ{suffix}"], res[f"SQ{suffix}"], res[f"RQ{suffix}"] = 100 * pq, 100 * sq, 100 * rq
            counts[suffix] = n
        for c, name in enumerate(self.class_names):
            tp, fp, fn = int(self.tp[c]), int(self.fp[c]), int(self.fn[c])
            if tp + fp + fn == 0:
                pq = sq = rq = float("nan")
            else:
                denom = tp + 0.5 * fp + 0.5 * fn
                pq = float(self.iou[c]) / denom
                sq = float(self.iou[c]) / tp if tp else 0.0
                rq = tp / denom
            res[f"PQ-{name}"], res[f"SQ-{name}"], res[f"RQ-{name}"] = 100 * pq, 100 * sq, 100 * rq
        logger.info(
            "panoptic over %d images: PQ %.2f SQ %.2f RQ %.2f (n=%d) | things PQ %.2f (n=%d) | stuff PQ %.2f (n=%d)",
            self.num_images,
            res["PQ"],
            res["SQ"],
            res["RQ"],
            counts[""],
            res["PQ_th"],
            counts["_th"],
            res["PQ_st"],
            counts["_st"],
        )
        return res
