"""What ``Segmenter.predict`` returns: :class:`SegmentationResult` (and :class:`Instances`), numpy + cv2 only.

A result is at the original frame's size. A panoptic result also answers as semantic (class per pixel, void =
``runtimes.vocabulary.VOID``) and as instances (one per "thing" segment); both are derived on first access and
cached. Exports: COCO result annotations (:meth:`SegmentationResult.to_coco`), a JSON-safe summary
(:meth:`~SegmentationResult.to_dict`) and a BGR visualisation (:meth:`~SegmentationResult.overlay`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from runtimes.vocabulary import TASKS, VOID
from sdk.postprocess import masks_to_boxes
from sdk.preprocess import as_bgr

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# instances


@dataclass(eq=False)
class Instances:
    """N detected objects at the frame size: masks (N, h, w) bool, boxes (N, 4) float32 xyxy, labels, scores."""

    masks: np.ndarray  # (N, h, w) bool
    boxes: np.ndarray  # (N, 4) float32, x0, y0, x1, y1 (x1, y1 exclusive)
    labels: np.ndarray  # (N,) int64 class indices
    scores: np.ndarray  # (N,) float32

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.masks.ndim != 3:
            raise ValueError(f"Instances.masks must be (N, h, w), got shape {self.masks.shape}")
        n = len(self.masks)
        if not len(self.boxes) == len(self.labels) == len(self.scores) == n:
            raise ValueError(
                f"Instances fields disagree on N: masks {n}, boxes {len(self.boxes)}, labels {len(self.labels)}, "
                f"scores {len(self.scores)}"
            )

    def __len__(self) -> int:
        return len(self.masks)

    def __repr__(self) -> str:
        return f"Instances(n={len(self)}, size={self.masks.shape[1:]})"

    @classmethod
    def empty(cls, size: tuple[int, int]) -> Instances:
        """No instances at an (h, w) frame size."""
        h, w = size
        return cls(np.zeros((0, h, w), bool), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0))

    def select(self, keep: np.ndarray) -> Instances:
        """The instances picked by a boolean mask or index array."""
        return Instances(self.masks[keep], self.boxes[keep], self.labels[keep], self.scores[keep])


# ---------------------------------------------------------------------------------------------------------------
# derived views of a panoptic result


def _semantic_from_panoptic(result: SegmentationResult) -> np.ndarray:
    """(h, w) class ids from the panoptic id map + segments; VOID where no segment."""
    panoptic = result.panoptic
    assert panoptic is not None
    ids = [int(s["id"]) for s in result.segments_info]
    lut = np.full(max([int(panoptic.max(initial=0)), *ids]) + 1, VOID, dtype=np.int64)
    for segment in result.segments_info:
        lut[int(segment["id"])] = int(segment["category_id"])
    dtype = np.uint8 if len(result.class_names) <= VOID else np.int32
    return lut[panoptic].astype(dtype)


def _instances_from_panoptic(result: SegmentationResult) -> Instances:
    """One instance per thing segment of the panoptic map, score = the segment's (1.0 if it has none)."""
    panoptic = result.panoptic
    assert panoptic is not None
    things = [s for s in result.segments_info if s.get("isthing")]
    if not things:
        return Instances.empty(panoptic.shape)
    masks = np.stack([panoptic == int(s["id"]) for s in things])  # (N, h, w)
    return Instances(
        masks,
        masks_to_boxes(masks),
        np.array([int(s["category_id"]) for s in things]),
        np.array([float(s.get("score", 1.0)) for s in things]),
    )


class _DerivedFromPanoptic:
    """A dataclass field that, left None, is derived from the panoptic map on first access and cached."""

    def __init__(self, name: str, derive: Callable[[SegmentationResult], Any]) -> None:
        self.slot = f"_{name}"
        self.derive = derive

    def __get__(self, obj: SegmentationResult | None, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get(self.slot)
        if value is None and obj.panoptic is not None:
            value = obj.__dict__[self.slot] = self.derive(obj)
        return value

    def __set__(self, obj: SegmentationResult, value: Any) -> None:
        obj.__dict__[self.slot] = value


class _ComputedOnFirstUse:
    """A dataclass field that may be given as a zero-argument callable (``sdk.postprocess.DeferredScores``): called
    on first access, its array cached; an array or None is kept as it is."""

    def __get__(self, obj: SegmentationResult | None, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get("_class_scores")
        if callable(value):
            value = obj.__dict__["_class_scores"] = value()
        return value

    def __set__(self, obj: SegmentationResult, value: Any) -> None:
        obj.__dict__["_class_scores"] = value


_SEMANTIC = _DerivedFromPanoptic("semantic", _semantic_from_panoptic)
_INSTANCES = _DerivedFromPanoptic("instances", _instances_from_panoptic)


# ---------------------------------------------------------------------------------------------------------------
# the result


_BAND_PIXELS = 1 << 20  # pixels SegmentationResult.overlay and class_histogram work on at once


def _label_counts(labels: np.ndarray) -> np.ndarray:
    """Pixels per label value of an (h, w) label map, a band of rows at a time: uint8 by OpenCV's histogram (float32
    counts, exact below 2^24 a band), other types by bincount (it takes intp: 8 bytes a pixel, for a band only)."""
    counts = np.zeros(256 if labels.dtype == np.uint8 else 0, np.int64)
    rows = max(1, _BAND_PIXELS // max(labels.shape[1], 1))
    for top in range(0, labels.shape[0], rows):
        part = np.ascontiguousarray(labels[top : top + rows])
        if labels.dtype == np.uint8:
            counts += cv2.calcHist([part], [0], None, [256], [0, 256]).ravel().astype(np.int64)
        else:
            band = np.bincount(part.ravel(), minlength=len(counts))
            counts = band + np.pad(counts, (0, len(band) - len(counts)))
    return counts


def _palette(colors: Sequence[Sequence[int]] | None, n: int) -> np.ndarray:
    """(n, 3) uint8 BGR colours from the metadata's RGB list, filling missing ones deterministically."""
    rng = np.random.default_rng(12345)
    bgr = rng.integers(40, 256, size=(max(n, 1), 3)).astype(np.uint8)
    if colors:
        given = np.asarray(colors, dtype=np.int64).reshape(-1, 3)[:n]
        bgr[: len(given)] = np.clip(given, 0, 255)[:, ::-1]
    return bgr


@dataclass(repr=False, eq=False)
class SegmentationResult:
    """Results for one frame, at the frame's size.

    ``semantic``: (h, w) class ids (void = ``VOID``) or None; ``instances``: :class:`Instances` or None; ``panoptic``:
    (h, w) int32 segment ids (0 = void) or None, described by ``segments_info`` (dicts with ``id``, ``isthing``,
    ``category_id``, ``score``, ``area``). A panoptic result derives ``semantic`` and ``instances`` on access.
    ``timings``: stage -> milliseconds. ``class_scores``: per-class scores at a quarter of the frame size, from
    semantic artifacts that export them, else None.
    """

    task: str
    class_names: list[str]
    colors: list[list[int]] = field(default_factory=list)  # RGB per class, as the artifact metadata
    semantic: np.ndarray | None = _SEMANTIC  # type: ignore[assignment]
    instances: Instances | None = _INSTANCES  # type: ignore[assignment]
    panoptic: np.ndarray | None = None
    segments_info: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    frame_index: int | None = None
    carried_from: int | None = None  # live carry mode: the model frame whose labels optical flow moved here
    # (K, ceil(h/4), ceil(w/4)) float32, semantic artifacts that give them; resized on first access
    class_scores: np.ndarray | None = _ComputedOnFirstUse()  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        self.class_names = list(self.class_names)
        if self.panoptic is None and self.__dict__.get("_semantic") is None and self.__dict__.get("_instances") is None:
            raise ValueError("a SegmentationResult needs at least one of semantic, instances or panoptic")

    @classmethod
    def from_postprocess(
        cls,
        processed: Mapping[str, Any],
        metadata: Mapping[str, Any],
        task: str | None = None,
        frame_index: int | None = None,
    ) -> SegmentationResult:
        """Wrap :func:`sdk.postprocess.postprocess` output; ``task`` (default: the processed one) is the view.

        A panoptic output can be viewed as ``"semantic"`` or ``"instance"`` (derived from its segments).
        """
        made = processed.get("task", metadata.get("task"))
        task = task or made
        has = {"panoptic": processed.get("panoptic") is not None}
        has["semantic"] = has["panoptic"] or processed.get("semantic") is not None
        has["instance"] = has["panoptic"] or processed.get("instances") is not None
        if not has.get(task, False):
            raise ValueError(f"a {task!r} result cannot be made from {made!r} post-processing output")
        instances = processed.get("instances")
        if isinstance(instances, Mapping):
            instances = Instances(**instances)
        return cls(
            task=task,
            class_names=list(metadata["class_names"]),
            colors=[list(c) for c in metadata.get("colors", [])],
            semantic=processed.get("semantic"),
            instances=instances,
            panoptic=processed.get("panoptic"),
            segments_info=list(processed.get("segments_info", [])),
            frame_index=frame_index,
            class_scores=processed.get("class_scores"),
        )

    # ------------------------------------------------------------------ basics
    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the frame the result belongs to."""
        for plane in (self.panoptic, self.__dict__.get("_semantic")):
            if plane is not None:
                return int(plane.shape[0]), int(plane.shape[1])
        assert self.instances is not None
        return int(self.instances.masks.shape[1]), int(self.instances.masks.shape[2])

    def __repr__(self) -> str:
        parts = [f"task={self.task!r}", f"size={self.size}"]
        if self.panoptic is not None:
            parts.append(f"segments={len(self.segments_info)}")
        if self.__dict__.get("_instances") is not None:
            parts.append(f"instances={len(self.__dict__['_instances'])}")
        if self.frame_index is not None:
            parts.append(f"frame_index={self.frame_index}")
        return f"SegmentationResult({', '.join(parts)})"

    def class_name(self, label: int) -> str:
        """The name of a class index (``"void"`` for ``VOID`` outside the classes, else ``"class <i>"``)."""
        if 0 <= label < len(self.class_names):
            return self.class_names[label]
        return "void" if label == VOID else f"class {label}"

    def class_histogram(self) -> dict[str, float]:
        """Fraction of the frame's pixels per class present (void excluded), largest first.

        From the semantic map when there is one, else from the union of each class's instance masks.
        """
        h, w = self.size
        if self.semantic is not None:
            counts = _label_counts(np.asarray(self.semantic))
            fractions = {i: c / (h * w) for i, c in enumerate(counts) if c and i < len(self.class_names)}
        else:
            inst = self.instances
            assert inst is not None
            fractions = {}
            for label in np.unique(inst.labels):
                covered = inst.masks[inst.labels == label].any(axis=0)
                if covered.any():
                    fractions[int(label)] = float(covered.mean())
        ordered = sorted(fractions.items(), key=lambda kv: -kv[1])
        return {self.class_name(i): float(f) for i, f in ordered}

    # ------------------------------------------------------------------ exports
    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """COCO result annotations: one per instance (RLE mask, xywh bbox, score, category_id).

        Panoptic results give their thing segments; a semantic result gives one annotation per class present
        (score 1.0). ``category_ids[label]`` maps class indices to dataset ids (default: the class index).
        """
        try:
            from pycocotools import mask as mask_util
        except ImportError as err:
            raise ImportError("SegmentationResult.to_coco needs pycocotools: pip install pycocotools") from err

        if self.instances is not None:
            masks, labels = self.instances.masks, self.instances.labels
            boxes, scores = self.instances.boxes, self.instances.scores
        elif self.semantic is not None:
            present = [i for i in np.unique(self.semantic) if i < len(self.class_names)]
            masks = np.stack([self.semantic == i for i in present]) if present else np.zeros((0, *self.size), bool)
            labels, scores = np.asarray(present, dtype=np.int64), np.ones(len(present), np.float32)
            boxes = masks_to_boxes(masks)
        else:
            return []
        if len(masks) == 0:
            return []
        if category_ids is not None and int(labels.max()) >= len(category_ids):
            raise ValueError(f"category_ids has {len(category_ids)} entries, labels go up to {int(labels.max())}")
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # (h, w, N)
        annotations = []
        for rle, label, box, score in zip(rles, labels, boxes, scores, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[label]) if category_ids is not None else int(label),
                    "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask_util.area(rle)),
                    "score": float(score),
                }
            )
        return annotations

    def to_coco_panoptic(self, image_id: int, file_name: str) -> tuple[np.ndarray, dict[str, Any]]:
        """COCO panoptic: the segment id map as an (h, w, 3) uint8 BGR image for ``cv2.imwrite`` (id = R + 256 G +
        256^2 B, panopticapi's ``id2rgb``; 0 = void) and the frame's annotation (``segments_info`` with
        ``category_id``, ``isthing``, ``iscrowd`` 0, ``area``, xywh ``bbox`` and ``score``)."""
        if self.panoptic is None:
            raise ValueError(f"COCO panoptic needs a panoptic result; this one is {self.task}")
        ids = self.panoptic.astype(np.uint32)
        bgr = np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255], axis=-1).astype(np.uint8)
        areas = np.bincount(ids.ravel())
        segments = []
        for segment in self.segments_info:
            sid = int(segment["id"])
            if sid >= len(areas) or not areas[sid]:
                continue
            x0, y0, x1, y1 = (float(v) for v in masks_to_boxes((self.panoptic == sid)[None])[0])
            segments.append({"id": sid, "category_id": int(segment["category_id"]), "iscrowd": 0,
                             "isthing": bool(segment.get("isthing")), "area": int(areas[sid]),
                             "bbox": [x0, y0, x1 - x0, y1 - y0],
                             "score": float(segment.get("score", 1.0))})  # fmt: skip
        return bgr, {"image_id": image_id, "file_name": file_name, "segments_info": segments}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary: task, size, classes present with pixel fractions, instances (no masks), timings."""
        summary: dict[str, Any] = {
            "task": self.task,
            "frame_index": self.frame_index,
            "size": list(self.size),
            "classes": [
                {"name": name, "fraction": round(fraction, 6)} for name, fraction in self.class_histogram().items()
            ],
            "timings": {str(k): float(v) for k, v in self.timings.items()},
        }
        if self.instances is not None:
            summary["instances"] = [
                {
                    "label": int(label),
                    "name": self.class_name(int(label)),
                    "score": float(score),
                    "box": [float(v) for v in box],
                    "area": int(mask.sum()),
                }
                for mask, label, score, box in zip(
                    self.instances.masks,
                    self.instances.labels,
                    self.instances.scores,
                    self.instances.boxes,
                    strict=True,
                )
            ]
        if self.panoptic is not None:
            summary["segments"] = [
                {k: (v.item() if isinstance(v, np.generic) else v) for k, v in s.items()} for s in self.segments_info
            ]
        return summary

    # ------------------------------------------------------------------ visualisation
    def overlay(
        self,
        frame: np.ndarray,
        alpha: float = 0.5,
        draw_boxes: bool = True,
        draw_labels: bool = True,
        min_score: float = 0.5,
    ) -> np.ndarray:
        """The frame (BGR uint8, the result's size) with the result drawn on it; a new (h, w, 3) uint8 array.

        Semantic/stuff pixels get their class colour blended by ``alpha``; instances (score >= ``min_score``) get
        their class colour (shaded per instance), an outline, and optionally a box and ``"name score"``.
        """
        image = as_bgr(frame, max_pixels=None)  # the result exists: its frame was already let through
        if np.may_share_memory(image, frame):
            image = image.copy()
        if image.shape[:2] != self.size:
            raise ValueError(f"frame is {image.shape[:2]}, the result is {self.size}: pass the frame it was made from")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        palette = _palette(self.colors, max(len(self.class_names), 1))
        labels, lut = None, None
        if self.semantic is not None and self.task != "instance":
            # a 256-entry lookup on uint8 labels (void and out-of-range -> unpainted): ~20x faster than masking
            lut = np.zeros((256, 3), dtype=np.uint8)
            lut[: min(len(palette), VOID)] = palette[:VOID]  # every class id below VOID
            labels = np.asarray(self.semantic)

        shaded: list[tuple[np.ndarray, np.ndarray]] = []  # (mask, colour) of each instance, the best last
        drawn: list[tuple[int, np.ndarray, np.ndarray, str]] = []
        if self.instances is not None and self.task != "semantic":
            inst = self.instances
            order = np.argsort(inst.scores, kind="stable")  # low scores first, the best ends on top
            for i in order:
                if inst.scores[i] < min_score or not inst.masks[i].any():
                    continue
                base = palette[int(inst.labels[i]) % len(palette)].astype(np.int16)
                shade = np.clip(base + (int(i) * 37 % 61 - 30), 0, 255).astype(np.uint8)
                shaded.append((inst.masks[i], shade))
                text = f"{self.class_name(int(inst.labels[i]))} {inst.scores[i]:.2f}"
                drawn.append((int(i), shade, inst.boxes[i], text))

        # blended a band of rows at a time: the temporaries stay ~_BAND_PIXELS, not several frames' worth
        h, w = self.size
        rows = max(1, _BAND_PIXELS // w)
        for top in range(0, h, rows):
            band = slice(top, min(top + rows, h))
            if labels is not None:
                part = labels[band]
                part = part if part.dtype == np.uint8 else np.where(part < VOID, part, VOID).astype(np.uint8)
                colour, painted = lut[part], part < len(palette)  # (rows, w, 3) what each painted pixel becomes
            else:
                colour = np.zeros((band.stop - top, w, 3), np.uint8)
                painted = np.zeros((band.stop - top, w), bool)
            for mask, shade in shaded:
                colour[mask[band]] = shade
                painted |= mask[band]
            blended = cv2.addWeighted(image[band], 1.0 - alpha, colour, alpha, 0.0)
            np.copyto(image[band], blended, where=painted[..., None])
        inst = self.instances
        for i, shade, _, _ in drawn:
            assert inst is not None
            contours, _ = cv2.findContours(inst.masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            dark = tuple(int(c) // 2 for c in shade)
            cv2.drawContours(image, contours, -1, dark, 1)
        for _, shade, box, text in drawn:
            self._draw_box(image, box, shade, text, draw_boxes, draw_labels)
        return image

    @staticmethod
    def _draw_box(
        image: np.ndarray, box: np.ndarray, shade: np.ndarray, text: str, draw_boxes: bool, draw_labels: bool
    ) -> None:
        """One instance's box and ``"name score"`` tag (tag above the box, inside when at the top edge)."""
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        colour = tuple(int(c) for c in shade)
        if draw_boxes:
            cv2.rectangle(image, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, 1)
        if draw_labels:
            scale = max(0.35, min(image.shape[:2]) / 1000)
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = y0 - th - base if y0 - th - base >= 0 else y0
            cv2.rectangle(image, (x0, top), (x0 + tw, top + th + base), colour, -1)
            ink = (0, 0, 0) if int(shade.astype(np.int32) @ np.array([29, 150, 77])) > 128 * 256 else (255, 255, 255)
            cv2.putText(image, text, (x0, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
