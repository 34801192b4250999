"""Ready-made datasets for the usual folder layouts: CamVid (SegNet), ADE20K (ADEChallengeData2016), Cityscapes."""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtimes.vocabulary import CAMVID_VOID, VOID
from train.data.coco_panoptic import CocoPanopticDataset
from train.data.semantic_folder import SemanticFolderDataset, require_dir, require_file, select_sequences
from train.model.config import ModelMeta
from train.model.zoo import dataset_meta

CAMVID_THINGS = ("Car", "Pedestrian", "Bicyclist")  # countable classes; the rest are stuff
CAMVID_SPLIT_ALIASES = {"trainval": ["train", "val"]}  # every labelled frame of the SegNet layout
ADE20K_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def camvid_meta(root: str | Path) -> ModelMeta:
    """The 11 CamVid classes (void excluded) with names and colours from ``classes.csv``."""
    path = require_file(Path(root) / "classes.csv", "CamVid classes")
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if int(row["id"]) != CAMVID_VOID]
    rows.sort(key=lambda row: int(row["id"]))
    if [int(row["id"]) for row in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: class ids are not 0..{len(rows) - 1} (plus void {CAMVID_VOID})")
    names = tuple(row["name"] for row in rows)
    return ModelMeta(
        class_names=names,
        thing_ids=tuple(i for i, name in enumerate(names) if name in CAMVID_THINGS),
        colors=tuple((int(row["r"]), int(row["g"]), int(row["b"])) for row in rows),
        dataset="camvid",
    )


def camvid(
    root: str | Path,
    split: str | Sequence[str] = "train",
    sequences: Sequence[str] | None = None,
    exclude_sequences: Sequence[str] | None = None,
) -> SemanticFolderDataset:
    """CamVid in the SegNet layout: ``{split}/*.png`` and ``{split}annot/*.png`` (0..10, 11 = void -> ignored).

    ``split`` may list several folders (``["train", "val"]``, or ``"trainval"`` for both) to pool every labelled
    frame; ``sequences`` / ``exclude_sequences`` then keep or drop whole drives (0001TP, 0006R0, 0016E5, ...):
    CamVid's val holds frames of a drive whose neighbouring frames are in train, so an honest validation holds
    out a whole sequence instead (see ``train.cross_validate``).
    """
    root = require_dir(root, "CamVid root")
    named = [split] if isinstance(split, str) else list(split)
    splits = list(dict.fromkeys(folder for name in named for folder in CAMVID_SPLIT_ALIASES.get(name, [name])))
    if not splits:
        raise ValueError("split names no CamVid folder")
    parts = [
        SemanticFolderDataset(
            root / name,
            root / f"{name}annot",
            meta=camvid_meta(root),
            ignore_index=VOID,
            label_map={CAMVID_VOID: VOID},
        )
        for name in splits
    ]
    pool = parts[0]
    for part in parts[1:]:
        pool.extend(part)
    pool.items = select_sequences(pool.items, sequences, exclude_sequences, f"{root} ({'+'.join(splits)})")
    return pool


def ade20k(root: str | Path, split: str = "train") -> SemanticFolderDataset:
    """ADE20K SceneParsing (``ADEChallengeData2016`` or its parent): labels 0 = other (ignored), 1..150 -> 0..149."""
    root = require_dir(root, "ADE20K root")
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    if split not in ADE20K_SPLITS:
        raise ValueError(f"unknown ADE20K split {split!r}; expected one of {sorted(ADE20K_SPLITS)}")
    folder = ADE20K_SPLITS[split]
    label_map = {0: VOID, **{k: k - 1 for k in range(1, 151)}}
    return SemanticFolderDataset(
        root / "images" / folder,
        root / "annotations" / folder,
        meta=dataset_meta("ade20k_semantic"),
        ignore_index=VOID,
        label_map=label_map,
        image_suffix=".jpg",
        label_suffix=".png",
    )


def cityscapes_image_path(image_dir: Path, entry: dict[str, Any]) -> Path:
    """Where a Cityscapes panoptic JSON image lives: ``leftImg8bit/{split}/{city}/{base}_leftImg8bit.png``."""
    name = str(entry["file_name"])
    for suffix in ("_gtFine_leftImg8bit.png", "_leftImg8bit.png"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return image_dir / name.split("_")[0] / f"{name}_leftImg8bit.png"


def cityscapes(
    root: str | Path, split: str = "train", panoptic: bool = False
) -> SemanticFolderDataset | CocoPanopticDataset:
    """Cityscapes fine annotations.

    Semantic: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/.../*_gtFine_labelTrainIds.png``
    (19 train ids, 255 ignored, which is our ``VOID``; made by cityscapesscripts' ``createTrainIdLabelImgs``). Panoptic:
    ``gtFine/cityscapes_panoptic_{split}.json`` + ``gtFine/cityscapes_panoptic_{split}/`` (``createPanopticImgs``).
    """
    root = require_dir(root, "Cityscapes root")
    image_dir = root / "leftImg8bit" / split
    if panoptic:
        meta = dataset_meta("cityscapes_panoptic")
        return CocoPanopticDataset(
            image_dir,
            root / "gtFine" / f"cityscapes_panoptic_{split}.json",
            root / "gtFine" / f"cityscapes_panoptic_{split}",
            meta=meta,
            image_path_fn=functools.partial(cityscapes_image_path, image_dir),
        )
    return SemanticFolderDataset(
        image_dir,
        root / "gtFine" / split,
        meta=dataset_meta("cityscapes_semantic"),
        ignore_index=VOID,
        image_suffix="_leftImg8bit.png",
        label_suffix="_gtFine_labelTrainIds.png",
    )
