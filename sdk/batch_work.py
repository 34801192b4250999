"""One unit of a batch job, done by whichever worker holds it: ``run_unit`` is the one code path of the local
workers and the Ray actors alike.

An image: ``Segmenter.predict``. A video's frame range: the SDK's own stream pipeline (``Segmenter.stream``: decode,
inference and post-processing overlapped in threads; the overlay video written by it) over a ``RangeReader``, which
seeks to the range, hands out its frames and keeps the decoder's frame number of each. The record is written last:
a worker killed before that leaves no record, so the unit is done again (by Ray's retry, or by the next run).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtimes.errors import M2FError
from runtimes.images import read_image
from runtimes.registry import RUNTIMES
from sdk.artifact_choice import artifact_target
from sdk.batch_manifest import Manifest, temp_path
from sdk.batch_options import BatchOptions
from sdk.batch_outputs import UnitWriter
from sdk.batch_plan import Unit
from sdk.segmenter import Segmenter
from sdk.sources import SourceError, open_source, readable_frame_after, release
from sdk.stream_options import StreamOptions
from sdk.targets import resolve_target

logger = logging.getLogger(__name__)

# what a unit that fails becomes: a record with the reason (a bad file, a frame over the limit, a failed stage),
# not a stopped job; anything else is a bug and stops the job
UNIT_ERRORS = (M2FError, OSError, ValueError, ImportError, cv2.error)
OnFrame = Callable[[Unit, int], None]  # (unit, frame number): called after each frame's files are written


def open_segmenter(arguments: Mapping[str, Any], threads: int | None) -> Segmenter:
    """``Segmenter(**arguments)`` with ``threads`` engine threads where its runtime takes that option and the
    arguments do not set it."""
    arguments = dict(arguments)
    if threads and "threads" not in arguments:
        _, runtime = resolve_target(arguments.get("target") or "auto", artifact_target(arguments.get("model")))
        if "threads" in RUNTIMES[runtime].options:
            arguments["threads"] = threads
    return Segmenter(**arguments)


def worker_name(prefix: str) -> str:
    """A worker's name in the records: ``prefix``, host and process id (a restarted actor is a new worker)."""
    return f"{prefix}@{socket.gethostname()}:{os.getpid()}"


class RangeReader:
    """The frames ``start`` up to ``stop`` (None: the end) of an opened ``cv2.VideoCapture``, as a stream reader.

    ``seek()`` first: it places the decoder on ``start`` (by seeking; where the decoder lands elsewhere, by reading
    from the first frame) and reads that frame; False when the file has no frame ``start``. ``numbers`` holds the
    decoder's own frame number of each frame handed out; one out of sequence is an error (the file cannot be cut
    exactly). ``ended_short``: a read failed before ``stop``.
    """

    def __init__(self, capture: cv2.VideoCapture, start: int, stop: int | None, fps: float | None) -> None:
        self.capture, self.start, self.stop, self.fps = capture, start, stop, fps
        self.numbers: list[int] = []
        self.ended_short = False
        self._first: np.ndarray | None = None

    def seek(self) -> bool:
        if self.start > 0:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            landed = self._position()
            if landed > self.start:  # past it: count from the first frame instead
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                landed = self._position()
            for _ in range(self.start - landed):  # short of it (it could not decode further): read on to it
                if not self.capture.grab():
                    return False
        ok, frame = self.capture.read()
        if not ok or frame is None:
            return False
        self._check(self._position() - 1)
        self._first = frame
        return True

    def _position(self) -> int:
        return int(self.capture.get(cv2.CAP_PROP_POS_FRAMES))

    def _check(self, number: int) -> None:
        expected = self.start + len(self.numbers)
        if number != expected:
            raise SourceError(
                f"the decoder is at frame {number} where frame {expected} was due: this file cannot be cut into "
                "frame ranges exactly (run it with chunk_frames 0)"
            )
        self.numbers.append(number)

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._first is not None:
            frame, self._first = self._first, None
            return True, frame
        if self.stop is not None and self.start + len(self.numbers) >= self.stop:
            return False, None
        ok, frame = self.capture.read()
        if not ok or frame is None:
            self.ended_short = self.stop is not None
            return False, None
        self._check(self._position() - 1)
        return True, frame

    def get(self, prop: int) -> float:
        """The frame rate for the stream's video writer; no frame count (the range is checked here, not there)."""
        return float(self.fps or 0.0) if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        release(self.capture)


def run_unit(
    seg: Segmenter,
    unit: Unit,
    manifest: Manifest,
    options: BatchOptions,
    worker: str,
    run: int,
    on_frame: OnFrame | None = None,
) -> dict[str, Any]:
    """Segment one unit, write its files and then its record (``manifest.write_unit``); the record."""
    started = time.perf_counter()
    writer = UnitWriter(manifest, unit, options)
    try:
        if unit.kind == "image":
            frame = read_image(unit.path, seg.max_pixels)
            writer.add(0, seg.predict(frame), frame)
            if on_frame is not None:
                on_frame(unit, 0)
            record = writer.record()
        else:
            record = _video_unit(seg, unit, writer, options, on_frame)
    except UNIT_ERRORS as err:
        logger.warning("%s frames %s-%s: %s", unit.path, unit.start, unit.stop, err)
        record = writer.record("failed", " ".join(str(err).split()) or type(err).__name__)
    record.update(worker=worker, run=run, seconds=round(time.perf_counter() - started, 4))
    manifest.write_unit(record)
    return record


def _video_unit(
    seg: Segmenter, unit: Unit, writer: UnitWriter, options: BatchOptions, on_frame: OnFrame | None
) -> dict[str, Any]:
    """A video's frame range through the stream pipeline; a range the file stops short of is checked: a later
    frame that still decodes makes the file corrupt (an error naming the frame), none makes it the file's end."""
    reader = RangeReader(open_source(Path(unit.path), max_pixels=seg.max_pixels), unit.start, unit.stop, unit.fps)
    overlay = temp_path(writer.folder / "overlay.mp4") if options.overlay else None
    try:
        if not reader.seek():
            return writer.record(ended_short=True)
        if overlay is not None:
            overlay.parent.mkdir(parents=True, exist_ok=True)
        # the model's labels as they are: a stabiliser would restart at each unit, so the output would depend on
        # where a video was cut into units (and on resumes)
        options = StreamOptions(live=False, output=overlay, output_fps=unit.fps, stabilize=False)
        with seg.stream(reader, options) as stream:
            for result in stream:
                number = reader.numbers[result.frame_index]
                writer.add(number, result)
                if on_frame is not None:
                    on_frame(unit, number)
        if overlay is not None:
            writer.adopt_overlay(overlay)
    finally:
        reader.release()
        if overlay is not None:
            overlay.unlink(missing_ok=True)
    end = unit.start + writer.count
    limit = unit.stop if unit.stop is not None else unit.frames_in_header
    if limit is not None and end < limit:
        capture = open_source(Path(unit.path), max_pixels=seg.max_pixels)
        try:
            readable = readable_frame_after(capture, end, limit)
        finally:
            release(capture)
        if readable is not None:
            raise SourceError(
                f"frame {end} cannot be decoded although frame {readable} can: the file is corrupt from frame {end}"
            )
    return writer.record(ended_short=reader.ended_short)
