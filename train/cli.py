"""Host-side ``m2f`` commands of the training stack (reached through ``sdk.cli``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from train.model import load_pretrained, save_checkpoint
from train.model.checkpoint import file_sha256
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
    provenance = {"source": loaded.source, "source_name": source.name}
    if source.is_file():
        provenance["source_sha256"] = file_sha256(source)
    out = save_checkpoint(args.out, loaded.model, loaded.meta, extra=provenance)
    logger.info("wrote %s (%s weights, %d classes)", out, loaded.source, loaded.config.num_classes)
    return 0


def train_main(argv: Sequence[str]) -> int:
    """``m2f train CONFIG [--data-root DIR] [--output DIR] [--max-iters N] [--resume]``."""
    from train.train_config import load_train_config
    from train.trainer import Trainer

    parser = argparse.ArgumentParser(prog="m2f train", description=train_main.__doc__)
    parser.add_argument("config", help="training config (.yaml / .json)")
    parser.add_argument("--data-root", help="replaces the dataset root of the config")
    parser.add_argument("--output", help="run folder (checkpoints, metrics.csv, tensorboard/)")
    parser.add_argument("--max-iters", type=int, help="replaces solver.max_iters")
    parser.add_argument("--batch-size", type=int, help="replaces solver.batch_size (global)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt if present")
    args = parser.parse_args(list(argv))
    try:
        config = load_train_config(args.config).with_overrides(args.data_root, args.max_iters, args.batch_size)
    except (ValueError, FileNotFoundError) as err:
        print(f"m2f train: {err}", file=sys.stderr)
        return 2
    output = Path(args.output or Path("runs") / Path(args.config).stem)
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
    parser.add_argument("--task", choices=("semantic", "instance", "panoptic"), help="default: the training task")
    parser.add_argument("--max-images", type=int, help="evaluate on the first N images only")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object, last line")
    args = parser.parse_args(list(argv))
    try:
        loaded = load_pretrained(args.checkpoint)
        stored = torch_load_extra(args.checkpoint).get("train_config") or {}
        spec = json.loads(args.data) if args.data else stored.get("val_data")
        task = args.task or stored.get("task")
        if not spec or not task:
            raise ValueError("the checkpoint names no validation set or task: pass --data and --task")
        if args.data_root:
            spec = {**spec, "root": args.data_root}
        dataset = build_dataset(spec)
    except (ValueError, FileNotFoundError) as err:
        print(f"m2f eval: {err}", file=sys.stderr)
        return 2
    metrics = evaluate_model(loaded.model, dataset, loaded.meta, task, stored.get("eval_resize"), args.max_images)
    headline = {k: round(v, 3) for k, v in metrics.items() if k in ("mIoU", "PQ", "AP", "pACC", "SQ", "RQ")}
    if args.json:
        print(json.dumps(headline))
    else:
        for key, value in metrics.items():
            print(f"{key:>24}: {value:.3f}")
    return 0


def torch_load_extra(path: str | Path) -> dict:
    """The non-weight entries of our checkpoint (training config, iteration, provenance)."""
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer", "scheduler", "scaler", "rng")}
