"""The frames a benchmark measures on: written once per run as ``.npz`` (frames and, from a labelled dataset, their
ground truth), read by every row's ``measure`` job.

    evaluation = prepare_eval_set(work / "eval.npz", data=Path("../shared/data/camvid"), video=None, count=10)
    frames, labels = load_eval_set(work / "eval.npz")
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from runtimes.images import FrameError, read_image
from runtimes.vocabulary import CAMVID_VOID, IMAGE_SUFFIXES, VOID, image_files
from sdk.sources import evenly_spaced, read_video_frames

DATA_FORMATS = ("auto", "camvid", "ade20k", "cityscapes", "images")


@dataclass(frozen=True)
class EvalSet:
    """What ``prepare_eval_set`` wrote: where the frames came from, how many, and whether they carry labels."""

    source: str  # "camvid val: 10 of 101 images, labelled"
    count: int
    has_labels: bool
    class_names: tuple[str, ...] | None  # the dataset's classes (None: plain images or a video)


def detect_format(data: Path, split: str) -> str:
    """The dataset layout under ``data`` (one of ``DATA_FORMATS`` but ``auto``)."""
    if (data / "classes.csv").exists() and (data / split).is_dir() and (data / f"{split}annot").is_dir():
        return "camvid"
    if (data / "images").is_dir() and (data / "annotations").is_dir():
        return "ade20k"
    if (data / "leftImg8bit").is_dir():
        return "cityscapes"
    return "images"


def prepare_eval_set(
    out: Path, data: Path | None, video: Path | None, count: int, data_format: str = "auto", split: str = "val"
) -> EvalSet:
    """Write ``count`` frames (evenly spread over the source) and their ground truth, if any, to ``out`` (.npz)."""
    labels: list[np.ndarray] = []
    class_names: tuple[str, ...] | None = None
    if video is not None:
        frames = read_video_frames(video, count)
        source = f"{video.name}: {len(frames)} frames"
    elif data is not None:
        if not data.is_dir():
            raise FileNotFoundError(f"--data {data} is not a folder")
        fmt = detect_format(data, split) if data_format == "auto" else data_format
        if fmt == "images":
            frames = _image_frames(data, count)
            source = f"{data.name}: {len(frames)} images (no labels)"
        else:
            read = _camvid_frames if fmt == "camvid" and (data / split).is_dir() else _dataset_frames
            frames, labels, class_names, total = read(data, fmt, split, count)
            source = f"{fmt} {split}: {len(frames)} of {total} images, labelled"
    else:
        raise ValueError("pass --data DIR (CamVid/ADE20K/Cityscapes root or a folder of images) or --video FILE")
    arrays = {f"frame_{i}": f for i, f in enumerate(frames)}
    arrays.update({f"label_{i}": lab.astype(np.uint8 if lab.max() < 256 else np.int32) for i, lab in enumerate(labels)})
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, count=len(frames), **arrays)
    return EvalSet(source, len(frames), bool(labels), class_names)


def _image_frames(folder: Path, count: int) -> list[np.ndarray]:
    files = image_files(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    frames = []
    for i in evenly_spaced(len(files), count):
        try:
            frames.append(read_image(files[i]))
        except FrameError as err:
            raise ValueError(f"cannot use image {files[i]}: {err}") from err
    return frames


def _dataset_frames(
    root: Path, fmt: str, split: str, count: int
) -> tuple[list[np.ndarray], list[np.ndarray], tuple[str, ...], int]:
    """(BGR frames, semantic ground truth, class names, images in the split) of a labelled dataset."""
    from train.data import build_dataset
    from train.evaluation.semantic import semantic_gt_from_sample

    dataset = build_dataset({"format": fmt, "root": str(root), "split": split})
    frames, labels = [], []
    for i in evenly_spaced(len(dataset), count):
        sample = dataset[i]
        frames.append(np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy()[..., ::-1]))
        h, w = frames[-1].shape[:2]
        labels.append(semantic_gt_from_sample(sample["labels"], sample["masks"], sample["iscrowd"], h, w))
    return frames, labels, tuple(dataset.meta.class_names), len(dataset)


def _camvid_frames(
    root: Path, fmt: str, split: str, count: int
) -> tuple[list[np.ndarray], list[np.ndarray], tuple[str, ...], int]:
    """``_dataset_frames`` of one CamVid split folder in numpy, without torch (an artifact's benchmark runs where
    torch is not installed): the same files in the same order, the same frames and ground truth (void -> ``VOID``),
    held equal to ``train.data.presets.camvid`` by tests/benchmarks/test_artifact_benchmark.py."""
    with (root / "classes.csv").open(newline="") as f:
        names = tuple(row["name"] for row in csv.DictReader(f) if int(row["id"]) != CAMVID_VOID)
    images = sorted((root / split).rglob("*.png"))
    if not images:
        raise FileNotFoundError(f"no images matching *.png under {root / split}")
    frames, labels = [], []
    for i in evenly_spaced(len(images), count):
        frame = cv2.imread(str(images[i]), cv2.IMREAD_COLOR)  # (H, W, 3) BGR
        if frame is None:
            raise ValueError(f"cannot read image {images[i]}: not a readable image file")
        label_path = root / f"{split}annot" / images[i].relative_to(root / split)
        with Image.open(label_path) as img:
            label = np.array(img).astype(np.int64)  # (H, W)
        label[label == CAMVID_VOID] = VOID
        if label.shape != frame.shape[:2] or (label[label != VOID] >= len(names)).any():
            raise ValueError(
                f"label {label_path} does not fit image {images[i]} or has ids outside 0..{len(names) - 1}"
            )
        frames.append(np.ascontiguousarray(frame))
        labels.append(label)
    return frames, labels, names, len(images)


def load_eval_set(path: str | Path) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Frames (BGR uint8) and ground-truth label maps (or None) written by ``prepare_eval_set``."""
    with np.load(path) as data:
        count = int(data["count"])
        frames = [data[f"frame_{i}"] for i in range(count)]
        labels = [data[f"label_{i}"] for i in range(count)] if "label_0" in data else None
    return frames, labels
