"""Semantic segmentation as two folders of files: RGB images and single-channel label PNGs (CamVid, ADE20K, Cityscapes).

One sample per image; as the official ``MaskFormerSemanticDatasetMapper`` does, every class present in the
label map becomes one mask, and ignore pixels belong to no mask. Also home of the small file readers the other
formats share (``read_rgb``, ``read_label``, ``require_dir``, ``require_file``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from runtimes.vocabulary import VOID
from train.data.sample import Sample
from train.model.config import ModelMeta

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# shared readers


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist")
    return path


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return path


def read_rgb(path: str | Path) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 RGB tensor; ValueError naming the file when it cannot be decoded."""
    path = require_file(path, "image")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # (H, W, 3) BGR, EXIF orientation applied
    if image is None:
        raise ValueError(f"cannot read image {path}: not a readable image file (corrupt or unsupported format)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)


def read_label(path: str | Path, channels: int = 1) -> np.ndarray:
    """A label PNG as stored: (H, W) for ``channels=1`` (palette PNGs give their indices), else (H, W, channels)."""
    path = require_file(path, "label")
    try:
        with Image.open(path) as img:
            array = np.array(img)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read label image {path}: {err}") from err
    if channels == 1:
        if array.ndim != 2:
            raise ValueError(f"label image {path} has shape {array.shape}; expected a single-channel (H, W) PNG")
    elif array.ndim != 3 or array.shape[2] < channels:
        raise ValueError(f"label image {path} has shape {array.shape}; expected (H, W, >={channels})")
    return array


def check_same_size(image: torch.Tensor, label_hw: tuple[int, ...], image_path: Path, label_path: Path) -> None:
    """ValueError when an image (3, H, W) and its label (H, W) differ in size."""
    if tuple(image.shape[-2:]) != tuple(label_hw[:2]):
        raise ValueError(
            f"image {image_path} is {tuple(image.shape[-2:])} but its label {label_path} is {tuple(label_hw[:2])}"
        )


# --------------------------------------------------------------------------------------------------------------
# video sequences


def sequence_of(image_id: str) -> str:
    """The video sequence a frame belongs to: its file name up to the first ``_`` (CamVid: ``0016E5_07959`` ->
    ``0016E5``, ``Seq05VD_f00000`` -> ``Seq05VD``); a name without ``_`` is its own sequence."""
    return Path(image_id).name.split("_", 1)[0]


# --------------------------------------------------------------------------------------------------------------
# the dataset


def label_map_lut(label_map: Mapping[int, int] | None, size: int = 65536) -> np.ndarray:
    """A lookup table raw value -> class id: identity, overridden by ``label_map``."""
    lut = np.arange(size, dtype=np.int64)
    for raw, mapped in (label_map or {}).items():
        lut[int(raw)] = int(mapped)
    return lut


def semantic_to_sample(label: np.ndarray, image: torch.Tensor, image_id: str, ignore_index: int) -> Sample:
    """One mask per class present in ``label`` (H, W) of contiguous ids; ``ignore_index`` pixels in no mask."""
    label_t = torch.from_numpy(label)  # (H, W) int64
    classes = torch.unique(label_t)
    classes = classes[classes != ignore_index]
    masks = label_t[None] == classes[:, None, None]  # (N, H, W)
    return Sample(
        image=image,
        labels=classes.to(torch.int64),
        masks=masks,
        iscrowd=torch.zeros(len(classes), dtype=torch.bool),
        image_id=image_id,
    )


def select_sequences(
    items: list[tuple[Path, Path, str]],
    sequences: Iterable[str] | None,
    exclude_sequences: Iterable[str] | None,
    where: str,
) -> list[tuple[Path, Path, str]]:
    """The (image, label, id) items of the wanted sequences; ValueError naming the known ones when a name is unknown."""
    if sequences is None and exclude_sequences is None:
        return items
    known = {sequence_of(image_id) for _, _, image_id in items}
    keep = set(known if sequences is None else sequences)
    drop = set(exclude_sequences or ())
    unknown = (keep | drop) - known
    if unknown:
        raise ValueError(f"no frames of sequence(s) {sorted(unknown)} under {where}; it has {sorted(known)}")
    chosen = [item for item in items if sequence_of(item[2]) in keep - drop]
    if not chosen:
        raise ValueError(f"sequences {sorted(keep)} minus {sorted(drop)} leave no frames under {where}")
    return chosen


class SemanticFolderDataset:
    """Images under ``image_dir`` (searched recursively for ``*image_suffix``) paired with label PNGs.

    The label of ``image_dir/rel/name{image_suffix}`` is ``label_dir/rel/name{label_suffix}``. Raw label values
    go through ``label_map`` (identity where absent; map a value to ``ignore_index`` to ignore it); a mapped value
    that is neither ``ignore_index`` nor in ``0..K-1`` is a ValueError naming the file. ``split_file`` (optional)
    is a text file whose lines start with an image path or name (CamVid's ``train.txt``); only those are used.
    ``sequences`` keeps only frames of those video sequences (``sequence_of``), ``exclude_sequences`` drops them:
    the way to hold out whole drives, so that no validation frame shares a sequence with a training frame.
    """

    def __init__(
        self,
        image_dir: str | Path,
        label_dir: str | Path,
        meta: ModelMeta,
        ignore_index: int = VOID,
        label_map: Mapping[int, int] | None = None,
        split_file: str | Path | None = None,
        image_suffix: str = ".png",
        label_suffix: str = ".png",
        sequences: Iterable[str] | None = None,
        exclude_sequences: Iterable[str] | None = None,
    ) -> None:
        self.image_dir = require_dir(image_dir, "image")
        self.label_dir = require_dir(label_dir, "label")
        self.meta = meta
        self.ignore_index = int(ignore_index)
        self.label_map = dict(label_map or {})
        self._lut = label_map_lut(self.label_map)
        images = sorted(self.image_dir.rglob(f"*{image_suffix}"))
        if split_file is not None:
            images = self._select(images, require_file(split_file, "split"), image_suffix)
        if not images:
            raise FileNotFoundError(f"no images matching *{image_suffix} under {self.image_dir}")
        self.items: list[tuple[Path, Path, str]] = []
        for image_path in images:
            rel = image_path.relative_to(self.image_dir)
            stem = str(rel)[: -len(image_suffix)]
            label_path = self.label_dir / f"{stem}{label_suffix}"
            if not label_path.is_file():
                raise FileNotFoundError(f"image {image_path} has no label: {label_path} does not exist")
            self.items.append((image_path, label_path, stem))
        self.items = select_sequences(self.items, sequences, exclude_sequences, str(self.image_dir))
        logger.info("semantic folder %s: %d images, %d classes", self.image_dir, len(self.items), meta.num_classes)

    def _select(self, images: list[Path], split_file: Path, image_suffix: str) -> list[Path]:
        by_name = {p.name: p for p in images}
        chosen = []
        for line in split_file.read_text().splitlines():
            if not line.strip():
                continue
            name = Path(line.split()[0]).name
            if not name.endswith(image_suffix):
                name += image_suffix
            if name not in by_name:
                raise FileNotFoundError(f"{split_file} lists {name}, which is not under {self.image_dir}")
            chosen.append(by_name[name])
        return chosen

    def sequences(self) -> Counter[str]:
        """{video sequence: number of frames} of this dataset."""
        return Counter(sequence_of(image_id) for _, _, image_id in self.items)

    def extend(self, other: SemanticFolderDataset) -> SemanticFolderDataset:
        """Append ``other``'s frames (e.g. CamVid's train and val folders as one pool); classes must match."""
        if other.meta.class_names != self.meta.class_names or other.ignore_index != self.ignore_index:
            raise ValueError(f"cannot join {other.image_dir} to {self.image_dir}: different classes or ignore index")
        self.items.extend(other.items)
        return self

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path, image_id = self.items[index]
        image = read_rgb(image_path)  # (3, H, W)
        raw = read_label(label_path)  # (H, W)
        check_same_size(image, raw.shape, image_path, label_path)
        if raw.dtype.kind not in "ui":
            raise ValueError(f"label image {label_path} has dtype {raw.dtype}; expected integer class ids")
        raw = raw.astype(np.int64)
        if raw.size and (raw.min() < 0 or raw.max() >= self._lut.size):
            raise ValueError(f"label image {label_path} has values outside 0..{self._lut.size - 1}")
        label = self._lut[raw]  # (H, W)
        bad = np.unique(label[(label != self.ignore_index) & ((label < 0) | (label >= self.meta.num_classes))])
        if bad.size:
            raise ValueError(
                f"label image {label_path} has class ids {bad.tolist()} outside 0..{self.meta.num_classes - 1} "
                f"(ignore index {self.ignore_index}); fix the file or pass a label_map"
            )
        return semantic_to_sample(label, image, image_id, self.ignore_index)
