"""Host-side ``m2f`` commands of the training stack (reached through ``sdk.cli``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtimes.cache import file_sha256
from runtimes.vocabulary import TASKS
from train.evaluation.runner import HEADLINE
from train.model import load_pretrained, save_checkpoint
from train.model.checkpoint import read_checkpoint_if_ours
from train.model.zoo import MODEL_ZOO

logger = logging.getLogger(__name__)


def convert_main(argv: Sequence[str]) -> int:
    """``m2f convert CHECKPOINT --config NAME --out FILE.pt``: official or HF weights -> our checkpoint."""
    parser = argparse.ArgumentParser(prog="m2f convert", description=convert_main.__doc__)
    parser.add_argument("checkpoint", nargs="?", help="model_final_*.pkl / .pth, or an HF folder")
    parser.add_argument("--config", help="model zoo name (needed for detectron2 checkpoints), see --list")
    parser.add_argument("--out", help="output .pt path")
    parser.add_argument("--list", action="store_true", help="list the model zoo names and exit")
    args = parser.parse_args(list(argv))
    if args.list:
        for name, entry in MODEL_ZOO.items():
            print(f"{name:32} {entry.task:9} {entry.config.num_classes:4d} classes  {entry.checkpoint}")
        return 0
    if not args.checkpoint or not args.out:
        parser.error("CHECKPOINT and --out are required (or --list)")
    try:
        loaded = load_pretrained(args.checkpoint, config=args.config)
    except (ValueError, FileNotFoundError) as err:
        print(f"m2f convert: {err}", file=sys.stderr)
        return 2
    source = Path(args.checkpoint)
    provenance: dict[str, Any] = {"source": loaded.source, "source_name": source.name}
    if source.is_file():
        provenance["source_sha256"] = file_sha256(source)
    ours = read_checkpoint_if_ours(source)
    if ours is not None and ours.train_config is not None:  # a trainer's run: keep what it was trained for (task)
        provenance["train_config"] = ours.train_config
    out = save_checkpoint(args.out, loaded.model, loaded.meta, extra=provenance)
    logger.info("wrote %s (%s weights, %d classes)", out, loaded.source, loaded.config.num_classes)
    return 0


def train_main(argv: Sequence[str]) -> int:
    """``m2f train CONFIG [--data-root DIR] [--out DIR] [--max-iters N] [--resume]``."""
    from train.cross_validate import hold_out
    from train.train_config import load_train_config
    from train.trainer import Trainer

    parser = argparse.ArgumentParser(prog="m2f train", description=train_main.__doc__)
    parser.add_argument("config", help="training config (.yaml / .json)")
    parser.add_argument("--data-root", help="replaces the dataset root of the config")
    parser.add_argument("--out", help="run folder (checkpoints, metrics.csv, tensorboard/)")
    parser.add_argument("--max-iters", type=int, help="replaces solver.max_iters")
    parser.add_argument("--batch-size", type=int, help="replaces solver.batch_size (global)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if present")
    parser.add_argument(
        "--hold-out",
        metavar="SEQUENCE",
        help="train on every labelled sequence but this one (train + val splits pooled) and validate on it",
    )
    args = parser.parse_args(list(argv))
    try:
        config = load_train_config(args.config).with_overrides(args.data_root, args.max_iters, args.batch_size)
        if args.hold_out:
            config = hold_out(config, args.hold_out)
    except (ValueError, FileNotFoundError) as err:
        print(f"m2f train: {err}", file=sys.stderr)
        return 2
    output = Path(args.out or Path("runs") / Path(args.config).stem)
    metrics = Trainer(config, output, resume=args.resume).run()
    if metrics:
        logger.info("final metrics: %s", {k: round(v, 2) for k, v in metrics.items() if k in ("mIoU", "PQ", "AP")})
    return 0


def eval_main(argv: Sequence[str]) -> int:
    """``m2f eval CHECKPOINT --data-root DIR [--json]``: metrics of a checkpoint on its validation set."""
    import json

    from train.data import build_dataset
    from train.evaluation.runner import evaluate_model

    parser = argparse.ArgumentParser(prog="m2f eval", description=eval_main.__doc__)
    parser.add_argument("checkpoint", help="our .pt (a training output or `m2f convert` result)")
    parser.add_argument("--data-root", help="replaces the dataset root stored in the checkpoint")
    parser.add_argument("--data", help='dataset spec as JSON, e.g. \'{"format": "camvid", "split": "val"}\'')
    parser.add_argument("--task", choices=TASKS, help="default: the training task")
    parser.add_argument("--max-images", type=int, help="evaluate on the first N images only")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object, last line")
    parser.add_argument(
        "--by-sequence", action="store_true", help="also score each video sequence of the dataset on its own"
    )
    args = parser.parse_args(list(argv))
    try:
        loaded = load_pretrained(args.checkpoint)
        record = read_checkpoint_if_ours(args.checkpoint)  # an official / HF checkpoint stores no training run
        spec = json.loads(args.data) if args.data else record and record.val_data
        task = args.task or (record and record.task)
        eval_resize = record.eval_resize if record else None
        if not spec or not task:
            raise ValueError("the checkpoint names no validation set or task: pass --data and --task")
        if args.data_root:
            spec = {**spec, "root": args.data_root}
        dataset = build_dataset(spec)
    except (ValueError, FileNotFoundError) as err:
        print(f"m2f eval: {err}", file=sys.stderr)
        return 2
    metrics = evaluate_model(loaded.model, dataset, loaded.meta, task, eval_resize, args.max_images)
    headline = {k: round(v, 3) for k, v in metrics.items() if k in HEADLINE}
    if args.by_sequence:
        try:
            per_sequence = evaluate_by_sequence(loaded.model, spec, loaded.meta, task, eval_resize)
        except ValueError as err:
            print(f"m2f eval: {err}", file=sys.stderr)
            return 2
        headline["sequences"] = {
            sequence: {k: round(v, 3) for k, v in values.items() if k in HEADLINE}
            for sequence, values in per_sequence.items()
        }
    if args.json:
        print(json.dumps(headline))
    else:
        for key, value in metrics.items():
            print(f"{key:>24}: {value:.3f}")
        for sequence, values in headline.get("sequences", {}).items():
            print(f"{sequence:>24}: " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return 0


def evaluate_by_sequence(
    model: Any, spec: dict, meta: Any, task: str, eval_resize: dict | None
) -> dict[str, dict[str, float]]:
    """{video sequence: metrics} for a dataset spec whose format knows sequences (CamVid, semantic folders)."""
    from train.cross_validate import dataset_sequences
    from train.data import build_dataset
    from train.evaluation.runner import evaluate_model

    return {
        sequence: evaluate_model(model, build_dataset({**spec, "sequences": [sequence]}), meta, task, eval_resize)
        for sequence in dataset_sequences(spec)
    }


def cross_validate_main(argv: Sequence[str]) -> int:
    """``m2f cross-validate CONFIG --data-root DIR --out DIR [--sequences S ...] [--max-iters N]``."""
    import json

    from train.cross_validate import REPORT_NAME, cross_validate, markdown_report
    from train.train_config import load_train_config

    parser = argparse.ArgumentParser(
        prog="m2f cross-validate",
        description="Leave-one-sequence-out: pool the config's train and val frames, hold out each video sequence "
        "in turn (train on the rest, score on it), report every fold and their mean. Resumable: rerun the same "
        "command to continue; scored folds are kept.",
    )
    parser.add_argument("config", help="training config (.yaml / .json) whose train/val specs name one dataset")
    parser.add_argument("--data-root", help="replaces the dataset root of the config")
    parser.add_argument("--out", required=True, help=f"folder for fold_<sequence>/ runs and {REPORT_NAME}.md")
    parser.add_argument("--sequences", nargs="+", help="hold out only these sequences (default: every one)")
    parser.add_argument("--max-iters", type=int, help="replaces solver.max_iters (every fold)")
    parser.add_argument("--batch-size", type=int, help="replaces solver.batch_size (global)")
    args = parser.parse_args(list(argv))
    try:
        config = load_train_config(args.config).with_overrides(args.data_root, args.max_iters, args.batch_size)
        report = cross_validate(config, args.out, args.sequences)
    except (ValueError, FileNotFoundError) as err:
        print(f"m2f cross-validate: {err}", file=sys.stderr)
        return 2
    print(markdown_report(report), end="")
    print(json.dumps({"mean_mIoU": round(report["mean_mIoU"], 3),
                      "folds": {s: round(f["mIoU"], 3) for s, f in report["folds"].items()}}))  # fmt: skip
    return 0
