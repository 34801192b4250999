"""One entry point: score (Sample, post-processed output) pairs for a task with the matching evaluators."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runtimes.vocabulary import TASKS, VOID
from train.evaluation.instance import InstanceEvaluator
from train.evaluation.panoptic import PanopticEvaluator
from train.evaluation.semantic import SemanticEvaluator, as_numpy, semantic_gt_from_sample

if TYPE_CHECKING:
    from train.data.sample import Sample
    from train.model.config import ModelMeta

logger = logging.getLogger(__name__)

REQUIRED = {"semantic": "semantic", "instance": "instances", "panoptic": "panoptic"}


def evaluate(
    predictions: Iterable[tuple[Sample, dict[str, Any]]],
    task: str,
    meta: ModelMeta,
    ignore_index: int = VOID,
) -> dict[str, float]:
    """Score post-processed outputs (``train.model.inference.postprocess`` form) against their samples.

    Each output must be at its sample's (H, W). By task:

    * ``"semantic"``: ``semantic`` (H, W) class ids against :func:`semantic_gt_from_sample` -> ``mIoU``,
      ``fwIoU``, ``mACC``, ``pACC``, ``IoU-<name>``, ``ACC-<name>``;
    * ``"panoptic"``: ``panoptic`` + ``segments_info`` -> ``PQ``, ``SQ``, ``RQ`` (and ``_th``/``_st``,
      per class), plus the semantic metrics when outputs also carry ``semantic``;
    * ``"instance"``: ``instances`` (masks, scores, labels) -> ``AP``, ``AP50``, ... and ``AP-<name>``; with
      ``meta.thing_ids`` set only thing classes are scored (COCO instance GT), otherwise every class.

    Returns one flat dict of percentages (NaN where a metric is undefined).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    k = len(meta.class_names)
    names = list(meta.class_names)
    semantic = SemanticEvaluator(k, ignore_index, names)
    panoptic = PanopticEvaluator(k, meta.thing_ids, names) if task == "panoptic" else None
    instance = InstanceEvaluator(k, names, meta.thing_ids or None) if task == "instance" else None
    use_semantic = task == "semantic"
    count = 0

    for sample, output in predictions:
        key = REQUIRED[task]
        if key not in output:
            raise KeyError(f"task {task!r} needs {key!r} in every output, got keys {sorted(output)}")
        masks = as_numpy(sample["masks"])  # (N, H, W)
        h, w = masks.shape[-2:] if masks.ndim == 3 else as_numpy(sample["image"]).shape[-2:]
        masks = masks.reshape(-1, h, w)
        labels, iscrowd = as_numpy(sample["labels"]), as_numpy(sample["iscrowd"])

        if "semantic" in output and task in ("semantic", "panoptic"):
            pred = as_numpy(output["semantic"])  # (H, W) class ids
            _check_size(pred.shape, (h, w), "semantic", sample)
            gt = semantic_gt_from_sample(labels, masks, iscrowd, h, w, ignore_index)  # (H, W)
            semantic.update(pred, gt)
            use_semantic = True
        if panoptic is not None:
            seg = as_numpy(output["panoptic"])  # (H, W)
            _check_size(seg.shape, (h, w), "panoptic", sample)
            panoptic.update(seg, output["segments_info"], labels, masks, iscrowd)
        if instance is not None:
            inst = output["instances"]
            pred_masks = as_numpy(inst["masks"])  # (M, H, W)
            if len(pred_masks):
                _check_size(pred_masks.shape[-2:], (h, w), "instances.masks", sample)
            else:
                pred_masks = pred_masks.reshape(0, h, w)
            instance.update(pred_masks, inst["scores"], inst["labels"], labels, masks, iscrowd)
        count += 1

    results: dict[str, float] = {}
    if use_semantic:
        results.update(semantic.compute())
    if panoptic is not None:
        results.update(panoptic.compute())
    if instance is not None:
        results.update(instance.compute())
    headline = {m: results[m] for m in ("mIoU", "PQ", "AP") if m in results}
    logger.info("%s evaluation over %d images: %s", task, count, headline)
    return results


def _check_size(got: tuple[int, ...], want: tuple[int, int], what: str, sample: Sample) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(
            f"{what} of image {sample.get('image_id')!r} is {tuple(got)}, its ground truth {tuple(want)}; "
            "post-process at the ground-truth size (output_sizes)"
        )
