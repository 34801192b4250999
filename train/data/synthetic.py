"""Procedural scenes written as real files: COCO panoptic (images, JSON, PNGs) and a semantic folder of the same.

A scene is a few horizontal stuff bands with wavy borders (random order; each class a colour family and a
texture) and several thing instances (one shape, colour and texture per class) dropped at random positions and
sizes, later ones occluding earlier ones. Appearance alone identifies every class, so a tiny model learns them
in minutes on a CPU. Everything is drawn from ``numpy.random.default_rng([seed, index])``: the same seed gives
byte-identical files.

Images are PNG, not JPEG: lossless, so every pixel of a segment keeps its class colours right up to the border
(tests can check image/mask alignment exactly) and the bytes do not depend on a libjpeg version.

Layout under ``root``: ``images/00000.png``, ``panoptic/00000.png`` + ``panoptic.json`` (RGB-encoded ids,
segments_info also carries ``amodal_area`` and ``occluded_by``), ``labels/00000.png`` (contiguous class ids,
``VOID`` = void) and ``meta.json`` (``ModelMeta.to_dict()``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtimes.vocabulary import VOID
from train.data.coco_panoptic import CocoPanopticDataset, id_to_rgb
from train.data.semantic_folder import SemanticFolderDataset, require_file
from train.model.config import ModelMeta

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassStyle:
    """How one class looks: base RGB colour, texture kind, texture period (px) and angle (degrees)."""

    name: str
    color: tuple[int, int, int]
    texture: str  # "stripes" | "checker" | "dots" | "grain" | "waves"
    period: float
    angle: float = 0.0
    shape: str = ""  # things only: "circle" | "rectangle" | "triangle" | "diamond" | "ellipse" | "cross"


STUFF_STYLES = (
    ClassStyle("sky", (120, 170, 235), "waves", 24.0, 90.0),
    ClassStyle("grass", (60, 150, 50), "grain", 2.0),
    ClassStyle("wall", (165, 90, 60), "checker", 8.0),
    ClassStyle("road", (95, 95, 100), "stripes", 12.0, 0.0),
    ClassStyle("water", (30, 70, 140), "waves", 6.0, 0.0),
    ClassStyle("sand", (215, 190, 130), "dots", 7.0),
)
THING_STYLES = (
    ClassStyle("circle", (225, 40, 40), "stripes", 6.0, 45.0, "circle"),
    ClassStyle("rectangle", (240, 210, 40), "checker", 5.0, 0.0, "rectangle"),
    ClassStyle("triangle", (190, 60, 210), "dots", 5.0, 0.0, "triangle"),
    ClassStyle("diamond", (40, 210, 200), "stripes", 5.0, 90.0, "diamond"),
    ClassStyle("ellipse", (250, 135, 25), "grain", 2.0, 0.0, "ellipse"),
    ClassStyle("cross", (240, 240, 240), "stripes", 4.0, 0.0, "cross"),
)


def synthetic_meta(num_stuff: int = 3, num_thing_classes: int = 3) -> ModelMeta:
    """Classes of the synthetic scenes: the things first (as COCO), then the stuff."""
    if not 1 <= num_stuff <= len(STUFF_STYLES):
        raise ValueError(f"num_stuff must be in 1..{len(STUFF_STYLES)}, got {num_stuff}")
    if not 1 <= num_thing_classes <= len(THING_STYLES):
        raise ValueError(f"num_thing_classes must be in 1..{len(THING_STYLES)}, got {num_thing_classes}")
    styles = THING_STYLES[:num_thing_classes] + STUFF_STYLES[:num_stuff]
    return ModelMeta(
        class_names=tuple(s.name for s in styles),
        thing_ids=tuple(range(num_thing_classes)),
        colors=tuple(s.color for s in styles),
        dataset="synthetic",
    )


def _texture(style: ClassStyle, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (H, W) pattern in [-1, 1] for ``style`` with a random phase."""
    phase = rng.uniform(0, 2 * np.pi)
    theta = np.deg2rad(style.angle)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    if style.texture in ("stripes", "waves"):
        wobble = 0.0 if style.texture == "stripes" else 2.0 * np.sin(2 * np.pi * (xx - yy) / (4 * style.period))
        return np.sign(np.sin(2 * np.pi * (u + wobble) / style.period + phase)) * (
            1.0 if style.texture == "stripes" else 0.5
        )
    if style.texture == "checker":
        ox, oy = rng.integers(0, int(style.period), 2)
        return np.where(((xx + ox) // style.period + (yy + oy) // style.period) % 2 == 0, 1.0, -1.0)
    if style.texture == "dots":
        ox, oy = rng.uniform(0, style.period, 2)
        dx = (xx + ox) % style.period - style.period / 2
        dy = (yy + oy) % style.period - style.period / 2
        return np.where(dx**2 + dy**2 <= (style.period / 3.5) ** 2, 1.0, -0.3)
    if style.texture == "grain":
        return np.clip(rng.normal(0.0, 0.6, yy.shape), -1, 1)
    raise ValueError(f"unknown texture {style.texture!r}")


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, size: float, aspect: float):
    """(H, W) bool amodal mask of one thing."""
    a, b = size / 2, size / 2 * aspect  # half width, half height
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= a**2
    if shape == "rectangle":
        return (np.abs(dx) <= a) & (np.abs(dy) <= b)
    if shape == "triangle":
        t = (dy + b) / (2 * b)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= a * t)
    if shape == "diamond":
        return np.abs(dx) / a + np.abs(dy) / b <= 1
    if shape == "ellipse":
        return (dx / a) ** 2 + (dy / (0.55 * a)) ** 2 <= 1
    if shape == "cross":
        w = max(2.0, a / 3)
        return ((np.abs(dx) <= a) & (np.abs(dy) <= w)) | ((np.abs(dy) <= a) & (np.abs(dx) <= w))
    raise ValueError(f"unknown shape {shape!r}")


def _paint(image: np.ndarray, mask: np.ndarray, style: ClassStyle, yy, xx, rng: np.random.Generator) -> None:
    """Fill ``mask`` of ``image`` (H, W, 3) float with the class colour (jittered), texture and noise."""
    color = np.asarray(style.color, dtype=np.float64) + rng.normal(0, 8, 3)
    tex = _texture(style, yy, xx, rng)  # (H, W)
    noise = rng.normal(0, 5, (*mask.shape, 3))
    pixels = color[None, None] * (1 + 0.18 * tex[..., None]) + noise  # (H, W, 3)
    image[mask] = pixels[mask]


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_stuff: int,
    num_thing_classes: int,
    max_things: int,
    min_area: int,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One scene: image (H, W, 3) uint8, segment ids (H, W) int64 (0 void) and its segments (contiguous labels)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)  # (H, W)
    image = np.zeros((h, w, 3), dtype=np.float64)
    ids = np.zeros((h, w), dtype=np.int64)
    segments: list[dict[str, Any]] = []

    # stuff: k horizontal bands in random order with wavy borders
    k = int(rng.integers(min(2, num_stuff), num_stuff + 1))
    stuff = rng.permutation(num_stuff)[:k]
    cuts = np.sort(rng.uniform(0.2, 0.8, k - 1)) * h
    borders = [
        c + rng.uniform(1, 6) * np.sin(2 * np.pi * xx[0] / rng.uniform(w / 3, w) + rng.uniform(0, 2 * np.pi))
        for c in cuts
    ]
    band = np.zeros((h, w), dtype=np.int64)
    for border in borders:
        band += yy >= border[None, :]
    for j, s in enumerate(stuff):
        mask = band == j
        label = num_thing_classes + int(s)
        seg_id = (label + 1) * 1000
        ids[mask] = seg_id
        _paint(image, mask, STUFF_STYLES[int(s)], yy, xx, rng)
        segments.append({"id": seg_id, "label": label, "amodal_area": int(mask.sum()), "occluded_by": []})

    # things: painted in order, later ones on top
    for n in range(int(rng.integers(1, max_things + 1))):
        label = int(rng.integers(num_thing_classes))
        style = THING_STYLES[label]
        extent = rng.uniform(0.22, 0.45) * min(h, w)
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        mask = _shape_mask(style.shape, yy, xx, cy, cx, extent, rng.uniform(0.7, 1.3))
        seg_id = (label + 1) * 1000 + n + 1
        for seg in segments:
            if seg["label"] < num_thing_classes and np.any(mask & (ids == seg["id"])):
                seg["occluded_by"].append(seg_id)
        ids[mask] = seg_id
        _paint(image, mask, style, yy, xx, rng)
        segments.append({"id": seg_id, "label": label, "amodal_area": int(mask.sum()), "occluded_by": []})

    kept = []
    for seg in segments:
        visible = ids == seg["id"]
        area = int(visible.sum())
        if 0 < area < min_area:
            ids[visible] = 0  # too small a remnant to learn from: void
        if area >= min_area:
            kept.append({**seg, "area": area})
    return np.clip(np.round(image), 0, 255).astype(np.uint8), ids, kept


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def write_synthetic_dataset(
    root: str | Path,
    num_images: int,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    num_stuff: int = 3,
    max_things: int = 4,
    num_thing_classes: int = 3,
    min_area: int = 16,
) -> dict[str, Any]:
    """Write ``num_images`` scenes of ``size`` (H, W) under ``root``; returns the paths and the ``ModelMeta``."""
    if num_images < 1 or max_things < 1:
        raise ValueError(f"need num_images >= 1 and max_things >= 1, got {num_images}, {max_things}")
    meta = synthetic_meta(num_stuff, num_thing_classes)
    root = Path(root)
    paths = {
        "image_dir": root / "images",
        "panoptic_png_dir": root / "panoptic",
        "label_dir": root / "labels",
    }
    for folder in paths.values():
        folder.mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": (i + 1) * 10, "name": name, "isthing": int(i in meta.thing_ids), "color": list(meta.colors[i])}
        for i, name in enumerate(meta.class_names)
    ]
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        image, ids, segments = render_scene(rng, size, num_stuff, num_thing_classes, max_things, min_area)
        name = f"{index:05d}"
        Image.fromarray(image).save(paths["image_dir"] / f"{name}.png")
        Image.fromarray(id_to_rgb(ids)).save(paths["panoptic_png_dir"] / f"{name}.png")
        label = np.full(ids.shape, VOID, dtype=np.uint8)  # (H, W)
        for seg in segments:
            label[ids == seg["id"]] = seg["label"]
        Image.fromarray(label).save(paths["label_dir"] / f"{name}.png")
        images.append({"id": index, "file_name": f"{name}.png", "height": size[0], "width": size[1]})
        annotations.append(
            {
                "image_id": index,
                "file_name": f"{name}.png",
                "segments_info": [
                    {
                        "id": seg["id"],
                        "category_id": categories[seg["label"]]["id"],
                        "area": seg["area"],
                        "bbox": _bbox(ids == seg["id"]),
                        "iscrowd": 0,
                        "amodal_area": seg["amodal_area"],
                        "occluded_by": seg["occluded_by"],
                    }
                    for seg in segments
                ],
            }
        )
    panoptic_json = root / "panoptic.json"
    panoptic_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    meta_json = root / "meta.json"
    meta_json.write_text(json.dumps(meta.to_dict(), indent=1))
    logger.info("wrote %d synthetic scenes of %s to %s", num_images, size, root)
    return {
        "root": root,
        **paths,
        "panoptic_json": panoptic_json,
        "meta_json": meta_json,
        "num_images": num_images,
        "meta": meta,
    }


def _meta(root: Path) -> ModelMeta:
    return ModelMeta.from_dict(json.loads(require_file(root / "meta.json", "synthetic meta").read_text()))


def synthetic_panoptic(root: str | Path) -> CocoPanopticDataset:
    """The panoptic view of a folder written by ``write_synthetic_dataset``."""
    root = Path(root)
    return CocoPanopticDataset(root / "images", root / "panoptic.json", root / "panoptic", meta=_meta(root))


def synthetic_semantic(root: str | Path) -> SemanticFolderDataset:
    """The semantic view of a folder written by ``write_synthetic_dataset``."""
    root = Path(root)
    return SemanticFolderDataset(root / "images", root / "labels", meta=_meta(root), ignore_index=VOID)


def synthetic_datasets(root: str | Path) -> tuple[CocoPanopticDataset, SemanticFolderDataset]:
    """(panoptic, semantic) datasets over the same synthetic scenes."""
    return synthetic_panoptic(root), synthetic_semantic(root)
