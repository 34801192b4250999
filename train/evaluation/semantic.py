"""Semantic segmentation metrics (mIoU, fwIoU, mACC, pACC) as detectron2's ``SemSegEvaluator``.

Numpy only: inputs may be numpy arrays or tensors (converted with :func:`as_numpy`), so the same evaluator scores
the training model, the SDK's numpy outputs and exported artifacts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtimes.vocabulary import VOID

logger = logging.getLogger(__name__)


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array-like; tensors on any device are detached and copied to the host first."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def default_class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """``class_names`` checked against ``num_classes``, or ``["0", "1", ...]`` when not given."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    return [str(n) for n in class_names]


def semantic_gt_from_sample(
    labels: Any,
    masks: Any,
    iscrowd: Any,
    height: int,
    width: int,
    ignore_index: int = VOID,
    crowd_as_ignore: bool = False,
) -> np.ndarray:
    """Paint a ``Sample``'s segments into an (H, W) int64 class map; pixels in no segment are ``ignore_index``.

    Crowd segments keep their class by default, as the official COCO conversion does (Mask2Former's
    ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`` writes ``output[panoptic == seg["id"]] =
    new_cat_id`` for every segment, crowd or not); ``crowd_as_ignore=True`` sends them to ``ignore_index``
    instead. Overlapping segments (not expected) resolve to the later one.
    """
    labels_np = as_numpy(labels).astype(np.int64).reshape(-1)  # (N,)
    masks_np = as_numpy(masks).astype(bool).reshape(-1, height, width)  # (N, H, W)
    crowd_np = as_numpy(iscrowd).astype(bool).reshape(-1)  # (N,)
    if not len(labels_np) == len(masks_np) == len(crowd_np):
        raise ValueError(f"{len(labels_np)} labels, {len(masks_np)} masks and {len(crowd_np)} crowd flags differ")
    out = np.full((height, width), ignore_index, dtype=np.int64)  # (H, W)
    for label, mask, crowd in zip(labels_np, masks_np, crowd_np, strict=True):
        out[mask] = ignore_index if (crowd and crowd_as_ignore) else label
    return out


class SemanticEvaluator:
    """Accumulates a (K+1) x (K+1) confusion matrix ``[pred, gt]`` (last row/column: ignored GT pixels).

    Metrics follow detectron2's ``SemSegEvaluator.evaluate``: a class with no GT pixels has IoU and accuracy NaN
    and is left out of mIoU, mACC and fwIoU (even when it was predicted: its false positives still lower the IoU
    of the classes whose pixels they took). Pixels whose GT is ``ignore_index`` count nowhere.
    """

    def __init__(self, num_classes: int, ignore_index: int = VOID, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = default_class_names(self.num_classes, class_names)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        k = self.num_classes + 1
        self.conf_matrix = np.zeros((k, k), dtype=np.int64)

    def update(self, pred_labels: Any, gt_labels: Any) -> None:
        """Add one image: ``pred_labels`` (H, W) class ids in [0, K), ``gt_labels`` (H, W) ids or ``ignore_index``."""
        pred = as_numpy(pred_labels).astype(np.int64)  # (H, W)
        gt = as_numpy(gt_labels).astype(np.int64)  # (H, W), a copy
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        k = self.num_classes
        gt[gt == self.ignore_index] = k
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predicted class ids must lie in [0, {k}), got [{pred.min()}, {pred.max()}]")
        if gt.size and (gt.min() < 0 or gt.max() > k):
            raise ValueError(f"ground-truth ids must lie in [0, {k}) or be {self.ignore_index}")
        self.conf_matrix += np.bincount(
            (k + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=self.conf_matrix.size
        ).reshape(self.conf_matrix.shape)

    def compute(self) -> dict[str, float]:
        """``mIoU``, ``fwIoU``, ``mACC``, ``pACC`` and per-class ``IoU-<name>`` / ``ACC-<name>``, in percent.

        All NaN when no labelled GT pixel was seen.
        """
        k = self.num_classes
        conf = self.conf_matrix[:k, :k].astype(np.float64)  # valid pred x valid gt
        tp = np.diagonal(conf).copy()  # (K,)
        pos_gt = conf.sum(axis=0)  # (K,)
        pos_pred = conf.sum(axis=1)  # (K,) predictions on labelled pixels only
        acc = np.full(k, np.nan)
        iou = np.full(k, np.nan)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = acc_valid & (union > 0)
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        total = pos_gt.sum()
        if total > 0:
            class_weights = pos_gt / total
            miou = float(iou[iou_valid].mean())
            macc = float(acc[acc_valid].mean())
            fwiou = float((iou[iou_valid] * class_weights[iou_valid]).sum())
            pacc = float(tp.sum() / total)
        else:
            logger.warning("semantic evaluation saw no labelled ground-truth pixel; metrics are NaN")
            miou = macc = fwiou = pacc = float("nan")
        res: dict[str, float] = {"mIoU": 100 * miou, "fwIoU": 100 * fwiou}
        for i, name in enumerate(self.class_names):
            res[f"IoU-{name}"] = float(100 * iou[i])
        res["mACC"] = 100 * macc
        res["pACC"] = 100 * pacc
        for i, name in enumerate(self.class_names):
            res[f"ACC-{name}"] = float(100 * acc[i])
        logger.info(
            "semantic: mIoU %.2f fwIoU %.2f mACC %.2f pACC %.2f over %d classes with GT",
            res["mIoU"],
            res["fwIoU"],
            res["mACC"],
            res["pACC"],
            int(acc_valid.sum()),
        )
        return res
