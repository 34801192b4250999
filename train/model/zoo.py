"""Named configs for the official Mask2Former model zoo (facebookresearch/Mask2Former ``MODEL_ZOO.md``).

Every entry mirrors its official yaml after resolving the ``_BASE_`` chain: backbone, number of queries,
decoder layers (``DEC_LAYERS - 1``), widths, class count, normalisation, input format and test thresholds.
The class lists (names, thing ids, colours, in the order of the checkpoint's ``class_embed`` rows) are
embedded as package data in ``zoo_classes.json`` next to this module; they come from detectron2's
``builtin_meta.py`` (COCO, Cityscapes) and Mask2Former's dataset registration files (ADE20K).

Facts shared by every official entry (so they are the dataclass defaults here): MSDeformAttn pixel decoder
with 6 encoder layers, 8 heads, 4 points, FFN 1024, conv/mask dim 256, GroupNorm 32; masked-attention decoder
with hidden dim 256, 8 heads, FFN 2048, 9 layers, no dropout, post-norm; ImageNet mean/std in RGB 0-255;
``OBJECT_MASK_THRESHOLD = OVERLAP_THRESHOLD = 0.8``; ``TEST.DETECTIONS_PER_IMAGE`` never set, so detectron2's
default 100 applies.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from train.model.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InferenceConfig,
    Mask2FormerConfig,
    ModelMeta,
    PixelDecoderConfig,
    ResNetConfig,
    SwinConfig,
    TransformerDecoderConfig,
)

CLASSES_FILE = Path(__file__).with_name("zoo_classes.json")
DOWNLOAD_ROOT = "https://dl.fbaipublicfiles.com/maskformer/mask2former"


@dataclass(frozen=True)
class InferenceResize:
    """The official test-time resize: the short side to ``min_size``, the long side capped at ``max_size``
    (detectron2's ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``)."""

    min_size: int
    max_size: int

    def describe(self) -> str:
        return f"test: shortest edge {self.min_size}, max {self.max_size}"


@dataclass(frozen=True)
class ZooEntry:
    """One official checkpoint: its architecture, what its classes mean, and where it comes from."""

    name: str
    config: Mask2FormerConfig
    meta: ModelMeta
    task: str  # "panoptic" | "instance" | "semantic"
    checkpoint: str  # official file name, e.g. "model_final_94dc52.pkl"
    test_resize: InferenceResize
    notes: str = ""
    url: str = ""  # full download address of ``checkpoint``
    config_file: str = ""  # official yaml, relative to the Mask2Former repo root


# --------------------------------------------------------------------------------------------------------------
# class metadata


@lru_cache(maxsize=1)
def _load_classes() -> dict[str, dict[str, Any]]:
    with CLASSES_FILE.open(encoding="utf-8") as f:
        return json.load(f)


def dataset_names() -> tuple[str, ...]:
    """Names accepted by :func:`dataset_meta`."""
    return tuple(_load_classes())


def dataset_meta(dataset_name: str, **overrides: Any) -> ModelMeta:
    """``ModelMeta`` for one of the zoo datasets (``"coco_panoptic"``, ``"ade20k_semantic"``, ...).

    ``overrides`` replace any ``ModelMeta`` field (e.g. ``inference=InferenceConfig(...)``).
    """
    data = _load_classes()
    if dataset_name not in data:
        raise ValueError(_unknown_message("dataset", dataset_name, data))
    entry = data[dataset_name]
    fields: dict[str, Any] = {
        "class_names": tuple(entry["class_names"]),
        "thing_ids": tuple(int(i) for i in entry["thing_ids"]),
        "colors": tuple((int(c[0]), int(c[1]), int(c[2])) for c in entry["colors"]),
        "pixel_mean": IMAGENET_MEAN,
        "pixel_std": IMAGENET_STD,
        "input_format": "RGB",
        "dataset": dataset_name,
        "inference": InferenceConfig(),
    }
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelMeta)}
    if unknown:
        raise ValueError(f"unknown ModelMeta fields: {sorted(unknown)}")
    fields.update(overrides)
    return ModelMeta(**fields)


def find_dataset_by_classes(class_names: Sequence[str]) -> ModelMeta | None:
    """The zoo dataset whose class list equals ``class_names`` (case-insensitive), or None.

    Checkpoints from elsewhere (HF folders) name their classes but not which are things, nor their colours.
    """
    wanted = [name.strip().lower() for name in class_names]
    for name, entry in _load_classes().items():
        if [c.lower() for c in entry["class_names"]] == wanted:
            return dataset_meta(name)
    return None


# --------------------------------------------------------------------------------------------------------------
# backbones (from the official yaml files)

R50 = ResNetConfig(depths=(3, 4, 6, 3), stem_channels=64, stride_in_1x1=False)
R101 = ResNetConfig(depths=(3, 4, 23, 3), stem_channels=64, stride_in_1x1=False)
SWIN_T = SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, pretrain_img_size=224)
SWIN_S = SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7, pretrain_img_size=224)
SWIN_B = SwinConfig(
    embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, pretrain_img_size=384
)
SWIN_L = SwinConfig(
    embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, pretrain_img_size=384
)

# suffix -> (backbone, official config stem, backbone remark)
_BACKBONES: dict[str, tuple[Any, str, str]] = {
    "r50": (R50, "maskformer2_R50_bs16_{sched}", "ResNet-50 (torchvision R-50.pkl init)"),
    "r101": (R101, "maskformer2_R101_bs16_{sched}", "ResNet-101, basic 7x7 stem (R-101.pkl init)"),
    "swin-t": (SWIN_T, "swin/maskformer2_swin_tiny_bs16_{sched}", "Swin-T, IN1k 224"),
    "swin-s": (SWIN_S, "swin/maskformer2_swin_small_bs16_{sched}", "Swin-S, IN1k 224"),
    "swin-b-in1k": (SWIN_B, "swin/maskformer2_swin_base_384_bs16_{sched}", "Swin-B, IN1k 384"),
    "swin-b": (SWIN_B, "swin/maskformer2_swin_base_IN21k_384_bs16_{sched}", "Swin-B, IN21k 384"),
    "swin-l": (SWIN_L, "swin/maskformer2_swin_large_IN21k_384_bs16_{sched}", "Swin-L, IN21k 384"),
}


@dataclass(frozen=True)
class _Dataset:
    yaml_dir: str  # under configs/
    url_dir: str  # under DOWNLOAD_ROOT
    task: str
    meta_name: str  # key of zoo_classes.json
    num_classes: int
    test_resize: InferenceResize  # of the official config


_COCO_RESIZE = InferenceResize(800, 1333)  # detectron2's defaults (trained with 1024 LSJ)
_ADE20K_RESIZE = InferenceResize(512, 2048)
_ADE20K_640_RESIZE = InferenceResize(640, 2560)  # ADE20K panoptic/instance; the semantic Swin-B/L "res640" yamls
_CITYSCAPES_RESIZE = InferenceResize(1024, 2048)
_DATASETS: dict[str, _Dataset] = {
    "coco-panoptic": _Dataset(
        "coco/panoptic-segmentation", "coco/panoptic", "panoptic", "coco_panoptic", 133, _COCO_RESIZE
    ),
    "coco-instance": _Dataset(
        "coco/instance-segmentation", "coco/instance", "instance", "coco_instance", 80, _COCO_RESIZE
    ),
    "ade20k-semantic": _Dataset(
        "ade20k/semantic-segmentation",
        "ade20k/semantic",
        "semantic",
        "ade20k_semantic",
        150,
        _ADE20K_RESIZE,
    ),
    "ade20k-panoptic": _Dataset(
        "ade20k/panoptic-segmentation",
        "ade20k/panoptic",
        "panoptic",
        "ade20k_panoptic",
        150,
        _ADE20K_640_RESIZE,
    ),
    "ade20k-instance": _Dataset(
        "ade20k/instance-segmentation",
        "ade20k/instance",
        "instance",
        "ade20k_instance",
        100,
        _ADE20K_640_RESIZE,
    ),
    "cityscapes-semantic": _Dataset(
        "cityscapes/semantic-segmentation",
        "cityscapes/semantic",
        "semantic",
        "cityscapes_semantic",
        19,
        _CITYSCAPES_RESIZE,
    ),
    "cityscapes-panoptic": _Dataset(
        "cityscapes/panoptic-segmentation",
        "cityscapes/panoptic",
        "panoptic",
        "cityscapes_panoptic",
        19,
        _CITYSCAPES_RESIZE,
    ),
    "cityscapes-instance": _Dataset(
        "cityscapes/instance-segmentation",
        "cityscapes/instance",
        "instance",
        "cityscapes_instance",
        8,
        _CITYSCAPES_RESIZE,
    ),
}

# (dataset, backbone) -> (schedule in the yaml name, checkpoint file, queries, extra notes); from MODEL_ZOO.md.
_OFFICIAL: dict[tuple[str, str], tuple[str, str, int, str]] = {
    ("coco-panoptic", "r50"): ("50ep", "model_final_94dc52.pkl", 100, ""),
    ("coco-panoptic", "r101"): ("50ep", "model_final_b807bd.pkl", 100, ""),
    ("coco-panoptic", "swin-t"): ("50ep", "model_final_9fd0ae.pkl", 100, ""),
    ("coco-panoptic", "swin-s"): ("50ep", "model_final_a407fd.pkl", 100, ""),
    ("coco-panoptic", "swin-b-in1k"): ("50ep", "model_final_9d7f02.pkl", 100, ""),
    ("coco-panoptic", "swin-b"): ("50ep", "model_final_54b88a.pkl", 100, ""),
    ("coco-panoptic", "swin-l"): ("100ep", "model_final_f07440.pkl", 200, "100 epochs"),
    ("coco-instance", "r50"): ("50ep", "model_final_3c8ec9.pkl", 100, ""),
    ("coco-instance", "r101"): ("50ep", "model_final_eba159.pkl", 100, ""),
    ("coco-instance", "swin-t"): ("50ep", "model_final_86143f.pkl", 100, ""),
    ("coco-instance", "swin-s"): ("50ep", "model_final_1e7f22.pkl", 100, ""),
    ("coco-instance", "swin-b-in1k"): ("50ep", "model_final_f6e0f6.pkl", 100, ""),
    ("coco-instance", "swin-b"): ("50ep", "model_final_83d103.pkl", 100, ""),
    ("coco-instance", "swin-l"): ("100ep", "model_final_e5f453.pkl", 200, "100 epochs"),
    ("ade20k-semantic", "r50"): ("160k", "model_final_500878.pkl", 100, ""),
    ("ade20k-semantic", "r101"): ("90k", "model_final_0d68be.pkl", 100, "backbone norm SyncBN in training"),
    ("ade20k-semantic", "swin-t"): ("160k", "model_final_5274a6.pkl", 100, ""),
    ("ade20k-semantic", "swin-s"): ("160k", "model_final_011c6d.pkl", 100, ""),
    ("ade20k-semantic", "swin-b-in1k"): ("160k_res640", "model_final_503e96.pkl", 100, ""),
    ("ade20k-semantic", "swin-b"): ("160k_res640", "model_final_7e47bf.pkl", 100, ""),
    ("ade20k-semantic", "swin-l"): ("160k_res640", "model_final_6b4a3a.pkl", 100, ""),
    ("ade20k-panoptic", "r50"): ("160k", "model_final_5c90d4.pkl", 100, ""),
    ("ade20k-panoptic", "swin-l"): ("160k", "model_final_e0c58e.pkl", 200, ""),
    ("ade20k-instance", "r50"): ("160k", "model_final_67e945.pkl", 100, ""),
    ("ade20k-instance", "swin-l"): (
        "160k",
        "model_final_92dae9.pkl",
        200,
        "MODEL_ZOO.md's backbone column says R50 by mistake; the yaml is Swin-L",
    ),
    ("cityscapes-semantic", "r50"): ("90k", "model_final_cc1b1f.pkl", 100, "backbone norm SyncBN in training"),
    ("cityscapes-semantic", "r101"): ("90k", "model_final_257ce8.pkl", 100, "backbone norm SyncBN in training"),
    ("cityscapes-semantic", "swin-t"): ("90k", "model_final_2d58d4.pkl", 100, ""),
    ("cityscapes-semantic", "swin-s"): ("90k", "model_final_fa26ae.pkl", 100, ""),
    ("cityscapes-semantic", "swin-b"): ("90k", "model_final_1c6b65.pkl", 100, ""),
    ("cityscapes-semantic", "swin-l"): ("90k", "model_final_17c1ee.pkl", 100, ""),
    ("cityscapes-panoptic", "r50"): ("90k", "model_final_4ab90c.pkl", 100, "backbone norm SyncBN in training"),
    ("cityscapes-panoptic", "r101"): ("90k", "model_final_04d286.pkl", 100, "backbone norm SyncBN in training"),
    ("cityscapes-panoptic", "swin-t"): ("90k", "model_final_ceba0f.pkl", 100, ""),
    ("cityscapes-panoptic", "swin-s"): ("90k", "model_final_23efb7.pkl", 100, ""),
    ("cityscapes-panoptic", "swin-b"): ("90k", "model_final_fa840f.pkl", 100, ""),
    ("cityscapes-panoptic", "swin-l"): ("90k", "model_final_064788.pkl", 200, ""),
    ("cityscapes-instance", "r50"): ("90k", "model_final_01a8ed.pkl", 100, "backbone norm SyncBN in training"),
    ("cityscapes-instance", "r101"): ("90k", "model_final_c2b8c8.pkl", 100, "backbone norm SyncBN in training"),
    ("cityscapes-instance", "swin-t"): ("90k", "model_final_6a63f8.pkl", 100, ""),
    ("cityscapes-instance", "swin-s"): ("90k", "model_final_974824.pkl", 100, ""),
    ("cityscapes-instance", "swin-b"): ("90k", "model_final_7a3b6d.pkl", 100, ""),
    ("cityscapes-instance", "swin-l"): ("90k", "model_final_dfa862.pkl", 200, ""),
}


def _build_entry(dataset: str, backbone: str) -> ZooEntry:
    schedule, checkpoint, queries, extra = _OFFICIAL[(dataset, backbone)]
    ds = _DATASETS[dataset]
    backbone_cfg, stem, remark = _BACKBONES[backbone]
    stem = stem.format(sched=schedule)
    resize = _ADE20K_640_RESIZE if schedule.endswith("res640") else ds.test_resize  # those yaml files override it
    config = Mask2FormerConfig(
        num_classes=ds.num_classes,
        backbone=backbone_cfg,
        pixel_decoder=PixelDecoderConfig(),
        decoder=TransformerDecoderConfig(num_queries=queries, num_layers=9, hidden_dim=256, ffn_dim=2048),
        size_divisibility=32,
    )
    notes = "; ".join(s for s in (remark, f"{queries} queries", resize.describe(), extra) if s)
    return ZooEntry(
        name=f"{dataset}-{backbone}",
        config=config,
        meta=dataset_meta(ds.meta_name),
        task=ds.task,
        checkpoint=checkpoint,
        test_resize=resize,
        notes=notes,
        url=f"{DOWNLOAD_ROOT}/{ds.url_dir}/{stem.rsplit('/', 1)[-1]}/{checkpoint}",
        config_file=f"configs/{ds.yaml_dir}/{stem}.yaml",
    )


MODEL_ZOO: dict[str, ZooEntry] = {f"{d}-{b}": _build_entry(d, b) for d, b in _OFFICIAL}


def inference_resize(dataset_name: str) -> InferenceResize | None:
    """The official test-time resize of a zoo dataset (``ModelMeta.dataset``, e.g. ``"ade20k_semantic"``), or None
    for a dataset outside the zoo."""
    return next((ds.test_resize for ds in _DATASETS.values() if ds.meta_name == dataset_name), None)


def get_zoo_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name`` (e.g. ``"coco-panoptic-swin-l"``); ValueError with suggestions otherwise."""
    try:
        return MODEL_ZOO[name]
    except KeyError:
        raise ValueError(_unknown_message("zoo model", name, MODEL_ZOO)) from None


def _unknown_message(kind: str, name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {kind} {name!r}; {hint}known: {', '.join(sorted(known))}"
