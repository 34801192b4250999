"""Artifact outputs -> results at the original frame size in plain numpy, with the official Mask2Former semantics.

Mirrors ``train/model/inference.py`` (the torch oracle) without torch, with the same result keys and segment fields;
the two are held to one table of hand-made edge cases (``tests/test_postprocess_edge_cases.py``).

Resolutions: the graph gives mask logits at 1/4 of the *padded* input (Hp, Wp = input size padded up to a multiple
of 32). The official order is: bilinear (``align_corners=False``) to (Hp, Wp), crop the top-left
``geometry.resized_size`` (the frame inside the input), bilinear to ``geometry.frame_size``, then inference.

Doing it here is about cost: panoptic decides which queries it keeps from the class logits alone and upsamples only
those; instance takes the top-k (query, class) pairs first and upsamples only their queries. Stage one only
computes the rows/columns of the padded upsample that survive the crop.

Bilinear resizing is ``sdk.bilinear`` (numpy with torch's arithmetic).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from runtimes.errors import M2FError
from runtimes.geometry import Geometry
from runtimes.vocabulary import MASK_STRIDE, OBJECT_MASK_THRESHOLD, OVERLAP_THRESHOLD, TASKS, TOPK, VOID
from sdk.bilinear import linear_taps, resize_axis, resize_bilinear

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 22  # ~16 MB of float32 per chunk of work


class OutputsError(M2FError, ValueError):
    """The runtime's outputs do not match what the artifact's task needs."""


# ---------------------------------------------------------------------------------------------------------------
# elementwise


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float32 in -> float32 out)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) or x.dtype == np.float16:
        x = x.astype(np.float32)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-x))`` as torch computes it (exp overflow gives 0, silently)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) or x.dtype == np.float16:
        x = x.astype(np.float32)
    with np.errstate(over="ignore"):
        y = np.negative(x, out=out)
        np.exp(y, out=y)
        y += 1
        np.reciprocal(y, out=y)
    return y


# ---------------------------------------------------------------------------------------------------------------
# masks to the frame


def _padded_size(masks: np.ndarray) -> tuple[int, int]:
    return masks.shape[-2] * MASK_STRIDE, masks.shape[-1] * MASK_STRIDE


def _check_geometry(masks: np.ndarray, geometry: Geometry) -> None:
    ph, pw = _padded_size(masks)
    rh, rw = geometry.resized_size
    if not (0 < rh <= ph and 0 < rw <= pw):
        raise OutputsError(
            f"the frame's region {geometry.resized_size} does not fit the padded size {(ph, pw)} implied by "
            f"pred_masks {masks.shape[-2:]} (x{MASK_STRIDE}): were the outputs made from this geometry's input?"
        )


def upsample_mask_logits(masks: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(N, h4, w4) mask logits -> (N, h, w) float32 at the frame size, in the official order.

    Bilinear to the padded input (4 h4, 4 w4), crop ``geometry.resized_size``, bilinear to ``geometry.frame_size``.
    """
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, h4, w4) mask logits, got shape {masks.shape}")
    _check_geometry(masks, geometry)
    padded = resize_bilinear(masks, _padded_size(masks), crop=geometry.resized_size)  # (N, rh, rw)
    return resize_bilinear(padded, geometry.frame_size)  # (N, h, w)


# ---------------------------------------------------------------------------------------------------------------
# semantic


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """torch's legacy ``nearest`` source indices: floor(dst * (float) in / out), clamped."""
    if in_size == out_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size / out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def semantic_from_labels(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(H, W) label map at the input size (the semantic graph's output) -> (h, w) at the frame size.

    Crops ``geometry.resized_size`` and resizes by nearest neighbour with torch's ``nearest`` indices, so it equals
    ``F.interpolate(labels[:rh, :rw], frame_size, mode="nearest")`` exactly. Keeps the dtype.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {labels.shape}")
    rh, rw = geometry.resized_size
    if rh > labels.shape[0] or rw > labels.shape[1]:
        raise OutputsError(f"label map {labels.shape} is smaller than the frame's region {geometry.resized_size}")
    h, w = geometry.frame_size
    cropped = labels[:rh, :rw]  # (rh, rw)
    if (rh, rw) == (h, w):
        return np.ascontiguousarray(cropped)
    rows, cols = _nearest_index(rh, h), _nearest_index(rw, w)
    return cropped[rows][:, cols]  # (h, w)


def _scores_region(scores: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The frame's region of (K, Hp/4, Wp/4) class scores, checked, as float32."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 3:
        raise OutputsError(f"expected (K, h, w) class scores, got shape {scores.shape}")
    rh, rw = (-(-n // MASK_STRIDE) for n in geometry.resized_size)
    if rh > scores.shape[1] or rw > scores.shape[2]:
        raise OutputsError(f"class scores {scores.shape} are smaller than the frame's region {geometry.resized_size}")
    return scores[:, :rh, :rw]


def scores_at_frame(scores: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(K, Hp/4, Wp/4) class scores at the mask resolution (the semantic graph's ``class_scores``) -> (K, ceil(h/4),
    ceil(w/4)) float32 at a quarter of the frame size: the frame's region cropped, resized bilinearly, one class
    plane at a time into the result (peak memory: the result and nothing of its size beside it)."""
    region = _scores_region(scores, geometry)
    h, w = (-(-n // MASK_STRIDE) for n in geometry.frame_size)
    if region.shape[1:] == (h, w):
        return np.ascontiguousarray(region)
    out = np.empty((len(region), h, w), np.float32)  # (K, h/4, w/4)
    for plane, target in zip(region, out, strict=True):
        cv2.resize(np.ascontiguousarray(plane), (w, h), dst=target, interpolation=cv2.INTER_LINEAR)
    return out


@dataclass(frozen=True)
class DeferredScores:
    """Class scores resized to the frame on first use (``SegmentationResult.class_scores``), not on every predict:
    at a quarter of a large frame, K float32 planes can outweigh the frame itself (150 classes: 12x its bytes)."""

    region: np.ndarray  # (K, rh/4, rw/4) float32, a copy: runtimes may reuse their output buffers
    geometry: Geometry

    @classmethod
    def of(cls, scores: np.ndarray, geometry: Geometry) -> DeferredScores:
        """Checked now (a wrong shape is the runtime's error, raised here), resized later."""
        return cls(np.array(_scores_region(scores, geometry)), geometry)

    def __call__(self) -> np.ndarray:
        return scores_at_frame(self.region, self.geometry)


def semantic_from_outputs(logits: np.ndarray, masks: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Official semantic inference from query outputs: (h, w) class ids at the frame size (uint8 up to VOID classes).

    ``logits`` (Q, K+1), ``masks`` (Q, h4, w4). As the official semantic-only model (and the semantic graph):
    class-probability x sigmoid-mask scores at the padded size, crop, bilinear to the frame, argmax. Costs K x
    frame pixels; a semantic artifact gives ``labels`` instead, use :func:`semantic_from_labels` for those.
    """
    masks = np.asarray(masks, dtype=np.float32)
    _check_geometry(masks, geometry)
    probs = softmax(np.asarray(logits, dtype=np.float32), -1)[:, :-1]  # (Q, K)
    Q, K = probs.shape
    rh, rw = geometry.resized_size
    h, w = geometry.frame_size
    sig = sigmoid(resize_bilinear(masks, _padded_size(masks), crop=(rh, rw)))  # (Q, rh, rw)
    scores = (probs.T @ sig.reshape(Q, -1)).reshape(K, rh, rw)  # (K, rh, rw)
    scores = resize_axis(scores, 2, rw, w)  # (K, rh, w)
    dtype = np.uint8 if K <= VOID else np.int32  # as the semantic graph's labels
    if rh == h:
        return scores.argmax(0).astype(dtype)
    labels = np.empty((h, w), dtype=dtype)
    i0, i1, w0, w1 = linear_taps(rh, h)
    step = max(1, _CHUNK_ELEMENTS // (K * w))
    for start in range(0, h, step):
        rows = slice(start, start + step)
        block = scores[:, i0[rows]] * w0[rows, None]  # (K, r, w)
        block += scores[:, i1[rows]] * w1[rows, None]
        labels[rows] = block.argmax(0)
    return labels


# ---------------------------------------------------------------------------------------------------------------
# panoptic


def _weighted_argmax(masks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(weights[:, None, None] * masks).argmax(0)`` for (N, h, w) masks, one plane at a time (first max wins)."""
    best = masks[0] * weights[0]  # (h, w)
    winner = np.zeros(best.shape, dtype=np.intp)  # (h, w)
    plane = np.empty_like(best)
    better = np.empty(best.shape, dtype=bool)
    for k in range(1, len(masks)):
        np.multiply(masks[k], weights[k], out=plane)
        np.greater(plane, best, out=better)
        np.putmask(winner, better, k)
        np.maximum(best, plane, out=best)
    return winner


def panoptic_from_outputs(
    logits: np.ndarray,
    masks: np.ndarray,
    geometry: Geometry,
    thing_ids: Collection[int] = (),
    object_mask_threshold: float = OBJECT_MASK_THRESHOLD,
    overlap_threshold: float = OVERLAP_THRESHOLD,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Official panoptic merging at the frame size, upsampling only the kept queries.

    ``logits`` (Q, K+1), ``masks`` (Q, h4, w4). A query is kept when its best class is not "no object" and its
    probability exceeds ``object_mask_threshold``; each pixel goes to the kept query maximising
    ``prob * sigmoid(mask)``; a query's segment is the pixels it wins where its sigmoid mask is >= 0.5, dropped when
    the area it wins is less than ``overlap_threshold`` of its own (>= 0.5) mask; same-class stuff is merged into one
    segment. Exactly ``train.model.inference.panoptic_inference`` on ``upsample_mask_logits`` output.

    Returns an (h, w) int32 id map (0 = void) and one dict per segment: ``id`` (1, 2, ...), ``isthing``,
    ``category_id``, ``score`` (class probability; the highest of merged stuff queries) and ``area`` (pixels).
    """
    logits = np.asarray(logits, dtype=np.float32)
    num_classes = logits.shape[-1] - 1
    things = {int(i) for i in thing_ids}
    probs = softmax(logits, -1)  # (Q, K+1)
    labels = probs.argmax(-1)  # (Q,)
    scores = probs.max(-1)  # (Q,)
    keep = np.flatnonzero((labels != num_classes) & (scores > object_mask_threshold))  # (N,)

    h, w = geometry.frame_size
    panoptic_seg = np.zeros((h, w), dtype=np.int32)
    segments_info: list[dict[str, Any]] = []
    if keep.size == 0:
        return panoptic_seg, segments_info
    cur_scores, cur_classes = scores[keep], labels[keep]  # (N,), (N,)
    cur_masks = sigmoid(upsample_mask_logits(np.asarray(masks)[keep], geometry))  # (N, h, w)
    n = keep.size

    winner = _weighted_argmax(cur_masks, cur_scores)  # (h, w)
    won_area = np.bincount(winner.ravel(), minlength=n)  # (N,)
    confident_area = np.count_nonzero((cur_masks >= 0.5).reshape(n, -1), axis=1)  # (N,)
    confident_win = np.take_along_axis(cur_masks, winner[None], axis=0)[0] >= 0.5  # (h, w)
    final_area = np.bincount(winner[confident_win], minlength=n)  # (N,) pixels of won & confident

    segment_of = np.zeros(n + 1, dtype=np.int32)  # kept query -> segment id; the extra slot is void
    stuff_segment: dict[int, dict[str, Any]] = {}
    for k in range(n):
        pred_class = int(cur_classes[k])
        isthing = pred_class in things
        if won_area[k] == 0 or confident_area[k] == 0 or final_area[k] == 0:
            continue
        if won_area[k] / confident_area[k] < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segment:
            info = stuff_segment[pred_class]
            segment_of[k] = info["id"]
            info["score"] = max(info["score"], float(cur_scores[k]))
            info["area"] += int(final_area[k])
            continue
        info = {
            "id": len(segments_info) + 1,
            "isthing": isthing,
            "category_id": pred_class,
            "score": float(cur_scores[k]),
            "area": int(final_area[k]),
        }
        segment_of[k] = info["id"]
        segments_info.append(info)
        if not isthing:
            stuff_segment[pred_class] = info
    panoptic_seg = segment_of[np.where(confident_win, winner, n)]  # (h, w) int32
    return panoptic_seg, segments_info


# ---------------------------------------------------------------------------------------------------------------
# instance


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes ``[x_min, y_min, x_max + 1, y_max + 1]`` of (N, h, w) bool masks; zeros when empty."""
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    x_any = masks.any(axis=1)  # (N, w)
    y_any = masks.any(axis=2)  # (N, h)
    nonempty = x_any.any(axis=1)  # (N,)
    boxes[:, 0] = x_any.argmax(1)
    boxes[:, 1] = y_any.argmax(1)
    boxes[:, 2] = w - x_any[:, ::-1].argmax(1)
    boxes[:, 3] = h - y_any[:, ::-1].argmax(1)
    boxes[~nonempty] = 0
    return boxes


def instance_from_outputs(
    logits: np.ndarray,
    masks: np.ndarray,
    geometry: Geometry,
    topk: int = TOPK,
    thing_ids: Collection[int] | None = None,
) -> dict[str, np.ndarray]:
    """Official instance inference at the frame size, upsampling only the queries of the top-k pairs.

    The ``topk`` best (query, class) pairs of the flattened (Q * K) class probabilities (no-object dropped); with
    ``thing_ids`` only thing classes are kept (after the top-k, as official). Mask = logits > 0; score = class
    probability x mean sigmoid inside the mask (0 when empty). Sorted by score, descending, equal scores by (query,
    class).

    Returns ``masks`` (N, h, w) bool, ``scores`` (N,) float32, ``labels`` (N,) int64, ``boxes`` (N, 4) float32 xyxy.
    """
    logits = np.asarray(logits, dtype=np.float32)
    probs = softmax(logits, -1)[:, :-1]  # (Q, K)
    num_classes = probs.shape[1]
    flat = probs.ravel()  # (Q*K,)
    k = min(int(topk), flat.size)
    top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    top = np.sort(top)  # (k,) in (query, class) order: how equal scores are ordered below
    labels = top % num_classes
    query_idx = top // num_classes
    if thing_ids is not None:
        keep = np.isin(labels, np.asarray(sorted({int(i) for i in thing_ids}), dtype=np.int64))
        top, labels, query_idx = top[keep], labels[keep], query_idx[keep]
    top_scores = flat[top]  # (N,)

    h, w = geometry.frame_size
    queries, inverse = np.unique(query_idx, return_inverse=True)  # (U,), (N,)
    binary = np.empty((queries.size, h, w), dtype=bool)  # (U, h, w)
    mask_scores = np.empty(queries.size, dtype=np.float32)  # (U,)
    masks = np.asarray(masks)
    step = max(1, _CHUNK_ELEMENTS // (h * w))
    for start in range(0, queries.size, step):
        chunk = slice(start, start + step)
        chunk_logits = upsample_mask_logits(masks[queries[chunk]], geometry)  # (u, h, w)
        chunk_binary = chunk_logits > 0
        binary[chunk] = chunk_binary
        sig = sigmoid(chunk_logits, out=chunk_logits)
        sig *= chunk_binary
        area = chunk_binary.reshape(len(sig), -1).sum(1, dtype=np.float32)
        mask_scores[chunk] = sig.reshape(len(sig), -1).sum(1) / (area + np.float32(1e-6))

    scores = (top_scores * mask_scores[inverse]).astype(np.float32)  # (N,)
    order = np.argsort(-scores, kind="stable")
    boxes = masks_to_boxes(binary)  # (U, 4)
    chosen = inverse[order]
    return {
        "masks": binary[chosen],
        "scores": scores[order],
        "labels": labels[order].astype(np.int64),
        "boxes": boxes[chosen],
    }


# ---------------------------------------------------------------------------------------------------------------
# dispatch


def _output(outputs: Mapping[str, np.ndarray], name: str, task: str, index: int, ndim: int) -> np.ndarray:
    if name not in outputs:
        raise OutputsError(
            f"the {task} post-processing needs output {name!r}, the runtime gave {sorted(outputs)}: "
            "is the artifact exported for this task?"
        )
    value = np.asarray(outputs[name])
    if value.ndim != ndim:
        raise OutputsError(f"output {name!r} should have {ndim} dims (batch first), got shape {value.shape}")
    if not -value.shape[0] <= index < value.shape[0]:
        raise OutputsError(f"image index {index} is out of range for output {name!r} with batch {value.shape[0]}")
    return value[index]


def postprocess(
    outputs: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    geometry: Geometry,
    index: int = 0,
    task: str | None = None,
) -> dict[str, Any]:
    """One image's results at its frame size from the runtime's (batched) outputs.

    ``task`` defaults to ``metadata["task"]``; a panoptic artifact (query outputs) can also give ``"semantic"``
    (official semantic inference from the queries) or ``"instance"``. Returns ``{"task": ...}`` plus
    ``"semantic"`` (h, w) ids, or ``"panoptic"`` (h, w) int32 + ``"segments_info"``, or ``"instances"``
    (see :func:`instance_from_outputs`): the keys ``train.model.inference.postprocess`` returns; semantic
    artifacts with a score output add ``"class_scores"``, a :class:`DeferredScores` (call it for the array).
    """
    task = task or metadata["task"]
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == "semantic" and "labels" in outputs:
        labels = _output(outputs, "labels", task, index, 3)  # (H, W)
        processed = {"task": task, "semantic": semantic_from_labels(labels, geometry)}
        if "class_scores" in outputs:  # semantic artifacts since the score output was added; older ones lack it
            processed["class_scores"] = DeferredScores.of(_output(outputs, "class_scores", task, index, 4), geometry)
        return processed
    if task == "semantic" and "pred_logits" not in outputs:
        raise OutputsError(
            f"the semantic post-processing needs output 'labels' (or 'pred_logits' and 'pred_masks'), the runtime "
            f"gave {sorted(outputs)}: is the artifact exported for this task?"
        )

    logits = _output(outputs, "pred_logits", task, index, 3)  # (Q, K+1)
    masks = _output(outputs, "pred_masks", task, index, 4)  # (Q, h4, w4)
    if logits.shape[0] != masks.shape[0]:
        raise OutputsError(f"pred_logits {logits.shape} and pred_masks {masks.shape} disagree on the query count")
    num_classes = len(metadata.get("class_names", ())) or logits.shape[-1] - 1
    if logits.shape[-1] != num_classes + 1:
        raise OutputsError(
            f"pred_logits has {logits.shape[-1]} class columns, the metadata names {num_classes} classes "
            "(+1 no-object expected): the outputs and the artifact metadata do not belong together"
        )
    inference = metadata.get("inference", {})
    thing_ids = list(metadata.get("thing_ids", ()))
    if task == "semantic":
        return {"task": task, "semantic": semantic_from_outputs(logits, masks, geometry)}
    if task == "panoptic":
        seg, info = panoptic_from_outputs(
            logits,
            masks,
            geometry,
            thing_ids,
            object_mask_threshold=float(inference.get("object_mask_threshold", OBJECT_MASK_THRESHOLD)),
            overlap_threshold=float(inference.get("overlap_threshold", OVERLAP_THRESHOLD)),
        )
        return {"task": task, "panoptic": seg, "segments_info": info}
    instances = instance_from_outputs(
        logits, masks, geometry, int(inference.get("topk_per_image", TOPK)), thing_ids or None
    )
    return {"task": task, "instances": instances}
