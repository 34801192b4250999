"""Temporal stability of a model's labels on video, without and with the stabiliser, and what it costs in accuracy.

    python -m benchmarks.temporal [--model ARTIFACT] [--target cpu] [--clips CLIP ...] [--frames 150]
        [--camvid DIR --sequence 0006R0 --camvid-model ARTIFACT] --out benchmarks/results/temporal

Clips: each streamed twice through one ``Segmenter`` (``stabilize`` off, then on), ``measure_stability`` on:
flicker on unchanged pixels, flicker on all pixels, optical-flow consistency, FPS. CamVid: the labelled frames of
one drive fed in frame order through ``predict`` with and without a ``LabelStabilizer`` carried across them, mIoU
of each (use a model that did not train on that drive: a leave-one-sequence-out fold's artifact).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import cv2

from benchmarks.paths import DATA_ROOT
from runtimes.cpu_features import cpu_features
from runtimes.vocabulary import VOID
from sdk.segmenter import Segmenter
from sdk.sources import read_video_frames
from sdk.stability import LabelStabilizer, TemporalStability
from train.evaluation.semantic import SemanticEvaluator

DEFAULT_CLIPS = [DATA_ROOT / "videos" / name for name in
                 ("car-detection.mp4", "one-by-one-person-detection.mp4", "solidWhiteRight.mp4")]  # fmt: skip
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian's opencv-doc clip, where installed


def clip_rows(seg: Segmenter, clips: list[Path], frames: int) -> list[dict]:
    rows = []
    for clip in clips:
        for stabilize in (False, True):
            run = seg.stream(clip, max_frames=frames, stabilize=stabilize, measure_stability=True, live=False)
            for _ in run:
                pass
            stats = run.stats
            rows.append({"clip": clip.name, "stabilize": stabilize, "fps": round(stats.fps, 2), **stats.stability})
    return rows


def camvid_predictions(seg: Segmenter, root: Path, sequence: str) -> list[tuple]:
    """(image, model labels, ground truth) of the drive's labelled frames, in frame order."""
    frames = sorted(p for split in ("train", "val") for p in (root / split).glob(f"{sequence}_*.png"))
    if not frames:
        raise SystemExit(f"no CamVid frames of drive {sequence} under {root}")
    predicted = []
    for path in frames:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        label = cv2.imread(str(path.parent.parent / f"{path.parent.name}annot" / path.name), cv2.IMREAD_GRAYSCALE)
        predicted.append((image, seg.predict(image).semantic, label))
    return predicted


def camvid_in_order(predicted: list[tuple], classes: int, sequence: str,
                    stabilizer: LabelStabilizer | None = None) -> dict:  # fmt: skip
    """mIoU of a drive's labelled frames (``camvid_predictions``) in frame order, plain and through one stabiliser
    carried across them."""
    plain_eval, steady_eval = SemanticEvaluator(classes, VOID), SemanticEvaluator(classes, VOID)
    stabilizer = stabilizer or LabelStabilizer()
    changed = total = 0
    for image, plain, label in predicted:
        steady = stabilizer.apply(image, plain)
        changed += int((steady != plain).sum())
        total += plain.size
        plain_eval.update(plain, label)  # CamVid's void (id 11 = the class count) is ignored like VOID
        steady_eval.update(steady, label)
    return {"sequence": sequence, "frames": len(predicted), "mIoU": round(plain_eval.compute()["mIoU"], 2),
            "mIoU_stabilized": round(steady_eval.compute()["mIoU"], 2),
            "pixels_changed_by_stabilizer_pct": round(100 * changed / total, 3)}  # fmt: skip


def _camvid_rows(args: argparse.Namespace, settings: list[tuple[int, int] | None]) -> tuple[str, list[dict]]:
    """(the model's file name, one in-order CamVid row per stabiliser setting; None: the default): the model runs
    once, every setting replays its labels."""
    with Segmenter(args.target, model=args.camvid_model) as seg:
        predicted = camvid_predictions(seg, args.camvid, args.sequence)
        classes, model = len(seg.metadata["class_names"]), seg.model_path.name
    rows = []
    for setting in settings:
        stabilizer = LabelStabilizer(change_level=setting[0], weight=setting[1]) if setting else None
        row = camvid_in_order(predicted, classes, args.sequence, stabilizer)
        if setting:
            row.update(change_level=setting[0], weight=setting[1])
        rows.append(row)
    return model, rows


GRID = [(level, weight) for level in (8, 16, 32) for weight in (0.1, 0.05, 0.03)]  # (change_level, weight)


def grid_rows(seg: Segmenter, clips: list[Path], frames: int, settings: list[tuple[int, float]]) -> list[dict]:
    """Flicker on unchanged pixels per clip for each stabiliser setting: the model runs once per frame, every
    setting replays its labels (so the rows differ only in the stabiliser)."""
    rows = []
    for clip in clips:
        shown = [(frame, seg.predict(frame).semantic) for frame in read_video_frames(clip, frames, consecutive=True)]
        for setting in [None, *settings]:
            meter = TemporalStability(flow=False)
            stabilizer = LabelStabilizer(change_level=setting[0], weight=setting[1]) if setting else None
            for frame, labels in shown:
                meter.update(frame, stabilizer.apply(frame, labels) if stabilizer else labels)
            figures = meter.to_dict()
            level, weight = setting or (None, None)
            rows.append({"clip": clip.name, "change_level": level, "weight": weight,
                         "flicker_unchanged_pct": figures["flicker_unchanged_pct"],
                         "flicker_all_pct": figures["flicker_all_pct"]})  # fmt: skip
    return rows


def grid_markdown(report: dict) -> str:
    lines = [f"# Stabiliser settings ({report['machine']}; model {report['model']} on {report['runtime']} "
             f"{report['precision']})", "", "| clip | change_level | weight | flicker on unchanged px % | "
             "flicker all px % |", "|---|---|---|---|---|"]  # fmt: skip
    for row in report["grid"]:
        setting = ("off", "-") if row["change_level"] is None else (row["change_level"], row["weight"])
        lines.append(f"| {row['clip']} | {setting[0]} | {setting[1]} | {row['flicker_unchanged_pct']} | "
                     f"{row['flicker_all_pct']} |")  # fmt: skip
    for row in report.get("camvid_grid", []):
        lines.append(
            f"\nCamVid {row['sequence']} in order, change_level {row['change_level']}, weight "
            f"{row['weight']}: mIoU {row['mIoU']} plain, {row['mIoU_stabilized']} stabilised"
        )
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    lines = [f"# Temporal stability ({report['machine']})", "",
             f"model {report['model']} on {report['runtime']} {report['precision']}", "",
             "| clip | stabiliser | flicker on unchanged px % | flicker all px % | flow consistency % | FPS |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in report["clips"]:
        lines.append(f"| {row['clip']} | {'on' if row['stabilize'] else 'off'} | {row['flicker_unchanged_pct']} | "
                     f"{row['flicker_all_pct']} | {row['flow_consistency_pct']} | {row['fps']} |")  # fmt: skip
    if report.get("camvid"):
        c = report["camvid"]
        lines += ["", f"CamVid drive {c['sequence']} ({c['frames']} labelled frames in order, {c['model']}): "
                  f"mIoU {c['mIoU']} plain, {c['mIoU_stabilized']} stabilised "
                  f"({c['pixels_changed_by_stabilizer_pct']} % of pixels changed by the stabiliser)"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="artifact (default: the packaged model)")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--clips", nargs="+", type=Path, help="default: the shared clips and vtest.avi if present")
    parser.add_argument("--frames", type=int, default=150, help="frames per clip [150]")
    parser.add_argument("--camvid", type=Path, help="CamVid root for the in-order accuracy check")
    parser.add_argument("--sequence", default="0006R0", help="the CamVid drive to feed in order [0006R0]")
    parser.add_argument("--camvid-model", type=Path, help="artifact that did not train on --sequence")
    parser.add_argument("--grid", action="store_true", help="compare stabiliser settings (GRID) instead")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    clips = args.clips or [c for c in [*DEFAULT_CLIPS, VTEST] if c.is_file()]
    if args.grid:
        return _grid_main(args, clips)
    with Segmenter(args.target, model=args.model) as seg:
        report = {**what_ran(seg), "clips": clip_rows(seg, clips, args.frames)}
    if args.camvid:
        model, (row,) = _camvid_rows(args, [None])
        report["camvid"] = {**row, "model": model}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "temporal.json").write_text(json.dumps(report, indent=2))
    (args.out / "temporal.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def what_ran(seg: Segmenter) -> dict:
    return {"machine": f"{platform.node()}, {cpu_features().describe()}", "model": seg.model_path.name,
            "runtime": seg.runtime, "precision": seg.precision}  # fmt: skip


def _grid_main(args: argparse.Namespace, clips: list[Path]) -> int:
    with Segmenter(args.target, model=args.model) as seg:
        report = {**what_ran(seg), "grid": grid_rows(seg, clips, args.frames, GRID)}
    if args.camvid:
        report["camvid_grid"] = _camvid_rows(args, list(GRID))[1]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grid.json").write_text(json.dumps(report, indent=2))
    (args.out / "grid.md").write_text(grid_markdown(report))
    print(grid_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
