"""Would smoothing per-class scores beat the label stabiliser? An offline check on a clip (issue 22).

    python -m benchmarks.score_smoothing --checkpoint runs/default_mnv2/model_final.pt \
        [--clip ../shared/data/videos/car-detection.mp4] [--frames 150] --out benchmarks/results/score_smoothing

Our semantic artifacts output labels only; this runs the torch model instead (its training checkpoint: the
commands of docs/models.md make it) to get the per-class scores at the model's input size, then compares on
the same frames, by ``TemporalStability``'s flicker on unchanged pixels: the raw labels, the label stabiliser
(``LabelStabilizer``, what ``stabilize=True`` runs) and an exponential moving average of the scores on pixels that
did not move (restarted where they did), with a margin the new class must beat the shown one by, with and without
the label stabiliser after it. One thread: the figures are flicker, not speed.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.paths import DATA_ROOT
from runtimes.cpu_features import cpu_features
from sdk.sources import read_video_frames
from sdk.stability import UNCHANGED_LEVEL, LabelStabilizer, TemporalStability, changed

SETTINGS = [(0.5, 0.0), (0.3, 0.05), (0.15, 0.1), (0.1, 0.1), (0.15, 0.2)]  # (EMA weight of the new frame, margin)
MODEL_WIDTH = 480  # the default model's input width; frames are resized to it, aspect kept


def model_scores(checkpoint: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    """(K, h, w) float32 class scores per frame at the model's input size (official semantic inference)."""
    from train.evaluation.runner import normalize_images
    from train.model.checkpoint import load_pretrained
    from train.model.inference import semantic_scores

    loaded = load_pretrained(checkpoint)
    out = []
    for frame in frames:
        h = round(frame.shape[0] * MODEL_WIDTH / frame.shape[1])
        small = cv2.resize(frame, (MODEL_WIDTH, h), interpolation=cv2.INTER_AREA)
        rgb = torch.from_numpy(np.ascontiguousarray(small[:, :, ::-1])).permute(2, 0, 1)[None]
        with torch.no_grad():
            pred = loaded.model(normalize_images(rgb, [(h, MODEL_WIDTH)], loaded.meta))
        padded = (pred["pred_masks"].shape[-2] * 4, pred["pred_masks"].shape[-1] * 4)
        scores = semantic_scores(pred["pred_logits"].float(), pred["pred_masks"].float(), padded, (h, MODEL_WIDTH))
        out.append(scores[0].numpy())
    return out


def smoothed_labels(
    frames: list[np.ndarray], scores: list[np.ndarray], weight: float, margin: float
) -> list[np.ndarray]:
    """Score EMA on pixels that did not move (judged at the score size), the shown class kept unless beaten by
    ``margin``; labels at frame size."""
    out, average, shown, previous = [], None, None, None
    for frame, score in zip(frames, scores, strict=True):
        small = cv2.resize(frame, (score.shape[2], score.shape[1]), interpolation=cv2.INTER_AREA)
        if average is None:
            average, shown = score.copy(), score.argmax(0)
        else:
            moved = changed(small, previous, UNCHANGED_LEVEL)
            average = np.where(moved[None], score, weight * score + (1 - weight) * average)
            current = np.take_along_axis(average, shown[None], 0)[0]
            take = moved | (average.max(0) > current + margin)
            shown = np.where(take, average.argmax(0), shown)
        previous = small
        out.append(_at_frame_size(shown, frame))
    return out


def _at_frame_size(labels: np.ndarray, frame: np.ndarray) -> np.ndarray:
    return cv2.resize(labels.astype(np.uint8), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)


def _row(method: str, frames: list[np.ndarray], labels: list[np.ndarray]) -> dict:
    meter = TemporalStability(flow=False)
    for frame, label in zip(frames, labels, strict=True):
        meter.update(frame, label)
    return {"method": method, "flicker_unchanged_pct": meter.to_dict()["flicker_unchanged_pct"]}


def _stabilised(frames: list[np.ndarray], labels: list[np.ndarray]) -> list[np.ndarray]:
    stabilizer = LabelStabilizer()
    return [stabilizer.apply(frame, label) for frame, label in zip(frames, labels, strict=True)]


def run(checkpoint: Path, clip: Path, frames: int) -> dict:
    video = read_video_frames(clip, frames, consecutive=True)
    scores = model_scores(checkpoint, video)
    raw = [_at_frame_size(s.argmax(0), f) for s, f in zip(scores, video, strict=True)]
    rows = [_row("raw labels", video, raw), _row("label stabiliser (8 / 3)", video, _stabilised(video, raw))]
    for weight, margin in SETTINGS:
        smooth = smoothed_labels(video, scores, weight, margin)
        rows.append(_row(f"score EMA {weight}, margin {margin}", video, smooth))
        rows.append(_row(f"score EMA {weight}, margin {margin} + label stabiliser", video, _stabilised(video, smooth)))
    return {"machine": f"{platform.node()}, {cpu_features().describe()}", "checkpoint": str(checkpoint),
            "clip": clip.name, "frames": len(video), "rows": rows}  # fmt: skip


def markdown(report: dict) -> str:
    lines = [f"# Score smoothing vs the label stabiliser ({report['machine']})", "",
             f"{report['clip']}, first {report['frames']} frames, torch fp32 `{report['checkpoint']}`", "",
             "| method | flicker on unchanged px % |", "|---|---|"]  # fmt: skip
    lines += [f"| {r['method']} | {r['flicker_unchanged_pct']} |" for r in report["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the model's training checkpoint (.pt)")
    parser.add_argument("--clip", type=Path, default=DATA_ROOT / "videos" / "car-detection.mp4")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = run(args.checkpoint, args.clip, args.frames)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "score_smoothing.json").write_text(json.dumps(report, indent=2))
    (args.out / "score_smoothing.md").write_text(markdown(report))
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
