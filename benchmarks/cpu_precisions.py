"""Every CPU precision of one model side by side, beside the LiteRT peer, each row alone in its own process: the
measurement behind each runtime's ``cpu_speed_order`` (``runtimes.registry``) and the SDK's speed against the peer.

    python -m benchmarks.cpu_precisions --fp32 A_fp32.onnx --openvino-int8 A_ov_int8.onnx \
        --onnxruntime-int8 A_ort_int8.onnx --images ../shared/data/camvid/val --frames 10 --out DIR
    python -m benchmarks.cpu_precisions --models street-fast street-default --images ... --out DIR   # by name

Rows: OpenVINO fp32 / bf16 (the fp32 artifact lowered; only where the CPU has native bf16) / int8 (as ``Segmenter``
runs it; where its float ops run in bf16, also with f32 float ops), ONNX Runtime fp32 / int8, and the LiteRT peer
when its file is here. ``--models``: one row per packaged model (or artifact) instead, as
``Segmenter("cpu", model=NAME)`` runs it (ratios to the peer; ``benchmarks.model_family`` charts them). Each round
starts every row in a fresh process, one after the other, in an order rotated from round to round, so a busy machine
slows all rows alike. Rows never share a
process: two runtimes' thread pools in one process compete for the same cores (measured, 2-core AMD EPYC: the LiteRT
peer took 75 ms a frame beside OpenVINO, 43-47 ms alone). ``--in-process`` keeps the older frame-by-frame
interleaving in one process. The table gives medians of ``SegmentationResult.timings["inference_ms"]`` and
end-to-end ms, the ratio to OpenVINO fp32 (to the peer with ``--models``), and the CPU it ran on. Writes
``cpu_precisions.md/.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from runtimes.vocabulary import image_files

PEER_ROW = "LiteRT peer (int8)"


def _rows(args: argparse.Namespace) -> dict[str, tuple[str, Path | str, str | None]]:
    from runtimes.cpu_features import cpu_features
    from runtimes.openvino_backend import int8_float_ops_of

    if args.models:
        return {name: ("cpu", name, None) for name in args.models}
    rows: dict[str, tuple[str, Path, str | None]] = {"OpenVINO fp32": ("openvino", args.fp32, "fp32")}
    if cpu_features().native_bf16:
        rows["OpenVINO bf16"] = ("openvino", args.fp32, "bf16")
    if args.openvino_int8:
        rows["OpenVINO int8"] = ("openvino", args.openvino_int8, None)
        if int8_float_ops_of(args.openvino_int8) == "bf16":  # as it runs by default; the f32 float ops beside it
            rows["OpenVINO int8, f32 float ops"] = ("openvino", args.openvino_int8, "fp32")
    rows["ONNX Runtime fp32"] = ("onnxruntime", args.fp32, None)
    if args.onnxruntime_int8:
        rows["ONNX Runtime int8"] = ("onnxruntime", args.onnxruntime_int8, None)
    return rows


def _frame_files(args: argparse.Namespace) -> list[Path]:
    """The ``--frames`` files picked evenly from ``--images`` (repeats where the folder holds fewer)."""
    files = image_files(Path(args.images))
    if not files:
        raise FileNotFoundError(f"no images under {args.images}")
    return [files[i] for i in np.linspace(0, len(files) - 1, args.frames).astype(int)]


def _frames(args: argparse.Namespace) -> list[np.ndarray]:
    return [cv2.imread(str(path)) for path in _frame_files(args)]


def _runner(args: argparse.Namespace, label: str) -> Callable[[np.ndarray], float]:
    """One row, loaded in this process: frame -> inference ms. Raises PeerNotAvailable for a peer that cannot run."""
    import sdk
    from benchmarks.litert_peer import LiteRtDeepLab, default_peer_path
    from runtimes import read_metadata
    from sdk.artifact_choice import packaged_artifacts
    from sdk.model_registry import is_model_name

    if label == PEER_ROW:
        first = args.models[0] if args.models else args.fp32
        meta = packaged_artifacts(first)[0][1] if is_model_name(first) else read_metadata(first)
        peer = LiteRtDeepLab(default_peer_path(), meta["class_names"], threads=args.threads)
        return lambda f: peer.predict(f)[1]["inference_ms"]
    runtime, path, precision = _rows(args)[label]
    segmenter = sdk.Segmenter(runtime, model=path, precision=precision, threads=args.threads)
    return lambda f: segmenter.predict(f).timings["inference_ms"]


def _timed(run: Callable[[np.ndarray], float], frame: np.ndarray) -> tuple[float, float]:
    """(inference ms as the row reports it, end-to-end ms around the call) for one frame."""
    start = time.perf_counter()
    inference = run(frame)
    return inference, (time.perf_counter() - start) * 1000


def _time(run: Callable[[np.ndarray], float], frames: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """(inference ms, end-to-end ms) per frame, after one untimed warm-up frame."""
    run(frames[0])
    infer, total = zip(*(_timed(run, frame) for frame in frames), strict=True)
    return list(infer), list(total)


def _labels(args: argparse.Namespace) -> list[str]:
    """Every row to measure; the peer's only where it can run (checked in a throw-away process: LiteRT stays out
    of this one)."""
    labels = list(_rows(args))
    probe = subprocess.run([*_row_command(args), "--probe-peer"], capture_output=True, text=True)
    if probe.returncode == 0:
        labels.append(PEER_ROW)
    else:
        print(f"cpu_precisions: no peer row: {probe.stderr.strip()}", file=sys.stderr)
    return labels


def _row_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.cpu_precisions", "--images", str(args.images), "--frames",
               str(args.frames), "--threads", str(args.threads)]  # fmt: skip
    if args.models:
        command += ["--models", *args.models]
    for flag, value in (("--fp32", args.fp32), ("--openvino-int8", args.openvino_int8),
                        ("--onnxruntime-int8", args.onnxruntime_int8)):  # fmt: skip
        if value:
            command += [flag, str(value)]
    return command


def _in_own_process(args: argparse.Namespace, label: str) -> tuple[list[float], list[float]]:
    done = subprocess.run([*_row_command(args), "--one-row", label], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"row {label!r} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    return timings["inference_ms"], timings["end_to_end_ms"]


def measure(args: argparse.Namespace) -> dict:
    from benchmarks.litert_peer import PeerNotAvailable
    from runtimes.cpu_features import cpu_features

    frame_count = len(_frame_files(args))  # the children read the frames; here only a missing folder is refused
    infer: dict[str, list[float]] = {}
    total: dict[str, list[float]] = {}
    if args.in_process:
        frames = _frames(args)
        runners = {}
        for label in [*_rows(args), PEER_ROW]:
            try:
                runners[label] = _runner(args, label)
            except PeerNotAvailable as err:
                print(f"cpu_precisions: no peer row: {err}", file=sys.stderr)
        for label in runners:
            infer[label], total[label] = [], []
        for run in runners.values():
            run(frames[0])  # warm-up
        for _ in range(args.rounds):
            for frame in frames:
                for label, run in runners.items():
                    inference, end_to_end = _timed(run, frame)
                    infer[label].append(inference)
                    total[label].append(end_to_end)
    else:
        labels = _labels(args)
        infer, total = {k: [] for k in labels}, {k: [] for k in labels}
        for index in range(args.rounds):
            for label in labels[index % len(labels) :] + labels[: index % len(labels)]:
                row_infer, row_total = _in_own_process(args, label)
                infer[label] += row_infer
                total[label] += row_total
    base_row = PEER_ROW if args.models else "OpenVINO fp32"
    if base_row not in infer:
        raise RuntimeError(f"no {base_row} row to give the ratios against")
    base = float(np.median(infer[base_row]))
    return {
        "base": base_row,
        "cpu": cpu_features().describe(),
        "threads": args.threads,
        "frames": frame_count * args.rounds,
        "mode": "one process per row and round" if not args.in_process else "interleaved in one process",
        "rows": {
            k: {
                "inference_ms": float(np.median(infer[k])),
                "end_to_end_ms": float(np.median(total[k])),
                "vs_base": float(np.median(infer[k])) / base,
                "end_to_end_vs_base": float(np.median(total[k])) / float(np.median(total[base_row])),
            }
            for k in infer
        },
    }


def markdown(report: dict) -> str:
    lines = [
        f"CPU: {report['cpu']}; {report['threads']} threads; {report['frames']} frames per row, "
        f"{report.get('mode', 'interleaved in one process')}.",
        "",
        f"| row | inference ms (median) | end to end ms | inference / {report['base']} "
        f"| end to end / {report['base']} |",
        "|---|---|---|---|---|",
    ]
    for label, row in report["rows"].items():
        lines.append(
            f"| {label} | {row['inference_ms']:.1f} | {row['end_to_end_ms']:.1f} | {row['vs_base']:.2f} "
            f"| {row['end_to_end_vs_base']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _child(args: argparse.Namespace) -> int:
    """A row's own process: time it (``--one-row``) or check that the peer loads (``--probe-peer``)."""
    from benchmarks.litert_peer import PeerNotAvailable

    try:
        run = _runner(args, PEER_ROW if args.probe_peer else args.one_row)
    except PeerNotAvailable as err:
        print(err, file=sys.stderr)
        return 3
    if not args.probe_peer:
        infer, total = _time(run, _frames(args))
        print(json.dumps({"inference_ms": infer, "end_to_end_ms": total}))
    return 0


def add_timing_arguments(parser: argparse.ArgumentParser, frames: int, rounds: int, out_required: bool) -> None:
    """``--images --frames --rounds --threads --out``: one spelling for the scripts that time rows on frames."""
    parser.add_argument("--images", type=Path, required=True, help="a folder of frames")
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=out_required, help="folder for the report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_precisions", description=__doc__.split("\n\n")[0])
    rows = parser.add_mutually_exclusive_group(required=True)
    rows.add_argument("--fp32", type=Path, help="the fp32 artifact (OpenVINO also runs it in bf16)")
    rows.add_argument("--models", nargs="+", metavar="NAME", help="packaged models by name, or artifacts (.onnx)")
    parser.add_argument("--openvino-int8", type=Path, help="NNCF int8 artifact (m2f export --target openvino)")
    parser.add_argument("--onnxruntime-int8", type=Path, help="ORT int8 artifact (m2f export --target onnxruntime)")
    add_timing_arguments(parser, frames=10, rounds=2, out_required=False)
    parser.add_argument("--in-process", action="store_true", help="every row in this process, frame by frame")
    parser.add_argument("--one-row", help=argparse.SUPPRESS)  # a child: time this row, print its timings as JSON
    parser.add_argument("--probe-peer", action="store_true", help=argparse.SUPPRESS)  # a child: can the peer run?
    args = parser.parse_args(argv)
    try:
        if args.probe_peer or args.one_row:
            return _child(args)
        report = measure(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
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
