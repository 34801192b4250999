"""The official model zoo table and its embedded class lists (no model is built here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from train.model.config import Mask2FormerConfig, ModelMeta, ResNetConfig, SwinConfig
from train.model.zoo import CLASSES_FILE, MODEL_ZOO, ZooEntry, dataset_meta, dataset_names, get_zoo_entry

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("M2F_DATA", str(REPO.parent / "shared" / "data")))
COCO_CATEGORIES_JSON = DATA_DIR / "coco_panoptic_samples" / "panoptic_coco_categories.json"

# dataset -> (classes, things)
EXPECTED_COUNTS = {
    "coco_panoptic": (133, 80),
    "coco_instance": (80, 80),
    "ade20k_semantic": (150, 100),
    "ade20k_panoptic": (150, 100),
    "ade20k_instance": (100, 100),
    "cityscapes_semantic": (19, 8),
    "cityscapes_panoptic": (19, 8),
    "cityscapes_instance": (8, 8),
}
CITYSCAPES_THINGS = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def test_classes_file_is_package_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """zoo_classes.json ships in the distribution: setup.py declares it as package data of the package reading it."""
    import fnmatch
    import importlib

    import setuptools  # noqa: F401  (first: it provides distutils)

    monkeypatch.chdir(REPO)
    dist = importlib.import_module("distutils.core").run_setup(str(REPO / "setup.py"), stop_after="config")
    package = CLASSES_FILE.parent.relative_to(REPO).as_posix().replace("/", ".")
    assert package in dist.packages
    assert any(fnmatch.fnmatch(CLASSES_FILE.name, pattern) for pattern in dist.package_data.get(package, ()))
    assert set(json.loads(CLASSES_FILE.read_text(encoding="utf-8"))) == set(EXPECTED_COUNTS)
    assert set(dataset_names()) == set(EXPECTED_COUNTS)


@pytest.mark.parametrize("dataset", sorted(EXPECTED_COUNTS))
def test_dataset_counts_and_colours(dataset: str) -> None:
    meta = dataset_meta(dataset)
    n_classes, n_things = EXPECTED_COUNTS[dataset]
    assert meta.num_classes == n_classes
    assert len(meta.thing_ids) == n_things
    assert list(meta.thing_ids) == sorted(set(meta.thing_ids))
    assert len(meta.colors) == n_classes
    for colour in meta.colors:
        assert isinstance(colour, tuple) and len(colour) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
    assert all(name and name == name.strip() for name in meta.class_names)
    assert len(set(meta.class_names)) == n_classes
    assert meta.dataset == dataset
    assert meta.input_format == "RGB"


def test_dataset_meta_overrides_and_round_trip() -> None:
    meta = dataset_meta("cityscapes_semantic", input_format="BGR")
    assert meta.input_format == "BGR"
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ValueError, match="unknown ModelMeta fields"):
        dataset_meta("cityscapes_semantic", not_a_field=1)
    with pytest.raises(ValueError, match="coco_panoptic"):
        dataset_meta("coco_panoptc")


def test_coco_instance_is_coco_panoptic_things_in_order() -> None:
    pan, ins = dataset_meta("coco_panoptic"), dataset_meta("coco_instance")
    assert ins.class_names == tuple(pan.class_names[i] for i in pan.thing_ids)
    assert ins.colors == tuple(pan.colors[i] for i in pan.thing_ids)
    # detectron2's contiguous order: things first (ids 0..79), then the 53 stuff classes
    assert pan.thing_ids == tuple(range(80))
    assert ins.class_names[:3] == ("person", "bicycle", "car")
    assert pan.class_names[80] == "banner" and pan.class_names[-1] == "rug-merged"


def test_ade20k_lists_agree() -> None:
    sem, pan, ins = dataset_meta("ade20k_semantic"), dataset_meta("ade20k_panoptic"), dataset_meta("ade20k_instance")
    assert sem.class_names == pan.class_names and sem.thing_ids == pan.thing_ids and sem.colors == pan.colors
    assert sem.class_names[:3] == ("wall", "building", "sky") and sem.class_names[-1] == "flag"
    assert sem.class_names[8] == "window"  # the official list has a stray trailing space
    # instance classes are the panoptic things, in the same order (short names from register_ade20k_instance.py)
    assert ins.colors == tuple(pan.colors[i] for i in pan.thing_ids)
    assert ins.class_names[:3] == ("bed", "windowpane", "cabinet")
    # the instance names differ from the SceneParsing ones only in these synonyms
    synonyms = {
        "windowpane": "window",
        "bathtub": "tub",
        "railing": "rail",
        "streetlight": "street lamp",
        "television receiver": "tv",
        "airplane": "plane",
        "apparel": "clothes",
        "ashcan": "trash can",
    }
    for short, full in zip(ins.class_names, (pan.class_names[i] for i in pan.thing_ids), strict=True):
        assert synonyms.get(short, short) == full.split(",")[0], (short, full)


def test_cityscapes_lists() -> None:
    sem, pan, ins = (dataset_meta(f"cityscapes_{t}") for t in ("semantic", "panoptic", "instance"))
    assert sem.class_names == pan.class_names and sem.colors == pan.colors
    assert sem.class_names[:2] == ("road", "sidewalk") and sem.class_names[-1] == "bicycle"
    assert tuple(pan.class_names[i] for i in pan.thing_ids) == CITYSCAPES_THINGS
    assert pan.thing_ids == tuple(range(11, 19))
    assert ins.class_names == CITYSCAPES_THINGS
    assert ins.colors == tuple(pan.colors[i] for i in pan.thing_ids)
    assert pan.colors[0] == (128, 64, 128)


@pytest.mark.data
def test_coco_panoptic_matches_panopticapi_categories() -> None:
    if not COCO_CATEGORIES_JSON.is_file():
        pytest.skip(f"{COCO_CATEGORIES_JSON} not found (set M2F_DATA)")
    categories = json.loads(COCO_CATEGORIES_JSON.read_text(encoding="utf-8"))
    meta = dataset_meta("coco_panoptic")
    # detectron2's contiguous ids follow the dataset ids, which put the 80 things (1..90) before the stuff
    ordered = sorted(categories, key=lambda c: c["id"])
    assert meta.class_names == tuple(c["name"] for c in ordered)
    assert meta.colors == tuple(tuple(c["color"]) for c in ordered)
    assert meta.thing_ids == tuple(i for i, c in enumerate(ordered) if c["isthing"])


# ------------------------------------------------------------------------------------------------------------
# zoo entries


def test_zoo_is_plain_dict_of_entries() -> None:
    assert type(MODEL_ZOO) is dict
    assert len(MODEL_ZOO) == 43
    for name, entry in MODEL_ZOO.items():
        assert isinstance(entry, ZooEntry) and entry.name == name


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_every_entry_is_consistent(name: str) -> None:
    entry = MODEL_ZOO[name]
    config, meta = entry.config, entry.meta
    assert isinstance(config, Mask2FormerConfig) and isinstance(meta, ModelMeta)
    assert meta.num_classes == config.num_classes
    assert entry.task in ("panoptic", "instance", "semantic")
    assert entry.task in entry.config_file and entry.task in entry.url
    assert meta.dataset == "_".join(name.split("-")[:2])  # "coco-panoptic-swin-l" -> "coco_panoptic"
    assert entry.checkpoint.startswith("model_final_") and entry.checkpoint.endswith(".pkl")
    assert entry.url.endswith("/" + entry.checkpoint)
    assert entry.url.startswith("https://dl.fbaipublicfiles.com/maskformer/mask2former/")
    assert entry.config_file.startswith("configs/") and entry.config_file.endswith(".yaml")
    # shared architecture of every official model
    assert config.decoder.num_layers == 9 and config.decoder.hidden_dim == 256 and config.decoder.ffn_dim == 2048
    assert config.decoder.num_heads == 8 and not config.decoder.pre_norm and not config.decoder.enforce_input_proj
    assert config.pixel_decoder.num_layers == 6 and config.pixel_decoder.ffn_dim == 1024
    assert config.pixel_decoder.conv_dim == 256 and config.pixel_decoder.mask_dim == 256
    assert config.decoder.num_queries in (100, 200)
    assert meta.inference.object_mask_threshold == 0.8 and meta.inference.overlap_threshold == 0.8
    assert meta.inference.topk_per_image == 100
    assert meta.input_format == "RGB"
    assert Mask2FormerConfig.from_dict(config.to_dict()) == config
    assert ModelMeta.from_dict(meta.to_dict()) == meta


def test_backbones() -> None:
    r50 = get_zoo_entry("coco-panoptic-r50").config.backbone
    r101 = get_zoo_entry("coco-panoptic-r101").config.backbone
    assert isinstance(r50, ResNetConfig) and r50.depths == (3, 4, 6, 3) and not r50.stride_in_1x1
    assert isinstance(r101, ResNetConfig) and r101.depths == (3, 4, 23, 3)
    expected = {
        "swin-t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
        "swin-s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
        "swin-b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
        "swin-b-in1k": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
        "swin-l": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
    }
    for name, entry in MODEL_ZOO.items():
        suffix = next((s for s in sorted(expected, key=len, reverse=True) if name.endswith("-" + s)), None)
        bb = entry.config.backbone
        if suffix is None:
            assert isinstance(bb, ResNetConfig), name
            continue
        assert isinstance(bb, SwinConfig), name
        assert (bb.embed_dim, bb.depths, bb.num_heads, bb.window_size, bb.pretrain_img_size) == expected[suffix]
        assert not bb.absolute_pos_embed and bb.patch_size == 4 and bb.mlp_ratio == 4.0


def test_queries_and_classes_per_entry() -> None:
    two_hundred = {
        "coco-panoptic-swin-l",
        "coco-instance-swin-l",
        "ade20k-panoptic-swin-l",
        "ade20k-instance-swin-l",
        "cityscapes-panoptic-swin-l",
        "cityscapes-instance-swin-l",
    }
    for name, entry in MODEL_ZOO.items():
        assert entry.config.decoder.num_queries == (200 if name in two_hundred else 100), name
    classes = {"coco-panoptic": 133, "coco-instance": 80, "ade20k": 150, "ade20k-instance": 100, "cityscapes": 19}
    classes |= {"cityscapes-instance": 8}
    for name, entry in MODEL_ZOO.items():
        key = max((k for k in classes if name.startswith(k)), key=len)
        assert entry.config.num_classes == classes[key], name


# download links and config files as published in facebookresearch/Mask2Former MODEL_ZOO.md (written out in full,
# not assembled the way the zoo module assembles them)
PUBLISHED = {
    "coco-panoptic-r50": (
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_R50_bs16_50ep/"
        "model_final_94dc52.pkl",
        "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    ),
    "coco-panoptic-swin-l": (
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_swin_large_IN21k_384_bs16_100ep/"
        "model_final_f07440.pkl",
        "configs/coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
    ),
    "ade20k-semantic-swin-l": (
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/"
        "maskformer2_swin_large_IN21k_384_bs16_160k_res640/model_final_6b4a3a.pkl",
        "configs/ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml",
    ),
    "cityscapes-semantic-r50": (
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic/maskformer2_R50_bs16_90k/"
        "model_final_cc1b1f.pkl",
        "configs/cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml",
    ),
}
# INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST of the official yaml files (detectron2's 800/1333 where COCO sets none)
PUBLISHED_TEST_RESIZE = {
    "coco-panoptic-r50": (800, 1333),
    "ade20k-semantic-r50": (512, 2048),
    "ade20k-semantic-swin-l": (640, 2560),
    "ade20k-panoptic-r50": (640, 2560),
    "cityscapes-semantic-swin-t": (1024, 2048),
}


def test_known_checkpoints() -> None:
    for name, (url, config_file) in PUBLISHED.items():
        entry = get_zoo_entry(name)
        assert (entry.url, entry.config_file) == (url, config_file), name
        assert url.endswith("/" + entry.checkpoint)
    for name, (min_size, max_size) in PUBLISHED_TEST_RESIZE.items():
        resize = get_zoo_entry(name).test_resize
        assert (resize.min_size, resize.max_size) == (min_size, max_size), name
        assert f"shortest edge {min_size}, max {max_size}" in get_zoo_entry(name).notes
    assert get_zoo_entry("cityscapes-instance-r50").meta.class_names == CITYSCAPES_THINGS


def test_inference_resize_by_dataset() -> None:
    from train.model.zoo import inference_resize

    assert inference_resize("ade20k_semantic") == get_zoo_entry("ade20k-semantic-r50").test_resize
    assert inference_resize("cityscapes_panoptic").min_size == 1024
    assert inference_resize("camvid") is None  # not a zoo dataset


def test_expected_names_present() -> None:
    for dataset in ("coco-panoptic", "coco-instance", "ade20k-semantic", "cityscapes-semantic"):
        for backbone in ("r50", "r101", "swin-t", "swin-s", "swin-b", "swin-l"):
            assert f"{dataset}-{backbone}" in MODEL_ZOO
    for dataset in ("cityscapes-panoptic", "cityscapes-instance"):
        for backbone in ("r50", "r101", "swin-t", "swin-s", "swin-b", "swin-l"):
            assert f"{dataset}-{backbone}" in MODEL_ZOO
    for name in ("ade20k-panoptic-r50", "ade20k-panoptic-swin-l", "ade20k-instance-r50", "ade20k-instance-swin-l"):
        assert name in MODEL_ZOO
    assert "ade20k-panoptic-swin-t" not in MODEL_ZOO  # not in the official zoo


def test_unknown_name_suggests_close_one() -> None:
    with pytest.raises(ValueError, match="coco-panoptic-swin-l") as info:
        get_zoo_entry("coco-panoptc-swin-l")
    assert "did you mean" in str(info.value)
    with pytest.raises(ValueError, match="unknown zoo model"):
        get_zoo_entry("nothing-like-it-at-all-xyz")
