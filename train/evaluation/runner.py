"""Run a model over a dataset with the official post-processing and score it.

Frames are resized with ``runtimes.geometry``, the SDK's own pre-processing (OpenCV bilinear), so the figures
measure the model inputs the SDK ships.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from runtimes.geometry import resize_shortest_edge
from train.data.sample import Sample, SegmentationDataset
from train.evaluation.evaluate import evaluate
from train.model.config import ModelMeta
from train.model.inference import postprocess

logger = logging.getLogger(__name__)


def normalize_images(images: Tensor, image_sizes: list[tuple[int, int]], meta: ModelMeta) -> Tensor:
    """uint8 RGB (B, 3, H, W) -> the model's normalised float input; padding stays exactly 0 (official order:
    normalise, then pad)."""
    x = images.float()
    if meta.input_format == "BGR":
        x = x.flip(1)
    mean = torch.tensor(meta.pixel_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(meta.pixel_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    for i, (h, w) in enumerate(image_sizes):
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    return x


def model_image(image: Tensor, eval_resize: dict[str, Any] | None) -> Tensor:
    """(3, H, W) uint8 RGB -> the (3, h, w) uint8 image the model sees: shortest edge to ``eval_resize["min_size"]``,
    longest at most ``max_size``, by ``runtimes.geometry`` as the SDK's ``shortest_edge`` policy; unchanged when
    ``eval_resize`` is empty."""
    if not eval_resize:
        return image
    frame = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())  # (H, W, 3)
    resized, _ = resize_shortest_edge(frame, int(eval_resize["min_size"]), int(eval_resize.get("max_size", 0)))
    return torch.from_numpy(resized).permute(2, 0, 1)  # (3, h, w)


@torch.no_grad()
def predict_sample(
    model: nn.Module, sample: Sample, meta: ModelMeta, task: str, eval_resize: dict[str, Any] | None
) -> dict[str, Any]:
    """One sample through the model; the post-processed output is at the sample's own (H, W)."""
    h, w = sample["image"].shape[-2:]
    image = model_image(sample["image"], eval_resize)  # (3, h', w') uint8
    device = next(model.parameters()).device
    size = (int(image.shape[-2]), int(image.shape[-1]))
    x = normalize_images(image[None].to(device), [size], meta)
    out = model(x, aux=False)  # the last prediction only
    padded = (out["pred_masks"].shape[-2] * 4, out["pred_masks"].shape[-1] * 4)
    return postprocess(
        out["pred_logits"].float(),
        out["pred_masks"].float(),
        padded,
        [size],
        [(int(h), int(w))],
        task,
        meta.thing_ids,
        meta.inference,
    )[0]


def evaluate_model(
    model: nn.Module,
    dataset: SegmentationDataset,
    meta: ModelMeta,
    task: str,
    eval_resize: dict[str, Any] | None = None,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset`` (mIoU / PQ / AP as the task has them, in percent)."""
    was_training = model.training
    model.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise ValueError("the evaluation dataset is empty")

    def pairs() -> Iterator[tuple[Sample, dict[str, Any]]]:
        for i in tqdm(range(count), desc="eval", disable=not progress, leave=False):
            sample = dataset[i]
            yield sample, predict_sample(model, sample, meta, task, eval_resize)

    try:
        metrics = evaluate(pairs(), task, meta)
    finally:
        model.train(was_training)
    logger.info("eval on %d images: %s", count, {k: round(v, 2) for k, v in metrics.items() if k in HEADLINE})
    return metrics


HEADLINE = ("mIoU", "PQ", "AP", "pACC", "SQ", "RQ")
