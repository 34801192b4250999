"""Metrics (mIoU, PQ, mask AP) computed on the same post-processing a deployed model runs."""

from train.evaluation.evaluate import evaluate
from train.evaluation.instance import InstanceEvaluator
from train.evaluation.panoptic import PanopticEvaluator, panoptic_gt_from_sample
from train.evaluation.semantic import SemanticEvaluator, semantic_gt_from_sample

__all__ = [
    "InstanceEvaluator",
    "PanopticEvaluator",
    "SemanticEvaluator",
    "evaluate",
    "panoptic_gt_from_sample",
    "semantic_gt_from_sample",
]
