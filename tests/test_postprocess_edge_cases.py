"""One table of hand-made post-processing edge cases, run against both implementations with the same expectations.

``sdk.postprocess`` (numpy, what the SDK ships) and ``train.model.inference`` (torch, what evaluation measures)
must agree at the edges: argmax ties, empty masks, thresholds met exactly (object mask 0.8, overlap 0.8, mask
probability 0.5), overlapping segments, stuff merged vs things kept apart, no kept query, void pixels.

Every case is written at 1/4 resolution: one row of ``n`` mask cells, each ``+`` (logit +512), ``-`` (-512) or
``0`` (a whole query at logit 0). The frame is the padded input, (4, 4n). Bilinear x4 of +-512 gives +-128 or more
at every pixel, so mask probabilities are exactly 1 or 0 (0.5 for a ``0`` query) in both implementations, and a
cell's result covers its 4x4 pixels. Class rows put ``prob`` on one class and the rest on "no object"; the
exact-0.8 row is built so that both softmaxes give float32(0.8) exactly (checked below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import sdk.postprocess as numpy_impl
from runtimes.geometry import Geometry

torch = pytest.importorskip("torch")
from train.model import inference as torch_impl  # noqa: E402
from train.model.config import InferenceConfig  # noqa: E402

K = 4  # classes 0, 1 are things, 2, 3 stuff; column K is "no object"
THINGS = [0, 1]
LOGIT = {"+": 512.0, "-": -512.0, "0": 0.0}
CELL = 4  # a 1/4-resolution cell is 4x4 frame pixels
AREA = CELL * CELL
EXACT_08 = float(np.float32(0.8))


def cls_row(label: int, prob: float) -> np.ndarray:
    """(K+1,) float32 logits whose softmax is ``prob`` at ``label``, the rest on "no object" (other classes 0).

    ``prob=0.8`` uses logits (0, ln 0.25), for which both softmaxes give float32(0.8) exactly."""
    row = np.full(K + 1, -200.0, np.float32)  # exp underflows to exactly 0
    if label == K:
        row[K] = 0.0
        row[0] = np.log((1 - prob) / prob)
        return row
    row[label] = 0.0
    row[K] = np.log(0.25) if prob == EXACT_08 else np.log((1 - prob) / prob)
    return row


@dataclass
class Case:
    """Queries as (label, class probability, mask cells), what to run, and the expected result."""

    queries: list[tuple[int, float, str]]
    task: str
    expected: dict[str, Any]
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk: int = 100
    things: list[int] = field(default_factory=lambda: list(THINGS))

    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        logits = np.stack([cls_row(label, prob) for label, prob, _ in self.queries])  # (Q, K+1)
        n = len(self.queries[0][2])
        masks = np.empty((len(self.queries), 1, n), np.float32)  # (Q, 1, n) at 1/4 resolution
        for q, (_, _, cells) in enumerate(self.queries):
            masks[q, 0] = [LOGIT[c] for c in (cells * n if cells == "0" else cells)]
        return logits, masks


def cells_to_map(ids: list[int]) -> np.ndarray:
    """Per-cell values -> the (4, 4n) frame map."""
    return np.kron(np.asarray(ids)[None], np.ones((CELL, CELL), np.int64))


def seg(id_: int, isthing: bool, category_id: int, score: float, cells: int) -> dict[str, Any]:
    return {
        "id": id_,
        "isthing": isthing,
        "category_id": category_id,
        "score": pytest.approx(score, abs=1e-6),
        "area": cells * AREA,
    }


def instance(label: int, cells: str, prob: float) -> dict[str, Any]:
    """One expected instance: its mask (the ``+`` cells), label, score (prob x mean probability 1) and box."""
    mask = cells_to_map([c == "+" for c in cells]).astype(bool)
    on = [i for i, c in enumerate(cells) if c == "+"]
    box = [on[0] * CELL, 0, (on[-1] + 1) * CELL, CELL] if on else [0, 0, 0, 0]
    return {"mask": mask, "label": label, "score": prob if on else 0.0, "box": box}


PANOPTIC = "panoptic"
CASES = {
    # stuff of one class merges into one segment (score: the best of its queries), things of one class stay apart
    "stuff-merged-things-apart": Case(
        [(2, 0.9, "++----"), (0, 0.9, "--+---"), (0, 0.9, "---+--"), (2, 0.95, "----++")],
        PANOPTIC,
        {
            "panoptic": [1, 1, 2, 3, 1, 1],
            "segments_info": [seg(1, False, 2, 0.95, 4), seg(2, True, 0, 0.9, 1), seg(3, True, 0, 0.9, 1)],
        },
    ),
    # no query kept ("no object" wins, or below the threshold): everything is void
    "nothing-kept": Case(
        [(K, 0.99, "++++"), (1, 0.79, "++++")], PANOPTIC, {"panoptic": [0, 0, 0, 0], "segments_info": []}
    ),
    # class probability exactly at object_mask_threshold is not kept (kept only when above)
    "object-threshold-exactly-0.8": Case(
        [(0, EXACT_08, "+++---"), (1, 0.9, "---+++")],
        PANOPTIC,
        {"panoptic": [0, 0, 0, 1, 1, 1], "segments_info": [seg(1, True, 1, 0.9, 3)]},
    ),
    # a query winning exactly 0.8 of its own mask is kept (dropped only below); the higher score wins the overlap;
    # a pixel no query is confident on goes to the first kept query (argmax tie) and stays void
    "overlap-exactly-0.8": Case(
        [(0, 0.95, "+-----"), (1, 0.9, "+++++-")],
        PANOPTIC,
        {"panoptic": [1, 2, 2, 2, 2, 0], "segments_info": [seg(1, True, 0, 0.95, 1), seg(2, True, 1, 0.9, 4)]},
    ),
    # winning 3 of 5 cells (0.6 < 0.8) drops the query; the pixels it won stay void
    "overlap-below-threshold": Case(
        [(0, 0.95, "++----"), (1, 0.9, "+++++-")],
        PANOPTIC,
        {"panoptic": [1, 1, 0, 0, 0, 0], "segments_info": [seg(1, True, 0, 0.95, 2)]},
    ),
    # equal score x probability: the first query wins every pixel, the second wins none and makes no segment
    "tie-first-query-wins": Case(
        [(0, 0.9, "+++---"), (1, 0.9, "+++---")],
        PANOPTIC,
        {"panoptic": [1, 1, 1, 0, 0, 0], "segments_info": [seg(1, True, 0, 0.9, 3)]},
    ),
    # mask probability exactly 0.5 is confident (>= 0.5)
    "mask-probability-exactly-0.5": Case(
        [(0, 0.95, "+-----"), (3, 0.9, "0")],
        PANOPTIC,
        {"panoptic": [1, 2, 2, 2, 2, 2], "segments_info": [seg(1, True, 0, 0.95, 1), seg(2, False, 3, 0.9, 5)]},
    ),
    # a thing list that is empty makes every class stuff: two class-0 queries merge (score: the best, here the first)
    "no-things-all-stuff": Case(
        [(0, 0.95, "++--"), (0, 0.9, "--++")],
        PANOPTIC,
        {"panoptic": [1, 1, 1, 1], "segments_info": [seg(1, False, 0, 0.95, 4)]},
        things=[],
    ),
    # semantic: equal class scores go to the lower class id
    "semantic-tie-lower-class": Case(
        [(1, 0.5, "+++---"), (2, 0.5, "+++---"), (3, 0.9, "---+++")], "semantic", {"semantic": [1, 1, 1, 3, 3, 3]}
    ),
    # semantic: every mask empty -> all scores 0 -> class 0 everywhere (semantic has no void)
    "semantic-all-empty": Case([(2, 0.9, "----"), (3, 0.9, "----")], "semantic", {"semantic": [0, 0, 0, 0]}),
    # instance: an empty mask is kept with score 0 and an all-zero box; a logit of exactly 0 is not in the mask
    "instance-empty-masks": Case(
        [(0, 0.9, "--++--"), (1, 0.95, "------"), (0, 0.8, "0")],
        "instance",
        {"instances": [instance(0, "--++--", 0.9), instance(1, "------", 0.95), instance(0, "------", 0.8)]},
        topk=3,
    ),
    # instance: equal scores are ordered by (query, class), not by class
    "instance-tie-by-query": Case(
        [(1, 0.9, "++----"), (0, 0.9, "++----")],
        "instance",
        {"instances": [instance(1, "++----", 0.9), instance(0, "++----", 0.9)]},
        topk=2,
    ),
    # instance: stuff pairs are removed after the top-k (as official), so fewer than k come back
    "instance-things-only": Case(
        [(2, 0.95, "++++--"), (0, 0.9, "--++++")], "instance", {"instances": [instance(0, "--++++", 0.9)]}, topk=2
    ),
}


def run_numpy(case: Case) -> dict[str, Any]:
    logits, masks = case.outputs()
    size = (CELL * masks.shape[1], CELL * masks.shape[2])
    metadata = {
        "task": "panoptic",
        "class_names": [f"class{i}" for i in range(K)],
        "thing_ids": case.things,
        "inference": {
            "object_mask_threshold": case.object_mask_threshold,
            "overlap_threshold": case.overlap_threshold,
            "topk_per_image": case.topk,
        },
    }
    outputs = {"pred_logits": logits[None], "pred_masks": masks[None]}
    return numpy_impl.postprocess(outputs, metadata, Geometry(size, size, size), task=case.task)


def run_torch(case: Case) -> dict[str, Any]:
    logits, masks = case.outputs()
    size = (CELL * masks.shape[1], CELL * masks.shape[2])
    config = InferenceConfig(case.object_mask_threshold, case.overlap_threshold, case.topk)
    (result,) = torch_impl.postprocess(
        torch.from_numpy(logits)[None],
        torch.from_numpy(masks)[None],
        size,
        [size],
        None,
        case.task,
        case.things,
        config,
    )
    as_numpy = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in result.items()}
    if "instances" in as_numpy:
        as_numpy["instances"] = {k: v.numpy() for k, v in as_numpy["instances"].items()}
    return as_numpy


IMPLEMENTATIONS = {"numpy": run_numpy, "torch": run_torch}


def test_exact_threshold_rows_are_exact_in_both():
    row = cls_row(0, EXACT_08)[None]
    assert numpy_impl.softmax(row, -1)[0, 0] == np.float32(0.8)
    assert torch.softmax(torch.from_numpy(row), -1)[0, 0].item() == np.float32(0.8)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("name", list(CASES))
def test_edge_case(name: str, implementation: str) -> None:
    case = CASES[name]
    result = IMPLEMENTATIONS[implementation](case)
    expected = case.expected
    assert set(result) == {"task", *expected}
    assert result["task"] == case.task
    if "panoptic" in expected:
        assert result["panoptic"].dtype == np.int32
        np.testing.assert_array_equal(result["panoptic"], cells_to_map(expected["panoptic"]))
        assert result["segments_info"] == expected["segments_info"]
    if "semantic" in expected:
        assert result["semantic"].dtype == np.uint8
        np.testing.assert_array_equal(result["semantic"], cells_to_map(expected["semantic"]))
    if "instances" in expected:
        got, want = result["instances"], expected["instances"]
        assert set(got) == {"masks", "scores", "labels", "boxes"}
        assert got["masks"].dtype == bool and got["labels"].dtype == np.int64 and got["boxes"].dtype == np.float32
        np.testing.assert_array_equal(got["labels"], [w["label"] for w in want])
        np.testing.assert_array_equal(got["masks"], np.stack([w["mask"] for w in want]))
        np.testing.assert_array_equal(got["boxes"], np.array([w["box"] for w in want], np.float32))
        np.testing.assert_allclose(got["scores"], [w["score"] for w in want], rtol=0, atol=1e-5)
