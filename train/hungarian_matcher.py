"""Bipartite (Hungarian) matching of Mask2Former queries to target segments, and the point sampling it shares
with the criterion.

Follows the official ``mask2former/modeling/matcher.py``: per image, the cost of assigning query q to target n is
``cost_class * -p_q(label_n) + cost_mask * BCE(q, n) + cost_dice * dice(q, n)``, the two mask terms computed on
``num_points`` points drawn uniformly at random, the same points for every prediction and target of the image.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "HungarianMatcher",
    "pairwise_dice_cost",
    "pairwise_sigmoid_ce_cost",
    "point_sample",
    "random_points",
]


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``inputs`` (N, C, H, W) at ``coords`` (N, P, 2), (x, y) in [0, 1] -> (N, C, P).

    detectron2's ``point_sample``: ``grid_sample`` with ``align_corners=False`` and zero padding, so [0, 1] spans
    the outer edges of the border pixels whatever the resolution; predictions at H/4 and targets at H line up.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (N, P, 1, 2) in [-1, 1]
    return F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False).squeeze(3)


def random_points(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Uniform [0, 1) float32 coordinates of ``shape`` on ``device``, from ``generator`` or the global RNG."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def pairwise_sigmoid_ce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid BCE over points of every prediction against every target: (Q, P), (N, P) -> (Q, N)."""
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")  # (Q, P)
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")  # (Q, P)
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points  # (Q, N)


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss ``1 - (2|x∩y| + 1) / (|x| + |y| + 1)`` of every prediction against every target -> (Q, N)."""
    probs = logits.sigmoid()  # (Q, P)
    numerator = 2 * probs @ targets.T  # (Q, N)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]  # (Q, N)
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets that minimises the weighted class + mask + dice cost.

    Queries left unassigned are trained towards the no-object class. The costs are computed in float32 with
    autocast off, whatever the dtype of the predictions. ``generator`` (or the global RNG when None) draws the
    points; one draw of (1, num_points, 2) per image, images with no targets included, as the official code does.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.generator = generator

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, masks: Tensor, labels: Tensor, target_masks: Tensor) -> Tensor:
        """Float32 matching cost (Q, N) of one image.

        logits (Q, K+1), masks (Q, h, w) mask logits, labels (N,), target_masks (N, H, W) bool or float.
        """
        device = logits.device
        coords = random_points((1, self.num_points, 2), device, self.generator)  # (1, P, 2)
        num_queries, num_targets = logits.shape[0], labels.shape[0]
        if num_targets == 0:
            return torch.zeros(num_queries, 0, device=device)
        with torch.autocast(device_type=device.type, enabled=False):
            probs = logits.float().softmax(-1)  # (Q, K+1)
            # the constant 1 of 1 - p is left out: it does not change the assignment
            cost_class = -probs[:, labels.to(device)]  # (Q, N)
            tgt = target_masks.to(device=device, dtype=torch.float32)[:, None]  # (N, 1, H, W)
            tgt = point_sample(tgt, coords.expand(num_targets, -1, -1)).squeeze(1)  # (N, P)
            pred = masks.float()[:, None]  # (Q, 1, h, w)
            pred = point_sample(pred, coords.expand(num_queries, -1, -1)).squeeze(1)  # (Q, P)
            cost_mask = pairwise_sigmoid_ce_cost(pred, tgt)  # (Q, N)
            cost_dice = pairwise_dice_cost(pred, tgt)  # (Q, N)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w); targets: B dicts of ``labels`` (N,)
        and ``masks`` (N, H, W). Returns B pairs (query indices, target indices), int64 CPU tensors of length
        min(Q, N), query indices ascending.
        """
        pred_logits = outputs["pred_logits"]  # (B, Q, K+1)
        pred_masks = outputs["pred_masks"]  # (B, Q, h, w)
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {pred_logits.shape[0]}")
        indices = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], target["labels"], target["masks"]).cpu()
            if cost.shape[1] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            if not torch.isfinite(cost).all():
                raise FloatingPointError(f"non-finite matching cost for image {b}: the predictions hold NaN or inf")
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
