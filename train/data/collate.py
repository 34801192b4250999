"""Batching ``Sample``s for the trainer: zero padding to a common, divisible size; crowd segments out of targets."""

from __future__ import annotations

import math
from typing import Any

import torch

from train.data.sample import Sample


def padded_size(sizes: list[tuple[int, int]], size_divisibility: int = 32) -> tuple[int, int]:
    """The smallest (H, W) holding every size, rounded up to a multiple of ``size_divisibility`` (if > 0)."""
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    if size_divisibility > 0:
        h = math.ceil(h / size_divisibility) * size_divisibility
        w = math.ceil(w / size_divisibility) * size_divisibility
    return h, w


def collate(samples: list[Sample], size_divisibility: int = 32) -> dict[str, Any]:
    """Stack samples into a padded batch.

    Returns ``images`` (B, 3, Hp, Wp) uint8 zero-padded at the bottom/right, ``image_sizes`` [(h, w)] before
    padding, ``targets`` [{"labels" (N,) int64, "masks" (N, Hp, Wp) bool}] without crowd segments, ``gt`` [the
    samples' own "labels", "masks" (N, h, w), "iscrowd", "image_id"] for evaluation, and ``image_ids``.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    sizes = [(int(s["image"].shape[-2]), int(s["image"].shape[-1])) for s in samples]
    hp, wp = padded_size(sizes, size_divisibility)
    images = torch.zeros((len(samples), 3, hp, wp), dtype=torch.uint8)  # (B, 3, Hp, Wp)
    targets, gt = [], []
    for i, (sample, (h, w)) in enumerate(zip(samples, sizes, strict=True)):
        images[i, :, :h, :w] = sample["image"]
        keep = ~sample["iscrowd"]  # (N,)
        masks = torch.zeros((int(keep.sum()), hp, wp), dtype=torch.bool)  # (N', Hp, Wp)
        masks[:, :h, :w] = sample["masks"][keep]
        targets.append({"labels": sample["labels"][keep], "masks": masks})
        gt.append(
            {
                "labels": sample["labels"],
                "masks": sample["masks"],
                "iscrowd": sample["iscrowd"],
                "image_id": sample["image_id"],
            }
        )
    return {
        "images": images,
        "image_sizes": sizes,
        "targets": targets,
        "gt": gt,
        "image_ids": [s["image_id"] for s in samples],
    }
