"""End-to-end stream throughput against the backend's own inference throughput on the same model.

    python -m benchmarks.stream_throughput ARTIFACT CLIP [--target openvino] [--frames 200] [--annotate]

Backend-only: ``backend.run`` in a loop on one prepared input (no decode, no pre/post-processing). Stream:
``Segmenter.stream`` over the clip (decode, letterbox, inference, post-processing, optional overlay and video
encode, overlapped in threads). The ratio says how much of the runtime's speed survives the pipeline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sdk.segmenter import Segmenter
from sdk.sources import read_video_frames
from sdk.stream_options import StreamOptions


def backend_fps(seg: Segmenter, frame, runs: int, warmup: int = 5) -> float:
    inputs, _ = seg.preprocess(frame)
    for _ in range(warmup):
        seg.inference(inputs)
    start = time.perf_counter()
    for _ in range(runs):
        seg.inference(inputs)
    return runs / (time.perf_counter() - start)


def stream_fps(seg: Segmenter, clip: Path, frames: int, annotate: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "out.mp4" if annotate else None  # no output: nothing is drawn or encoded
        running = seg.stream(clip, StreamOptions(max_frames=frames, output=output))
        for _ in running:
            pass
        return running.stats.to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("clip", type=Path)
    parser.add_argument("--target", default="openvino")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--annotate", action="store_true", help="also draw and encode the annotated video")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        frame = read_video_frames(args.clip, 1)[0]
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"cannot read a frame from {args.clip}: {err}") from err
    with Segmenter(args.target, model=args.artifact) as seg:
        stream_fps(seg, args.clip, 10, args.annotate)  # warm the runtime and the decoder
        backend = backend_fps(seg, frame, args.frames)
        stats = stream_fps(seg, args.clip, args.frames, args.annotate)
    report = {
        "artifact": args.artifact.name,
        "clip": args.clip.name,
        "target": args.target,
        "frames": stats["frames"],
        "annotate": args.annotate,
        "backend_fps": round(backend, 2),
        "stream_fps": stats["fps"],
        "ratio": round(stats["fps"] / backend, 3),
        "latency_ms": stats["latency_ms"],
        "stage_ms": stats["stage_ms"],
    }
    print(json.dumps(report))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"stream_{args.artifact.stem}_{args.clip.stem}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
