"""sdk.postprocess (numpy) against the torch oracle train.model.inference on the same outputs and geometries."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdk.postprocess as pp
from runtimes.geometry import Geometry
from sdk import bilinear
from train.model.config import InferenceConfig
from train.model.inference import postprocess as oracle_postprocess
from train.model.inference import semantic_labels, upsample_masks

NUM_CLASSES = 10
THING_IDS = [0, 1, 2, 3, 4]
STUFF_BANDS = [(6, 0, 7), (8, 7, 14), (6, 14, 20), (9, 20, 32)]  # (class, rows at 1/4): class 6 twice -> a merge
CONFIG = InferenceConfig(object_mask_threshold=0.8, overlap_threshold=0.8, topk_per_image=20)
GEOMETRIES = {
    "no-resize": Geometry((128, 160), (128, 160), (128, 160)),
    "letterbox": Geometry((100, 200), (80, 160), (128, 160)),
    "upscaled": Geometry((300, 400), (120, 160), (128, 160)),
    "padded-in-graph": Geometry((240, 300), (120, 150), (120, 150)),  # shortest_edge: input 120x150, padded 128x160
}
# Our bilinear matches torch's to 1 ulp (measured max |diff| 1.9e-6 on logits of magnitude ~16; torch fuses some
# multiply-adds). That can flip a pixel sitting exactly on a threshold or an argmax tie; on these outputs we
# measured 0 flipped pixels in every case, so allow at most 1e-4 of the pixels for such last-bit flips.
PIXEL_TOLERANCE = 1e-4


def make_outputs(seed: int, Q: int = 24, K: int = NUM_CLASSES, h4: int = 32, w4: int = 40):
    """Structured random outputs: stuff bands (class 6 twice), thing blobs, and no-object noise queries."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (Q, K + 1)).astype(np.float32)  # (Q, K+1)
    logits[:, K] += 3.0  # mostly "no object"
    masks = rng.normal(0, 1.5, (Q, h4, w4)).astype(np.float32)  # (Q, h4, w4)
    yy, xx = np.mgrid[0:h4, 0:w4].astype(np.float32)
    for q, (c, y0, y1) in enumerate(STUFF_BANDS):
        logits[q] = rng.normal(0, 0.5, K + 1)
        logits[q, c] = 7.0
        masks[q] = np.where((yy >= y0) & (yy < y1), 1.5, -4.0) + rng.normal(0, 0.5, (h4, w4))
    for i, q in enumerate(range(len(STUFF_BANDS), len(STUFF_BANDS) + 7)):
        logits[q] = rng.normal(0, 0.5, K + 1)
        logits[q, i % 5] = 6.0 + rng.uniform(0, 2)
        cy, cx, r = rng.uniform(2, h4 - 2), rng.uniform(2, w4 - 2), rng.uniform(2, 4)
        masks[q] = 14.0 * (1 - np.hypot(yy - cy, xx - cx) / r) + rng.normal(0, 0.7, (h4, w4))
    return logits, masks


def oracle(logits: np.ndarray, masks: np.ndarray, geometry: Geometry, task: str) -> dict:
    padded = (masks.shape[-2] * 4, masks.shape[-1] * 4)
    return oracle_postprocess(
        torch.from_numpy(logits)[None],
        torch.from_numpy(masks)[None],
        padded,
        [geometry.resized_size],
        [geometry.frame_size],
        task,
        THING_IDS,
        CONFIG,
    )[0]


def graph_labels(logits: np.ndarray, masks: np.ndarray, geometry: Geometry) -> np.ndarray:
    """What the semantic graph returns (its tail is ``semantic_labels``): (H, W) uint8 at the input size."""
    labels = semantic_labels(torch.from_numpy(logits)[None], torch.from_numpy(masks)[None], geometry.input_size)
    return labels[0].numpy()


params = pytest.mark.parametrize(("seed", "name"), [(s, n) for s in range(3) for n in GEOMETRIES])


# ---------------------------------------------------------------------------------------------------------------
# resizing


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((32, 40), (128, 160)),
        ((80, 160), (100, 200)),
        ((80, 160), (300, 400)),
        ((97, 131), (55, 77)),
        ((7, 5), (3, 90)),
    ],
)
def test_resize_bilinear_matches_torch(src, dst):
    x = (np.random.default_rng(0).standard_normal((3, *src)) * 5).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    got = bilinear.resize_bilinear(x, dst)
    assert got.shape == (3, *dst) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=4e-6)  # 1-2 ulp at |x| ~ 16
    np.testing.assert_array_equal(
        bilinear.resize_bilinear(x, dst, crop=(dst[0] // 2, dst[1] - 1)), got[:, : dst[0] // 2, :-1]
    )


@pytest.mark.parametrize("n", [1, 2, 7, 32])
@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("axis", [1, 2])
def test_integer_upsample_equals_general_path(n, factor, axis):
    x = (np.random.default_rng(n).standard_normal((2, n, n + 3) if axis == 1 else (2, n + 3, n)) * 5).astype(np.float32)
    for count in sorted({1, factor * n, max(1, factor * n - 3), factor * n // 2 + 1}):
        i0, i1, w0, w1 = bilinear.linear_taps(n, factor * n, count)
        shape = [1, 1, 1]
        shape[axis] = -1
        general = np.take(x, i0, axis=axis) * w0.reshape(shape) + np.take(x, i1, axis=axis) * w1.reshape(shape)
        np.testing.assert_array_equal(bilinear._upsample_int_axis(x, axis, factor, count), general)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_upsample_mask_logits_matches_oracle(name):
    geometry = GEOMETRIES[name]
    _, masks = make_outputs(0)
    expected = upsample_masks(torch.from_numpy(masks), (128, 160), geometry.resized_size, geometry.frame_size)
    got = pp.upsample_mask_logits(masks, geometry)
    assert got.shape == (len(masks), *geometry.frame_size)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=4e-6)  # 1-2 ulp


def test_region_outside_the_padded_input_is_an_error():
    with pytest.raises(pp.OutputsError, match="does not fit the padded size"):
        pp.upsample_mask_logits(np.zeros((2, 8, 8), np.float32), Geometry((40, 40), (40, 40), (40, 40)))


# ---------------------------------------------------------------------------------------------------------------
# semantic


@params
def test_semantic_from_labels_equals_torch_crop_and_nearest(seed, name):
    geometry = GEOMETRIES[name]
    labels = graph_labels(*make_outputs(seed), geometry)  # (H, W) uint8
    rh, rw = geometry.resized_size
    cropped = torch.from_numpy(labels[:rh, :rw].astype(np.float32))[None, None]
    expected = F.interpolate(cropped, size=geometry.frame_size, mode="nearest")[0, 0].numpy().astype(np.uint8)
    got = pp.semantic_from_labels(labels, geometry)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("src", "dst"), [((7, 9), (50, 31)), ((97, 131), (55, 77)), ((123, 157), (1080, 1920))])
def test_nearest_indices_equal_torch(src, dst):
    labels = np.random.default_rng(0).integers(0, 250, src).astype(np.uint8)
    expected = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=dst, mode="nearest")[0, 0].numpy()
    got = pp.semantic_from_labels(labels, Geometry(dst, src, src))
    np.testing.assert_array_equal(got, expected.astype(np.uint8))


@params
def test_semantic_from_outputs_matches_official_argmax(seed, name):
    geometry = GEOMETRIES[name]
    logits, masks = make_outputs(seed)
    expected = oracle(logits, masks, geometry, "semantic")["semantic"].numpy()
    got = pp.semantic_from_outputs(logits, masks, geometry)
    assert got.shape == geometry.frame_size
    assert (got == expected).mean() >= 0.999  # measured: 1.0 in every case


# ---------------------------------------------------------------------------------------------------------------
# panoptic


def assert_panoptic_equal(seg, info, expected_seg, expected_info):
    """Equal up to a relabelling of segment ids, with the same categories; at most PIXEL_TOLERANCE pixels differ."""
    assert len(info) == len(expected_info)
    relabel = {0: 0}
    for ours in info:
        overlap = expected_seg[seg == ours["id"]]
        relabel[ours["id"]] = int(np.bincount(overlap).argmax())
    theirs = {s["id"]: s for s in expected_info}
    for ours in info:
        match = theirs[relabel[ours["id"]]]
        assert (ours["category_id"], ours["isthing"]) == (match["category_id"], match["isthing"])
    mapped = np.vectorize(relabel.get)(seg) if seg.size else seg
    assert (mapped != expected_seg).mean() <= PIXEL_TOLERANCE


@params
def test_panoptic_matches_oracle(seed, name):
    geometry = GEOMETRIES[name]
    logits, masks = make_outputs(seed)
    expected = oracle(logits, masks, geometry, "panoptic")
    seg, info = pp.panoptic_from_outputs(logits, masks, geometry, THING_IDS, 0.8, 0.8)
    assert seg.dtype == np.int32 and seg.shape == geometry.frame_size
    assert len(info) >= 3  # the data makes several segments, things and stuff
    assert {s["isthing"] for s in info} == {True, False} or name == "letterbox"
    assert_panoptic_equal(seg, info, expected["panoptic"].numpy(), expected["segments_info"])
    probs = pp.softmax(logits, -1)
    for segment in info:
        assert segment["area"] == int((seg == segment["id"]).sum()) > 0
        assert segment["score"] > 0.8 and segment["score"] <= probs[:, segment["category_id"]].max() + 1e-7


def test_panoptic_merges_stuff_of_one_class():
    geometry = GEOMETRIES["no-resize"]
    seg, info = pp.panoptic_from_outputs(*make_outputs(0), geometry, THING_IDS, 0.8, 0.8)
    class6 = [s for s in info if s["category_id"] == 6]
    assert len(class6) == 1  # two queries of class 6, one segment
    rows = np.flatnonzero((seg == class6[0]["id"]).any(axis=1))
    assert rows.min() < 7 * 4 and rows.max() >= 14 * 4  # it covers both bands


def test_panoptic_upsamples_only_kept_queries(monkeypatch):
    seen = []
    real = pp.upsample_mask_logits
    monkeypatch.setattr(pp, "upsample_mask_logits", lambda m, g: seen.append(len(m)) or real(m, g))
    logits, masks = make_outputs(0)
    pp.panoptic_from_outputs(logits, masks, GEOMETRIES["upscaled"], THING_IDS, 0.8, 0.8)
    probs = pp.softmax(logits, -1)
    kept = int(((probs.argmax(-1) != NUM_CLASSES) & (probs.max(-1) > 0.8)).sum())
    assert seen == [kept] and kept < len(masks)


def test_panoptic_with_nothing_kept_is_all_void():
    logits, masks = make_outputs(0)
    logits[:, -1] = 50.0  # every query says "no object"
    seg, info = pp.panoptic_from_outputs(logits, masks, GEOMETRIES["upscaled"], THING_IDS)
    assert info == [] and seg.shape == (300, 400) and not seg.any()


# ---------------------------------------------------------------------------------------------------------------
# instance


def match_instances(got: dict, expected: dict) -> list[int]:
    """For each of our instances, the oracle's with the same label, score (1e-4) and mask; each used once.

    Both sides sort by score, but equal scores (e.g. 0 for masks the crop empties) come in the unspecified order of
    torch's ``topk(sorted=False)``, so the lists are compared as matched sets.
    """
    unused = list(range(len(expected["scores"])))
    pairs = []
    for i in range(len(got["scores"])):
        for j in unused:
            if (
                got["labels"][i] == expected["labels"][j]
                and abs(got["scores"][i] - expected["scores"][j]) <= 1e-4  # measured max 2.4e-7
                and (got["masks"][i] != expected["masks"][j]).mean() <= PIXEL_TOLERANCE
            ):
                pairs.append(j)
                unused.remove(j)
                break
        else:
            raise AssertionError(f"instance {i} (label {got['labels'][i]}, score {got['scores'][i]}) has no match")
    return pairs


@params
def test_instance_matches_oracle(seed, name):
    geometry = GEOMETRIES[name]
    logits, masks = make_outputs(seed)
    expected = {k: v.numpy() for k, v in oracle(logits, masks, geometry, "instance")["instances"].items()}
    got = pp.instance_from_outputs(logits, masks, geometry, CONFIG.topk_per_image, THING_IDS)
    assert got["masks"].dtype == bool and got["boxes"].dtype == np.float32 and got["labels"].dtype == np.int64
    assert got["masks"].shape == expected["masks"].shape and got["masks"].shape[1:] == geometry.frame_size
    assert np.all(np.diff(got["scores"]) <= 0) and set(got["labels"].tolist()) <= set(THING_IDS)
    pairs = match_instances(got, expected)
    np.testing.assert_array_equal(got["boxes"], expected["boxes"][pairs])
    np.testing.assert_allclose(got["scores"], expected["scores"][pairs], rtol=0, atol=1e-4)
    assert (got["scores"] > 0.1).sum() >= 3  # non-trivial: several real instances


def test_instance_without_thing_filter_and_upsampling_only_chosen(monkeypatch):
    seen = []
    real = pp.upsample_mask_logits
    monkeypatch.setattr(pp, "upsample_mask_logits", lambda m, g: seen.append(len(m)) or real(m, g))
    logits, masks = make_outputs(1)
    got = pp.instance_from_outputs(logits, masks, GEOMETRIES["letterbox"], topk=5)
    assert len(got["scores"]) == 5 and np.all(np.diff(got["scores"]) <= 0)
    assert sum(seen) <= 5 < len(masks)


# ---------------------------------------------------------------------------------------------------------------
# dispatch


def metadata(task: str) -> dict:
    return {
        "task": task,
        "class_names": [f"class{i}" for i in range(NUM_CLASSES)],
        "thing_ids": THING_IDS,
        "inference": {"object_mask_threshold": 0.8, "overlap_threshold": 0.8, "topk_per_image": 20},
    }


def test_postprocess_dispatches_by_task_and_batch_index():
    geometry = GEOMETRIES["upscaled"]
    (l0, m0), (l1, m1) = make_outputs(0), make_outputs(1)
    outputs = {"pred_logits": np.stack([l0, l1]), "pred_masks": np.stack([m0, m1])}

    out = pp.postprocess(outputs, metadata("panoptic"), geometry, index=1)
    seg, info = pp.panoptic_from_outputs(l1, m1, geometry, THING_IDS, 0.8, 0.8)
    assert out["task"] == "panoptic" and out["segments_info"] == info
    np.testing.assert_array_equal(out["panoptic"], seg)

    out = pp.postprocess(outputs, metadata("instance"), geometry)
    np.testing.assert_array_equal(
        out["instances"]["scores"], pp.instance_from_outputs(l0, m0, geometry, 20, THING_IDS)["scores"]
    )

    out = pp.postprocess(outputs, metadata("panoptic"), geometry, task="semantic")  # a semantic view of queries
    np.testing.assert_array_equal(out["semantic"], pp.semantic_from_outputs(l0, m0, geometry))

    labels = graph_labels(l0, m0, geometry)[None]  # (1, H, W)
    out = pp.postprocess({"labels": labels}, metadata("semantic"), geometry)
    np.testing.assert_array_equal(out["semantic"], pp.semantic_from_labels(labels[0], geometry))


def test_postprocess_accepts_float16_outputs():
    logits, masks = make_outputs(0)
    geometry = GEOMETRIES["no-resize"]
    outputs = {"pred_logits": logits[None].astype(np.float16), "pred_masks": masks[None].astype(np.float16)}
    out = pp.postprocess(outputs, metadata("panoptic"), geometry)
    assert out["panoptic"].shape == geometry.frame_size and len(out["segments_info"]) >= 3


@pytest.mark.parametrize(
    ("task", "outputs", "match"),
    [
        ("panoptic", {"labels": np.zeros((1, 128, 160), np.uint8)}, "needs output 'pred_logits'"),
        ("semantic", {"pred_logits": np.zeros((1, 4, NUM_CLASSES + 1), np.float32)}, "needs output 'pred_masks'"),
        ("instance", {"pred_logits": np.zeros((1, 4, 5)), "pred_masks": np.zeros((1, 4, 32, 40))}, "class columns"),
        ("panoptic", {"pred_logits": np.zeros((4, 11)), "pred_masks": np.zeros((1, 4, 32, 40))}, "should have 3"),
        ("semantic", {"pred_masks": np.zeros((1, 4, 32, 40), np.float32)}, "needs output 'labels'"),
        ("semantic", {"labels": np.zeros((1, 128, 160), np.uint8)}, None),
    ],
)
def test_postprocess_errors_say_what_is_missing(task, outputs, match):
    if match is None:  # index out of range
        with pytest.raises(pp.OutputsError, match="out of range"):
            pp.postprocess(outputs, metadata(task), GEOMETRIES["no-resize"], index=1)
        return
    with pytest.raises(pp.OutputsError, match=match):
        pp.postprocess(outputs, metadata(task), GEOMETRIES["no-resize"])


def test_postprocess_rejects_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        pp.postprocess({}, metadata("depth"), GEOMETRIES["no-resize"])


def test_class_scores_at_a_quarter_of_the_frame() -> None:
    """The semantic graph's scores: the frame's region cropped at the mask stride, resized to a quarter of the frame
    (bilinear: a constant stays constant); wrong shapes are refused with a message."""
    geometry = GEOMETRIES["letterbox"]  # frame 100x200 placed as 80x160 in a 128x160 input
    scores = np.zeros((3, 32, 40), np.float32)  # (K, 128/4, 160/4)
    scores[1, :20, :40] = 0.7  # the frame's region (80/4 x 160/4)
    out = pp.scores_at_frame(scores, geometry)
    assert out.shape == (3, 25, 50) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], 0.7, rtol=1e-6)
    with pytest.raises(pp.OutputsError, match=r"expected \(K, h, w\) class scores"):
        pp.scores_at_frame(scores[0], geometry)
    with pytest.raises(pp.OutputsError, match="smaller than the frame's region"):
        pp.scores_at_frame(scores[:, :10], geometry)


@pytest.mark.parametrize("classes", [150, 300])
def test_class_scores_of_more_classes_than_opencv_resizes_at_once(classes: int) -> None:
    """ADE20K's 150 classes: more channels than one ``cv2.resize`` takes on OpenCV 5 (128); every class plane is
    resized as it would be alone (to float32 rounding: one channel takes another OpenCV path)."""
    geometry = GEOMETRIES["letterbox"]
    scores = np.random.default_rng(0).random((classes, 32, 40), dtype=np.float32)
    out = pp.scores_at_frame(scores, geometry)
    assert out.shape == (classes, 25, 50)
    alone = [cv2.resize(plane[:20, :40], (50, 25), interpolation=cv2.INTER_LINEAR) for plane in scores]
    np.testing.assert_allclose(out, np.stack(alone), atol=1e-5)
