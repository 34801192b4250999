"""COCO instance format: one JSON of images, annotations (polygons or RLE) and categories.

Masks come from pycocotools: polygon lists are rasterised and merged, uncompressed RLE (``counts`` a list) and
compressed RLE (``counts`` a string) are decoded. Instances may overlap, as in COCO. Category ids map to
contiguous labels as in ``coco_panoptic`` (JSON order, or ``meta`` order by name).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.data.coco_panoptic import load_json, resolve_categories
from train.data.sample import Sample
from train.data.semantic_folder import read_rgb, require_dir
from train.model.config import ModelMeta

logger = logging.getLogger(__name__)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one COCO ``segmentation``: polygons, uncompressed RLE or compressed RLE."""
    from pycocotools import mask as mask_utils  # here: training on other formats needs no pycocotools

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # a polygon needs three points
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE of size {size} for an image of size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)  # (H, W)


class CocoInstanceDataset:
    """COCO instances: one segment per annotation; ``iscrowd`` annotations are kept and flagged.

    Images without annotations are kept (empty samples) unless ``skip_empty``.
    """

    def __init__(
        self,
        image_dir: str | Path,
        instances_json: str | Path,
        meta: ModelMeta | None = None,
        skip_empty: bool = False,
    ) -> None:
        self.image_dir = require_dir(image_dir, "image")
        self.json_path = Path(instances_json)
        data = load_json(instances_json, "instances JSON")
        self.meta, self.category_to_label = resolve_categories(data["categories"], meta, self.json_path)
        per_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            if int(ann["category_id"]) not in self.category_to_label:
                raise ValueError(
                    f"{self.json_path}: annotation {ann.get('id')} has category {ann['category_id']}, "
                    "which is not in the JSON's categories"
                )
            per_image[ann["image_id"]].append(ann)
        self.items: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for entry in data["images"]:
            anns = per_image.get(entry["id"], [])
            if skip_empty and not anns:
                continue
            path = self.image_dir / entry["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"image {path} (listed in {self.json_path}) does not exist")
            self.items.append((entry, anns))
        logger.info("COCO instances %s: %d images, %d classes", self.json_path, len(self.items), self.meta.num_classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        entry, anns = self.items[index]
        path = self.image_dir / entry["file_name"]
        image = read_rgb(path)  # (3, H, W)
        height, width = image.shape[-2:]
        expected = (int(entry.get("height", height)), int(entry.get("width", width)))
        if expected != (height, width):
            raise ValueError(f"image {path} is {(height, width)} but {self.json_path} says {expected}")
        masks, labels, iscrowd = [], [], []
        for ann in anns:
            try:
                mask = segmentation_to_mask(ann["segmentation"], height, width)
            except ValueError as err:
                raise ValueError(f"{self.json_path}: annotation {ann.get('id')} of {path}: {err}") from err
            if not mask.any():
                logger.debug("%s: annotation %s has an empty mask, dropped", path, ann.get("id"))
                continue
            masks.append(torch.from_numpy(mask))
            labels.append(self.category_to_label[int(ann["category_id"])])
            iscrowd.append(bool(ann.get("iscrowd", 0)))
        return Sample(
            image=image,
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.bool),  # (N, H, W)
            iscrowd=torch.tensor(iscrowd, dtype=torch.bool),
            image_id=str(entry["id"]),
        )
