"""The ``m2f`` command line.

Device-side commands live here. Host-side commands (``convert``, later ``train``/``export``) belong to
train/ and compile/, which the SDK must not import: they are named here as ``module:function`` strings and
imported only when invoked, so ``m2f`` works on an edge install without torch and says what is missing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import platform
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sdk
from runtimes.errors import quiet_on_broken_pipe
from sdk import cli_batch, cli_predict
from sdk.host import HOST_COMMANDS, run_host_command
from sdk.model_registry import with_checkpoint_for_name

if TYPE_CHECKING:
    from sdk.segmenter import Segmenter
    from sdk.stream_options import StreamOptions
    from sdk.stream_stats import StreamStats

M2F_DESCRIPTION = (
    "Mask2Former from training to the edge. On the host (needs the [train] extra): "
    + ", ".join(name for name, (_, _, extra) in HOST_COMMANDS.items() if extra == "train")
    + ". On the device (no torch needed): info, predict, stream, batch, demo."
)
M2F_EPILOG = """\
`m2f COMMAND -h` shows a command's own options.

examples:
  m2f info
  m2f predict photos/ --out segmented/          # images: files, folders, globs
  m2f stream street.mp4 --out street_seg.mp4    # video file, camera index, rtsp:// URL
  m2f batch footage/ --out labelled/            # an archive, resumable; --ray auto: on a Ray cluster
  m2f export model.pt --target openvino --precision int8 --input-size 512x512 --calib images/"""

OPTIONAL_PACKAGES = ("torch", "onnxruntime", "openvino", "tensorrt", "cv2", "transformers", "timm", "ray")


def info() -> dict[str, object]:
    """Versions of this package, Python and the optional runtimes (None where absent)."""
    from sdk.targets import TARGETS, TargetNotAvailable, resolve_target

    versions: dict[str, object] = {"m2f": sdk.__version__, "python": platform.python_version()}
    for name in OPTIONAL_PACKAGES:
        if importlib.util.find_spec(name) is None:
            versions[name] = None
            continue
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except Exception as err:  # a broken install is still worth reporting, not crashing on
            versions[name] = f"error: {err}"
    from runtimes.cpu_features import cpu_features
    from runtimes.openvino_backend import int8_float_ops_of
    from sdk.artifact_choice import FLOAT_OPS_BF16, choose_artifact

    versions["cpu"] = cpu_features().describe()
    targets = {}
    for name in TARGETS:
        try:
            spec, runtime = resolve_target(name)
        except TargetNotAvailable as err:
            targets[name] = f"unavailable: {err}"
            continue
        targets[name] = runtime
        if spec.device == "cpu" and runtime != "torch":  # what the packaged model runs at, and why
            try:
                choice = choose_artifact(None, runtime, None, spec, None)
                reason = choice.reason
                bf16_ops = runtime == "openvino" and choice.precision == "int8"
                if bf16_ops and int8_float_ops_of(choice.artifact) == "bf16":
                    reason += f"; {FLOAT_OPS_BF16}"  # as the backend will run it (Segmenter's repr says the same)
                targets[name] = f"{runtime} {choice.precision} ({choice.artifact.name}: {reason})"
            except (FileNotFoundError, ValueError) as err:
                targets[name] = f"{runtime} (packaged model: {err})"
    versions["targets"] = targets
    from sdk.model_registry import default_model_name, named_models

    versions["models"] = {
        name + (" (default)" if name == default_model_name() else ""): model.describe()
        for name, model in named_models().items()
    }
    from plugins.msda import openvino_extension

    reason = openvino_extension.unavailable_reason()
    if reason is None:
        built = openvino_extension.library_path()
        reason = f"built: {built} (kernel: {openvino_extension.library_info(built)[1]})"
    versions["msda_openvino_extension"] = reason
    from runtimes.tensorrt_backend import tensorrt_status  # TensorRT usable?, CUDA binding, MSDA plugin library

    versions.update(tensorrt_status())
    return versions


def main(argv: Sequence[str] | None = None) -> int:
    return quiet_on_broken_pipe(lambda: _main(argv))  # `m2f info --schema | head`


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "export":  # a packaged model's name exports from its committed checkpoint
        try:
            argv = ["export", *with_checkpoint_for_name(argv[1:])]
        except FileNotFoundError as err:
            print(f"m2f export: {err}", file=sys.stderr)
            return 2
    if argv and argv[0] in HOST_COMMANDS:
        return run_host_command(argv[0], argv[1:])
    parser = argparse.ArgumentParser(
        prog="m2f",
        description=textwrap.fill(M2F_DESCRIPTION, 110, break_on_hyphens=False),
        epilog=M2F_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text, _) in HOST_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    info_parser = sub.add_parser("info", help="versions, available runtimes and targets")
    info_parser.add_argument("--json", action="store_true", help="print one JSON object")
    info_parser.add_argument(
        "--schema", action="store_true", help="print the artifact metadata schema (what every .onnx of m2f carries)"
    )
    cli_predict.add_parser(sub)
    add_stream_parser(sub)
    cli_batch.add_parser(sub)
    build_parser = sub.add_parser(
        "build-plugins", help="build the native op libraries (the OpenVINO CPU extension of deformable attention)"
    )
    build_parser.add_argument("--force", action="store_true", help="rebuild even when a build for these sources exists")
    args = parser.parse_args(argv)
    if args.command == "stream":
        return stream_main(args)
    if args.command == "build-plugins":
        return build_plugins_main(args)
    if args.command == "predict":
        return cli_predict.predict_main(args)
    if args.command == "batch":
        return cli_batch.batch_main(args)
    if args.command == "info" and args.schema:
        from runtimes.artifact import ARTIFACT_FORMAT_VERSION, describe_schema

        print(f"artifact metadata, format_version {ARTIFACT_FORMAT_VERSION} (ONNX metadata_props['m2f'], JSON):")
        print("\n".join(describe_schema()))
        return 0
    if args.command == "info":
        versions = info()
        if args.json:
            print(json.dumps(versions))
        else:
            for key, value in versions.items():
                if isinstance(value, dict):
                    print(f"{key:>14}:")
                    for name, what in value.items():
                        print(f"{name:>16}: {what}")
                else:
                    print(f"{key:>14}: {value if value is not None else 'not installed'}")
    return 0


def build_plugins_main(args: argparse.Namespace) -> int:
    """``m2f build-plugins``: compile the OpenVINO MSDA extension into the cache (cmake, a C++17 compiler and the
    openvino package's own headers; nothing is downloaded). Exit 2 with the reason where it cannot be built."""
    from plugins.msda import openvino_extension

    try:
        path = openvino_extension.build(force=args.force)
    except openvino_extension.ExtensionUnavailable as err:
        print(f"m2f build-plugins: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


# ---------------------------------------------------------------------------------------------- m2f stream
STREAM_EPILOG = """\
examples:
  m2f stream street.mp4 --out street_seg.mp4    every frame in order, the annotated video written
  m2f stream 0 --max-frames 300                 camera 0, live: the newest frame, older ones dropped (counted)
  m2f stream rtsp://host/stream --json          last line: one JSON object with the stats
  m2f stream rtsp://host/stream --carry         live: a result for every frame, labels carried between model runs
  m2f stream street.mp4 --realtime --carry      the same with a file played at its own frame rate
  m2f stream street.mp4 --no-stabilize          the model's labels as they come (files are stabilised by default)

A file whose header declares more (or fewer) frames than it decodes is processed to its last decodable frame with
a warning (--strict: an error); a file corrupt in the middle is an error naming the frame. A progress bar is
shown when stderr is a terminal. Ctrl-C stops cleanly: the video written so far is complete, the stats so far are
printed. Exit status: 0 done, 2 error, 130 interrupted.
"""

INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT)
STABILIZE_HELP = (
    "hold labels still where the picture is (anti-flicker, semantic models) [on for files, off for live sources]"
)


def add_stream_parser(sub: Any) -> None:
    """The ``m2f stream`` subcommand's arguments and help."""
    p = sub.add_parser(
        "stream",
        help="segment every frame of a video file, camera, URL or GStreamer pipeline",
        description="Segment every frame of a video source with decode, inference and drawing overlapped.",
        epilog=STREAM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="video file, camera index (0), URL (rtsp://, http://, ...) or GStreamer pipeline")
    cli_predict.add_model_arguments(p)
    p.add_argument("--out", help="write the annotated video to this file (e.g. out.mp4)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--live", action="store_true", default=None, help="live: newest frame only, older dropped")
    p.add_argument("--strict", action="store_true", help="a file's frame count differing from its header's is an error")
    p.add_argument("--stabilize", action=argparse.BooleanOptionalAction, help=STABILIZE_HELP)
    p.add_argument(
        "--measure-stability", action="store_true", help="report flicker and optical-flow consistency of the labels"
    )
    p.add_argument(
        "--carry",
        action="store_true",
        help="live sources: a result for every frame at the source's rate; the model runs on the newest frame "
        "whenever it is free, its labels are carried to the frames between by optical flow (semantic models)",
    )
    p.add_argument(
        "--realtime", action="store_true", help="play a file at its own frame rate, as a live camera would deliver it"
    )
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the stats")


def given_flags(**flags: Any) -> dict[str, Any]:
    """The flags given on the command line; one left out (None) keeps its option class's default."""
    return {name: value for name, value in flags.items() if value is not None}


def stream_main(args: argparse.Namespace) -> int:
    """``m2f stream``: 0 done, 2 error (a message, no traceback), 130 Ctrl-C (stats so far, the video finished)."""
    from sdk.stream_options import StreamOptions

    try:
        options = StreamOptions(
            output=args.out,
            max_frames=args.max_frames,
            live=args.live,
            strict=args.strict,
            **given_flags(stabilize=args.stabilize),
            measure_stability=args.measure_stability,
            carry=args.carry,
            realtime=args.realtime,
        )
        seg = cli_predict.segmenter_from_args(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        print(f"m2f stream: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("m2f stream: interrupted", file=sys.stderr)
        return INTERRUPTED
    try:
        with seg:
            stats, code = drain_stream(seg, "stream", args.source, options)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's clean-up runs
        print("m2f stream: interrupted", file=sys.stderr)
        return INTERRUPTED
    if stats is not None and args.json and code != 2:  # done or interrupted: the stats so far
        figures = {
            **stats.to_dict(),  # the one serialisation of a stream's stats
            "target": seg.target.name,
            "runtime": seg.runtime,
            "precision": seg.precision,
            "output": args.out,
            "interrupted": code == INTERRUPTED,
        }
        print(json.dumps(figures))
    return code


def drain_stream(seg: Segmenter, command: str, source: Any, options: StreamOptions) -> tuple[StreamStats | None, int]:
    """Run ``seg.stream(source, options)`` to its end, with a progress bar when stderr is a terminal.

    Returns (the stats so far, None if the stream never started; an exit status): 0 done, 2 failed (the reason
    printed as ``m2f COMMAND: ...``), 130 Ctrl-C (the threads stopped and the output video finished).
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        running = seg.stream(source, options)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"m2f {command}: {err}", file=sys.stderr)
        return None, 2
    except KeyboardInterrupt:
        return None, INTERRUPTED
    limits = (options.max_frames,) if running.options.live else (options.max_frames, running.frame_count)
    total = min((n for n in limits if n), default=None)
    bar = tqdm(total=total, unit="frame", disable=not sys.stderr.isatty(), file=sys.stderr)
    results = iter(running)
    code = 0
    try:
        with bar, logging_redirect_tqdm():
            for _ in results:
                bar.update()
    except KeyboardInterrupt:
        code = INTERRUPTED
    except (ValueError, RuntimeError) as err:  # StreamError and StageError are RuntimeErrors
        print(f"m2f {command}: {err}", file=sys.stderr)
        code = 2
    finally:
        results.close()  # stops the threads, finishes the video and logs the summary once
    if code == INTERRUPTED:
        stats = running.stats
        where = f"; {options.output} holds the {stats.written} frames written" if options.output else ""
        print(f"m2f {command}: interrupted after {stats.frames} frames{where}", file=sys.stderr)
    return running.stats, code


if __name__ == "__main__":
    raise SystemExit(main())
