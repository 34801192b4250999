"""The one target form every dataset format produces, and the dataset interface."""

from __future__ import annotations

from typing import Protocol, TypedDict

from torch import Tensor

from train.model.config import ModelMeta


class Sample(TypedDict):
    """One image and its segments.

    ``masks[i]`` is segment i (an instance, a stuff region, or for semantic data all pixels of one class) with
    class ``labels[i]``. Pixels in no mask are void. Crowd segments (``iscrowd``) are not training targets; the
    evaluators ignore predictions that fall on them, as COCO does.
    """

    image: Tensor  # (3, H, W) uint8, RGB
    labels: Tensor  # (N,) int64, contiguous class ids 0..K-1
    masks: Tensor  # (N, H, W) bool
    iscrowd: Tensor  # (N,) bool
    image_id: str


class SegmentationDataset(Protocol):
    """A map-style dataset of ``Sample``; ``meta`` names the classes, the things and their colours."""

    meta: ModelMeta

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
