"""Post-processing (train.model.inference) against the official semantics and HF's Mask2FormerImageProcessor.

HF's post-processing is not the official one; where they differ the tests below assert the difference itself
(see ``Known HF differences``), so a change on either side shows up instead of being tolerated.

HF always upsamples mask logits to a hard-coded (384, 384) first. The parity data therefore uses 96x96 mask logits
(a 384x384 padded input holding a 384x384 image, so the official crop is a no-op) and everything in float64 so
argmax/threshold ties cannot flip between two implementations that sum in different orders.

Known HF differences (line numbers in transformers/models/mask2former/image_processing_mask2former.py, v5.24):

* all tasks (583, 680, 801): mask logits are resized to (384, 384) whatever the padded input was, and never cropped,
  so HF is only right for 384x384 unpadded inputs.
* panoptic, resizing (183): HF resizes the sigmoid *probabilities* to the target size; official resizes the
  *logits* and applies the sigmoid after.
* panoptic, painted pixels (151, 211): HF paints every pixel a kept query wins the argmax on; official only those
  where the query's own mask probability is also >= 0.5 (the rest stays void, 0), and it skips a query whose
  won-and->=0.5 region is empty.
* panoptic, original area (190 then 155): HF multiplies the mask probabilities by the class score *in place*
  before measuring the query's ">= 0.5" area, so it thresholds ``score * prob``; official thresholds ``prob``.
  HF's area is smaller, so HF keeps segments the official overlap rule drops (and drops a query whose
  ``score * prob`` never reaches 0.5, which the official code may keep).
* panoptic, overlap test (161): HF drops unless ``ratio > threshold``, official drops when ``ratio < threshold``;
  a ratio exactly at the threshold is kept by the official code only. With the default 0.8, HF's float32
  division rounds 4/5 up to 0.80000001, which hides this; it shows with e.g. 0.5.
* panoptic, merged stuff (205-206, 213-222): HF sets ``current_segment_id`` back to the fused id, so the next new
  segment reuses an id already given out (two segments share an id); and it appends a duplicate segments_info
  entry for every fused query. Official keeps its counter and adds no entry.
* panoptic, nothing kept (822-825): HF returns a float map of -1; official an int32 map of 0 (void). HF's
  segments_info keys are ``id/label_id/was_fused/score``, official ``id/isthing/category_id``; HF fuses
  ``label_ids_to_fuse``, official every non-thing class; HF's default threshold is 0.5, official 0.8.
* instance (698): top-k with k = num_queries, official TEST.TOPK_PER_IMAGE (100; differs for 200-query models).
* instance (715-717): HF computes scores and binary masks at 384 and resizes the *binary* masks with nearest to the
  target size; official resizes the logits bilinearly, then thresholds and scores at the output size.
* instance (724): HF drops empty masks and scores below ``threshold`` (default 0.5); official keeps all top-k.
  HF never restricts to thing classes (official does when panoptic is on) and rounds scores to 6 decimals (731).
* semantic: same order as the official semantic-only model (scores at 384, then resized), no crop. (An official
  model with panoptic or instance on computes semantic scores from the resized logits instead.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from train.model.config import InferenceConfig
from train.model.inference import (
    instance_inference,
    label_map,
    masks_to_boxes,
    panoptic_inference,
    postprocess,
    semantic_inference,
    semantic_labels,
    semantic_scores,
    upsample_masks,
)

transformers = pytest.importorskip("transformers")
hf_m2f = pytest.importorskip("transformers.models.mask2former.image_processing_mask2former")

K, Q = 8, 16
THINGS = (0, 1, 2, 3)
STUFF = (4, 5, 6, 7)
HF_SIZE = (384, 384)
MASK_SIZE = (96, 96)
# query -> confident class; query 7 repeats stuff class 4 of query 4, so it is merged into it (and it is the last
# kept query, so HF's id reuse after a merge cannot happen in the parity data).
CONFIDENT = {0: 0, 1: 1, 2: 0, 3: 2, 4: 4, 5: 5, 6: 6, 7: 4}


def make_outputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, K+1) class logits and (Q, 96, 96) mask logits that give a non-trivial panoptic result.

    Nine Voronoi cells: queries 0-8 each own one (logit +4 inside, -4 outside, plus smooth noise). Queries 0-7 are
    confident (class logit +10), query 8 is a confident "no object" (its cell ends up void), query 9 is a confident
    thing whose mask covers cells 0 and 1 at low confidence (it loses most of it: dropped by the overlap rule),
    queries 10-15 are unconfident with mostly negative masks (some empty: instance scores of 0).
    """
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(Q, K + 1, generator=g, dtype=torch.float64)
    for q, c in CONFIDENT.items():
        cls[q, c] += 10
    cls[8, K] += 10
    cls[9, 3] += 10
    h, w = MASK_SIZE
    centres = torch.rand(9, 2, generator=g, dtype=torch.float64) * torch.tensor([h, w], dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cell = ((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2).argmin(0)
    low = torch.randn(1, Q, 12, 12, generator=g, dtype=torch.float64) * 1.5
    masks = F.interpolate(low, size=MASK_SIZE, mode="bilinear", align_corners=False)[0]
    masks += 0.3 * torch.randn(Q, h, w, generator=g, dtype=torch.float64)
    masks[:9] += torch.where(cell[None] == torch.arange(9)[:, None, None], 4.0, -4.0)
    masks[9] += torch.where((cell == 0) | (cell == 1), 1.0, -4.0)
    masks[10:] -= 4.0
    return cls, masks


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    outs = [make_outputs(seed) for seed in (0, 1)]
    return torch.stack([c for c, _ in outs]), torch.stack([m for _, m in outs])


@pytest.fixture(scope="module")
def processor():
    return transformers.Mask2FormerImageProcessor()


def hf_outputs(cls: torch.Tensor, masks: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)


def at_384(masks: torch.Tensor) -> torch.Tensor:
    """HF's first step: (B, Q, h, w) logits -> (B, Q, 384, 384)."""
    return F.interpolate(masks, size=HF_SIZE, mode="bilinear", align_corners=False)


def winner_prob(cls: torch.Tensor, probs: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """(H, W) mask probability of the kept query that wins each pixel's ``score * prob`` argmax."""
    scores, labels = F.softmax(cls, dim=-1).max(-1)
    keep = labels.ne(cls.shape[-1] - 1) & (scores > threshold)
    kept = probs[keep]  # (N, H, W)
    winner = (scores[keep].view(-1, 1, 1) * kept).argmax(0)  # (H, W)
    return kept.gather(0, winner[None])[0]


def assert_panoptic_matches_hf(ours_seg, ours_info, hf_result, win_prob) -> None:
    """Ours equals HF up to segment-id relabelling, except for the documented HF differences.

    HF paints pixels whose winning query has probability < 0.5 (official leaves them void) and lists fused stuff
    queries once per query; everything else must agree exactly.
    """
    hf_seg, hf_info = hf_result["segmentation"], hf_result["segments_info"]
    assert hf_seg.shape == ours_seg.shape
    # The data must make this meaningful: several segments, things and stuff.
    assert len(ours_info) >= 2
    assert any(s["isthing"] for s in ours_info) and any(not s["isthing"] for s in ours_info)
    assert [s["id"] for s in ours_info] == list(range(1, len(ours_info) + 1))

    # Bijection between our ids and HF's ids on the pixels we label.
    labelled = ours_seg != 0
    pairs = torch.unique(torch.stack([ours_seg[labelled], hf_seg[labelled].to(torch.int32)]), dim=1).T.tolist()
    ours_to_hf = dict(pairs)
    assert len(ours_to_hf) == len(pairs) == len(ours_info), f"not one HF id per segment: {pairs}"
    assert len(set(ours_to_hf.values())) == len(pairs), f"HF id shared by several segments: {pairs}"
    assert 0 not in ours_to_hf.values()
    hf_ids = set(torch.unique(hf_seg).tolist()) - {0}
    assert hf_ids == set(ours_to_hf.values()), "HF has segments we do not"

    # Pixel-exact once HF's extra (< 0.5 probability) pixels are voided.
    hf_to_ours = torch.zeros(int(hf_seg.max()) + 1, dtype=torch.int32)
    for ours_id, hf_id in ours_to_hf.items():
        hf_to_ours[hf_id] = ours_id
    relabelled = hf_to_ours[hf_seg.long()]
    assert torch.equal(torch.where(win_prob >= 0.5, relabelled, 0), ours_seg)
    # ... and that difference is real in this data.
    assert bool(((ours_seg == 0) & (hf_seg != 0)).any())

    # Categories. HF lists a fused stuff query again under the same id: dedupe, and check that it did so.
    hf_labels: dict[int, int] = {}
    for s in hf_info:
        assert hf_labels.setdefault(s["id"], s["label_id"]) == s["label_id"]
        assert s["was_fused"] == (s["label_id"] in STUFF)
    assert len(hf_labels) == len(ours_info)
    assert len(hf_info) > len(hf_labels), "the data should merge at least one stuff query"
    for s in ours_info:
        assert hf_labels[ours_to_hf[s["id"]]] == s["category_id"]
        assert s["isthing"] == (s["category_id"] in THINGS)


# ---------------------------------------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("target", [None, (384, 384), (300, 500)])
def test_semantic_matches_hf(batch, processor, target):
    cls, masks = batch
    targets = None if target is None else [target] * len(cls)
    ours = postprocess(cls, masks, HF_SIZE, [HF_SIZE] * len(cls), targets, "semantic", THINGS, InferenceConfig())
    scores = semantic_scores(cls, masks, HF_SIZE, HF_SIZE)  # (B, K, 384, 384)
    if target is not None:
        scores = F.interpolate(scores, size=target, mode="bilinear", align_corners=False)
    hf = processor.post_process_semantic_segmentation(
        hf_outputs(cls, masks), target_sizes=targets, return_segmentation_scores=True
    )
    for o, s, h in zip(ours, scores, hf, strict=True):
        assert o["task"] == "semantic" and o["semantic"].shape == (target or HF_SIZE)
        torch.testing.assert_close(s, h.segmentation_scores, rtol=0, atol=1e-12)
        assert torch.equal(o["semantic"].long(), h.segmentation)
        assert len(torch.unique(h.segmentation)) >= 4


def hf_panoptic(processor, cls, masks, targets):
    return processor.post_process_panoptic_segmentation(
        hf_outputs(cls, masks),
        threshold=0.8,
        mask_threshold=0.5,
        overlap_mask_area_threshold=0.8,
        label_ids_to_fuse=set(STUFF),
        target_sizes=targets,
    )


def test_panoptic_matches_hf_at_384(batch, processor):
    cls, masks = batch
    ours = postprocess(cls, masks, HF_SIZE, [HF_SIZE] * 2, None, "panoptic", THINGS, InferenceConfig())
    hf = hf_panoptic(processor, cls, masks, [HF_SIZE] * 2)
    probs = at_384(masks).sigmoid()
    for i, (o, h) in enumerate(zip(ours, hf, strict=True)):
        assert o["task"] == "panoptic" and o["panoptic"].dtype == torch.int32
        assert_panoptic_matches_hf(o["panoptic"], o["segments_info"], h, winner_prob(cls[i], probs[i]))
        # Query 9 (a confident thing, class 3) is hidden behind queries 0 and 1: dropped by the overlap rule.
        assert 3 not in {s["category_id"] for s in o["segments_info"]}


def test_panoptic_hf_resizes_probabilities(batch, processor):
    """At another target size HF resizes sigmoid probabilities, official resizes logits (then sigmoid).

    Fed with HF's resized probabilities (as logits), our panoptic inference reproduces HF up to the documented
    differences; the official order gives the same segments on nearly every pixel but not bit-identical inputs.
    """
    cls, masks = batch
    target = (300, 500)
    hf = hf_panoptic(processor, cls, masks, [target] * 2)
    hf_probs = F.interpolate(at_384(masks).sigmoid(), size=target, mode="bilinear", align_corners=False)
    official = postprocess(cls, masks, HF_SIZE, [HF_SIZE] * 2, [target] * 2, "panoptic", THINGS, InferenceConfig())
    for i, h in enumerate(hf):
        seg, info = panoptic_inference(cls[i], torch.logit(hf_probs[i]), THINGS)
        assert seg.shape == target
        assert_panoptic_matches_hf(seg, info, h, winner_prob(cls[i], hf_probs[i]))

        official_probs = upsample_masks(masks[i], HF_SIZE, HF_SIZE, target).sigmoid()
        assert not torch.allclose(official_probs, hf_probs[i], atol=1e-3)
        without_area = [
            [{k: v for k, v in s.items() if k != "area"} for s in x] for x in (official[i]["segments_info"], info)
        ]
        assert without_area[0] == without_area[1]  # the same segments, of slightly different areas
        agree = (official[i]["panoptic"] == seg).double().mean().item()
        assert 0.99 < agree < 1.0


def hf_instance(processor, cls, masks, targets):
    return processor.post_process_instance_segmentation(
        hf_outputs(cls, masks), threshold=0.0, target_sizes=targets, return_binary_maps=True
    )


def hf_instances_by_key(result) -> dict[tuple[int, bytes], float]:
    """HF binary maps and segments_info keyed by (label, mask bytes): unique, since each query has one mask."""
    maps, info = result["segmentation"], result["segments_info"]
    assert maps.shape[0] == len(info)
    out = {(s["label_id"], maps[j].bool().numpy().tobytes()): s["score"] for j, s in enumerate(info)}
    assert len(out) == len(info)
    return out


def test_instance_matches_hf_at_384(batch, processor):
    cls, masks = batch
    config = InferenceConfig(topk_per_image=Q)  # HF takes the top num_queries
    ours = postprocess(cls, masks, HF_SIZE, [HF_SIZE] * 2, None, "instance", None, config)
    hf = hf_instance(processor, cls, masks, [HF_SIZE] * 2)
    for o, h in zip(ours, hf, strict=True):
        inst = o["instances"]
        assert inst["masks"].shape == (Q, *HF_SIZE) and inst["masks"].dtype == torch.bool
        assert inst["labels"].dtype == torch.int64
        assert torch.all(inst["scores"][:-1] >= inst["scores"][1:]), "sorted by score, descending"
        empty = ~inst["masks"].flatten(1).any(1)
        # HF drops empty masks (official keeps them, with score 0); the data must have some of each.
        assert 0 < int(empty.sum()) < Q - 2
        assert torch.all(inst["scores"][empty] == 0)
        hf_by_key = hf_instances_by_key(h)
        assert len(hf_by_key) == int((~empty).sum())
        for j in torch.nonzero(~empty).flatten().tolist():
            key = (int(inst["labels"][j]), inst["masks"][j].numpy().tobytes())
            assert key in hf_by_key
            assert abs(hf_by_key[key] - float(inst["scores"][j])) <= 1e-6  # HF rounds to 6 decimals
        assert len({int(lab) for lab in inst["labels"]}) >= 3


def test_instance_hf_resizes_binary_masks(batch, processor):
    """At another target size HF's masks are its 384x384 binary masks resized by nearest, scored at 384."""
    cls, masks = batch
    target = (300, 500)
    config = InferenceConfig(topk_per_image=Q)
    hf = hf_instance(processor, cls, masks, [target] * 2)
    official = postprocess(cls, masks, HF_SIZE, [HF_SIZE] * 2, [target] * 2, "instance", None, config)
    for i, h in enumerate(hf):
        at384 = instance_inference(cls[i], at_384(masks)[i], topk=Q)
        nearest = F.interpolate(at384["masks"][None].double(), size=target, mode="nearest")[0].bool()
        hf_by_key = hf_instances_by_key(h)
        kept = torch.nonzero(at384["masks"].flatten(1).any(1)).flatten().tolist()
        assert len(hf_by_key) == len(kept)
        for j in kept:
            key = (int(at384["labels"][j]), nearest[j].numpy().tobytes())
            assert abs(hf_by_key[key] - float(at384["scores"][j])) <= 1e-6

        # The official result has the same (query, class) pairs, close masks and scores, but not identical ones.
        inst = official[i]["instances"]
        assert inst["masks"].shape == (Q, *target)
        assert sorted(inst["labels"].tolist()) == sorted(at384["labels"].tolist())
        big = [j for j in kept if int(at384["masks"][j].sum()) > 1000]
        assert len(big) >= 5
        identical = 0
        for j in big:
            same_label = torch.nonzero(inst["labels"] == at384["labels"][j]).flatten()
            m = int(same_label[(inst["scores"][same_label] - at384["scores"][j]).abs().argmin()])
            assert abs(float(inst["scores"][m] - at384["scores"][j])) < 5e-3
            a, b = inst["masks"][m], nearest[j]
            assert (a & b).sum() / (a | b).sum() > 0.93
            identical += int(torch.equal(a, b))
        assert identical < len(big)


# --------------------------------------------------------------------------------------------- HF differences


def probs_to_logits(probs: torch.Tensor) -> torch.Tensor:
    return torch.logit(probs.double())


def class_logits(labels: list[int], scores: list[float], num_classes: int = K) -> torch.Tensor:
    """(Q, K+1) logits whose softmax max is ``scores[q]`` at ``labels[q]`` (rest spread evenly)."""
    out = torch.zeros(len(labels), num_classes + 1, dtype=torch.float64)
    for q, (label, score) in enumerate(zip(labels, scores, strict=True)):
        probs = torch.full((num_classes + 1,), (1 - score) / num_classes, dtype=torch.float64)
        probs[label] = score
        out[q] = probs.log()
    return out


def hf_compute_segments(cls: torch.Tensor, probs: torch.Tensor, overlap: float = 0.8):
    scores, labels = F.softmax(cls, dim=-1).max(-1)
    kept_probs, kept_scores, kept_labels = hf_m2f.remove_low_and_no_objects(probs, scores, labels, 0.8, K)
    return hf_m2f.compute_segments(
        kept_probs.clone(), kept_scores, kept_labels, 0.5, overlap, label_ids_to_fuse=set(STUFF)
    )


def test_hf_diff_paints_low_probability_pixels():
    probs = torch.full((2, 4, 4), 0.1, dtype=torch.float64)
    probs[0, :, :2] = 0.9
    probs[1, :, 2:] = 0.9
    probs[1, 0, 3] = 0.3  # query 1 still wins this pixel, below 0.5
    cls = class_logits([0, 1], [0.95, 0.95])
    seg, info = panoptic_inference(cls, probs_to_logits(probs), THINGS)
    hf_seg, _ = hf_compute_segments(cls, probs)
    assert [s["category_id"] for s in info] == [0, 1]
    assert seg[0, 3] == 0 and hf_seg[0, 3] == 2
    seg[0, 3] = 2
    assert torch.equal(seg, hf_seg)


def test_hf_diff_original_area_weighted_by_score():
    probs = torch.full((2, 2, 5), 0.1, dtype=torch.float64)
    probs[0, 0] = 0.9  # A: row 0 confident ...
    probs[0, 1] = 0.55  # ... row 1 above 0.5, but 0.85 * 0.55 < 0.5
    probs[1, 1] = 0.9  # B wins row 1
    cls = class_logits([0, 1], [0.85, 0.95])
    seg, info = panoptic_inference(cls, probs_to_logits(probs), THINGS)
    hf_seg, hf_info = hf_compute_segments(cls, probs)
    # Official: A wins 5 of its 10 pixels >= 0.5 -> dropped. HF: A's "area" is 5 -> kept.
    assert [s["category_id"] for s in info] == [1]
    assert [s["label_id"] for s in hf_info] == [0, 1]
    assert torch.equal(seg, torch.tensor([[0] * 5, [1] * 5], dtype=torch.int32))
    assert torch.equal(hf_seg, torch.tensor([[1] * 5, [2] * 5], dtype=torch.int32))


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_hf_diff_overlap_ratio_at_threshold(threshold):
    # A (higher score) covers column 0; B is >= 0.5 on columns 0..n-1 and wins columns 1..n-1: ratio (n-1)/n.
    n = {0.5: 2, 0.8: 5}[threshold]
    probs = torch.full((2, 1, n + 1), 0.1, dtype=torch.float64)
    probs[0, 0, 0] = 0.99
    probs[1, 0, :n] = 0.9
    cls = class_logits([0, 1], [0.99, 0.9])
    _, info = panoptic_inference(cls, probs_to_logits(probs), THINGS, overlap_threshold=threshold)
    _, hf_info = hf_compute_segments(cls, probs, overlap=threshold)
    assert [s["category_id"] for s in info] == [0, 1]  # official keeps a ratio equal to the threshold
    # HF drops it (ratio > threshold needed), except that float32 4/5 rounds above 0.8.
    assert [s["label_id"] for s in hf_info] == ([0] if threshold == 0.5 else [0, 1])


def test_hf_diff_id_reuse_after_stuff_merge():
    # Query order: stuff 4, thing 0, stuff 4 again (merged), thing 1 -> one column each.
    probs = torch.full((4, 1, 4), 0.05, dtype=torch.float64)
    for q in range(4):
        probs[q, 0, q] = 0.95
    cls = class_logits([4, 0, 4, 1], [0.9] * 4)
    seg, info = panoptic_inference(cls, probs_to_logits(probs), THINGS)
    hf_seg, hf_info = hf_compute_segments(cls, probs)
    assert seg.tolist() == [[1, 2, 1, 3]]
    assert info == [
        {"id": 1, "isthing": False, "category_id": 4, "score": pytest.approx(0.9), "area": 2},
        {"id": 2, "isthing": True, "category_id": 0, "score": pytest.approx(0.9), "area": 1},
        {"id": 3, "isthing": True, "category_id": 1, "score": pytest.approx(0.9), "area": 1},
    ]
    assert hf_seg.tolist() == [[1, 2, 1, 2]]  # thing 1 gets the thing-0 id
    assert [(s["id"], s["label_id"]) for s in hf_info] == [(1, 4), (2, 0), (1, 4), (2, 1)]


def test_hf_diff_nothing_kept(processor):
    cls = torch.zeros(1, 3, K + 1, dtype=torch.float64)
    cls[..., K] = 10.0  # all "no object"
    masks = torch.randn(1, 3, *MASK_SIZE, dtype=torch.float64)
    seg, info = panoptic_inference(cls[0], upsample_masks(masks[0], HF_SIZE, HF_SIZE, HF_SIZE), THINGS)
    assert seg.dtype == torch.int32 and seg.shape == HF_SIZE and not seg.any() and info == []
    (hf,) = hf_panoptic(processor, cls, masks, [HF_SIZE])
    assert hf["segments_info"] == [] and torch.all(hf["segmentation"] == -1)


# --------------------------------------------------------------------------------------------- hand-made units


def test_upsample_masks_crops_padding_top_left():
    padded, image = (64, 96), (50, 70)
    pred = torch.randn(3, 16, 24)
    pred[:, 13:, :] = 50.0  # rows the image does not reach
    pred[:, :, 18:] = 50.0  # columns the image does not reach
    full = F.interpolate(pred[None], size=padded, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(upsample_masks(pred, padded, image, image), full[:, :50, :70], rtol=0, atol=1e-6)
    out = upsample_masks(pred, padded, image, (100, 140))
    want = F.interpolate(full[None, :, :50, :70], size=(100, 140), mode="bilinear", align_corners=False)[0]
    assert out.shape == (3, 100, 140)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    # Away from the crop border the padded region does not show up.
    assert out[:, :80, :100].max() < 50.0


def test_postprocess_semantic_official_order():
    """Semantic scores are computed at the padded size, then cropped and resized (not the other way round)."""
    g = torch.Generator().manual_seed(3)
    cls = torch.randn(2, 5, K + 1, generator=g)
    masks = 3 * torch.randn(2, 5, 16, 24, generator=g)
    sizes, outputs = [(50, 70), (64, 90)], [(100, 140), (32, 45)]
    res = postprocess(cls, masks, (64, 96), sizes, outputs, "semantic", THINGS, InferenceConfig())
    for i, r in enumerate(res):
        padded = F.interpolate(masks[i][None], size=(64, 96), mode="bilinear", align_corners=False)[0]
        scores = semantic_inference(cls[i], padded)[:, : sizes[i][0], : sizes[i][1]]
        torch.testing.assert_close(semantic_scores(cls[i : i + 1], masks[i : i + 1], (64, 96), sizes[i])[0], scores)
        want = F.interpolate(scores[None], size=outputs[i], mode="bilinear", align_corners=False)[0]
        assert r["semantic"].dtype == torch.uint8
        assert (r["semantic"] == want.argmax(0)).double().mean() > 0.999  # argmax ties may flip on the last bit
        other = semantic_inference(cls[i], upsample_masks(masks[i], (64, 96), sizes[i], outputs[i])).argmax(0)
        assert (r["semantic"] != other).any()


def test_semantic_labels_are_the_graph_definition():
    """semantic_labels (the exported graph's tail and the gate's view): x4 to the padded input, crop, argmax."""
    g = torch.Generator().manual_seed(4)
    cls = torch.randn(2, 5, K + 1, generator=g)
    masks = 3 * torch.randn(2, 5, 16, 24, generator=g)
    labels = semantic_labels(cls, masks, (50, 70))
    assert labels.shape == (2, 50, 70) and labels.dtype == torch.uint8
    assert torch.equal(labels, label_map(semantic_scores(cls, masks, (64, 96), (50, 70))))
    # the cheaper tail (crop the labels, upsample only the rows and columns they need) is exact at every size
    for size in [(64, 96), (63, 95), (61, 89), (57, 81), (33, 65), (1, 1), (4, 4), (5, 5)]:
        want = label_map(semantic_scores(cls, masks, (64, 96), size))
        assert torch.equal(semantic_labels(cls, masks, size), want), size
    assert label_map(torch.zeros(256, 1, 1)).dtype == torch.int32  # ids above 255 need more than uint8


def test_panoptic_merges_stuff_of_one_class():
    probs = torch.full((3, 4, 6), 0.05)
    probs[0, :, :2] = 0.9  # stuff 5
    probs[1, :, 2:4] = 0.9  # thing 0
    probs[2, :, 4:] = 0.9  # stuff 5 again
    cls = class_logits([5, 0, 5], [0.9, 0.9, 0.9])
    seg, info = panoptic_inference(cls, probs_to_logits(probs), THINGS)
    assert info == [
        {"id": 1, "isthing": False, "category_id": 5, "score": pytest.approx(0.9), "area": 16},
        {"id": 2, "isthing": True, "category_id": 0, "score": pytest.approx(0.9), "area": 8},
    ]
    assert seg[0].tolist() == [1, 1, 2, 2, 1, 1] and seg.dtype == torch.int32


def test_panoptic_things_of_one_class_stay_apart():
    probs = torch.full((2, 2, 4), 0.05)
    probs[0, :, :2] = 0.9
    probs[1, :, 2:] = 0.9
    seg, info = panoptic_inference(class_logits([2, 2], [0.9, 0.9]), probs_to_logits(probs), THINGS)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [(1, 2, True), (2, 2, True)]
    assert seg[0].tolist() == [1, 1, 2, 2]


def test_panoptic_drops_mostly_hidden_query():
    # B (>= 0.5 everywhere, lower score) wins 4 of 10 columns: 40% < 80% -> dropped, those pixels stay void.
    probs = torch.full((2, 3, 10), 0.05)
    probs[0, :, :6] = 0.95
    probs[1] = 0.6
    seg, info = panoptic_inference(class_logits([0, 1], [0.95, 0.85]), probs_to_logits(probs), THINGS)
    assert info == [{"id": 1, "isthing": True, "category_id": 0, "score": pytest.approx(0.95), "area": 18}]
    assert seg[0].tolist() == [1] * 6 + [0] * 4
    # Now B is >= 0.5 on columns 0..6 only and A on column 0: B wins 6 of its 7 columns (86%) and survives.
    probs = torch.full((2, 3, 10), 0.05)
    probs[0, :, 0] = 0.95
    probs[1, :, :7] = 0.6
    seg, info = panoptic_inference(class_logits([0, 1], [0.95, 0.85]), probs_to_logits(probs), THINGS)
    assert [s["category_id"] for s in info] == [0, 1]
    assert seg[0].tolist() == [1, 2, 2, 2, 2, 2, 2, 0, 0, 0]


def test_panoptic_thresholds_and_no_object():
    probs = torch.full((3, 2, 2), 0.9)
    cls = class_logits([K, 1, 2], [0.99, 0.79, 0.81])  # no-object; below 0.8; above 0.8
    seg, info = panoptic_inference(cls, probs_to_logits(probs), THINGS)
    assert info == [{"id": 1, "isthing": True, "category_id": 2, "score": pytest.approx(0.81), "area": 4}]
    assert torch.all(seg == 1)
    seg, info = panoptic_inference(cls, probs_to_logits(probs), THINGS, object_mask_threshold=0.995)
    assert info == [] and seg.dtype == torch.int32 and not seg.any()


def test_instance_thing_filter_and_boxes():
    g = torch.Generator().manual_seed(5)
    cls = torch.randn(6, K + 1, generator=g)
    mask_pred = torch.full((6, 10, 12), -5.0)
    for q in range(5):
        mask_pred[q, q : q + 3, 2 * q : 2 * q + 4] = 5.0  # query 5 stays empty
    everything = instance_inference(cls, mask_pred, topk=20)
    things = instance_inference(cls, mask_pred, topk=20, thing_ids=THINGS)
    assert len(everything["scores"]) == 20
    assert set(things["labels"].tolist()) <= set(THINGS) and len(things["labels"]) > 0
    is_thing = torch.isin(everything["labels"], torch.tensor(THINGS))
    for key in ("masks", "scores", "labels", "boxes"):
        assert torch.equal(things[key], everything[key][is_thing])
    assert len(instance_inference(cls, mask_pred, topk=20, thing_ids=())["scores"]) == 0

    # Scores: class probability times the mean sigmoid inside the mask; boxes: tight, zeros when empty.
    probs = F.softmax(cls, -1)[:, :-1]
    assert torch.all(everything["scores"][:-1] >= everything["scores"][1:])
    for j in range(20):
        mask, label = everything["masks"][j], int(everything["labels"][j])
        (q,) = [q for q in range(6) if torch.equal(mask, mask_pred[q] > 0)]
        inside = (mask_pred[q] > 0).float()
        mean = (mask_pred[q].sigmoid() * inside).sum() / (inside.sum() + 1e-6)
        torch.testing.assert_close(everything["scores"][j], probs[q, label] * mean)
        want = [0, 0, 0, 0] if q == 5 else [2 * q, q, 2 * q + 4, q + 3]
        assert everything["boxes"][j].tolist() == want


def test_masks_to_boxes():
    masks = torch.zeros(3, 5, 7, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[2, 1, 6, 3], [0, 4, 1, 5], [0, 0, 0, 0]]
    assert masks_to_boxes(torch.zeros(0, 5, 7, dtype=torch.bool)).shape == (0, 4)


def test_postprocess_errors_and_shapes():
    cls = torch.randn(2, 4, K + 1)
    masks = torch.randn(2, 4, 8, 8)
    cfg = InferenceConfig()
    with pytest.raises(ValueError, match="unknown task"):
        postprocess(cls, masks, (32, 32), [(32, 32)] * 2, None, "depth", THINGS, cfg)
    with pytest.raises(ValueError, match="image sizes"):
        postprocess(cls, masks, (32, 32), [(32, 32)], None, "semantic", THINGS, cfg)
    with pytest.raises(ValueError, match="output sizes"):
        postprocess(cls, masks, (32, 32), [(32, 32)] * 2, [(10, 10)] * 3, "semantic", THINGS, cfg)
    with pytest.raises(ValueError, match="does not fit"):
        postprocess(cls, masks, (32, 32), [(32, 40)] * 2, None, "semantic", THINGS, cfg)
    with pytest.raises(ValueError, match="disagree"):
        postprocess(cls, masks[:, :3], (32, 32), [(32, 32)] * 2, None, "semantic", THINGS, cfg)
    sizes, outs = [(30, 20), (32, 32)], [(15, 10), (40, 50)]
    for task in ("semantic", "instance", "panoptic"):
        res = postprocess(cls, masks, (32, 32), sizes, outs, task, THINGS, cfg)
        assert len(res) == 2
        for r, size in zip(res, outs, strict=True):
            assert r["task"] == task
            if task == "semantic":
                assert r["semantic"].shape == size
            elif task == "instance":
                assert r["instances"]["masks"].shape[1:] == size
                assert set(r["instances"]["labels"].tolist()) <= set(THINGS)
            else:
                assert r["panoptic"].shape == size
