"""``m2f demo``: a real street clip through the packaged default model, then the same frames on every CPU target.

    m2f demo                              # the first street clip found (see CLIP_CANDIDATES), best CPU target
    m2f demo street.mp4 --target openvino --out runs/demo/street_seg.mp4
    m2f demo 0 --max-frames 300           # a camera

Prints the stream's FPS and latency, writes the annotated video, then a Markdown table of predict() latency per
target x precision on the clip's first frames, with each row's label agreement against the first row.
Device-side: needs no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.cpu_features import cpu_features
from runtimes.registry import RUNTIMES
from runtimes.vocabulary import PRECISIONS
from sdk.artifact_choice import choose_artifact, gated_offers, packaged_artifacts
from sdk.cli import STABILIZE_HELP, drain_stream, given_flags
from sdk.model_registry import MODEL_OPTION_HELP, is_packaged
from sdk.segmenter import Segmenter
from sdk.sources import read_video_frames
from sdk.stream_options import StreamOptions
from sdk.targets import TargetNotAvailable, resolve_target

logger = logging.getLogger(__name__)

# A dash-cam clip from the project's shared data ($M2F_DATA), else Debian's opencv-doc pedestrian street scene.
CLIP_CANDIDATES = (
    Path(os.environ.get("M2F_DATA", "../shared/data")) / "videos" / "solidWhiteRight.mp4",
    Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"),
)
TABLE_TARGETS = ("openvino", "onnxruntime")


def find_clip() -> Path:
    """The first demo clip present on this machine; a clear error naming where it looked otherwise."""
    for path in CLIP_CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "no demo clip found (looked for " + ", ".join(map(str, CLIP_CANDIDATES)) + "): pass a video path or "
        "camera index, set M2F_DATA to the shared data folder, or `apt install opencv-doc`"
    )


@dataclass
class TableRow:
    """predict() latency of one target x precision on the demo frames."""

    target: str
    runtime: str
    precision: str
    p50_ms: float
    fps: float
    agreement: float | None  # % of pixels with the same label as the first row (None: error row)
    error: str = ""


def packaged_precisions(model: str | None = None) -> list[str]:
    """Precisions of a packaged model's artifacts (the default's for None; none for a file), each once (fp32 first),
    as their metadata says: several files may share one (OpenVINO's and ONNX Runtime's int8; each runtime picks its
    own)."""
    if not is_packaged(model):
        return []
    try:
        found = sorted({meta["precision"] for _, meta in packaged_artifacts(model)})
    except FileNotFoundError:  # a build without packaged models
        return []
    return sorted(found, key=lambda p: p != "fp32")


def _default_precision(target: str, model: str | None, listed: list[str]) -> list[str]:
    """What ``Segmenter(target)`` runs fast on this CPU beyond the ``listed`` files' precisions: its own choice and,
    for the packaged model, the lowerings its gate verified (bf16 on a bf16 CPU, where int8 is the choice)."""
    try:
        spec, runtime = resolve_target(target)
        chosen = [choose_artifact(model, runtime, None, spec, None).precision]
    except (TargetNotAvailable, FileNotFoundError, ValueError):
        return []
    if is_packaged(model) and spec.device == "cpu":
        features = cpu_features()
        fast = {p for p, flag in RUNTIMES[runtime].cpu_speed_order if features.has(flag)}
        chosen += [p for p in gated_offers(packaged_artifacts(model), runtime) if p in PRECISIONS and p in fast]
    return [p for p in dict.fromkeys(chosen) if p not in listed]


def target_table(frames: list[np.ndarray], model: str | None) -> list[TableRow]:
    """predict() on every frame per CPU target x packaged precision, plus what each target runs fast beyond those
    (:func:`_default_precision`: bf16 on a bf16 CPU); a target that fails becomes an error row."""
    precisions = packaged_precisions(model) or ["fp32"]
    rows: list[TableRow] = []
    reference: list[np.ndarray] | None = None
    for target in TABLE_TARGETS:
        for precision in [*precisions, *_default_precision(target, model, precisions)]:
            try:
                seg = Segmenter(target, model=model, precision=precision)
            except (TargetNotAvailable, FileNotFoundError, ValueError, RuntimeError, ImportError) as err:
                rows.append(TableRow(target, "-", precision, float("nan"), float("nan"), None, str(err)))
                continue
            with seg:
                seg.predict(frames[0])  # warm-up: first-call compilation is not latency
                times, labels = [], []
                for frame in frames:
                    start = time.perf_counter()
                    result = seg.predict(frame)
                    times.append((time.perf_counter() - start) * 1000)
                    labels.append(result.semantic)
            if reference is None:
                reference = labels
            same = sum(int((a == b).sum()) for a, b in zip(reference, labels, strict=True))
            agreement = 100.0 * same / sum(r.size for r in reference)
            p50 = float(np.percentile(times, 50))
            rows.append(TableRow(target, seg.runtime, precision, p50, 1000.0 / float(np.mean(times)), agreement))
    return rows


def markdown(rows: list[TableRow], size: tuple[int, int]) -> str:
    """The per-target table as Markdown."""
    lines = [
        f"predict() per frame at {size[1]}x{size[0]} (decode excluded; letterbox, model, post-processing included)",
        "",
        "| target | runtime | precision | p50 ms | FPS | agreement % |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.target} | - | {r.precision} | - | - | - | error: {r.error}")
            continue
        agreement = f"{r.agreement:.2f}" if r.agreement is not None else "-"
        lines.append(f"| {r.target} | {r.runtime} | {r.precision} | {r.p50_ms:.1f} | {r.fps:.1f} | {agreement} |")
    return "\n".join(lines)


def demo_main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2f demo``."""
    parser = argparse.ArgumentParser(prog="m2f demo", description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", help="video file, camera index or URL [a street clip, see --help]")
    parser.add_argument("--target", default="auto", help="target of the stream [auto: the best one here]")
    parser.add_argument("--model", help=MODEL_OPTION_HELP)
    parser.add_argument(
        "--precision", help="packaged precision to stream with [int8 when packaged: the fastest on a CPU; else fp32]"
    )
    parser.add_argument("--out", default="runs/demo/street_seg.mp4", help="annotated video [runs/demo/street_seg.mp4]")
    parser.add_argument("--max-frames", type=int, help="stop the stream after N frames")
    parser.add_argument("--table-frames", type=int, default=30, help="frames per row of the target table [30]")
    parser.add_argument("--no-table", action="store_true", help="skip the per-target table")
    parser.add_argument("--stabilize", action=argparse.BooleanOptionalAction, help=STABILIZE_HELP)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object with the figures")
    args = parser.parse_args(argv)
    try:
        source: str | int | Path = args.source if args.source is not None else find_clip()
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        precision = args.precision or ("int8" if "int8" in packaged_precisions(args.model) else None)
        seg = Segmenter(args.target, model=args.model, precision=precision)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as err:
        print(f"m2f demo: {err}", file=sys.stderr)
        return 2
    print(
        f"streaming {source} through {seg.metadata['source']['name']} "
        f"on {seg.target.name} ({seg.runtime}, {seg.precision}) -> {args.out}"
    )
    with seg:
        options = StreamOptions(output=args.out, max_frames=args.max_frames, **given_flags(stabilize=args.stabilize))
        stats, code = drain_stream(seg, "demo", source, options)
    if stats is None or code:
        return code
    lat = stats.latency_ms
    print(
        f"stream: {stats.frames} frames in {stats.elapsed_s:.1f} s = {stats.fps:.1f} FPS end to end "
        f"(decode, inference, post-processing, overlay and encode overlapped); latency p50 {lat.get('p50', 0):.0f} ms, "
        f"p99 {lat.get('p99', 0):.0f} ms; wrote {stats.written} frames to {args.out}"
    )
    figures: dict[str, object] = {"stream": stats.to_dict(), "target": seg.target.name, "runtime": seg.runtime}
    if not args.no_table and Path(str(source)).is_file():
        frames = read_video_frames(Path(source), args.table_frames)
        rows = target_table(frames, args.model)
        print()
        print(markdown(rows, frames[0].shape[:2]))
        figures["table"] = [r.__dict__ for r in rows]
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(demo_main())
