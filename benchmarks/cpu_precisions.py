"""Every CPU precision of one model side by side, interleaved frame by frame in one process, beside the LiteRT peer:
the measurement behind each runtime's ``cpu_speed_order`` (``runtimes.registry``).

    python -m benchmarks.cpu_precisions --fp32 A_fp32.onnx --openvino-int8 A_ov_int8.onnx \
        --onnxruntime-int8 A_ort_int8.onnx --images ../shared/data/camvid/val --frames 10 --out DIR

Rows: OpenVINO fp32 / bf16 (the fp32 artifact lowered; only where the CPU has native bf16) / int8, ONNX Runtime
fp32 / int8, and the LiteRT peer when its file is here. Each frame goes through every row in turn, so a busy machine
slows all rows alike; the table gives medians of ``SegmentationResult.timings["inference_ms"]`` and end-to-end ms,
the ratio to OpenVINO fp32, and the CPU it ran on. Writes ``cpu_precisions.md/.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from runtimes.vocabulary import image_files


def _rows(args: argparse.Namespace) -> dict[str, tuple[str, Path, str | None]]:
    from runtimes.cpu_features import cpu_features

    rows: dict[str, tuple[str, Path, str | None]] = {"OpenVINO fp32": ("openvino", args.fp32, "fp32")}
    if cpu_features().native_bf16:
        rows["OpenVINO bf16"] = ("openvino", args.fp32, "bf16")
    if args.openvino_int8:
        rows["OpenVINO int8"] = ("openvino", args.openvino_int8, None)
    rows["ONNX Runtime fp32"] = ("onnxruntime", args.fp32, None)
    if args.onnxruntime_int8:
        rows["ONNX Runtime int8"] = ("onnxruntime", args.onnxruntime_int8, None)
    return rows


def measure(args: argparse.Namespace) -> dict:
    import sdk
    from benchmarks.litert_peer import LiteRtDeepLab, PeerNotAvailable, default_peer_path
    from runtimes import read_metadata
    from runtimes.cpu_features import cpu_features

    files = image_files(Path(args.images))
    if not files:
        raise FileNotFoundError(f"no images under {args.images}")
    frames = [cv2.imread(str(files[i])) for i in np.linspace(0, len(files) - 1, args.frames).astype(int)]
    runners = {}
    for label, (runtime, path, precision) in _rows(args).items():
        segmenter = sdk.Segmenter(runtime, model=path, precision=precision, threads=args.threads)
        runners[label] = lambda f, s=segmenter: s.predict(f).timings["inference_ms"]
    try:
        names = read_metadata(args.fp32)["class_names"]
        peer = LiteRtDeepLab(default_peer_path(), names, threads=args.threads)
        runners["LiteRT peer (int8)"] = lambda f: peer.predict(f)[1]["inference_ms"]
    except PeerNotAvailable as err:
        print(f"cpu_precisions: no peer row: {err}", file=sys.stderr)
    for run in runners.values():
        run(frames[0])  # warm-up
    infer: dict[str, list[float]] = {k: [] for k in runners}
    total: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for frame in frames:
            for label, run in runners.items():
                start = time.perf_counter()
                infer[label].append(run(frame))
                total[label].append((time.perf_counter() - start) * 1000)
    base = float(np.median(infer["OpenVINO fp32"]))
    return {
        "cpu": cpu_features().describe(),
        "threads": args.threads,
        "frames": len(frames) * args.rounds,
        "rows": {
            k: {
                "inference_ms": float(np.median(infer[k])),
                "end_to_end_ms": float(np.median(total[k])),
                "vs_openvino_fp32": float(np.median(infer[k])) / base,
            }
            for k in runners
        },
    }


def markdown(report: dict) -> str:
    lines = [
        f"CPU: {report['cpu']}; {report['threads']} threads; {report['frames']} frames per row, interleaved.",
        "",
        "| row | inference ms (median) | end to end ms | inference / OpenVINO fp32 |",
        "|---|---|---|---|",
    ]
    for label, row in report["rows"].items():
        lines.append(
            f"| {label} | {row['inference_ms']:.1f} | {row['end_to_end_ms']:.1f} | {row['vs_openvino_fp32']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_precisions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", type=Path, required=True, help="the fp32 artifact (OpenVINO also runs it in bf16)")
    parser.add_argument("--openvino-int8", type=Path, help="NNCF int8 artifact (m2f export --target openvino)")
    parser.add_argument("--onnxruntime-int8", type=Path, help="ORT int8 artifact (m2f export --target onnxruntime)")
    parser.add_argument("--images", type=Path, required=True, help="a folder of frames")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for cpu_precisions.md/.json")
    args = parser.parse_args(argv)
    try:
        report = measure(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"cpu_precisions: {err}", file=sys.stderr)
        return 2
    text = markdown(report)
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu_precisions.json").write_text(json.dumps(report, indent=1))
        (args.out / "cpu_precisions.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
