"""pytest-benchmark: the SDK's numpy pre- and post-processing, per task, at street-camera frame sizes.

    pytest benchmarks/test_bench_pre_post.py --benchmark-only

Pre-processing: letterbox of a 720p / 1080p BGR frame into a 512x512 model input. Post-processing, from a
512x512 model's outputs back to the 720p frame: the semantic label map (the in-graph path), official semantic
inference from query outputs, panoptic and instance (Mask2Former ADE20K/COCO sizes: 100 queries, 150 / 133
classes, masks at 1/4 of the input).
"""

from __future__ import annotations

import numpy as np
import pytest

from sdk.postprocess import postprocess
from sdk.preprocess import fit_to_input

INPUT = (512, 512)
FRAMES = {"720p": (720, 1280), "1080p": (1080, 1920)}
PAD = [104, 116, 124]
LETTERBOX = {"resize_policy": "letterbox", "size": list(INPUT), "pad_bgr": PAD}


def _frame(size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)


def _metadata(task: str, classes: int, things: int) -> dict:
    return {
        "task": task,
        "class_names": [f"class{i}" for i in range(classes)],
        "thing_ids": list(range(things)),
        "inference": {"object_mask_threshold": 0.8, "overlap_threshold": 0.8, "topk_per_image": 100},
    }


def _query_outputs(queries: int, classes: int) -> dict[str, np.ndarray]:
    """Query logits with a few confident queries (as a trained model gives) and smooth mask logits at 1/4."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (1, queries, classes + 1)).astype(np.float32)
    logits[0, :, -1] += 4.0  # most queries say "no object"
    confident = rng.choice(queries, 20, replace=False)
    logits[0, confident, rng.integers(0, classes, 20)] += 12.0
    h4, w4 = INPUT[0] // 4, INPUT[1] // 4
    yy, xx = np.mgrid[0:h4, 0:w4].astype(np.float32)
    centres = rng.uniform(0, 1, (queries, 2)) * (h4, w4)
    masks = 6.0 - ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 200.0
    return {"pred_logits": logits, "pred_masks": masks[None].astype(np.float32)}


@pytest.mark.parametrize("frame_name", list(FRAMES))
def test_letterbox(benchmark, frame_name: str) -> None:
    frame = _frame(FRAMES[frame_name])
    image, geometry = benchmark(fit_to_input, frame, LETTERBOX)
    assert image.shape == (*INPUT, 3) and geometry.frame_size == FRAMES[frame_name]


def test_semantic_label_map_to_frame(benchmark) -> None:
    _, geometry = fit_to_input(_frame(FRAMES["720p"]), LETTERBOX)
    labels = np.random.default_rng(0).integers(0, 150, (1, *INPUT), dtype=np.uint8)
    out = benchmark(postprocess, {"labels": labels}, _metadata("semantic", 150, 0), geometry)
    assert out["semantic"].shape == FRAMES["720p"]


@pytest.mark.parametrize(
    ("task", "classes", "things"),
    [("semantic", 150, 0), ("panoptic", 133, 80), ("instance", 80, 80)],
    ids=["semantic-ade20k", "panoptic-coco", "instance-coco"],
)
def test_postprocess_from_queries(benchmark, task: str, classes: int, things: int) -> None:
    _, geometry = fit_to_input(_frame(FRAMES["720p"]), LETTERBOX)
    outputs = _query_outputs(100, classes)
    out = benchmark(postprocess, outputs, _metadata(task, classes, things), geometry, 0, task)
    assert out["task"] == task
