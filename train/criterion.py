"""Mask2Former's set criterion: Hungarian matching, then class cross-entropy and point-sampled mask losses.

Follows the official ``mask2former/modeling/criterion.py``:

- ``loss_ce``: cross-entropy of every query, matched queries against their target's class, the rest against
  no-object (class K), whose weight is ``eos_coef`` (``empty_weight`` buffer); the mean is weighted.
- ``loss_mask`` / ``loss_dice``: sigmoid BCE (mean over points) and dice of each matched query's mask logits
  against its target mask, on ``num_points`` points per mask picked by uncertainty importance sampling; summed over
  masks and divided by the number of target masks in the batch, averaged over processes, at least 1.
- The same for every ``aux_outputs`` entry i, keys suffixed ``_i``, each entry matched on its own.

Losses are computed in float32 with autocast off; gradients still reach low-precision predictions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.hungarian_matcher import HungarianMatcher, point_sample, random_points

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WEIGHTS",
    "SetCriterion",
    "dice_loss",
    "sample_uncertain_points",
    "sigmoid_ce_loss",
]

DEFAULT_WEIGHTS: dict[str, float] = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
_AUX_SUFFIX = re.compile(r"_\d+$")

Targets = Sequence[Mapping[str, Tensor]]
Indices = list[tuple[Tensor, Tensor]]


def sigmoid_ce_loss(logits: Tensor, labels: Tensor, num_masks: Tensor | float) -> Tensor:
    """Sigmoid BCE, mean over the P points of each mask, summed over masks / num_masks: (M, P), (M, P) -> ()."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (M, P)
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, num_masks: Tensor | float) -> Tensor:
    """Dice ``1 - (2|x∩y| + 1) / (|x| + |y| + 1)`` per mask, summed over masks / num_masks: (M, P), (M, P) -> ()."""
    probs = logits.sigmoid()  # (M, P)
    numerator = 2 * (probs * labels).sum(-1)  # (M,)
    denominator = probs.sum(-1) + labels.sum(-1)  # (M,)
    loss = 1 - (numerator + 1) / (denominator + 1)  # (M,)
    return loss.sum() / num_masks


@torch.no_grad()
def sample_uncertain_points(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend's ``get_uncertain_point_coords_with_randomness`` with uncertainty ``-|logit|``.

    mask_logits (M, 1, h, w) -> (M, num_points, 2) [0, 1] coordinates: of ``oversample_ratio * num_points``
    uniform points, the ``importance_sample_ratio * num_points`` whose logit is nearest 0, then uniform points for
    the rest. Draws (M, int(num_points * oversample_ratio), 2) then (M, rest, 2), as detectron2 does.
    """
    num_masks, device = mask_logits.shape[0], mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = random_points((num_masks, num_sampled, 2), device, generator)  # (M, S, 2)
    uncertainty = -point_sample(mask_logits, coords)[:, 0].abs()  # (M, S)
    idx = uncertainty.topk(num_uncertain, dim=1).indices  # (M, U)
    coords = coords.gather(1, idx[..., None].expand(-1, -1, 2))  # (M, U, 2)
    if num_random > 0:
        coords = torch.cat([coords, random_points((num_masks, num_random, 2), device, generator)], dim=1)
    return coords  # (M, P, 2)


class SetCriterion(nn.Module):
    """Mask2Former training losses: ``forward(outputs, targets)`` -> unweighted losses, ``weighted_total`` sums them.

    ``generator`` (or the global RNG when None) draws the mask-loss points; the matcher draws its own points with
    its own ``generator``. Per output (the final one, then each aux entry in order) the matcher draws first, then the
    mask loss, the order of the official code and of transformers' port.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | nn.Module,
        eos_coef: float = 0.1,
        weights: Mapping[str, float] | None = None,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if oversample_ratio < 1:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
        if not 0 <= importance_sample_ratio <= 1:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.generator = generator
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)  # (K+1,)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, weights={self.weights}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )

    def forward(self, outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
        """Unweighted losses ``loss_ce``, ``loss_mask``, ``loss_dice`` and the same suffixed ``_i`` per aux output.

        outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w), optional ``aux_outputs`` list of the
        same two; targets: B dicts of ``labels`` (N,) int64 and ``masks`` (N, H, W) bool or float.
        """
        pred_logits: Tensor = outputs["pred_logits"]
        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            num_masks = self.num_masks(targets, pred_logits.device)
            losses = self.output_losses(outputs, targets, num_masks)
            for i, aux in enumerate(outputs.get("aux_outputs") or ()):
                losses.update({f"{k}_{i}": v for k, v in self.output_losses(aux, targets, num_masks).items()})
        return losses

    def weighted_total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Sum of each loss times the weight of its key with any ``_i`` aux suffix dropped.

        Keys without a weight are left out, as the official model drops them.
        """
        total = None
        for key, value in losses.items():
            weight = self.weights.get(_AUX_SUFFIX.sub("", key))
            if weight is None:
                continue
            total = value * weight if total is None else total + value * weight
        if total is None:
            raise ValueError(f"no loss among {sorted(losses)} has a weight in {sorted(self.weights)}")
        return total

    @staticmethod
    def num_masks(targets: Targets, device: torch.device) -> Tensor:
        """Target masks per process, averaged across processes when torch.distributed is initialised, >= 1: ()."""
        count = torch.as_tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        world_size = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)  # sum
            world_size = torch.distributed.get_world_size()
        return torch.clamp(count / world_size, min=1)

    def output_losses(self, outputs: Mapping[str, Tensor], targets: Targets, num_masks: Tensor) -> dict[str, Tensor]:
        """Match one output (final or aux) and compute its three losses."""
        indices = self.matcher(outputs, targets)
        return {
            **self.loss_labels(outputs["pred_logits"], targets, indices),
            **self.loss_masks(outputs["pred_masks"], targets, indices, num_masks),
        }

    def loss_labels(self, pred_logits: Tensor, targets: Targets, indices: Indices) -> dict[str, Tensor]:
        """Weighted cross-entropy of all queries; unmatched ones against no-object (class K)."""
        logits = pred_logits.float()  # (B, Q, K+1)
        batch_idx, query_idx = _query_index(indices)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        if len(batch_idx):
            per_image = [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices, strict=True)]
            matched = torch.cat(per_image).to(logits.device)  # (M,)
            target_classes[batch_idx.to(logits.device), query_idx.to(logits.device)] = matched
        empty_weight = self.empty_weight.to(logits.device, torch.float32)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, empty_weight)  # (B, K+1, Q) vs (B, Q)
        return {"loss_ce": loss_ce}

    def loss_masks(
        self, pred_masks: Tensor, targets: Targets, indices: Indices, num_masks: Tensor
    ) -> dict[str, Tensor]:
        """Point-sampled sigmoid BCE and dice of the matched masks, normalised by ``num_masks``."""
        batch_idx, query_idx = _query_index(indices)
        if len(batch_idx) == 0:
            zero = pred_masks.sum().float() * 0.0  # keeps the graph (and DDP) connected
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        device = pred_masks.device
        src = pred_masks[batch_idx.to(device), query_idx.to(device)].float()[:, None]  # (M, 1, h, w)
        tgt = _matched_target_masks(targets, indices, device)[:, None]  # (M, 1, H, W)
        coords = sample_uncertain_points(
            src, self.num_points, self.oversample_ratio, self.importance_sample_ratio, self.generator
        )  # (M, P, 2)
        with torch.no_grad():
            labels = point_sample(tgt, coords).squeeze(1)  # (M, P)
        logits = point_sample(src, coords).squeeze(1)  # (M, P)
        return {
            "loss_mask": sigmoid_ce_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }


def _query_index(indices: Indices) -> tuple[Tensor, Tensor]:
    """(image index, query index) of every matched query, both (M,)."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


def _matched_target_masks(targets: Targets, indices: Indices, device: torch.device) -> Tensor:
    """The matched target masks in match order, float32, zero-padded bottom/right to the batch's largest size.

    The official code pads the same way (``nested_tensor_from_tensor_list``); with targets already at the padded
    input size (our data pipeline) there is nothing to pad. -> (M, H, W)
    """
    height = max(int(t["masks"].shape[-2]) for t in targets)
    width = max(int(t["masks"].shape[-1]) for t in targets)
    out = []
    for t, (_, j) in zip(targets, indices, strict=True):
        masks = t["masks"]
        m = masks[j.to(masks.device)].to(device=device, dtype=torch.float32)  # (m, h_b, w_b)
        if m.shape[-2:] != (height, width):
            m = F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2]))
        out.append(m)
    return torch.cat(out)
