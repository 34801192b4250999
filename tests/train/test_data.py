"""Dataset formats, presets, the synthetic generator, augmentation and collation (train/data)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import DATASET_FORMATS, build_dataset
from train.data.augmentation import (
    ColorAugSSD,
    RandomCropCategoryArea,
    SampleTransform,
    build_augmentation,
    eval_transform,
    large_scale_jitter,
    resize_crop,
)
from train.data.coco_instances import CocoInstanceDataset
from train.data.coco_panoptic import CocoPanopticDataset, id_to_rgb, rgb_to_id
from train.data.collate import collate
from train.data.presets import ade20k, camvid, camvid_meta, cityscapes, cityscapes_image_path
from train.data.sample import Sample
from train.data.semantic_folder import SemanticFolderDataset
from train.data.synthetic import synthetic_datasets, synthetic_meta, write_synthetic_dataset
from train.model.config import ModelMeta
from train.model.zoo import dataset_meta

COCO = "coco_panoptic_samples/sample_data"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _check_sample(sample: Sample, num_classes: int) -> None:
    n, (h, w) = len(sample["labels"]), sample["image"].shape[-2:]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, h, w)
    assert sample["labels"].dtype == torch.int64 and sample["labels"].shape == (n,)
    assert sample["masks"].dtype == torch.bool and sample["masks"].shape == (n, h, w)
    assert sample["iscrowd"].dtype == torch.bool and sample["iscrowd"].shape == (n,)
    assert isinstance(sample["image_id"], str)
    if n:
        assert int(sample["labels"].min()) >= 0 and int(sample["labels"].max()) < num_classes


# --------------------------------------------------------------------------------------------------------------
# COCO panoptic


@pytest.fixture
def coco_dir(shared_data: Path) -> Path:
    folder = shared_data / COCO
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


def _panoptic(coco_dir: Path, png_format: str = "rgb", meta: ModelMeta | None = None) -> CocoPanopticDataset:
    png_dir = "panoptic_examples" if png_format == "rgb" else "panoptic_examples_2ch_format"
    return CocoPanopticDataset(
        coco_dir / "input_images", coco_dir / "panoptic_examples.json", coco_dir / png_dir, meta, png_format
    )


@pytest.mark.data
def test_coco_panoptic_matches_json(coco_dir: Path) -> None:
    data = _json(coco_dir / "panoptic_examples.json")
    contiguous = {c["id"]: i for i, c in enumerate(data["categories"])}
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    ds = _panoptic(coco_dir)
    assert len(ds) == len(data["annotations"]) == 2
    assert ds.meta.num_classes == 133 and len(ds.meta.thing_ids) == 80
    assert ds.meta.colors[0] == tuple(data["categories"][0]["color"])
    for sample, ann in zip(ds, data["annotations"], strict=False):
        _check_sample(sample, 133)
        segs = ann["segments_info"]
        assert sample["image_id"] == str(ann["image_id"])
        assert tuple(sample["image"].shape[-2:]) == sizes[ann["image_id"]]
        assert len(sample["labels"]) == len(segs)
        assert sample["masks"].flatten(1).sum(1).tolist() == [s["area"] for s in segs]
        assert sample["labels"].tolist() == [contiguous[s["category_id"]] for s in segs]
        assert sample["iscrowd"].tolist() == [bool(s["iscrowd"]) for s in segs]
        assert int(sample["masks"].sum(0).max()) == 1  # panoptic segments never overlap
    assert sum(int(ds[i]["iscrowd"].sum()) for i in range(2)) == 3


@pytest.mark.data
def test_coco_panoptic_two_channel_format_gives_identical_samples(coco_dir: Path) -> None:
    rgb, two = _panoptic(coco_dir), _panoptic(coco_dir, "2ch")
    for a, b in zip(rgb, two, strict=False):
        assert a["image_id"] == b["image_id"]
        for key in ("image", "labels", "masks", "iscrowd"):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.data
def test_coco_panoptic_meta_order_and_unknown_categories(coco_dir: Path) -> None:
    base = _panoptic(coco_dir)
    names = base.meta.class_names
    reversed_meta = ModelMeta(class_names=names[::-1])
    ds = _panoptic(coco_dir, meta=reversed_meta)
    assert ds.meta is reversed_meta
    assert torch.equal(ds[0]["labels"], len(names) - 1 - base[0]["labels"])
    assert ds.meta.class_names == dataset_meta("coco_panoptic").class_names[::-1]
    with pytest.raises(ValueError, match=r"\['person'\]"):
        _panoptic(coco_dir, meta=ModelMeta(class_names=names[1:]))


def test_coco_panoptic_missing_files(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="pngs"):
        CocoPanopticDataset(tmp_path / "images", tmp_path / "p.json", tmp_path / "pngs")
    (tmp_path / "pngs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"p\.json"):
        CocoPanopticDataset(tmp_path / "images", tmp_path / "p.json", tmp_path / "pngs")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": []}],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match=r"a\.png"):
        CocoPanopticDataset(tmp_path / "images", tmp_path / "p.json", tmp_path / "pngs")


def test_rgb_id_round_trip() -> None:
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 16777215, 123456]])
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)


# --------------------------------------------------------------------------------------------------------------
# COCO instances


@pytest.mark.data
def test_coco_instances_rle_fixture(coco_dir: Path) -> None:
    data = _json(coco_dir / "panoptic_coco_detection_format.json")
    ds = CocoInstanceDataset(coco_dir / "input_images", coco_dir / "panoptic_coco_detection_format.json")
    assert len(ds) == 2 and ds.meta.num_classes == 133
    for sample in ds:
        _check_sample(sample, 133)
        anns = [a for a in data["annotations"] if str(a["image_id"]) == sample["image_id"]]
        assert sample["masks"].flatten(1).sum(1).tolist() == [a["area"] for a in anns]
        assert sample["iscrowd"].tolist() == [bool(a["iscrowd"]) for a in anns]


def test_coco_instances_polygon_and_rle_formats(tmp_path: Path) -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")  # module-level would stop collection without it
    h, w = 40, 50
    _png(tmp_path / "img" / "a.png", np.full((h, w, 3), 90, dtype=np.uint8))
    polygon = [[5.0, 5.0, 30.0, 8.0, 20.0, 30.0], [35.0, 30.0, 45.0, 30.0, 45.0, 38.0, 35.0, 38.0]]
    block = np.zeros((h, w), dtype=np.uint8, order="F")
    block[10:20, 30:45] = 1
    compressed = mask_utils.encode(block)
    flat = block.flatten(order="F")  # uncompressed RLE counts: runs of 0/1 in column-major order
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    anns = [
        {"id": 1, "image_id": 7, "category_id": 3, "segmentation": polygon, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 5, "segmentation": {"size": [h, w], "counts": counts}, "iscrowd": 1},
        {
            "id": 3,
            "image_id": 7,
            "category_id": 5,
            "segmentation": {"size": [h, w], "counts": compressed["counts"].decode()},
            "iscrowd": 0,
        },
    ]
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": h, "width": w}, {"id": 8, "file_name": "a.png"}],
        "annotations": anns,
        "categories": [{"id": 5, "name": "box"}, {"id": 3, "name": "tri"}],
    }
    (tmp_path / "inst.json").write_text(json.dumps(data))
    ds = CocoInstanceDataset(tmp_path / "img", tmp_path / "inst.json")
    assert len(ds) == 2 and len(CocoInstanceDataset(tmp_path / "img", tmp_path / "inst.json", skip_empty=True)) == 1
    assert ds.meta.class_names == ("box", "tri") and ds.meta.thing_ids == (0, 1)
    sample = ds[0]
    _check_sample(sample, 2)
    expected_area = int(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygon, h, w))))
    assert sample["masks"].flatten(1).sum(1).tolist() == [expected_area, 150, 150]
    assert sample["labels"].tolist() == [1, 0, 0]
    assert sample["iscrowd"].tolist() == [False, True, False]
    assert torch.equal(sample["masks"][1], sample["masks"][2])
    assert torch.equal(sample["masks"][1], torch.from_numpy(block.astype(bool)))
    assert len(ds[1]["labels"]) == 0 and ds[1]["masks"].shape == (0, h, w)


# --------------------------------------------------------------------------------------------------------------
# semantic folders: CamVid, ADE20K, Cityscapes, errors


@pytest.fixture
def camvid_dir(shared_data: Path) -> Path:
    folder = shared_data / "camvid"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.mark.data
@pytest.mark.parametrize(("split", "count"), [("train", 367), ("val", 101)])
def test_camvid_samples(camvid_dir: Path, split: str, count: int) -> None:
    ds = camvid(camvid_dir, split)
    assert len(ds) == count
    assert ds.meta.num_classes == 11 and ds.meta.class_names[0] == "Sky" and "Unlabelled" not in ds.meta.class_names
    assert [ds.meta.class_names[i] for i in ds.meta.thing_ids] == ["Car", "Pedestrian", "Bicyclist"]
    for index in (0, count - 1):
        sample = ds[index]
        _check_sample(sample, 11)
        raw = np.array(Image.open(ds.items[index][1]))
        assert set(sample["labels"].tolist()) == set(np.unique(raw).tolist()) - {11}
        covered = sample["masks"].any(0).numpy()
        assert np.array_equal(covered, raw != 11)  # void in no mask, every other pixel in one
        assert int(sample["masks"].sum(0).max()) == 1


@pytest.mark.data
def test_camvid_split_file(camvid_dir: Path) -> None:
    ds = SemanticFolderDataset(
        camvid_dir / "val",
        camvid_dir / "valannot",
        camvid_meta(camvid_dir),
        label_map={11: 255},
        split_file=camvid_dir / "val.txt",
    )
    assert len(ds) == 101 and ds.items[0][2] == "0016E5_07959"


def _tiny_folder(root: Path, labels: dict[str, np.ndarray]) -> tuple[Path, Path]:
    for name, label in labels.items():
        _png(root / "img" / f"{name}.png", np.full((*label.shape, 3), 50, dtype=np.uint8))
        _png(root / "lab" / f"{name}.png", label.astype(np.uint8))
    return root / "img", root / "lab"


def test_semantic_folder_errors(tmp_path: Path) -> None:
    meta = ModelMeta(class_names=tuple("abcdefghijk"))  # 11 classes as CamVid
    label = np.zeros((6, 8), dtype=np.uint8)
    label[0, 0], label[1, 1] = 11, 12
    img, lab = _tiny_folder(tmp_path, {"a": label})
    ds = SemanticFolderDataset(img, lab, meta, label_map={11: 255})
    with pytest.raises(ValueError, match=r"a\.png.*\[12\]"):
        ds[0]
    ok = SemanticFolderDataset(img, lab, meta, label_map={11: 255, 12: 3})[0]
    assert ok["labels"].tolist() == [0, 3] and int(ok["masks"].sum()) == 47
    with pytest.raises(FileNotFoundError, match="nolabels"):
        SemanticFolderDataset(img, tmp_path / "nolabels", meta)
    _png(img / "b.png", np.zeros((6, 8, 3), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match=r"b\.png has no label.*lab/b\.png"):
        SemanticFolderDataset(img, lab, meta)
    (img / "b.png").unlink()
    (img / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        SemanticFolderDataset(img, lab, meta, label_map={11: 255, 12: 3})[0]


def test_semantic_folder_size_mismatch_and_rgb_label(tmp_path: Path) -> None:
    meta = ModelMeta(class_names=("a", "b"))
    _png(tmp_path / "img" / "a.png", np.zeros((6, 8, 3), dtype=np.uint8))
    _png(tmp_path / "lab" / "a.png", np.zeros((6, 9), dtype=np.uint8))
    with pytest.raises(ValueError, match="is \\(6, 8\\) but its label"):
        SemanticFolderDataset(tmp_path / "img", tmp_path / "lab", meta)[0]
    _png(tmp_path / "lab" / "a.png", np.zeros((6, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="single-channel"):
        SemanticFolderDataset(tmp_path / "img", tmp_path / "lab", meta)[0]


def test_ade20k_layout(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    label = np.array([[0, 1, 150], [1, 1, 0]], dtype=np.uint8)
    (root / "images" / "training").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(root / "images" / "training" / "ADE_1.jpg")
    _png(root / "annotations" / "training" / "ADE_1.png", label)
    ds = ade20k(tmp_path, "train")
    sample = ds[0]
    assert ds.meta.num_classes == 150
    assert sample["labels"].tolist() == [0, 149]
    assert sample["masks"].sum((1, 2)).tolist() == [3, 1]
    with pytest.raises(ValueError, match="ADE20K split"):
        ade20k(root, "test")


def test_cityscapes_layouts(tmp_path: Path) -> None:
    base = "aachen_000000_000019"
    _png(tmp_path / "leftImg8bit" / "val" / "aachen" / f"{base}_leftImg8bit.png", np.zeros((4, 8, 3), np.uint8))
    label = np.full((4, 8), 255, dtype=np.uint8)
    label[:2] = 0
    label[2:, :4] = 13
    _png(tmp_path / "gtFine" / "val" / "aachen" / f"{base}_gtFine_labelTrainIds.png", label)
    sem = cityscapes(tmp_path, "val")
    assert len(sem) == 1 and sem[0]["labels"].tolist() == [0, 13] and sem[0]["image_id"] == f"aachen/{base}"
    # panoptic, as cityscapesscripts' createPanopticImgs writes it (category ids are Cityscapes label ids)
    ids = np.zeros((4, 8), dtype=np.int64)
    ids[:2] = 7
    ids[2:, :4] = 26000
    _png(tmp_path / "gtFine" / "cityscapes_panoptic_val" / f"{base}_gtFine_panoptic.png", id_to_rgb(ids))
    data = {
        "images": [{"id": base, "file_name": f"{base}_gtFine_leftImg8bit.png", "height": 4, "width": 8}],
        "annotations": [
            {
                "image_id": base,
                "file_name": f"{base}_gtFine_panoptic.png",
                "segments_info": [
                    {"id": 7, "category_id": 7, "iscrowd": 0, "area": 16},
                    {"id": 26000, "category_id": 26, "iscrowd": 0, "area": 8},
                ],
            }
        ],
        "categories": [{"id": 7, "name": "road", "isthing": 0}, {"id": 26, "name": "car", "isthing": 1}],
    }
    (tmp_path / "gtFine" / "cityscapes_panoptic_val.json").write_text(json.dumps(data))
    pan = cityscapes(tmp_path, "val", panoptic=True)
    sample = pickle.loads(pickle.dumps(pan))[0]
    assert sample["labels"].tolist() == [0, 13] and sample["masks"].sum((1, 2)).tolist() == [16, 8]
    image_dir = tmp_path / "leftImg8bit" / "val"
    expected = image_dir / "aachen" / f"{base}_leftImg8bit.png"
    assert cityscapes_image_path(image_dir, {"file_name": f"{base}_leftImg8bit.png"}) == expected


# --------------------------------------------------------------------------------------------------------------
# synthetic scenes


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_images=8, size=(96, 128), seed=3, max_things=5)
    return root


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", num_images=3, seed=11)
    b = write_synthetic_dataset(tmp_path / "b", num_images=3, seed=11)
    c = write_synthetic_dataset(tmp_path / "c", num_images=3, seed=12)
    files = sorted(p.relative_to(a["root"]) for p in a["root"].rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 2
    for rel in files:
        assert (a["root"] / rel).read_bytes() == (b["root"] / rel).read_bytes(), rel
    assert (a["image_dir"] / "00000.png").read_bytes() != (c["image_dir"] / "00000.png").read_bytes()
    assert a["meta"] == synthetic_meta() == ModelMeta.from_dict(_json(a["meta_json"]))


def test_synthetic_panoptic_and_semantic_agree(synthetic_root: Path) -> None:
    panoptic, semantic = synthetic_datasets(synthetic_root)
    meta = panoptic.meta
    assert meta == semantic.meta and meta.num_classes == 6 and meta.thing_ids == (0, 1, 2)
    data = _json(synthetic_root / "panoptic.json")
    assert len(panoptic) == len(semantic) == 8
    for p, s, ann in zip(panoptic, semantic, data["annotations"], strict=True):
        _check_sample(p, 6)
        _check_sample(s, 6)
        assert p["image"].shape == (3, 96, 128) and torch.equal(p["image"], s["image"])
        assert p["masks"].sum((1, 2)).tolist() == [seg["area"] for seg in ann["segments_info"]]
        assert int(p["masks"].sum(0).max()) == 1
        for label, mask in zip(s["labels"], s["masks"], strict=True):
            assert torch.equal(p["masks"][p["labels"] == label].any(0), mask)
        assert torch.equal(p["masks"].any(0), s["masks"].any(0))
        assert set(p["labels"].tolist()) == set(s["labels"].tolist())


def test_synthetic_things_occlude_each_other(synthetic_root: Path) -> None:
    data = _json(synthetic_root / "panoptic.json")
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    panoptic, _ = synthetic_datasets(synthetic_root)
    pairs = 0
    for index, ann in enumerate(data["annotations"]):
        segs = ann["segments_info"]
        ids = [s["id"] for s in segs]
        masks = panoptic[index]["masks"]  # (N, H, W), in segments_info order
        for i, seg in enumerate(segs):
            if seg["category_id"] not in things or not seg["occluded_by"]:
                continue
            assert seg["area"] < seg["amodal_area"]
            grown = torch.nn.functional.max_pool2d(masks[i][None, None].float(), 3, 1, 1)[0, 0] > 0
            for occluder in seg["occluded_by"]:
                if occluder in ids:  # the occluder's visible part borders what is left of this thing
                    assert (grown & masks[ids.index(occluder)]).any()
                    pairs += 1
    assert pairs >= 3, "things hardly ever hide behind one another"
    counts = [sum(s["category_id"] in things for s in ann["segments_info"]) for ann in data["annotations"]]
    assert max(counts) >= 3


def test_synthetic_classes_are_distinct_by_colour(synthetic_root: Path) -> None:
    """A nearest-mean colour classifier on 4x4 patches already separates the classes well."""
    _, semantic = synthetic_datasets(synthetic_root)
    feats, targets = [], []
    for sample in semantic:
        image = torch.nn.functional.avg_pool2d(sample["image"][None].float(), 4)[0].flatten(1).T  # (P, 3)
        label = torch.full(sample["image"].shape[-2:], -1, dtype=torch.int64)
        for c, m in zip(sample["labels"], sample["masks"], strict=True):
            label[m] = c
        label = label[::4, ::4].flatten()
        feats.append(image[label >= 0])
        targets.append(label[label >= 0])
    x, y = torch.cat(feats), torch.cat(targets)
    means = torch.stack([x[y == c].mean(0) for c in range(6)])
    accuracy = (torch.cdist(x, means).argmin(1) == y).float().mean()
    assert accuracy > 0.9


def test_build_dataset(synthetic_root: Path) -> None:
    ds = build_dataset({"format": "synthetic_semantic", "root": synthetic_root})
    assert len(ds) == 8 and isinstance(ds, SemanticFolderDataset)
    assert {"coco_panoptic", "coco_instances", "semantic_folder", "camvid", "ade20k", "cityscapes"} <= set(
        DATASET_FORMATS
    )
    with pytest.raises(ValueError, match="camvid"):
        build_dataset({"format": "nope"})
    spec = {"format": "semantic_folder", "image_dir": synthetic_root / "images", "label_dir": synthetic_root / "labels"}
    assert build_dataset({**spec, "meta": synthetic_meta().to_dict()}).meta == ds.meta
    assert build_dataset({**spec, "meta": "ade20k_semantic"}).meta.num_classes == 150
    relative = {"format": "semantic_folder", "image_dir": "images", "label_dir": "labels", "meta": "ade20k_semantic"}
    assert len(build_dataset({**relative, "root": synthetic_root})) == 8
    with pytest.raises(ValueError, match=r"bad arguments.*semantic_folder"):
        build_dataset({**relative, "imagedir": "x"})
    pan = pickle.loads(pickle.dumps(build_dataset({"format": "synthetic_panoptic", "root": synthetic_root})))
    assert torch.equal(pan[0]["image"], ds[0]["image"])


# --------------------------------------------------------------------------------------------------------------
# augmentation

COLOURS = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 240, 20]], dtype=torch.uint8)


def _coded_sample(h: int = 90, w: int = 120) -> Sample:
    """Four segments, each painted in its own flat colour; a little void (black) stripe."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.stack(
        [
            (xx < w // 2) & (yy < h // 2),
            (xx >= w // 2) & (yy < h // 2),
            (yy >= h // 2) & (xx < w // 3),
            (yy >= h // 2) & (xx >= w // 3) & (xx < w - 6),
        ]
    )  # (4, H, W)
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    for colour, mask in zip(COLOURS, masks, strict=True):
        image[:, mask] = colour[:, None]
    return Sample(
        image=image,
        labels=torch.tensor([0, 1, 2, 3]),
        masks=masks,
        iscrowd=torch.tensor([False, False, True, False]),
        image_id="coded",
    )


def _assert_aligned(out: Sample, margin: int = 2) -> None:
    """Mask interiors have exactly their segment's colour and every solid patch of a colour lies in its mask."""
    image = out["image"].int()
    for label, mask in zip(out["labels"], out["masks"], strict=True):
        colour = COLOURS[int(label)].int()
        k = 2 * margin + 1
        inner = -torch.nn.functional.max_pool2d(-mask[None, None].float(), k, 1, margin)[0, 0] > 0.5
        assert inner.any() or mask.sum() < 40
        assert torch.all((image[:, inner] - colour[:, None]).abs() <= 1)
        same = (image - colour[:, None, None]).abs().max(0).values <= 1  # (H, W)
        solid = -torch.nn.functional.max_pool2d(-same[None, None].float(), k, 1, margin)[0, 0] > 0.5
        assert torch.all(mask[solid])


@pytest.mark.parametrize("seed", range(6))
def test_lsj_keeps_image_and_masks_aligned(seed: int) -> None:
    torch.manual_seed(seed)
    out = large_scale_jitter(128, min_scale=0.5, max_scale=2.0)(_coded_sample())
    _check_sample(out, 4)
    assert out["image"].shape == (3, 128, 128) and out["masks"].shape[-2:] == (128, 128)
    _assert_aligned(out)
    assert out["iscrowd"].tolist() == [bool(c) for c in torch.tensor([0, 0, 1, 0])[out["labels"]]]


def test_lsj_pads_bottom_right_with_grey() -> None:
    out = large_scale_jitter(200, min_scale=0.5, max_scale=0.5, flip=False)(_coded_sample(90, 120))
    # fits 100 x 100: the 120-wide image becomes 100 wide, 75 high; the rest is padding
    assert out["image"].shape == (3, 200, 200)
    assert torch.all(out["image"][:, 75:] == 128) and torch.all(out["image"][:, :, 100:] == 128)
    assert not out["masks"][:, 75:].any() and not out["masks"][:, :, 100:].any()
    assert out["masks"][:, :75, :100].any(0).float().mean() > 0.9
    _assert_aligned(out)


def test_lsj_flip_happens() -> None:
    sample = _coded_sample()
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out = large_scale_jitter(90, min_scale=1.0, max_scale=1.0)(sample)
        flips.add(bool(out["masks"][0, 0, 0]))  # segment 0 sits top-left unless flipped
    assert flips == {True, False}


@pytest.mark.parametrize("seed", range(4))
def test_resize_crop_aligned_and_sized(seed: int) -> None:
    torch.manual_seed(seed)
    transform = resize_crop([60, 90, 120], max_size=400, crop_size=(64, 80), color_jitter=False)
    out = transform(_coded_sample())
    _check_sample(out, 4)
    assert out["image"].shape in ((3, 64, 80), (3, 60, 80))  # as official: no padding when smaller than the crop
    _assert_aligned(out)


def test_resize_without_crop_and_eval_transform() -> None:
    out = resize_crop(60, max_size=70, crop_size=None, color_jitter=False, flip=False)(_coded_sample(90, 120))
    assert out["image"].shape == (3, 53, 70)  # short side 60 would make the long side 80 > 70; 52.5 rounds up
    out = eval_transform(45, 1000)(_coded_sample(90, 120))
    assert out["image"].shape == (3, 45, 60)
    _assert_aligned(out, margin=1)


def test_colour_jitter_changes_only_the_image() -> None:
    sample = _coded_sample()
    torch.manual_seed(0)
    changed = 0
    for _ in range(5):
        out = SampleTransform([ColorAugSSD()])(sample)
        assert torch.equal(out["masks"], sample["masks"]) and out["image"].dtype == torch.uint8
        changed += int(not torch.equal(out["image"], sample["image"]))
    assert changed >= 3


def test_category_area_crop_rule() -> None:
    h, w = 100, 100
    xx = torch.arange(w).expand(h, w)
    masks = torch.stack([xx < 50, xx >= 50])
    sample = Sample(
        image=torch.zeros((3, h, w), dtype=torch.uint8),
        labels=torch.tensor([0, 1]),
        masks=masks,
        iscrowd=torch.zeros(2, dtype=torch.bool),
        image_id="halves",
    )
    transform = SampleTransform([RandomCropCategoryArea((40, 40), cat_max_ratio=0.75, tries=50)])
    for seed in range(5):
        torch.manual_seed(seed)
        out = transform(sample)
        areas = out["masks"].sum((1, 2))
        assert len(areas) == 2 and int(areas.max()) < 0.75 * 1600


def test_empty_segments_are_dropped() -> None:
    sample = _coded_sample(100, 100)
    dot = torch.zeros((1, 100, 100), dtype=torch.bool)
    dot[0, 5, 5] = True  # nearest downscaling by 10 never samples pixel 5
    sample = Sample(
        image=sample["image"],
        labels=torch.cat([sample["labels"], torch.tensor([1])]),
        masks=torch.cat([sample["masks"] & ~dot, dot]),
        iscrowd=torch.cat([sample["iscrowd"], torch.tensor([True])]),
        image_id="dot",
    )
    out = eval_transform(10, 0)(sample)
    _check_sample(out, 4)
    assert out["labels"].tolist() == [0, 1, 2, 3] and out["iscrowd"].tolist() == [False, False, True, False]


def test_build_augmentation() -> None:
    sample = _coded_sample()
    assert build_augmentation({"name": "none"})(sample) is sample
    out = build_augmentation({"name": "lsj", "image_size": 64})(sample)
    assert out["image"].shape == (3, 64, 64)
    out = build_augmentation({"name": "resize_crop", "min_sizes": [48], "max_size": 100, "crop_size": 32})(sample)
    assert out["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="lsj"):
        build_augmentation({"name": "mosaic"})
    with pytest.raises(ValueError, match="bad arguments"):
        build_augmentation({"name": "lsj", "size": 3})
    transform = pickle.loads(pickle.dumps(build_augmentation({"name": "lsj", "image_size": 32})))
    assert transform(sample)["image"].shape == (3, 32, 32)


# --------------------------------------------------------------------------------------------------------------
# collate


def test_collate_pads_and_drops_crowd() -> None:
    a = _coded_sample(50, 70)
    b = Sample(
        image=torch.full((3, 64, 33), 7, dtype=torch.uint8),
        labels=torch.tensor([2]),
        masks=torch.ones((1, 64, 33), dtype=torch.bool),
        iscrowd=torch.tensor([False]),
        image_id="b",
    )
    batch = collate([a, b])
    assert batch["images"].shape == (2, 3, 64, 96) and batch["images"].dtype == torch.uint8
    assert batch["image_sizes"] == [(50, 70), (64, 33)]
    assert batch["image_ids"] == ["coded", "b"]
    assert torch.equal(batch["images"][0, :, :50, :70], a["image"]) and not batch["images"][0, :, 50:].any()
    assert not batch["images"][0, :, :, 70:].any() and not batch["images"][1, :, :, 33:].any()
    t0, t1 = batch["targets"]
    assert t0["labels"].tolist() == [0, 1, 3] and t0["masks"].shape == (3, 64, 96) and t0["masks"].dtype == torch.bool
    assert torch.equal(t0["masks"][:, :50, :70], a["masks"][[0, 1, 3]]) and not t0["masks"][:, 50:].any()
    assert t1["masks"].shape == (1, 64, 96) and int(t1["masks"].sum()) == 64 * 33
    assert batch["gt"][0]["iscrowd"].tolist() == [False, False, True, False]
    assert batch["gt"][0]["masks"].shape == (4, 50, 70) and batch["gt"][1]["image_id"] == "b"
    assert collate([a], size_divisibility=0)["images"].shape == (1, 3, 50, 70)


def test_dataloader_end_to_end(synthetic_root: Path) -> None:
    panoptic, _ = synthetic_datasets(synthetic_root)
    transform = large_scale_jitter(64, min_scale=0.5, max_scale=1.5)

    class Augmented(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(panoptic)

        def __getitem__(self, i: int) -> Sample:
            return transform(panoptic[i])

    loader = torch.utils.data.DataLoader(Augmented(), batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 3, 64, 64)
    assert all(t["masks"].shape[-2:] == (64, 64) for t in batch["targets"])
