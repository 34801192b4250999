"""COCO panoptic format: a JSON (images, annotations with ``segments_info``, categories) plus one PNG per image.

Two PNG encodings are read:

- ``"rgb"`` (the COCO standard): each pixel's segment id is ``R + 256 * G + 256**2 * B``; 0 is void. Segment
  ids are listed, with category and ``iscrowd``, in the annotation's ``segments_info``.
- ``"2ch"`` (panopticapi's "2 channels" format of the panoptic paper, as in
  ``panoptic_examples_2ch_format/``): an RGB PNG whose channel 0 is the (original, non-contiguous) category id
  with 0 = void, channel 1 the instance index within that category (0 for stuff) and channel 2 is 0. Segments
  are the distinct (category, instance) pairs, ordered by (category, instance); the JSON only gives the images
  and categories. panopticapi's converter has no crowd notion; the COCO sample files mark a category's crowd
  region with instance 255 (``crowd_instance_id``; None: no crowd) and number the other instances 0, 1, 2, ...
  in ``segments_info`` order, so both encodings give identical samples. Category ids above 255 do not fit.

Category ids map to contiguous labels 0..K-1 in the JSON's category order, or in ``meta.class_names`` order when
a ``ModelMeta`` is given (by name; categories the meta does not know are a ValueError listing them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from train.data.sample import Sample
from train.data.semantic_folder import check_same_size, read_label, read_rgb, require_dir, require_file
from train.model.config import ModelMeta

logger = logging.getLogger(__name__)

PNG_FORMATS = ("rgb", "2ch")


def fallback_color(index: int) -> tuple[int, int, int]:
    """A deterministic, well spread colour for class ``index`` when the JSON has none."""
    hue = (index * 0.618033988749895) % 1.0
    hsv = np.array([[[int(hue * 179), 200, 230]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def meta_from_categories(categories: Sequence[dict[str, Any]], dataset: str = "") -> ModelMeta:
    """``ModelMeta`` from COCO categories: names, things (``isthing``, default 1) and colours (``color``)."""
    names = tuple(str(c["name"]) for c in categories)
    thing_ids = tuple(i for i, c in enumerate(categories) if int(c.get("isthing", 1)))
    colors = tuple(
        (int(c["color"][0]), int(c["color"][1]), int(c["color"][2])) if "color" in c else fallback_color(i)
        for i, c in enumerate(categories)
    )
    return ModelMeta(class_names=names, thing_ids=thing_ids, colors=colors, dataset=dataset)


def resolve_categories(
    categories: Sequence[dict[str, Any]], meta: ModelMeta | None, source: Path
) -> tuple[ModelMeta, dict[int, int]]:
    """The meta to use and the map COCO category id -> contiguous label."""
    if meta is None:
        return meta_from_categories(categories, dataset=source.stem), {
            int(c["id"]): i for i, c in enumerate(categories)
        }
    index = {name: i for i, name in enumerate(meta.class_names)}
    unknown = [str(c["name"]) for c in categories if str(c["name"]) not in index]
    if unknown:
        raise ValueError(
            f"{source}: categories {unknown} are not among the {meta.num_classes} classes of the given meta "
            f"({meta.dataset or 'unnamed'}: {list(meta.class_names)[:10]}...)"
        )
    return meta, {int(c["id"]): index[str(c["name"])] for c in categories}


def load_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file as a dict; FileNotFoundError / ValueError naming it."""
    path = require_file(path, what)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {path} is not valid JSON: {err}") from err


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids (H, W) int64 from an (H, W, 3) COCO panoptic PNG."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 COCO panoptic encoding of segment ids (H, W)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


class CocoPanopticDataset:
    """COCO panoptic images with one segment (mask, contiguous label, crowd flag) per ``segments_info`` entry.

    ``image_path_fn(image_entry)`` (optional, must be picklable) overrides where an image is found; by default
    ``image_dir / file_name`` of the JSON's ``images`` entry. Segments with no pixel in the PNG are dropped.
    """

    def __init__(
        self,
        image_dir: str | Path,
        panoptic_json: str | Path,
        panoptic_png_dir: str | Path,
        meta: ModelMeta | None = None,
        png_format: str = "rgb",
        crowd_instance_id: int | None = 255,
        image_path_fn: Callable[[dict[str, Any]], Path] | None = None,
    ) -> None:
        if png_format not in PNG_FORMATS:
            raise ValueError(f"png_format must be one of {PNG_FORMATS}, got {png_format!r}")
        self.image_dir = require_dir(image_dir, "image")
        self.png_dir = require_dir(panoptic_png_dir, "panoptic PNG")
        self.json_path = Path(panoptic_json)
        self.png_format = png_format
        self.crowd_instance_id = crowd_instance_id
        data = load_json(panoptic_json, "panoptic JSON")
        self.meta, self.category_to_label = resolve_categories(data["categories"], meta, self.json_path)
        images = {img["id"]: img for img in data["images"]}
        # (image path, png path, image id, [(segment id, label, iscrowd)])
        self.items: list[tuple[Path, Path, str, list[tuple[int, int, bool]]]] = []
        for ann in data["annotations"]:
            if ann["image_id"] not in images:
                raise ValueError(
                    f"{self.json_path}: annotation {ann['file_name']} names unknown image {ann['image_id']}"
                )
            entry = images[ann["image_id"]]
            image_path = image_path_fn(entry) if image_path_fn else self.image_dir / entry["file_name"]
            png_path = self.png_dir / ann["file_name"]
            if not image_path.is_file():
                raise FileNotFoundError(f"image {image_path} (listed in {self.json_path}) does not exist")
            if not png_path.is_file():
                raise FileNotFoundError(f"image {image_path} has no panoptic PNG: {png_path} does not exist")
            segments = []
            for seg in ann.get("segments_info", []):
                if int(seg["category_id"]) not in self.category_to_label:
                    raise ValueError(
                        f"{self.json_path}: segment {seg['id']} of {ann['file_name']} has category "
                        f"{seg['category_id']}, which is not in the JSON's categories"
                    )
                label = self.category_to_label[int(seg["category_id"])]
                segments.append((int(seg["id"]), label, bool(seg.get("iscrowd", 0))))
            self.items.append((image_path, png_path, str(ann["image_id"]), segments))
        logger.info("COCO panoptic %s: %d images, %d classes", self.json_path, len(self.items), self.meta.num_classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        image_path, png_path, image_id, segments = self.items[index]
        image = read_rgb(image_path)  # (3, H, W)
        png = read_label(png_path, channels=3)[..., :3]  # (H, W, 3)
        check_same_size(image, png.shape, image_path, png_path)
        if self.png_format == "rgb":
            ids = torch.from_numpy(rgb_to_id(png))  # (H, W)
            seg_ids = torch.tensor([s[0] for s in segments], dtype=torch.int64)
            labels = torch.tensor([s[1] for s in segments], dtype=torch.int64)
            iscrowd = torch.tensor([s[2] for s in segments], dtype=torch.bool)
        else:
            ids, seg_ids, labels, iscrowd = self._two_channel_segments(png, png_path)
        masks = ids[None] == seg_ids[:, None, None]  # (N, H, W)
        keep = masks.flatten(1).any(1)
        if not bool(keep.all()):
            logger.debug("%s: dropping %d segments with no pixels", png_path, int((~keep).sum()))
        return Sample(image=image, labels=labels[keep], masks=masks[keep], iscrowd=iscrowd[keep], image_id=image_id)

    def _two_channel_segments(
        self, png: np.ndarray, png_path: Path
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (H, W), segment ids (N,), labels (N,), iscrowd (N,)) from a 2-channel PNG."""
        category = png[..., 0].astype(np.int64)
        instance = png[..., 1].astype(np.int64)
        ids = category * 256 + instance  # (H, W); category 0 is void
        seg_ids = np.unique(ids[category != 0])  # sorted by (category, instance)
        unknown = sorted({int(c) for c in seg_ids // 256} - set(self.category_to_label))
        if unknown:
            raise ValueError(f"{png_path}: category ids {unknown} are not in the categories of {self.json_path}")
        labels = [self.category_to_label[int(c)] for c in seg_ids // 256]
        if self.crowd_instance_id is None:
            iscrowd = np.zeros(len(seg_ids), dtype=bool)
        else:
            iscrowd = (seg_ids % 256) == self.crowd_instance_id
        return (
            torch.from_numpy(ids),
            torch.from_numpy(seg_ids),
            torch.tensor(labels, dtype=torch.int64),
            torch.from_numpy(iscrowd),
        )
