"""HungarianMatcher and SetCriterion: parity with transformers' port, the official semantics, hand-checked cases.

Parity: transformers' ``Mask2FormerHungarianMatcher`` / ``Mask2FormerLoss`` draw their random points with the same
calls in the same order as ours (per output: one ``torch.rand(1, P, 2)`` per image in the matcher, every image
included, then ``torch.rand(M, 3P, 2)`` and ``torch.rand(M, P - int(0.75 P), 2)`` in the mask loss; the final output
first, then each aux output), so seeding the global RNG identically before each call gives both the same points.

Where transformers 5.24.0 (``transformers/models/mask2former/modeling_mask2former.py``) departs from the official
code (facebookresearch/Mask2Former 9b0651c, ``mask2former/modeling/{matcher,criterion}.py``), ours follows the
official code:

- Normalisation across processes: official ``criterion.py:230-231`` all-reduces (sums) the mask count and divides by
  the world size: the mean count per process. transformers ``get_num_masks`` (lines 796-799) calls accelerate's
  ``reduce``, whose default reduction is already "mean", then divides by ``num_processes`` again, so with N processes
  its mask losses are N times too large (huggingface/transformers#26844). Single-process they agree; tested against
  the official semantics in ``test_num_masks_is_the_mean_over_processes``.
- Matcher precision: official ``matcher.py:134`` computes the mask costs in float32 with autocast off; transformers'
  matcher (lines 461-475) computes them in the predictions' dtype under autocast. Ours: float32, autocast off (also
  for the class cost and the point sampling of the targets, which official samples in the predictions' dtype).
- Non-finite costs: transformers replaces NaN/inf costs by the dtype's max (line 478); official passes them to scipy,
  which raises "matrix contains invalid numeric entries". Ours raises a FloatingPointError naming the image.
- Naming and dtype: transformers names the class loss ``loss_cross_entropy`` (line 583; official ``loss_ce``) and
  does not cast the class logits to float32 (line 569; official ``criterion.py:127`` does). transformers weights
  losses by substring match (line 2336); official multiplies exact keys of ``weight_dict`` and drops the rest
  (``maskformer_model.py:213-216``); ``weighted_total`` strips the ``_i`` suffix, the same for these keys.

The dice formula (+1 smoothing), the BCE mean over points, the no-object weight (CrossEntropyLoss weight, so the
mean is weighted) and the point counts (int(P * 3), int(0.75 * P)) are the same in both.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.criterion import SetCriterion, dice_loss, sample_uncertain_points, sigmoid_ce_loss
from train.hungarian_matcher import (
    HungarianMatcher,
    pairwise_dice_cost,
    pairwise_sigmoid_ce_cost,
    point_sample,
)

hf_m2f = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
Mask2FormerConfig = pytest.importorskip("transformers").Mask2FormerConfig

K = 5  # classes
Q = 8  # queries
HF_WEIGHTS = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def random_targets(counts: list[int], size: tuple[int, int] | list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """Blob-shaped bool masks (smoothed noise, thresholded) with random labels, one dict per image."""
    sizes = size if isinstance(size, list) else [size] * len(counts)
    targets = []
    for n, (H, W) in zip(counts, sizes, strict=True):
        noise = torch.randn(n, 1, H // 8, W // 8)
        masks = F.interpolate(noise, size=(H, W), mode="bilinear", align_corners=False)[:, 0] > 0.3  # (n, H, W)
        targets.append({"labels": torch.randint(0, K, (n,)), "masks": masks})
    return targets


def random_outputs(batch: int, size: tuple[int, int], num_aux: int = 0, requires_grad: bool = False) -> dict:
    """Random pred_logits (B, Q, K+1), pred_masks (B, Q, h, w) and ``num_aux`` aux outputs."""

    def one() -> dict[str, Tensor]:
        logits = torch.randn(batch, Q, K + 1, requires_grad=requires_grad)
        masks = (3 * torch.randn(batch, Q, *size)).requires_grad_(requires_grad)
        return {"pred_logits": logits, "pred_masks": masks}

    out = one()
    out["aux_outputs"] = [one() for _ in range(num_aux)]
    return out


def hf_loss(num_points: int = 12544) -> nn.Module:
    config = Mask2FormerConfig(num_labels=K, train_num_points=num_points)
    return hf_m2f.Mask2FormerLoss(config, HF_WEIGHTS)


def ours(num_points: int = 12544, **kwargs) -> SetCriterion:
    return SetCriterion(K, HungarianMatcher(num_points=num_points), num_points=num_points, **kwargs)


def run_hf(loss: nn.Module, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    aux = [
        {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
        for a in outputs["aux_outputs"]
    ]
    out = loss(
        outputs["pred_masks"],
        outputs["pred_logits"],
        [t["masks"].float() for t in targets],
        [t["labels"] for t in targets],
        aux or None,
    )
    return {k.replace("loss_cross_entropy", "loss_ce"): v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- parity with HF


def test_point_sample_matches_hf_and_hits_pixel_centres():
    x = torch.randn(3, 2, 7, 9)
    coords = torch.rand(3, 50, 2)
    torch.testing.assert_close(point_sample(x, coords), hf_m2f.sample_point(x, coords, align_corners=False))
    # (x, y) = ((j + 0.5) / W, (i + 0.5) / H) is the centre of pixel (i, j): its value exactly
    centre = torch.tensor([[[(4 + 0.5) / 9, (2 + 0.5) / 7]]]).expand(3, 1, 2)
    torch.testing.assert_close(point_sample(x, centre)[..., 0], x[:, :, 2, 4])


def test_matcher_indices_match_hf():
    outputs = random_outputs(4, (16, 16))
    targets = random_targets([3, 0, 5, 11], (64, 64))  # an image without targets, one with more targets than queries
    hf_matcher = hf_m2f.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=12544)
    torch.manual_seed(7)
    expected = hf_matcher(
        outputs["pred_masks"],
        outputs["pred_logits"],
        [t["masks"].float() for t in targets],
        [t["labels"] for t in targets],
    )
    torch.manual_seed(7)
    got = HungarianMatcher()(outputs, targets)
    assert len(got) == 4
    for (src, tgt), (hf_src, hf_tgt) in zip(got, expected, strict=True):
        assert src.dtype == tgt.dtype == torch.int64
        assert torch.equal(src, hf_src) and torch.equal(tgt, hf_tgt)
    assert [len(src) for src, _ in got] == [3, 0, 5, Q]


def test_losses_match_hf_with_aux():
    outputs = random_outputs(3, (16, 16), num_aux=2)
    targets = random_targets([3, 0, 4], (64, 64))
    torch.manual_seed(11)
    expected = run_hf(hf_loss(), outputs, targets)
    torch.manual_seed(11)
    criterion = ours()
    got = criterion(outputs, targets)
    assert set(got) == set(expected)
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)
    # transformers' get_loss_dict + get_loss: each loss times the weight whose name it contains, summed
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    hf_total = sum(v * w for key, v in expected.items() for name, w in weights.items() if name in key)
    torch.testing.assert_close(criterion.weighted_total(got), hf_total, atol=1e-4, rtol=1e-5)


def test_losses_match_hf_with_targets_of_different_sizes():
    """Both pad the matched target masks bottom/right to the batch's largest size (official nested_tensor)."""
    outputs = random_outputs(2, (16, 16))
    targets = random_targets([2, 3], [(64, 64), (48, 56)])
    torch.manual_seed(3)
    expected = run_hf(hf_loss(num_points=2000), outputs, targets)
    torch.manual_seed(3)
    got = ours(num_points=2000)(outputs, targets)
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)


# --------------------------------------------------------------------------------------- official semantics


def test_pairwise_costs_are_the_losses_of_each_pair():
    logits, labels = 4 * torch.randn(6, 300), (torch.rand(4, 300) > 0.5).float()
    ce, dice = pairwise_sigmoid_ce_cost(logits, labels), pairwise_dice_cost(logits, labels)
    assert ce.shape == dice.shape == (6, 4)
    for q in range(6):
        for n in range(4):
            torch.testing.assert_close(ce[q, n], sigmoid_ce_loss(logits[q : q + 1], labels[n : n + 1], 1.0))
            torch.testing.assert_close(dice[q, n], dice_loss(logits[q : q + 1], labels[n : n + 1], 1.0))


def test_num_masks_is_the_mean_over_processes(monkeypatch):
    """Official: all_reduce (sum) / world size, clamped at 1; the mask losses divide by it."""
    outputs = random_outputs(2, (16, 16))
    targets = random_targets([1, 2], (64, 64))  # 3 masks here, 5 on the simulated other process
    torch.manual_seed(5)
    single = ours(num_points=1000)(outputs, targets)

    def all_reduce(tensor: Tensor) -> None:
        tensor += 5

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    assert SetCriterion.num_masks(targets, torch.device("cpu")).item() == 4.0  # (3 + 5) / 2
    torch.manual_seed(5)
    multi = ours(num_points=1000)(outputs, targets)
    torch.testing.assert_close(multi["loss_ce"], single["loss_ce"])
    torch.testing.assert_close(multi["loss_mask"], single["loss_mask"] * 3 / 4)
    torch.testing.assert_close(multi["loss_dice"], single["loss_dice"] * 3 / 4)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: None)
    assert SetCriterion.num_masks([{"labels": torch.zeros(0)}], torch.device("cpu")).item() == 1.0  # clamp


def test_uncertain_points_are_the_most_uncertain_candidates_plus_random():
    logits = 5 * torch.randn(3, 1, 12, 12)
    generator = torch.Generator().manual_seed(0)
    coords = sample_uncertain_points(logits, 100, 3.0, 0.75, generator=generator)
    assert coords.shape == (3, 100, 2) and coords.min() >= 0 and coords.max() < 1
    generator.manual_seed(0)
    candidates = torch.rand(3, 300, 2, generator=generator)
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()  # (3, 300)
    chosen = -point_sample(logits, coords[:, :75])[:, 0].abs()  # (3, 75)
    torch.testing.assert_close(chosen.sort(1).values, uncertainty.topk(75, dim=1).values.sort(1).values)
    torch.testing.assert_close(coords[:, 75:], torch.rand(3, 25, 2, generator=generator))


def test_generator_makes_the_losses_reproducible():
    outputs = random_outputs(2, (16, 16))
    targets = random_targets([2, 3], (64, 64))

    def run(seed: int) -> dict[str, Tensor]:
        matcher = HungarianMatcher(num_points=500, generator=torch.Generator().manual_seed(seed))
        criterion = SetCriterion(K, matcher, num_points=500, generator=torch.Generator().manual_seed(seed + 1))
        torch.manual_seed(seed + 100)  # the global RNG plays no part
        return criterion(outputs, targets)

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["loss_mask"], other["loss_mask"])


def test_matcher_rejects_non_finite_costs():
    outputs = random_outputs(1, (8, 8))
    outputs["pred_masks"][0, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="image 0"):
        HungarianMatcher(num_points=100)(outputs, random_targets([2], (32, 32)))


# ------------------------------------------------------------------------------------------- hand-checked


def test_perfect_prediction_gives_near_zero_losses_and_recovers_the_permutation():
    """Queries 4, 1, 3 predict targets 0, 1, 2 exactly (logits +-20); the other queries predict no-object.

    Bilinear point sampling blurs every mask edge over one pixel, where a +-20 logit is confidently wrong for the
    blurred target, and importance sampling seeks those points out; so the sampled losses are small, not 0. The loss
    formulas themselves give ~0 on points that agree.
    """
    H = W = 256
    cell = H // 8

    def block(r0: int, r1: int, c0: int, c1: int) -> Tensor:
        m = torch.zeros(H, W, dtype=torch.bool)
        m[r0 * cell : r1 * cell, c0 * cell : c1 * cell] = True
        return m

    target_masks = torch.stack([block(1, 3, 1, 7), block(4, 7, 1, 3), block(4, 7, 4, 7)])  # (3, H, W)
    targets = [{"labels": torch.tensor([2, 0, 3]), "masks": target_masks}]
    queries, L = torch.tensor([4, 1, 3]), 20.0
    pred_logits = torch.full((1, Q, K + 1), -L)
    pred_logits[0, :, K] = L
    pred_masks = torch.full((1, Q, H // 4, W // 4), -L)
    for j, q in enumerate(queries):
        pred_masks[0, q] = torch.where(F.avg_pool2d(target_masks[j][None].float(), 4)[0] > 0.5, L, -L)
        pred_logits[0, q] = -L
        pred_logits[0, q, targets[0]["labels"][j]] = L
    outputs = {"pred_logits": pred_logits, "pred_masks": pred_masks}

    src, tgt = HungarianMatcher()(outputs, targets)[0]
    assert torch.equal(src, queries.sort().values)
    assert torch.equal(queries[tgt], src)  # query src[i] got target tgt[i]
    losses = ours()(outputs, targets)
    assert losses["loss_ce"] < 1e-6
    assert losses["loss_mask"] < 0.05 and losses["loss_dice"] < 0.05
    wrong = ours()({"pred_logits": pred_logits, "pred_masks": -pred_masks}, targets)
    assert wrong["loss_mask"] > 50 * losses["loss_mask"] and wrong["loss_dice"] > 10 * losses["loss_dice"]

    point_labels = (torch.rand(3, 1000) > 0.5).float()
    agreeing = L * (2 * point_labels - 1)
    assert sigmoid_ce_loss(agreeing, point_labels, 3) < 1e-6
    assert dice_loss(agreeing, point_labels, 3) < 1e-6


def test_no_targets_gives_only_the_no_object_cross_entropy():
    outputs = random_outputs(2, (16, 16), num_aux=1, requires_grad=True)
    targets = random_targets([0, 0], (64, 64))
    assert all(len(src) == len(tgt) == 0 for src, tgt in HungarianMatcher()(outputs, targets))
    criterion = ours()
    losses = criterion(outputs, targets)
    no_object = torch.full((2, Q), K)
    for suffix, out in (("", outputs), ("_0", outputs["aux_outputs"][0])):
        expected = F.cross_entropy(out["pred_logits"].transpose(1, 2), no_object)  # one weight: a plain mean
        torch.testing.assert_close(losses["loss_ce" + suffix], expected)
        assert losses["loss_mask" + suffix] == 0 and losses["loss_dice" + suffix] == 0
    criterion.weighted_total(losses).backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0
    assert outputs["pred_masks"].grad is not None and outputs["pred_masks"].grad.abs().sum() == 0


def test_no_object_weight_is_eos_coef():
    """Matched queries weigh 1, unmatched 0.1, in the weighted mean of the cross-entropy."""
    outputs = random_outputs(1, (16, 16))
    targets = random_targets([2], (64, 64))
    criterion = ours(num_points=500)
    ((src, tgt),) = criterion.matcher(outputs, targets)
    classes = torch.full((Q,), K)
    classes[src] = targets[0]["labels"][tgt]
    per_query = F.cross_entropy(outputs["pred_logits"][0], classes, reduction="none")  # (Q,)
    weight = torch.where(classes == K, 0.1, 1.0)
    expected = (per_query * weight).sum() / weight.sum()
    torch.testing.assert_close(
        criterion.loss_labels(outputs["pred_logits"], targets, [(src, tgt)])["loss_ce"], expected
    )
    assert criterion.empty_weight.tolist() == pytest.approx([1.0] * K + [0.1])


def test_aux_keys_and_weighted_total():
    outputs = random_outputs(2, (16, 16), num_aux=3)
    criterion = ours(num_points=500)
    losses = criterion(outputs, random_targets([2, 1], (64, 64)))
    names = ["loss_ce", "loss_mask", "loss_dice"]
    assert set(losses) == {n + s for n in names for s in ["", "_0", "_1", "_2"]}
    expected = sum(
        {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}["_".join(k.split("_")[:2])] * v for k, v in losses.items()
    )
    torch.testing.assert_close(criterion.weighted_total(losses), expected)
    torch.testing.assert_close(criterion.weighted_total({**losses, "loss_extra": torch.tensor(9.0)}), expected)
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in losses.values())


def test_gradients_reach_logits_and_masks_of_every_output():
    outputs = random_outputs(2, (16, 16), num_aux=2, requires_grad=True)
    criterion = ours(num_points=500)
    criterion.weighted_total(criterion(outputs, random_targets([3, 2], (64, 64)))).backward()
    for out in [outputs, *outputs["aux_outputs"]]:
        for key in ("pred_logits", "pred_masks"):
            grad = out[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, key


class _TinyHead(nn.Module):
    """Queries -> class logits and mask logits (dot products with per-pixel embeddings), like the real head."""

    def __init__(self) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(Q, 16))
        self.classify = nn.Linear(16, K + 1)
        self.pixels = nn.Conv2d(3, 16, kernel_size=1)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        pixels = self.pixels(image)  # (B, 16, h, w)
        logits = self.classify(self.queries).expand(image.shape[0], -1, -1)  # (B, Q, K+1)
        masks = torch.einsum("qc,bchw->bqhw", self.queries, pixels)  # (B, Q, h, w)
        return {
            "pred_logits": logits,
            "pred_masks": masks,
            "aux_outputs": [{"pred_logits": logits, "pred_masks": masks}],
        }


def test_bf16_autocast_gives_finite_float32_losses_and_float32_matching():
    head = _TinyHead()
    image = torch.randn(2, 3, 16, 16)
    targets = random_targets([3, 2], (64, 64))
    criterion = ours(num_points=1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = head(image)
        assert outputs["pred_masks"].dtype == outputs["pred_logits"].dtype == torch.bfloat16
        torch.manual_seed(1)
        indices = criterion.matcher(outputs, targets)
        losses = criterion(outputs, targets)
        total = criterion.weighted_total(losses)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    # the costs were computed in float32: the same matching as float32 copies of the bf16 predictions
    torch.manual_seed(1)
    as_float = {k: outputs[k].detach().float() for k in ("pred_logits", "pred_masks")}
    for (src, tgt), (src32, tgt32) in zip(indices, criterion.matcher(as_float, targets), strict=True):
        assert torch.equal(src, src32) and torch.equal(tgt, tgt32)
