"""``m2f predict``: segment image files, folders and globs; one overlay per image, mirrored under ``--out``.

- Inputs: files (any format OpenCV decodes), folders (searched recursively for ``IMAGE_SUFFIXES``) and glob
  patterns (``"shots/**/*.jpg"``, expanded here when the shell did not), deduplicated, in argument order.
- 16-bit images (PNG, TIFF) are scaled to 8 bits by their bit depth, ``frame >> 8`` (a 16-bit sample spans
  0..65535); other non-8-bit images (float TIFF / EXR) are refused with the reason.
- Outputs: ``<stem>_seg.png`` under ``--out`` at the image's path relative to the common folder of the inputs
  (a folder argument's own tree is mirrored); inputs that would share an output name keep their extension in it
  (``x_jpg_seg.png``, ``x_png_seg.png``), so no image overwrites another's output.
- stdout: one line per image, flushed (``--json``: one JSON object per line, also for a single image); stderr: a
  progress bar when it is a terminal, then a summary with the timing and the images that failed.
- An image that cannot be read or segmented is reported and skipped; the rest go on; a closed stdout (``| head``)
  stops quietly. Exit status:
  0 every image segmented, 1 some failed, 2 nothing segmented (bad arguments, model or ``--out``, or every image
  refused), 130 Ctrl-C.
- ``--max-pixels``: images larger than this are refused from their header, before decoding (``runtimes.images``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimes.errors import M2FError
from runtimes.geometry import parse_input_size
from runtimes.images import DEFAULT_MAX_PIXELS, FrameError, check_image_file, read_image
from runtimes.vocabulary import IMAGE_SUFFIXES, PRECISIONS, TASKS, image_files
from sdk.model_registry import MODEL_OPTION_HELP

if TYPE_CHECKING:
    from sdk.segmenter import Segmenter

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

PREDICT_DESCRIPTION = """\
Segment images with a model on a target; print one line per image (--json: one JSON object per line).

SOURCE is an image file, a folder (searched recursively for images) or a glob pattern such as "shots/**/*.jpg"
(quote it to let m2f expand it). Image suffixes searched: {suffixes}.
16-bit images are scaled to 8 bits (>> 8). With --out, each overlay is written as <name>_seg.png under OUT,
mirroring the folders of the inputs; two inputs with the same name keep their extension in the output name
instead of overwriting each other. Images that cannot be read or segmented are reported and skipped."""

PREDICT_EPILOG = """\
exit status: 0 every image segmented, 1 some images failed (listed on stderr), 2 nothing segmented
(bad arguments, model or --out, or every image failed), 130 interrupted (Ctrl-C; the summary so far is printed).

examples:
  m2f predict street.jpg
  m2f predict photos/ --out segmented/ --target cpu
  m2f predict "runs/**/*.png" --json > results.jsonl"""


class ImageError(M2FError):
    """One input image that cannot be read, segmented or written; the message says why."""


class _StdoutClosed(Exception):
    """Whoever read stdout went away (``m2f predict ... | head -1``): stop quietly."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``predict`` subcommand on an ``add_subparsers()`` object."""
    parser = sub.add_parser(
        "predict",
        help="segment image files, folders or globs",
        description=PREDICT_DESCRIPTION.format(suffixes="\n  " + " ".join(sorted(IMAGE_SUFFIXES))),
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", nargs="+", help="image file, folder or glob pattern (several allowed)")
    add_model_arguments(parser)
    parser.add_argument("--out", help="folder for the overlays (created; mirrors the input folders)")
    parser.add_argument("--json", action="store_true", help="stdout: one JSON object per image, one per line")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``Segmenter(target, model, task, precision, input_size)`` arguments, one spelling for predict and stream."""
    parser.add_argument("--target", default="auto", help="target profile: cpu, cuda, jetson, openvino, ... (auto)")
    parser.add_argument("--model", help=MODEL_OPTION_HELP)
    parser.add_argument("--task", choices=TASKS, help="default: the model's own")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: the fastest verified one here (m2f info)")
    parser.add_argument(
        "--input-size", type=parse_input_size, help="HxW to compile a .pt checkpoint at (default: dynamic size)"
    )
    parser.add_argument(
        "--max-pixels",
        type=parse_pixel_limit,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest frame accepted, checked before decoding (default {DEFAULT_MAX_PIXELS:_}; 'none': no limit)",
    )


def parse_pixel_limit(text: str) -> int | None:
    """``--max-pixels``: a positive pixel count (``40000000``, ``4e7``, ``40_000_000``) or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = 0.0
    if not value.is_integer() or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'none', got {text!r}")
    return int(value)


def segmenter_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Segmenter`` keyword arguments that ``add_model_arguments``' arguments describe."""
    names = ("target", "model", "task", "precision", "input_size", "max_pixels")
    return {name: getattr(args, name) for name in names}


def segmenter_from_args(args: argparse.Namespace) -> Segmenter:
    """The ``Segmenter`` that ``add_model_arguments``' arguments describe."""
    from sdk.segmenter import Segmenter

    return Segmenter(**segmenter_arguments(args))


def describe(seg: Segmenter) -> str:
    """One line on what runs: model, runtime, device, precision and why that precision."""
    model = seg.model_path.name if seg.model_path else "the model"
    return f"{model} on {seg.runtime} ({seg.device}), {seg.precision}: {seg.precision_reason}"


# ---------------------------------------------------------------------------------------------------------------
# inputs and outputs


def find_images(
    sources: Sequence[str], suffixes: frozenset[str] = IMAGE_SUFFIXES, what: str = "image"
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, folder its output path is relative to) for every image named by ``sources``, first mention kept;
    and one problem per source that names no image. Folders and patterns give the files with ``suffixes`` (``what``
    names them in the problems: ``m2f batch`` looks for videos too)."""
    found: dict[str, tuple[Path, Path]] = {}
    problems = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            pairs = [(image, path) for image in image_files(path, suffixes)]
            if not pairs:
                problems.append(f"{source}: folder holds no {what}s ({', '.join(sorted(suffixes))})")
        elif path.is_file():
            pairs = [(path, path.parent)]  # named explicitly: whatever its suffix, OpenCV decides
        elif any(char in source for char in "*?["):
            base = Path(*takewhile(lambda part: not any(c in part for c in "*?["), path.parts[:-1]))
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
            images = [p for p in matches if p.is_file() and p.suffix.lower() in suffixes]
            images += [i for p in matches if p.is_dir() for i in image_files(p, suffixes)]
            pairs = [(image, base) for image in images]
            if not pairs:
                problems.append(f"{source}: no {what} matches this pattern")
        else:
            pairs = []
            problems.append(f"{source}: no such file or folder")
        for image, base in pairs:
            found.setdefault(os.path.abspath(image), (image, base))
    return list(found.values()), problems


def output_paths(images: Sequence[tuple[Path, Path]], out: Path, tail: str = "_seg.png") -> list[Path]:
    """One distinct ``<stem>_seg.png`` (``<stem><tail>``) under ``out`` per (image, base): the image's path relative
    to the common folder of all bases; names that would collide keep the input's extension, then get a counter."""
    bases = [os.path.abspath(base) for _, base in images]
    try:
        root = os.path.commonpath(bases)
    except ValueError:  # different drives (Windows): mirror from each base
        root = None
    relative = [
        Path(os.path.relpath(os.path.abspath(image), root if root is not None else base))
        for (image, _), base in zip(images, bases, strict=True)
    ]
    plain = [out / rel.parent / f"{rel.stem}{tail}" for rel in relative]
    tail_stem, tail_suffix = os.path.splitext(tail)
    shared = {path for path, count in Counter(plain).items() if count > 1}
    taken: set[Path] = set()
    outputs = []
    for rel, path in zip(relative, plain, strict=True):
        if path in shared:
            path = out / rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower()}{tail}"
        candidate, n = path, 2
        while candidate in taken:
            candidate, n = path.with_name(f"{path.name.removesuffix(tail)}{tail_stem}_{n}{tail_suffix}"), n + 1
        taken.add(candidate)
        outputs.append(candidate)
    return outputs


def out_problem(out: Path) -> str | None:
    """Why ``out`` cannot be the output folder (a file, under a file, not writable), or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    existing = next(p for p in (out, *out.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        return f"--out {out}: {existing} is a file, so no folder can be made under it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: no permission to write in {existing}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# the command


def _summary_line(result: Any, ms: float) -> str:
    classes = ", ".join(f"{name} {fraction:.0%}" for name, fraction in list(result.class_histogram().items())[:4])
    return f"{ms:.0f} ms  {classes or 'no class'}"


def predict_main(args: argparse.Namespace) -> int:
    """Run ``m2f predict`` from parsed arguments; the exit status."""
    try:
        return _predict(args)
    except _StdoutClosed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:  # before the batch started (listing folders, loading the model)
        print("\nm2f predict: interrupted before any image was segmented", file=sys.stderr)
        return EXIT_INTERRUPTED


def _predict(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out) if args.out else None
    if out is not None and (problem := out_problem(out)):
        print(f"m2f predict: {problem}", file=sys.stderr)
        return EXIT_USAGE
    images, problems = find_images(args.source)
    for problem in problems:
        print(f"m2f predict: {problem}", file=sys.stderr)
    if not images:
        print("m2f predict: no image to segment", file=sys.stderr)
        return EXIT_USAGE
    outputs: list[Path | None] = list(output_paths(images, out)) if out else [None] * len(images)
    return _segment_all(args, [image for image, _ in images], outputs, started, len(problems))


def _segment_all(
    args: argparse.Namespace, images: list[Path], outputs: list[Path | None], started: float, missing: int
) -> int:
    import cv2
    from tqdm import tqdm

    refused = _header_refusals(images, args.max_pixels)
    if refused is not None:
        return _report_refused(args, refused, tqdm, started)
    try:
        seg = segmenter_from_args(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        print(f"m2f predict: {err}", file=sys.stderr)
        return EXIT_USAGE
    loaded = time.perf_counter()
    print(f"m2f predict: {describe(seg)}", file=sys.stderr)
    segmented, failed = 0, []
    interrupted = False
    bar = tqdm(total=len(images), unit="image", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)
    with seg, bar:
        try:
            for image, output in zip(images, outputs, strict=True):
                start = time.perf_counter()
                try:
                    frame = read_image(image, args.max_pixels)
                    result = seg.predict(frame)
                    if output is not None:
                        output.parent.mkdir(parents=True, exist_ok=True)
                        if not cv2.imwrite(str(output), result.overlay(frame)):
                            raise ImageError(f"could not write {output}")
                except (ImageError, FrameError, OSError, RuntimeError, ValueError, cv2.error) as err:
                    failed.append(image)
                    _report_failure(bar, args.json, image, err)
                else:
                    segmented += 1
                    ms = (time.perf_counter() - start) * 1000
                    if args.json:
                        record = {"file": str(image), "output": output and str(output), "ms": round(ms, 2)}
                        _emit(bar, json.dumps({**record, **result.to_dict()}))
                    else:
                        _emit(bar, f"{image}{f' -> {output}' if output else ''}  {_summary_line(result, ms)}")
                bar.update()
        except KeyboardInterrupt:
            interrupted = True
        except SystemError as err:
            # Ctrl-C inside a C call back into Python (np.fromfile asking a Path for its name) surfaces as a
            # SystemError caused by the KeyboardInterrupt: still the user's Ctrl-C
            if not isinstance(err.__cause__ or err.__context__, KeyboardInterrupt):
                raise
            interrupted = True
    elapsed = time.perf_counter() - loaded
    print(
        _summary(segmented, failed, len(images), elapsed, loaded - started, args.out, interrupted, missing),
        file=sys.stderr,
    )
    if interrupted:
        return EXIT_INTERRUPTED
    if failed and not segmented:
        return EXIT_USAGE
    return EXIT_SOME_FAILED if failed or missing else EXIT_OK


def _header_refusals(images: list[Path], max_pixels: int | None) -> list[tuple[Path, FrameError]] | None:
    """(image, why) for each image its header refuses, when every one is refused; None as soon as one passes."""
    refused = []
    for image in images:
        try:
            check_image_file(image, max_pixels)
        except FrameError as err:
            refused.append((image, err))
            continue
        return None
    return refused


def _report_refused(args: argparse.Namespace, refused: list[tuple[Path, FrameError]], bar: Any, started: float) -> int:
    """Every image was refused from its header: say why for each, without loading a model; exit 2."""
    for image, err in refused:
        _report_failure(bar, args.json, image, err)
    print(
        f"m2f predict: 0 of {len(refused)} images segmented: every one refused from its header in "
        f"{time.perf_counter() - started:.2f} s, no model loaded",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _report_failure(bar: Any, as_json: bool, image: Path, err: Exception) -> None:
    """One image that failed: a JSON line on stdout (``--json``), else a line on stderr. ``bar``: the progress
    bar, or the ``tqdm`` class itself where there is none (its ``write`` is a classmethod)."""
    message = " ".join(str(err).split()) or type(err).__name__
    if as_json:
        _emit(bar, json.dumps({"file": str(image), "output": None, "error": message}))
    else:
        bar.write(f"m2f predict: {image}: {message}", file=sys.stderr)


def _emit(bar: Any, line: str) -> None:
    """A stdout line that neither tears the progress bar nor waits in a pipe's buffer."""
    try:
        bar.write(line, file=sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError as err:
        raise _StdoutClosed from err


def _summary(
    segmented: int,
    failed: list[Path],
    total: int,
    elapsed: float,
    load_s: float,
    out: str | None,
    interrupted: bool,
    missing: int,
) -> str:
    per_image = f", {elapsed / segmented * 1000:.0f} ms per image" if segmented else ""
    text = f"m2f predict: {segmented} of {total} images segmented in {elapsed:.2f} s{per_image}"
    text += f" (start-up: inputs listed, model loaded in {load_s:.2f} s)"
    if out and segmented:
        text += f"; overlays under {out}"
    if interrupted:
        text += f"; interrupted (Ctrl-C) after {segmented + len(failed)} images"
    if failed:
        text += f"; {len(failed)} failed: " + ", ".join(map(str, failed))
    if missing:
        text += f"; {missing} source(s) named no image"
    return text
