"""COCO mask AP with pycocotools (``COCOeval``, ``iouType="segm"``), GT and detections built in memory.

Reports what detectron2's ``COCOEvaluator`` reports for ``segm``: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
``APl`` (``COCOeval.stats[0:6]``) and per-class ``AP-<name>`` (the mean of ``precision[:, :, k, area=all,
maxDets=100]`` over the entries > -1), in percent. A metric COCOeval cannot compute (-1: no GT in that class or
area range; everything when there is no GT at all) is NaN. With no detection at all the result is AP 0 for every
class that has GT (detectron2 returns NaN there instead; 0 is what COCOeval gives an empty detection set).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from train.evaluation.semantic import as_numpy, default_class_names

if TYPE_CHECKING:
    from pycocotools.coco import COCO

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """RLE-encode (N, H, W) binary masks as detectron2 does (Fortran-ordered uint8 (H, W, N))."""
    if len(masks) == 0:
        return []
    from pycocotools import mask as mask_utils  # here, not at import: only instance metrics need pycocotools

    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


class InstanceEvaluator:
    """Collects GT instances and scored detections per image; ``compute`` runs COCOeval over all of them.

    Categories are the ``num_classes`` contiguous classes, or only ``thing_ids`` when given (a panoptic model:
    COCO instance GT holds things only); GT segments and detections of other classes are dropped. COCO ids are
    ``class + 1``; image ids count from 1 in ``update`` order. Crowd GT segments are kept as ``iscrowd``
    annotations, which COCOeval lets detections match without counting them as FP or their miss as FN.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        thing_ids: Collection[int] | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.class_names = default_class_names(self.num_classes, class_names)
        ids = range(self.num_classes) if thing_ids is None else sorted({int(i) for i in thing_ids})
        bad = [i for i in ids if not 0 <= i < self.num_classes]
        if bad:
            raise ValueError(f"thing ids {bad} out of range for {self.num_classes} classes")
        self.category_ids: list[int] = list(ids)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.images: list[dict[str, Any]] = []
        self.gt_annotations: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def update(
        self,
        pred_masks: Any,
        pred_scores: Any,
        pred_labels: Any,
        gt_labels: Any,
        gt_masks: Any,
        gt_iscrowd: Any,
    ) -> None:
        """Add one image: detections ``pred_masks`` (M, H, W) bool, ``pred_scores`` (M,), ``pred_labels`` (M,);
        ground truth in ``Sample`` form ``gt_labels`` (N,), ``gt_masks`` (N, H, W), ``gt_iscrowd`` (N,)."""
        gmasks = as_numpy(gt_masks).astype(bool)  # (N, H, W)
        glabels = as_numpy(gt_labels).astype(np.int64).reshape(-1)  # (N,)
        gcrowd = as_numpy(gt_iscrowd).astype(bool).reshape(-1)  # (N,)
        pmasks = as_numpy(pred_masks).astype(bool)  # (M, H, W)
        pscores = as_numpy(pred_scores).astype(np.float64).reshape(-1)  # (M,)
        plabels = as_numpy(pred_labels).astype(np.int64).reshape(-1)  # (M,)
        if gmasks.ndim != 3 or pmasks.ndim != 3:
            raise ValueError(f"expected (N, H, W) masks, got GT {gmasks.shape} and predictions {pmasks.shape}")
        h, w = gmasks.shape[1:]
        if len(pmasks) and pmasks.shape[1:] != (h, w):
            raise ValueError(f"predicted masks {pmasks.shape[1:]} and GT masks {(h, w)} differ in size")
        if not len(glabels) == len(gmasks) == len(gcrowd):
            raise ValueError(f"{len(glabels)} GT labels, {len(gmasks)} masks and {len(gcrowd)} crowd flags differ")
        if not len(plabels) == len(pmasks) == len(pscores):
            raise ValueError(f"{len(plabels)} predicted labels, {len(pmasks)} masks and {len(pscores)} scores differ")

        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": int(h), "width": int(w)})
        cats = set(self.category_ids)

        keep = np.array([int(c) in cats for c in glabels], dtype=bool)
        rles = encode_masks(gmasks[keep])
        if rles:
            from pycocotools import mask as mask_utils

            areas = mask_utils.area(rles)
            boxes = mask_utils.toBbox(rles)
            for rle, label, crowd, area, box in zip(rles, glabels[keep], gcrowd[keep], areas, boxes, strict=True):
                self.gt_annotations.append(
                    {
                        "id": len(self.gt_annotations) + 1,  # COCOeval needs ids > 0
                        "image_id": image_id,
                        "category_id": int(label) + 1,
                        "segmentation": rle,
                        "area": float(area),
                        "bbox": [float(v) for v in box],
                        "iscrowd": int(crowd),
                    }
                )

        keep = np.array([int(c) in cats for c in plabels], dtype=bool)
        for rle, label, score in zip(encode_masks(pmasks[keep]), plabels[keep], pscores[keep], strict=True):
            self.detections.append(
                {"image_id": image_id, "category_id": int(label) + 1, "segmentation": rle, "score": float(score)}
            )

    def _coco_gt(self) -> COCO:
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = {
            "images": list(self.images),
            "categories": [{"id": c + 1, "name": self.class_names[c]} for c in self.category_ids],
            "annotations": list(self.gt_annotations),
        }
        coco.createIndex()
        return coco

    def compute(self) -> dict[str, float]:
        """``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and per-class ``AP-<name>``, in percent.

        Everything is NaN when no image or no GT instance was seen.
        """
        nan = float("nan")
        per_class_keys = [f"AP-{self.class_names[c]}" for c in self.category_ids]
        if not self.images or not any(not a["iscrowd"] for a in self.gt_annotations):
            logger.warning("instance evaluation saw no (non-crowd) ground-truth instance; AP is NaN")
            return {**dict.fromkeys(METRICS, nan), **dict.fromkeys(per_class_keys, nan)}

        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = self._coco_gt()
            if self.detections:
                coco_dt = coco_gt.loadRes([dict(d) for d in self.detections])
            else:  # loadRes cannot take an empty list
                coco_dt = COCO()
                coco_dt.dataset = {
                    "images": list(self.images),
                    "categories": coco_gt.dataset["categories"],
                    "annotations": [],
                }
                coco_dt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()

        stats = coco_eval.stats
        res = {m: float(stats[i] * 100) if stats[i] >= 0 else nan for i, m in enumerate(METRICS)}
        precisions = coco_eval.eval["precision"]  # (iou, recall, cls, area, maxDets)
        for k, key in enumerate(per_class_keys):  # COCOeval's catIds are sorted, as category_ids
            p = precisions[:, :, k, 0, -1]
            p = p[p > -1]
            res[key] = float(np.mean(p) * 100) if p.size else nan
        logger.info(
            "mask AP %.2f (AP50 %.2f, AP75 %.2f, APs %.2f, APm %.2f, APl %.2f) over %d images, %d GT, %d detections",
            *(res[m] for m in METRICS),
            len(self.images),
            len(self.gt_annotations),
            len(self.detections),
        )
        return res
