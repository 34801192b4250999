"""Score what ships, per cross-validation fold: each fold's model exported (e.g. OpenVINO int8, calibrated on that
fold's own training frames) and its held-out sequence scored through the deployed artifact by the export gate.

    python -m benchmarks.fold_artifacts runs/loso_edge --config configs/camvid_edge.yaml \
        --data-root ../shared/data/camvid --target openvino --precision int8 --input-size 360x480

reads ``runs/loso_edge/fold_<sequence>/model_final.pt`` (from ``m2f cross-validate``) and writes
``runs/loso_edge/fold_artifacts_<target>_<precision>.md/.json``: per fold the torch fp32 and the artifact mIoU on
the held-out sequence (both from the export gate, which scores at the model's input size), the artifact as
``Segmenter("cpu", model=FILE)`` runs it scored at the frames' own size (as the peer is, and as a user's frames are;
"ours - peer" compares these two), and the mean of the folds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compile.export import CALIB_IMAGES, export
from runtimes import read_metadata
from runtimes.cache import graph_code_key
from runtimes.geometry import parse_input_size
from runtimes.registry import TARGETS
from runtimes.vocabulary import PRECISIONS
from train.cross_validate import hold_out
from train.data import build_dataset
from train.train_config import TrainConfig, load_train_config
from train.trainer import FINAL_CHECKPOINT

logger = logging.getLogger(__name__)


def score_folds(
    run_dir: Path,
    config: TrainConfig,
    target: str,
    precision: str,
    input_size: tuple[int, int] | None,
    calib_images: int = CALIB_IMAGES,
    peer: bool = True,
) -> dict[str, Any]:
    """{"folds": {sequence: {"frames", "torch_fp32", "artifact", "drop", "peer"}}, "mean_artifact", ...}.

    ``peer``: also score the off-the-shelf LiteRT street model (``benchmarks.litert_peer``) on each held-out
    sequence, when LiteRT and its file are here (else the report says why not)."""
    checkpoints = sorted(run_dir.glob(f"fold_*/{FINAL_CHECKPOINT}"))
    if not checkpoints:
        raise FileNotFoundError(f"no fold_*/{FINAL_CHECKPOINT} under {run_dir}: run `m2f cross-validate` first")
    folds: dict[str, dict[str, Any]] = {}
    code_key = graph_code_key()  # hashes the graph's sources: once, not per fold
    for checkpoint in checkpoints:
        sequence = checkpoint.parent.name.removeprefix("fold_")
        fold = hold_out(config, sequence)
        held_out_set = build_dataset(fold.val_data)
        held_out = len(held_out_set)
        out = checkpoint.parent / f"{target}_{precision}.onnx"
        code = out.with_suffix(".graph_code")  # the graph's sources it was exported from (benchmarks.harness)
        if (
            out.is_file()
            and out.stat().st_mtime > checkpoint.stat().st_mtime
            and _gated_at(out, input_size)
            and code.is_file()
            and code.read_text() == code_key
        ):
            logger.info("fold %s: %s is newer than its checkpoint, from this graph code, scored: kept", sequence, out)
        else:
            _export_fold(checkpoint, fold, target, precision, out, input_size, held_out, calib_images)
            code.write_text(code_key)
        meta = read_metadata(out)
        accuracy = meta["accuracy"]
        folds[sequence] = {
            "frames": held_out,
            "torch_fp32": accuracy["reference"],
            "artifact": accuracy["artifact"],
            "drop": accuracy["drop"],
            "label_agreement": accuracy["label_agreement"],
            # the runtime's verified lowerings (OpenVINO bf16: an int8 file's float ops), scored on the same frames
            "lowered": {
                k: v["artifact"] for k, v in (meta.get("verified_precisions") or {}).items() if "artifact" in v
            },
        }
        folds[sequence]["sdk"] = _sdk_score(out, held_out_set)
        if peer:
            folds[sequence]["peer"] = _peer_score(held_out_set)
        logger.info("fold %s: torch %.2f, %s %s %.2f", sequence, accuracy["reference"], target, precision,
                    accuracy["artifact"])  # fmt: skip
    peers = [f["peer"]["mIoU"] for f in folds.values() if "mIoU" in f.get("peer", {})]
    lowered = sorted({k for f in folds.values() for k in f["lowered"]})
    return {
        "target": target,
        "precision": precision,
        "folds": folds,
        "mean_lowered": {k: _mean([f["lowered"].get(k) for f in folds.values()]) for k in lowered},
        "mean_peer": _mean(peers) if len(peers) == len(folds) else None,
        **{f"mean_{key}": _mean([f[key] for f in folds.values()]) for key in ("torch_fp32", "artifact", "sdk")},
    }


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None where a fold lacks the figure."""
    return None if any(v is None for v in values) or not values else sum(values) / len(values)  # type: ignore[arg-type]


def _gated_at(artifact: Path, input_size: tuple[int, int] | None) -> bool:
    """The artifact carries a gate record and was made at ``input_size`` (None: dynamic)."""
    meta = read_metadata(artifact)
    size = meta["input"]["size"]
    return "accuracy" in meta and (size is None if input_size is None else list(size) == list(input_size))


def _export_fold(checkpoint: Path, fold: Any, target: str, precision: str, out: Path,
                 input_size: tuple[int, int] | None, held_out: int, calib_images: int) -> None:  # fmt: skip
    """Export one fold's model and score it on the whole held-out sequence (int8: calibrated on the fold's own
    training frames)."""
    with tempfile.TemporaryDirectory() as calib:
        for image, _, _ in build_dataset(fold.train_data).items:  # calibrate on frames the fold trained on
            (Path(calib) / image.name).symlink_to(image.resolve())
        export(checkpoint, target, precision, out, input_size=input_size, calib_dir=calib, val_data=fold.val_data,
               gate_images=held_out, calib_images=calib_images, max_drop=100.0)  # fmt: skip
        # max_drop: this scores, it does not gate; every drop is reported


def _sdk_score(artifact: Path, dataset: Any) -> float:
    """The artifact's mIoU as the SDK runs it (its own resize back to the frame), at each frame's own size."""
    from benchmarks.litert_peer import score_at_frame_size
    from sdk import Segmenter

    segmenter = Segmenter("cpu", model=artifact)
    return score_at_frame_size(dataset, lambda frame: segmenter.predict(frame).semantic)["mIoU"]


def _peer_score(dataset: Any) -> dict[str, Any]:
    from benchmarks.litert_peer import PeerNotAvailable, score_peer

    try:
        return score_peer(dataset, threads=1)
    except PeerNotAvailable as err:
        return {"error": str(err)}


def markdown(report: dict[str, Any]) -> str:
    name = f"{report['target']} {report['precision']}"
    lowered = report.get("mean_lowered") or {}
    extra = "".join(f" {name}, {k} lowering mIoU |" for k in lowered)
    lines = [
        f"| held-out sequence | frames | torch fp32 mIoU | {name} mIoU | drop |{extra} {name} in the SDK, at the "
        "frame's size | LiteRT peer mIoU (at the frame's size) | ours (SDK) - peer |",
        "|---|---|---|---|---|" + "---|" * len(lowered) + "---|---|---|",
    ]
    for sequence, fold in report["folds"].items():
        figures = f"{fold['torch_fp32']:.2f} | {fold['artifact']:.2f} | {fold['drop']:.2f}"
        figures += "".join(f" | {_cell(fold.get('lowered', {}).get(k))}" for k in lowered)
        peer = fold.get("peer", {})
        vs = f"{peer['mIoU']:.2f} | {fold['sdk'] - peer['mIoU']:+.2f}" if "mIoU" in peer else "– | –"
        lines.append(f"| {sequence} | {fold['frames']} | {figures} | {fold['sdk']:.2f} | {vs} |")
    mean_peer = report.get("mean_peer")
    peer_cell = f"**{mean_peer:.2f}** | {report['mean_sdk'] - mean_peer:+.2f}" if mean_peer else "– | –"
    lowered_cells = "".join(f" **{_cell(v)}** |" for v in lowered.values())
    lines.append(
        f"| **mean of folds** | | **{report['mean_torch_fp32']:.2f}** | **{report['mean_artifact']:.2f}** | "
        f"|{lowered_cells} **{report['mean_sdk']:.2f}** | {peer_cell} |"
    )
    errors = {f.get("peer", {}).get("error") for f in report["folds"].values()} - {None}
    lines += [f"\nLiteRT peer not scored: {e}" for e in errors]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fold_artifacts", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="an `m2f cross-validate` output folder")
    parser.add_argument("--config", required=True, help="the training config the folds were trained with")
    parser.add_argument("--data-root", help="replaces the dataset root of the config")
    parser.add_argument("--target", default="openvino", choices=TARGETS["cpu"].runtimes)
    parser.add_argument("--precision", default="int8", choices=PRECISIONS)
    parser.add_argument("--input-size", type=parse_input_size, help="HxW of a fixed-size export (default: dynamic)")
    parser.add_argument("--calib-images", type=int, default=CALIB_IMAGES)
    parser.add_argument("--no-peer", action="store_true", help="do not score the LiteRT peer on the held-out frames")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_train_config(args.config).with_overrides(args.data_root)
        report = score_folds(
            args.run_dir, config, args.target, args.precision, args.input_size, args.calib_images, peer=not args.no_peer
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"fold_artifacts: {err}", file=sys.stderr)
        return 2
    stem = args.run_dir / f"fold_artifacts_{args.target}_{args.precision}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
