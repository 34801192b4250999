"""Datasets (COCO panoptic, COCO instances, semantic PNG folders), augmentation and the synthetic generator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from train.data import presets, synthetic
from train.data.coco_instances import CocoInstanceDataset
from train.data.coco_panoptic import CocoPanopticDataset
from train.data.sample import Sample, SegmentationDataset
from train.data.semantic_folder import SemanticFolderDataset
from train.model.config import ModelMeta
from train.model.zoo import dataset_meta

DATASET_FORMATS: dict[str, Callable[..., SegmentationDataset]] = {
    "coco_panoptic": CocoPanopticDataset,
    "coco_instances": CocoInstanceDataset,
    "semantic_folder": SemanticFolderDataset,
    "camvid": presets.camvid,
    "ade20k": presets.ade20k,
    "cityscapes": presets.cityscapes,
    "synthetic_panoptic": synthetic.synthetic_panoptic,
    "synthetic_semantic": synthetic.synthetic_semantic,
}


# keyword arguments of the generic formats that are paths; a spec's ``root`` prefixes the relative ones
PATH_ARGUMENTS = ("image_dir", "label_dir", "panoptic_json", "panoptic_png_dir", "instances_json", "split_file")


def build_dataset(spec: dict[str, Any]) -> SegmentationDataset:
    """A dataset from ``{"format": one of DATASET_FORMATS, **its keyword arguments}``.

    A ``meta`` given as a string names a zoo dataset (``dataset_meta``); as a dict it is ``ModelMeta.from_dict``.
    Formats without a ``root`` argument (coco_panoptic, coco_instances, semantic_folder) still accept one: their
    relative paths are taken under it (so a command line ``--data-root`` works for every format).
    """
    spec = dict(spec)
    name = spec.pop("format", None)
    if name not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; expected one of {sorted(DATASET_FORMATS)}")
    factory = DATASET_FORMATS[name]
    if "root" in spec and "root" not in inspect.signature(factory).parameters:
        root = Path(spec.pop("root"))
        for key in PATH_ARGUMENTS:
            if key in spec and not Path(spec[key]).is_absolute():
                spec[key] = root / spec[key]
    meta = spec.get("meta")
    if isinstance(meta, str):
        spec["meta"] = dataset_meta(meta)
    elif isinstance(meta, dict):
        spec["meta"] = ModelMeta.from_dict(meta)
    try:
        inspect.signature(factory).bind(**spec)
    except TypeError as err:
        raise ValueError(f"bad arguments for dataset format {name!r}: {err}") from err
    return factory(**spec)


__all__ = [
    "DATASET_FORMATS",
    "PATH_ARGUMENTS",
    "CocoInstanceDataset",
    "CocoPanopticDataset",
    "Sample",
    "SegmentationDataset",
    "SemanticFolderDataset",
    "build_dataset",
]
