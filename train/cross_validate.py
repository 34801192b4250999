"""Leave-one-sequence-out cross-validation: the honest way to choose a recipe on video datasets.

CamVid's ``val`` split holds frames of drive 0016E5 interleaved in time with 204 training frames of the same
drive, so a model that memorises that drive scores well on val and worse on new footage. Here every labelled
frame (the config's train and val splits together) is pooled, grouped by video sequence (``sequence_of``), and
each sequence in turn is held out whole: trained on the others, scored on it. The report gives each fold and
their mean; recipe choices are made on that mean, never on frames of a sequence that is trained on.

    m2f cross-validate configs/camvid_edge.yaml --data-root ../shared/data/camvid --output runs/loso_edge
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.data import build_dataset
from train.train_config import TrainConfig

logger = logging.getLogger(__name__)

REPORT_NAME = "cross_validation"  # <output>/cross_validation.json and .md
FOLD_RESULT = "fold_result.json"  # <output>/fold_<sequence>/fold_result.json once a fold is scored


def labelled_pool(config: TrainConfig) -> dict[str, Any]:
    """One dataset spec holding every labelled frame: the train spec with the val spec's split(s) added."""
    train, val = dict(config.train_data), dict(config.val_data or {})
    if "split" not in train:
        raise ValueError("cross-validation pools the train and val splits: train_data needs a 'split'")
    splits = _as_list(train["split"])
    if val:
        same_source = val.get("format") == train.get("format") and val.get("root") == train.get("root")
        if not same_source or "split" not in val:
            raise ValueError("cross-validation needs train_data and val_data of one format and root with a 'split'")
        splits += [s for s in _as_list(val["split"]) if s not in splits]
    pool = {k: v for k, v in train.items() if k not in ("sequences", "exclude_sequences")}
    return {**pool, "split": splits}


def hold_out(config: TrainConfig, sequence: str) -> TrainConfig:
    """The fold that trains on every labelled sequence but ``sequence`` and validates on all of ``sequence``."""
    pool = labelled_pool(config)
    known = pool_sequences(config)
    if sequence not in known:
        raise ValueError(f"no labelled frames of sequence {sequence!r}; the pool has {list(known)}")
    return dataclasses.replace(
        config,
        train_data={**pool, "exclude_sequences": [sequence]},
        val_data={**pool, "sequences": [sequence]},
    )


def dataset_sequences(spec: dict[str, Any]) -> dict[str, int]:
    """{video sequence: frames} of a dataset spec, in name order; ValueError for a format without sequences."""
    dataset = build_dataset(spec)
    if not hasattr(dataset, "sequences"):
        raise ValueError(f"dataset format {spec.get('format')!r} does not know video sequences")
    return dict(sorted(dataset.sequences().items()))


def pool_sequences(config: TrainConfig) -> dict[str, int]:
    """{sequence: labelled frames} of the pool, in name order."""
    return dataset_sequences(labelled_pool(config))


def cross_validate(
    config: TrainConfig,
    output: str | Path,
    sequences: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and score one fold per held-out sequence (resumable: a scored fold is not trained again).

    Returns and writes ``{"folds": {sequence: {"frames", "train_frames", "mIoU", "IoU": {class: value}}},
    "mean_mIoU", "config"}`` to ``output/cross_validation.json`` (+ a Markdown table).
    """
    from train.evaluation.runner import evaluate_model
    from train.model import load_pretrained
    from train.trainer import FINAL_CHECKPOINT, Trainer

    output = Path(output)
    counts = pool_sequences(config)
    chosen = list(sequences or counts)
    if len(counts) < 2:
        raise ValueError(f"leave-one-sequence-out needs at least two sequences; found {list(counts)}")
    folds: dict[str, dict[str, Any]] = {}
    for sequence in chosen:
        fold_dir = output / f"fold_{sequence}"
        result_path = fold_dir / FOLD_RESULT
        if result_path.exists():
            folds[sequence] = json.loads(result_path.read_text())
            logger.info("fold %s already scored: mIoU %.2f", sequence, folds[sequence]["mIoU"])
            continue
        fold = hold_out(config, sequence)
        logger.info("fold %s: train on %d frames, hold out %d", sequence, sum(counts.values()) - counts[sequence],
                    counts[sequence])  # fmt: skip
        Trainer(fold, fold_dir, resume=True, progress=progress).run()
        loaded = load_pretrained(fold_dir / FINAL_CHECKPOINT)
        metrics = evaluate_model(
            loaded.model, build_dataset(fold.val_data), loaded.meta, fold.task, fold.eval_resize, progress=progress
        )
        folds[sequence] = {
            "frames": counts[sequence],
            "train_frames": sum(counts.values()) - counts[sequence],
            "mIoU": metrics["mIoU"],
            "IoU": {name: metrics.get(f"IoU-{name}", float("nan")) for name in loaded.meta.class_names},
        }
        result_path.write_text(json.dumps(folds[sequence], indent=2))
    report = {
        "folds": folds,
        "mean_mIoU": sum(f["mIoU"] for f in folds.values()) / len(folds),
        "config": config.to_dict(),
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=2))
    (output / f"{REPORT_NAME}.md").write_text(markdown_report(report))
    return report


def markdown_report(report: dict[str, Any]) -> str:
    """Per-fold mIoU and per-class IoU, the mean of the folds last."""
    folds = report["folds"]
    classes = list(next(iter(folds.values()))["IoU"]) if folds else []
    lines = [
        "| held-out sequence | frames | trained on | mIoU | " + " | ".join(classes) + " |",
        "|---|---|---|---|" + "---|" * len(classes),
    ]
    for sequence, fold in folds.items():
        ious = " | ".join(f"{fold['IoU'][c]:.1f}" for c in classes)
        lines.append(f"| {sequence} | {fold['frames']} | {fold['train_frames']} | {fold['mIoU']:.2f} | {ious} |")
    lines.append(f"| **mean of folds** | | | **{report['mean_mIoU']:.2f}** |" + " |" * len(classes))
    return "\n".join(lines) + "\n"


def _as_list(split: str | Sequence[str]) -> list[str]:
    return [split] if isinstance(split, str) else list(split)
