"""Training and evaluation transforms on ``Sample``, built from torchvision.transforms.v2.

The image travels as ``tv_tensors.Image`` and the masks as ``tv_tensors.Mask``, so every geometric step moves
them together (bilinear + antialias for the image, nearest for masks). Randomness comes from torch's generator
(seed it, or rely on the DataLoader's per-worker seeding).

- ``large_scale_jitter``: the official COCO recipe (``COCOPanopticNewBaselineDatasetMapper``): random flip,
  detectron2 ``ResizeScale`` (fit into ``scale * image_size`` squared, scale ~ U(min, max)) and ``FixedSizeCrop``
  (random crop when larger, pad bottom/right to ``image_size`` squared: image with 128, masks with False).
- ``resize_crop``: the official semantic recipe (``MaskFormerSemanticDatasetMapper``): shortest-edge resize
  (``ResizeShortestEdge``, choice or range sampling), random crop with the ``cat_max_ratio`` rule
  (``RandomCrop_CategoryAreaConstraint``), SSD colour jitter (``ColorAugSSDTransform``), horizontal flip.
- ``eval_transform``: shortest-edge resize only.

After the transforms, segments whose mask became empty are dropped; crowd segments stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from train.data.sample import Sample

logger = logging.getLogger(__name__)


def _size(inputs: dict[str, Any]) -> tuple[int, int]:
    h, w = inputs["image"].shape[-2:]
    return int(h), int(w)


def _resize(inputs: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Resize image (bilinear, antialiased) and masks (nearest) to ``size`` = (h, w)."""
    if size == _size(inputs):
        return inputs
    return {
        **inputs,
        "image": F.resize(inputs["image"], list(size), antialias=True),
        "masks": F.resize(inputs["masks"], list(size), interpolation=v2.InterpolationMode.NEAREST),
    }


def _crop(inputs: dict[str, Any], top: int, left: int, height: int, width: int) -> dict[str, Any]:
    return {
        **inputs,
        "image": F.crop(inputs["image"], top, left, height, width),
        "masks": F.crop(inputs["masks"], top, left, height, width),
    }


class ResizeScale(v2.Transform):
    """detectron2 ``ResizeScale``: fit the image into (scale * target_h, scale * target_w), scale ~ U(min, max)."""

    def __init__(self, min_scale: float, max_scale: float, target_height: int, target_width: int) -> None:
        super().__init__()
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.target = (int(target_height), int(target_width))

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        h, w = _size(inputs)
        scale = self.min_scale + float(torch.rand(())) * (self.max_scale - self.min_scale)
        r = min(scale * self.target[0] / h, scale * self.target[1] / w)
        return _resize(inputs, (max(1, round(h * r)), max(1, round(w * r))))


class FixedSizeCrop(v2.Transform):
    """detectron2 ``FixedSizeCrop``: random crop to at most ``crop_size``, then pad bottom/right to exactly it."""

    def __init__(self, crop_size: tuple[int, int], image_pad_value: int = 128) -> None:
        super().__init__()
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.image_pad_value = int(image_pad_value)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        h, w = _size(inputs)
        ch, cw = self.crop_size
        u = float(torch.rand(()))  # one draw for both axes, as detectron2
        top, left = round(max(h - ch, 0) * u), round(max(w - cw, 0) * u)
        out = _crop(inputs, top, left, min(ch, h), min(cw, w))
        pad_h, pad_w = ch - min(ch, h), cw - min(cw, w)
        if pad_h or pad_w:
            out["image"] = F.pad(out["image"], [0, 0, pad_w, pad_h], fill=self.image_pad_value)
            out["masks"] = F.pad(out["masks"], [0, 0, pad_w, pad_h], fill=0)
        return out


class ResizeShortestEdge(v2.Transform):
    """detectron2 ``ResizeShortestEdge``: short side from ``min_sizes`` ("choice") or U[min, max] ("range")."""

    def __init__(self, min_sizes: Sequence[int] | int, max_size: int, sampling: str = "choice") -> None:
        super().__init__()
        self.min_sizes = [int(min_sizes)] if isinstance(min_sizes, int) else [int(s) for s in min_sizes]
        if sampling not in ("choice", "range"):
            raise ValueError(f"sampling must be 'choice' or 'range', got {sampling!r}")
        if sampling == "range" and len(self.min_sizes) != 2:
            raise ValueError(f"'range' sampling needs min_sizes = (low, high), got {self.min_sizes}")
        self.max_size = int(max_size)
        self.sampling = sampling

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.sampling == "choice":
            short = self.min_sizes[int(torch.randint(len(self.min_sizes), ()))]
        else:
            short = int(torch.randint(self.min_sizes[0], self.min_sizes[1] + 1, ()))
        h, w = _size(inputs)
        scale = short / min(h, w)
        new_h, new_w = h * scale, w * scale
        if self.max_size > 0 and max(new_h, new_w) > self.max_size:
            scale = self.max_size / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return _resize(inputs, (max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))))


class RandomCropCategoryArea(v2.Transform):
    """detectron2 ``RandomCrop_CategoryAreaConstraint``: a random crop of at most ``crop_size`` in which no class
    covers more than ``cat_max_ratio`` of the labelled pixels (up to 10 tries; the last one is kept)."""

    def __init__(self, crop_size: tuple[int, int], cat_max_ratio: float = 1.0, tries: int = 10) -> None:
        super().__init__()
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.tries = tries

    def _offset(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        return top, left, ch, cw

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        h, w = _size(inputs)
        box = self._offset(h, w)
        if self.cat_max_ratio < 1.0 and len(inputs["labels"]):
            masks, labels = inputs["masks"], inputs["labels"]  # (N, H, W), (N,)
            for _ in range(self.tries):
                top, left, ch, cw = box
                areas = masks[:, top : top + ch, left : left + cw].flatten(1).sum(1)  # (N,)
                per_class = torch.zeros(int(labels.max()) + 1, dtype=torch.int64).index_add_(0, labels, areas)
                per_class = per_class[per_class > 0]
                if len(per_class) > 1 and per_class.max() < self.cat_max_ratio * per_class.sum():
                    break
                box = self._offset(h, w)
        return _crop(inputs, *box)


class ColorAugSSD(v2.Transform):
    """SSD photometric distortion (detectron2 ``ColorAugSSDTransform``) on the image only, each step with p=0.5:
    brightness +U(-32, 32), contrast xU(0.5, 1.5), saturation xU(0.5, 1.5), hue +U(-18, 18) of 180; contrast
    first or last at random. Saturation and hue use torchvision's kernels (grey blend, HSV hue rotation)."""

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18,
    ) -> None:
        super().__init__()
        self.brightness_delta = float(brightness_delta)
        self.contrast = contrast
        self.saturation = saturation
        self.hue_delta = float(hue_delta)

    @staticmethod
    def _coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + float(torch.rand(())) * (high - low)

    def _contrast(self, image: torch.Tensor) -> torch.Tensor:
        if self._coin():
            image = (image.float() * self._uniform(*self.contrast)).round().clamp(0, 255).to(torch.uint8)
        return image

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        image = inputs["image"].as_subclass(torch.Tensor)  # (3, H, W) uint8
        if self._coin():
            delta = self._uniform(-self.brightness_delta, self.brightness_delta)
            image = (image.float() + delta).round().clamp(0, 255).to(torch.uint8)
        contrast_first = self._coin()
        if contrast_first:
            image = self._contrast(image)
        if self._coin():
            image = F.adjust_saturation(image, self._uniform(*self.saturation))
        if self._coin():
            image = F.adjust_hue(image, self._uniform(-self.hue_delta, self.hue_delta) / 180.0)
        if not contrast_first:
            image = self._contrast(image)
        return {**inputs, "image": tv_tensors.Image(image)}


class SampleTransform:
    """Applies v2 transforms to a ``Sample`` (image and masks together), then drops segments left empty."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = v2.Compose(list(transforms)) if transforms else None

    def __repr__(self) -> str:
        return f"SampleTransform({self.transforms!r})"

    def __call__(self, sample: Sample) -> Sample:
        if self.transforms is None:
            return sample
        inputs = {
            "image": tv_tensors.Image(sample["image"]),
            "masks": tv_tensors.Mask(sample["masks"]),
            "labels": sample["labels"],
            "iscrowd": sample["iscrowd"],
        }
        out = self.transforms(inputs)
        masks = out["masks"].as_subclass(torch.Tensor).to(torch.bool)  # (N, H', W')
        keep = masks.flatten(1).any(1)  # (N,)
        return Sample(
            image=out["image"].as_subclass(torch.Tensor).contiguous(),  # (3, H', W') uint8
            labels=sample["labels"][keep],
            masks=masks[keep],
            iscrowd=sample["iscrowd"][keep],
            image_id=sample["image_id"],
        )


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def large_scale_jitter(
    image_size: int | Sequence[int],
    min_scale: float = 0.1,
    max_scale: float = 2.0,
    flip: bool = True,
    image_pad_value: int = 128,
) -> SampleTransform:
    """Official COCO LSJ: flip, resize to fit ``scale * image_size`` (scale ~ U(min, max)), crop/pad to size."""
    h, w = _pair(image_size)
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip()] if flip else []
    steps += [ResizeScale(min_scale, max_scale, h, w), FixedSizeCrop((h, w), image_pad_value)]
    return SampleTransform(steps)


def resize_crop(
    min_sizes: Sequence[int] | int,
    max_size: int,
    crop_size: int | Sequence[int] | None = None,
    min_size_sampling: str = "choice",
    cat_max_ratio: float = 1.0,
    color_jitter: bool = True,
    flip: bool = True,
) -> SampleTransform:
    """Official semantic recipe: shortest-edge resize, random crop (``cat_max_ratio`` rule), SSD colours, flip."""
    steps: list[v2.Transform] = [ResizeShortestEdge(min_sizes, max_size, min_size_sampling)]
    if crop_size is not None:
        steps.append(RandomCropCategoryArea(_pair(crop_size), cat_max_ratio))
    if color_jitter:
        steps.append(ColorAugSSD())
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return SampleTransform(steps)


def eval_transform(min_size: int, max_size: int) -> SampleTransform:
    """Shortest edge to ``min_size`` with the long side at most ``max_size`` (0: no limit)."""
    return SampleTransform([ResizeShortestEdge(min_size, max_size)])


def no_augmentation() -> SampleTransform:
    """The identity."""
    return SampleTransform([])


AUGMENTATIONS: dict[str, Callable[..., SampleTransform]] = {
    "lsj": large_scale_jitter,
    "resize_crop": resize_crop,
    "eval": eval_transform,
    "none": no_augmentation,
}


def build_augmentation(config: dict[str, Any]) -> Callable[[Sample], Sample]:
    """A transform from ``{"name": one of AUGMENTATIONS, **its keyword arguments}``."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; expected one of {sorted(AUGMENTATIONS)}")
    try:
        transform = AUGMENTATIONS[name](**config)
    except TypeError as err:
        raise ValueError(f"bad arguments for augmentation {name!r}: {err}") from err
    logger.info("augmentation %s: %r", name, transform)
    return transform
