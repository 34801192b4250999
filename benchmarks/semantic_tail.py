"""The semantic tail's trade-off: official labels (the Q mask logits upsampled x4, then the class product and argmax)
against labels from the K class scores upsampled x4 (fewer channels to resize), on labelled frames.

``python -m benchmarks.semantic_tail CHECKPOINT [--split val] [--size 360x480]``: the share of pixels both tails
label alike and the mIoU of each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from compile.export import load_checkpoint, reference_model, validation_images
from runtimes.vocabulary import MASK_STRIDE, VOID
from train.evaluation.semantic import SemanticEvaluator
from train.model.inference import semantic_inference, semantic_labels


def scores_tail_labels(logits: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels from the (B, K, h, w) class scores upsampled x4, cropped to ``size``."""
    scores = F.interpolate(semantic_inference(logits, masks), scale_factor=MASK_STRIDE, mode="bilinear",
                           align_corners=False)  # fmt: skip
    return scores.argmax(1)[:, : size[0], : size[1]]


def compare(checkpoint: str, split: str, size: tuple[int, int], root: str) -> dict:
    module, meta = reference_model(checkpoint, task="semantic", input_size=size)
    loaded = load_checkpoint(checkpoint)
    images = validation_images(loaded, {"format": "camvid", "root": root, "split": split}, meta["input"], 10_000)
    evaluators = {tail: SemanticEvaluator(loaded.model.config.num_classes, VOID) for tail in ("official", "scores")}
    equal = total = 0
    for item in images:
        x = torch.from_numpy(item.image[None]).float().permute(0, 3, 1, 2).index_select(1, module.channel_order)
        with torch.no_grad():
            out = module.model((x - module.mean) * module.inv_std, aux=False)
            official = semantic_labels(out["pred_logits"], out["pred_masks"], size)[0].numpy().astype(np.int64)
            scores = scores_tail_labels(out["pred_logits"], out["pred_masks"], size)[0].numpy().astype(np.int64)
        equal, total = equal + int((official == scores).sum()), total + official.size
        evaluators["official"].update(official, item.labels)
        evaluators["scores"].update(scores, item.labels)
    miou = {tail: evaluator.compute()["mIoU"] for tail, evaluator in evaluators.items()}
    return {"images": len(images), "labels_equal": equal / total, **{f"miou_{k}": v for k, v in miou.items()}}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", default="../shared/data/camvid", help="a CamVid folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--size", default="360x480", help="HxW model input")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    r = compare(args.checkpoint, args.split, size, args.root)
    print(
        f"{r['images']} images: labels equal {100 * r['labels_equal']:.3f} %, "
        f"mIoU official {r['miou_official']:.2f}, from the class scores {r['miou_scores']:.2f}"
    )


if __name__ == "__main__":
    main()
