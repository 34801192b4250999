"""Mask2Former post-processing: semantic, instance and panoptic inference, as the official implementation.

Follows ``mask2former/maskformer_model.py`` (``forward`` eval branch, ``semantic_inference``,
``panoptic_inference``, ``instance_inference``) and detectron2's ``sem_seg_postprocess``, without importing either.

Resolutions: the model predicts mask logits at 1/4 of the *padded* input. The official code first upsamples them
bilinearly to the padded input size, then (``sem_seg_postprocess``) crops the top-left ``image_size`` region (the
unpadded image) and resizes bilinearly to the requested output size. What is resized differs per task:

* semantic (a semantic-only model, where ``sem_seg_postprocess_before_inference`` is False): the class scores are
  computed at the padded resolution and the (K, H, W) *scores* are cropped and resized;
* instance and panoptic: the mask *logits* are cropped and resized first, then inference runs at output size.

Sigmoid does not commute with resizing, so the two orders give slightly different numbers; each task here uses its
official order. (A model with panoptic or instance inference on computes its semantic output from the resized
logits too; call :func:`semantic_inference` on :func:`upsample_masks` output to get that variant.)

The numpy twin ``sdk/postprocess.py`` (the SDK, without torch) returns the same result keys and segment fields, and
both are held to one table of hand-made edge cases (``tests/test_postprocess_edge_cases.py``).
:func:`semantic_scores` / :func:`semantic_labels` are the one torch definition of semantic labels from query
outputs: the exported semantic graph (``compile.onnx_export``) and the accuracy gate use them too.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from runtimes.vocabulary import MASK_STRIDE, OBJECT_MASK_THRESHOLD, OVERLAP_THRESHOLD, TASKS, TOPK, VOID
from train.model.config import InferenceConfig


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) resize of a (C, H, W) tensor to ``size``."""
    return F.interpolate(x.unsqueeze(0), size=tuple(size), mode="bilinear", align_corners=False)[0]


def crop_and_resize(x: Tensor, image_size: tuple[int, int], output_size: tuple[int, int]) -> Tensor:
    """detectron2's ``sem_seg_postprocess``: keep the top-left ``image_size`` of (C, Hp, Wp), resize to output."""
    h, w = image_size
    return _resize(x[:, :h, :w], output_size)  # (C, H_out, W_out)


def upsample_masks(
    pred_masks: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> Tensor:
    """Bring (Q, h, w) mask logits to the output resolution, in the official order.

    Bilinear to the padded input size, crop the unpadded top-left ``image_size`` region, bilinear to
    ``output_size``. Returns (Q, H_out, W_out) logits.
    """
    padded = _resize(pred_masks, padded_size)  # (Q, Hp, Wp)
    return crop_and_resize(padded, image_size, output_size)  # (Q, H_out, W_out)


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """Per-class scores: softmax class probs (no-object column dropped) times sigmoid masks, summed over queries.

    ``mask_cls`` (..., Q, K+1) logits, ``mask_pred`` (..., Q, H, W) logits -> (..., K, H, W) scores.
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]  # (..., Q, K)
    masks = mask_pred.sigmoid()  # (..., Q, H, W)
    # the einsum "...qk,...qhw->...khw" as one MatMul: ONNX Runtime's Einsum kernel took 390 of 1711 profiled ms of the
    # Swin-T 512 graph for it (OpenVINO lowers either form to the same MatMul)
    scores = probs.transpose(-1, -2).to(masks.dtype) @ masks.flatten(-2)  # (..., K, H*W)
    return scores.unflatten(-1, masks.shape[-2:])  # (..., K, H, W)


def semantic_scores(
    mask_cls: Tensor, mask_pred: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """Official semantic-only scores at the unpadded input: masks bilinear to ``padded_size``, crop the top-left
    ``image_size``, then :func:`semantic_inference` (pixel by pixel, so cropping first changes nothing).

    ``mask_cls`` (B, Q, K+1), ``mask_pred`` (B, Q, h, w) logits -> (B, K, H, W) scores, H, W = ``image_size``.
    """
    h, w = image_size
    masks = F.interpolate(mask_pred, size=tuple(padded_size), mode="bilinear", align_corners=False)  # (B, Q, Hp, Wp)
    return semantic_inference(mask_cls, masks[..., :h, :w])  # (B, K, H, W)


def label_map(scores: Tensor) -> Tensor:
    """(..., K, H, W) class scores -> (..., H, W) class ids (first class on ties); uint8 for up to ``VOID`` classes."""
    return scores.argmax(-3).to(_label_dtype(scores.shape[-3]))


def _label_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= VOID else torch.int32  # ids 0..K-1 below VOID, the void label


def semantic_labels(mask_cls: Tensor, mask_pred: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Official semantic labels at the unpadded input from query outputs, as the semantic graph returns them.

    ``mask_cls`` (B, Q, K+1), ``mask_pred`` (B, Q, Hp/4, Wp/4) -> (B, H, W) class ids (see :func:`label_map`).
    Equal to ``label_map(semantic_scores(...))`` at less cost: every step after the x4 upsampling works pixel by
    pixel, so the padding is cropped from the one-channel labels instead of the Q mask channels; and with a
    concrete size only the mask rows / columns the crop needs are upsampled (bilinear x4 with half-pixel centres
    maps output row y to input row (y + 0.5) / 4 - 0.5, so rows < H read input rows <= (H - 1) // 4 + 1 and
    nothing past them).
    """
    h, w = image_size
    rows, cols = mask_pred.shape[-2], mask_pred.shape[-1]
    if all(isinstance(n, int) for n in (h, w, rows, cols)):  # an exported graph with a static size, eager code
        rows, cols = min(rows, (h - 1) // MASK_STRIDE + 2), min(cols, (w - 1) // MASK_STRIDE + 2)
        mask_pred = mask_pred[..., :rows, :cols]
    masks = F.interpolate(mask_pred, size=(rows * MASK_STRIDE, cols * MASK_STRIDE), mode="bilinear",
                          align_corners=False)  # fmt: skip
    queries, classes = mask_cls.shape[-2], mask_cls.shape[-1] - 1
    if classes < queries:
        # channel-last (B, H, W, Q) @ (B, 1, Q, K): the upsampled masks stay in the layout the resize wrote, and
        # only the K-channel scores go back to planar for the argmax (OpenVINO: 0.985x the time end to end for
        # 11 classes / 30 queries; with K > Q the K-channel transpose costs more than the Q-channel one it saves)
        probs = F.softmax(mask_cls, dim=-1)[..., :-1].unsqueeze(-3)  # (B, 1, Q, K)
        scores = (masks.permute(0, 2, 3, 1).sigmoid() @ probs.to(masks.dtype)).permute(0, 3, 1, 2)  # (B, K, H, W)
    else:
        scores = semantic_inference(mask_cls, masks)  # (B, K, H, W)
    # cropped before the cast: TensorRT takes uint8 only at a graph's inputs and outputs (compile.tensorrt_rules)
    return scores.argmax(-3)[..., :h, :w].to(_label_dtype(scores.shape[-3]))


def panoptic_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    thing_ids: Collection[int],
    object_mask_threshold: float = OBJECT_MASK_THRESHOLD,
    overlap_threshold: float = OVERLAP_THRESHOLD,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Official panoptic merging.

    Queries whose best class is not "no object" and whose probability exceeds ``object_mask_threshold`` are
    kept. Each pixel goes to the kept query maximising ``prob * sigmoid(mask)``. A query becomes a segment on the
    pixels it wins *and* where its own sigmoid mask is >= 0.5, provided the pixels it wins cover at least
    ``overlap_threshold`` of its own (>= 0.5) mask. Stuff queries of the same class are merged into one segment.

    ``mask_cls`` (Q, K+1) logits, ``mask_pred`` (Q, H, W) logits. Returns an (H, W) int32 segment-id map
    (0 = void) and one dict per segment (ids 1, 2, ... in order): ``id``, ``isthing``, ``category_id``, ``score``
    (class probability; the highest of merged stuff queries) and ``area`` (pixels).
    """
    num_classes = mask_cls.shape[-1] - 1
    things = {int(i) for i in thing_ids}
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)  # (Q,), (Q,)
    masks = mask_pred.sigmoid()  # (Q, H, W)

    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores = scores[keep].to(masks.dtype)  # (N,)
    cur_classes = labels[keep]  # (N,)
    cur_masks = masks[keep]  # (N, H, W)

    h, w = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_pred.device)  # (H, W)
    segments_info: list[dict[str, Any]] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)  # (H, W), first query on ties
    stuff_segments: dict[int, dict[str, Any]] = {}
    for k, pred_class in enumerate(cur_classes.tolist()):
        isthing = pred_class in things
        won = cur_mask_ids == k  # (H, W)
        confident = cur_masks[k] >= 0.5  # (H, W)
        mask_area = int(won.sum())
        original_area = int(confident.sum())
        mask = won & confident  # (H, W)
        area = int(mask.sum())
        if mask_area == 0 or original_area == 0 or area == 0:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        score = float(cur_scores[k])
        if not isthing and pred_class in stuff_segments:
            info = stuff_segments[pred_class]
            info["score"] = max(info["score"], score)
            info["area"] += area
            panoptic_seg[mask] = info["id"]
            continue
        info = {"id": len(segments_info) + 1, "isthing": isthing, "category_id": int(pred_class), "score": score,
                "area": area}  # fmt: skip
        panoptic_seg[mask] = info["id"]
        segments_info.append(info)
        if not isthing:
            stuff_segments[pred_class] = info
    return panoptic_seg, segments_info


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes of (N, H, W) bool masks as detectron2's ``BitMasks.get_bounding_boxes``.

    ``[x_min, y_min, x_max + 1, y_max + 1]`` in pixels, all zeros for an empty mask. Returns (N, 4) float32.
    """
    n, h, w = masks.shape
    boxes = torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    x_any = masks.any(dim=1)  # (N, W)
    y_any = masks.any(dim=2)  # (N, H)
    nonempty = x_any.any(dim=1)  # (N,)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x_min = torch.where(x_any, xs, w).amin(dim=1)
    x_max = torch.where(x_any, xs, -1).amax(dim=1) + 1
    y_min = torch.where(y_any, ys, h).amin(dim=1)
    y_max = torch.where(y_any, ys, -1).amax(dim=1) + 1
    stacked = torch.stack([x_min, y_min, x_max, y_max], dim=1).to(torch.float32)  # (N, 4)
    return torch.where(nonempty[:, None], stacked, boxes)


def instance_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    topk: int = TOPK,
    thing_ids: Collection[int] | None = None,
) -> dict[str, Tensor]:
    """Official instance inference: top-k (query, class) pairs, each with its query's binary mask.

    The ``topk`` best of the flattened (Q * K) class probabilities (no-object column dropped) are taken; with
    ``thing_ids`` given only pairs whose class is a thing are kept (the official does this when panoptic inference
    is on). Masks are ``logits > 0``; a score is the class probability times the mean sigmoid mask inside the
    binary mask (``sum / (area + 1e-6)``, so 0 for an empty mask; empty masks are kept, as official).

    Differences from the official output: results are sorted by score, descending, equal scores by (query, class)
    (the official uses ``topk(sorted=False)`` and returns them in that unspecified order), and ``boxes`` are the
    tight boxes of the binary masks (see :func:`masks_to_boxes`) where the official returns all-zero boxes.

    ``mask_cls`` (Q, K+1) logits, ``mask_pred`` (Q, H, W) logits. Returns ``masks`` (N, H, W) bool, ``scores``
    (N,), ``labels`` (N,) int64 and ``boxes`` (N, 4) float32 xyxy.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
    k = min(topk, num_queries * num_classes)
    top_idx = probs.flatten().topk(k, sorted=False).indices.sort().values  # (k,) in (query, class) order
    top_scores = probs.flatten()[top_idx]  # (k,)
    labels = top_idx % num_classes  # (k,)
    query_idx = top_idx // num_classes  # (k,)

    if thing_ids is not None:
        things = torch.as_tensor(sorted({int(i) for i in thing_ids}), dtype=labels.dtype, device=labels.device)
        keep = torch.isin(labels, things)
        top_scores, labels, query_idx = top_scores[keep], labels[keep], query_idx[keep]

    logits = mask_pred[query_idx]  # (N, H, W)
    masks = logits > 0  # (N, H, W)
    binary = masks.flatten(1).to(logits.dtype)  # (N, H*W)
    mask_scores = (logits.sigmoid().flatten(1) * binary).sum(1) / (binary.sum(1) + 1e-6)  # (N,)
    scores = top_scores.to(mask_scores.dtype) * mask_scores  # (N,)

    order = torch.sort(scores, descending=True, stable=True).indices
    masks = masks[order]
    return {
        "masks": masks,
        "scores": scores[order],
        "labels": labels[order].to(torch.int64),
        "boxes": masks_to_boxes(masks),
    }


def postprocess(
    pred_logits: Tensor,
    pred_masks: Tensor,
    padded_size: tuple[int, int],
    image_sizes: list[tuple[int, int]],
    output_sizes: list[tuple[int, int]] | None,
    task: str,
    thing_ids: Collection[int] | None,
    config: InferenceConfig,
) -> list[dict[str, Any]]:
    """Post-process a batch of model outputs for one task, in the official order for that task.

    ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w) at 1/4 of ``padded_size`` (the batch's padded input
    size). ``image_sizes`` are the unpadded (H, W) of each image inside the padded batch; ``output_sizes`` (default:
    ``image_sizes``) the sizes to return results at.

    Each result is ``{"task": task}`` plus, as ``sdk.postprocess.postprocess`` returns them:

    * ``"semantic"``: ``{"semantic": (H_out, W_out) class ids}`` (:func:`label_map`) of the scores computed at the
      padded size, cropped and resized (official semantic-only order; :func:`semantic_scores`);
    * ``"instance"``: ``{"instances": instance_inference(...)}`` on cropped and resized logits, with
      ``config.topk_per_image``; ``thing_ids`` (when non-empty) restricts to thing classes as the official does
      for a panoptic model, pass ``None`` for an instance-only model;
    * ``"panoptic"``: ``{"panoptic": (H_out, W_out) int32, "segments_info": [...]}`` on cropped and resized
      logits, with the thresholds of ``config``; ``None`` thing_ids means every class is stuff.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if pred_logits.dim() != 3 or pred_masks.dim() != 4:
        raise ValueError(
            f"expected pred_logits (B, Q, K+1) and pred_masks (B, Q, h, w), got shapes "
            f"{tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}"
        )
    batch = pred_logits.shape[0]
    if pred_masks.shape[:2] != pred_logits.shape[:2]:
        raise ValueError(
            f"pred_logits {tuple(pred_logits.shape)} and pred_masks {tuple(pred_masks.shape)} disagree on (B, Q)"
        )
    if len(image_sizes) != batch:
        raise ValueError(f"{len(image_sizes)} image sizes given for a batch of {batch}")
    if output_sizes is None:
        output_sizes = image_sizes
    if len(output_sizes) != batch:
        raise ValueError(f"{len(output_sizes)} output sizes given for a batch of {batch}")
    ph, pw = padded_size
    for h, w in image_sizes:
        if not (0 < h <= ph and 0 < w <= pw):
            raise ValueError(f"image size {(h, w)} does not fit in the padded size {tuple(padded_size)}")

    results: list[dict[str, Any]] = []
    for mask_cls, mask_pred, image_size, output_size in zip(
        pred_logits, pred_masks, image_sizes, output_sizes, strict=True
    ):
        if task == "semantic":
            scores = semantic_scores(mask_cls[None], mask_pred[None], padded_size, image_size)[0]  # (K, H, W)
            if tuple(output_size) != tuple(image_size):
                scores = _resize(scores, output_size)  # (K, H_out, W_out)
            results.append({"task": task, "semantic": label_map(scores)})
            continue
        logits = upsample_masks(mask_pred, padded_size, image_size, output_size)  # (Q, H_out, W_out)
        if task == "instance":
            things = thing_ids if thing_ids else None
            instances = instance_inference(mask_cls, logits, config.topk_per_image, things)
            results.append({"task": task, "instances": instances})
        else:
            seg, info = panoptic_inference(
                mask_cls,
                logits,
                thing_ids or (),
                object_mask_threshold=config.object_mask_threshold,
                overlap_threshold=config.overlap_threshold,
            )
            results.append({"task": task, "panoptic": seg, "segments_info": info})
    return results
