"""What a batch job has to do: its inputs (files, folders, globs, ``@lists``), each cut into units of work, less
what an earlier run into the same destination finished (``sdk.batch_manifest``).

An image is one unit. A video is cut into frame ranges of ``chunk_frames`` from the frame count its header declares,
the last range open-ended (it reads to the end of the file, however many frames the header claimed), so one long
video keeps many workers busy; where the header gives no count, or an overlay video is asked for, a video is one unit.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtimes.errors import M2FError
from runtimes.images import file_header_size
from runtimes.vocabulary import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from sdk.batch_manifest import Manifest, files_present, fingerprint, frames_present, input_key
from sdk.batch_options import BatchOptions
from sdk.cli_predict import find_images, output_paths
from sdk.sources import frame_rate, frames_in_header, open_source, release

logger = logging.getLogger(__name__)

MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
OUTPUT_TAIL = "_seg"  # an input's output folder: <its path relative to the inputs' common folder, less suffix>_seg


@dataclass(frozen=True)
class Input:
    """One file to segment: ``path`` as named, ``kind`` ``"image"`` or ``"video"``, its output ``folder`` (relative
    to the destination) and ``key`` (the name of its records)."""

    index: int
    path: str
    kind: str
    folder: str
    key: str


@dataclass(frozen=True)
class Unit:
    """One piece of work: an image, or the frames ``start`` up to ``stop`` (None: the end of the file) of a video.
    Sent to workers as a plain dict (``to_dict``): nothing a worker receives is code."""

    key: str
    path: str
    kind: str
    folder: str
    start: int
    stop: int | None
    fingerprint: dict[str, int] = field(compare=False)
    frames_in_header: int | None = None
    fps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Unit:
        return cls(**data)


@dataclass
class Plan:
    """Units to run, per input (``units``: every unit of an input still to assemble, its ``records`` so far), the
    records of inputs left as they were, and inputs that failed before any work (``failed``)."""

    inputs: list[Input]
    todo: list[Unit] = field(default_factory=list)
    units: dict[str, list[Unit]] = field(default_factory=dict)
    records: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def frames_to_do(self) -> int:
        """Frames the units to run hold, as far as headers tell (the progress bar's total)."""
        total = 0
        for unit in self.todo:
            end = unit.stop if unit.stop is not None else unit.frames_in_header
            total += 1 if unit.kind == "image" else max((end or unit.start + 1) - unit.start, 0)
        return total


def expand_lists(sources: Sequence[str]) -> tuple[list[str], list[str]]:
    """Sources with each ``@FILE`` replaced by the paths FILE lists (one a line, relative to its folder; blank lines
    and ``#`` comments skipped); and a problem per list that cannot be read."""
    expanded, problems = [], []
    for source in sources:
        if not source.startswith("@"):
            expanded.append(source)
            continue
        listing = Path(source[1:])
        try:
            lines = listing.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"{source}: cannot read the list: {getattr(err, 'strerror', None) or err}")
            continue
        for line in (line.strip() for line in lines):
            if line and not line.startswith("#"):
                expanded.append(line if os.path.isabs(line) else str(listing.parent / line))
    return expanded, problems


def find_inputs(sources: Sequence[str], manifest: Manifest) -> tuple[list[Input], list[str]]:
    """The inputs ``sources`` name (files, folders, globs, ``@lists``; first mention kept; nothing under the
    destination itself), with their output folders; and one problem per source that names nothing."""
    expanded, problems = expand_lists(sources)
    found, missing = find_images(expanded, MEDIA_SUFFIXES, "image or video file")
    out = manifest.out.resolve()
    found = [(path, base) for path, base in found if not path.resolve().is_relative_to(out)]
    if not found:
        return [], problems + missing
    wanted = output_paths(found, Path(), OUTPUT_TAIL)
    keys = [input_key(path) for path, _ in found]
    folders = manifest.folders({key: folder.as_posix() for key, folder in zip(keys, wanted, strict=True)})
    inputs = [
        Input(index, str(path), media_kind(path), folders[key], key)
        for index, ((path, _), key) in enumerate(zip(found, keys, strict=True))
    ]
    return inputs, problems + missing


def media_kind(path: Path) -> str:
    """``"image"`` or ``"video"``: by suffix, and for a file named explicitly with another suffix, by whether its
    first bytes are an image header."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    try:
        return "image" if file_header_size(path) is not None else "video"
    except OSError:
        return "video"


def make_plan(inputs: list[Input], manifest: Manifest, options: BatchOptions, max_pixels: int | None) -> Plan:
    """What to do for each input, given what the destination's records say is done."""
    plan = Plan(inputs)
    for item in inputs:
        try:
            stamp = fingerprint(item.path)
        except OSError as err:
            plan.failed[item.key] = f"cannot read {item.path}: {err.strerror or err}"
            continue
        before = manifest.input(item.key)
        if before is not None and before.get("fingerprint") == stamp and _still_good(before, manifest, options):
            plan.finished[item.key] = before
            continue
        if manifest.stale(item.key, stamp):  # the file changed since: nothing of it stands
            manifest.forget(item.key)
            shutil.rmtree(manifest.out / item.folder, ignore_errors=True)
        try:
            units = _units(item, stamp, options, max_pixels)
        except (M2FError, OSError) as err:
            plan.failed[item.key] = str(err)
            continue
        plan.units[item.key] = units
        plan.records[item.key] = {}
        for unit in units:
            record = manifest.unit(unit.key, unit.start)
            if record is not None and _unit_stands(record, unit, manifest, options):
                plan.records[item.key][unit.start] = record
            else:
                plan.todo.append(unit)
    return plan


def _still_good(record: dict[str, Any], manifest: Manifest, options: BatchOptions) -> bool:
    """A finished input stays finished: failed (unless ``retry_failed``), or done with every file in place."""
    if record.get("status") != "done":
        return not options.retry_failed
    folder = manifest.out / record["folder"]
    kinds = _per_frame_kinds(options)
    return files_present(manifest.out, record.get("files", {})) and frames_present(
        folder, 0, int(record.get("frames") or 0), kinds
    )


def _unit_stands(record: dict[str, Any], unit: Unit, manifest: Manifest, options: BatchOptions) -> bool:
    """Whether a unit's record from an earlier run still counts: same file and range, its files all there."""
    if record.get("fingerprint") != unit.fingerprint or record.get("stop") != unit.stop:
        return False
    if record.get("status") == "failed":
        return not options.retry_failed
    frames = int(record.get("frames") or 0)
    return files_present(manifest.out, record.get("files", {})) and frames_present(
        manifest.out / unit.folder, int(record.get("first") or unit.start), frames, _per_frame_kinds(options)
    )


def _per_frame_kinds(options: BatchOptions) -> list[str]:
    return [kind for kind in ("labels", "panoptic") if getattr(options, kind)]


def _units(item: Input, stamp: dict[str, int], options: BatchOptions, max_pixels: int | None) -> list[Unit]:
    """An input's units: one for an image; frame ranges for a video (its header read, no frame decoded)."""
    base = {"key": item.key, "path": item.path, "kind": item.kind, "folder": item.folder, "fingerprint": stamp}
    if item.kind == "image":
        return [Unit(**base, start=0, stop=None)]
    capture = open_source(Path(item.path), max_pixels=max_pixels)  # refuses frames over the limit, unreadable files
    try:
        count, fps = frames_in_header(capture), frame_rate(capture)
    finally:
        release(capture)
    if not options.splits_videos() or count is None or count <= options.chunk_frames:
        return [Unit(**base, start=0, stop=None, frames_in_header=count, fps=fps)]
    starts = list(range(0, count, options.chunk_frames))
    stops: list[int | None] = [*starts[1:], None]  # the last range reads to the end, whatever the header says
    return [
        Unit(**base, start=start, stop=stop, frames_in_header=count, fps=fps)
        for start, stop in zip(starts, stops, strict=True)
    ]
