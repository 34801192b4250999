"""Video streaming: segment every frame of a file, camera, network stream or GStreamer pipeline in a pipeline.

    from sdk.stream import StreamOptions, stream
    s = stream(segmenter, "street.mp4", StreamOptions(output="street_seg.mp4"))  # or stream(..., output=...)
    for result in s:                      # results in frame order, result.frame_index set
        ...
    print(s.stats.summary())              # frames, dropped, fps, latency p50/p90/p99, per-stage mean ms

``stream()`` overlaps three stages, each in its own daemon thread, joined by small bounded queues
(``sdk.stream_pipeline``):

1. decode: reads frames from the source (``sdk.sources``: ``cv2.VideoCapture`` or any object with
   ``read() -> (ok, frame)``); a supervisor watches the blocking ``read()`` for stalls and reconnects.
2. inference: ``model.preprocess(frame)`` then ``model.inference(inputs)`` (the runtime call, which releases the GIL).
3. post-processing: ``model.postprocess(...)``, then the optional drawing and ``cv2.VideoWriter``.

Files (``live=False``, the default for files) give every frame, in order, none dropped: exactly one result per
decodable frame. A file that decodes to fewer (or more) frames than its container header declares is complete,
not corrupt: a logged warning, ``StreamStats.frames_decoded`` vs ``frames_in_header`` (``strict=True`` makes it
an error). A file whose later frames decode although an earlier one did not is corrupt: ``SourceError`` naming
the frame. Live sources (camera index, URL, GStreamer pipeline, reader objects; ``live=True`` default) keep only
the newest decoded frame (``keep_latest=True``) so latency stays bounded; dropped frames are counted and
``frame_index`` then counts every decoded frame, so gaps in it are the drops. A read that stalls longer than
``read_timeout_s`` (or a lost connection) reconnects up to ``reconnect`` times, then raises
``StreamTimeoutError`` / ``StreamError``. Leaving the loop early (``break``), closing the iterator,
``Stream.close()``, Ctrl-C or an exception in any stage stops every thread (bounded joins) and finishes the
output video; a stage's exception is re-raised in the consumer as ``StageError`` with the original as
``__cause__``. The stream logs its ``StreamStats.summary()`` once when it ends.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2

from runtimes.images import DEFAULT_MAX_PIXELS
from sdk.sources import (
    RealTimeReader,
    Source,
    SourceError,
    StreamError,
    StreamTimeoutError,
    frame_rate,
    open_source,
    redacted,
    source_kind,
)
from sdk.stream_channel import End, Failure
from sdk.stream_options import StreamOptions
from sdk.stream_pipeline import Pipeline, StagedModel, StageError
from sdk.stream_stats import StreamStats

__all__ = [
    "SourceError",
    "StageError",
    "StreamError",
    "StreamOptions",
    "StreamStats",
    "StreamTimeoutError",
    "stream",
]

logger = logging.getLogger(__name__)
DEFAULT_OUTPUT_FPS = 30.0  # when neither output_fps nor the source says
# The pipeline's watcher decides that a read stalled (StreamTimeoutError, then a reconnect) after read_timeout_s;
# OpenCV's own read timeout, this much later, only ends the read it abandoned. Equal, the two raced, and where
# OpenCV's won a stall read as a plain end of stream ("source ended or connection lost", no StreamTimeoutError).
BACKEND_READ_TIMEOUT_MARGIN_S = 1.0


_STREAM_IDS = itertools.count()


class Stream:
    """Iterable of results with ``.stats`` (a ``StreamStats`` snapshot) and ``.close()``; iterate it once.

    The source is opened when the Stream is made (so a bad source fails at once); the threads start on the first
    ``next()``. Leaving the loop, closing the iterator, ``close()``, ``with``-exit or dropping the Stream stops them.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._iterated = False

    @property
    def stats(self) -> StreamStats:
        """Counts, fps, latency percentiles and per-stage means so far (final once the stream ended)."""
        return self._pipeline.stats.snapshot(self._pipeline.frames.dropped)

    @property
    def options(self) -> StreamOptions:
        """The options this stream runs with (``live`` and ``keep_latest`` decided for its source)."""
        return self._pipeline.options

    @property
    def source_fps(self) -> float | None:
        """The source's frame rate as the container/driver reports it (None if unknown)."""
        return self._pipeline.source_fps

    @property
    def frame_count(self) -> int | None:
        """Frames the container's header declares (files), else None."""
        return self._pipeline.frame_count

    @property
    def threads(self) -> list[Any]:
        """The stage and reader threads started so far (for diagnostics and tests)."""
        return self._pipeline.threads + [w.thread for w in self._pipeline.workers]

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:
            raise RuntimeError("a Stream can be iterated only once; call stream() again")
        self._iterated = True
        return self._results()

    def _results(self) -> Iterator[Any]:
        p = self._pipeline
        if p.closed:
            return
        p.start()
        try:
            while True:
                item = p.results.poll(0.5)
                if item is None:
                    if not any(t.is_alive() for t in p.threads):
                        raise StreamError("the stream's threads ended without a result (internal error)")
                    continue
                if isinstance(item, End):
                    return
                if isinstance(item, Failure):
                    raise item.error from item.error.__cause__
                p.stats.frames += 1
                yield item
                if p.options.live and p.options.max_frames is not None and p.stats.frames >= p.options.max_frames:
                    return
        finally:
            p.close()  # however it ended (end, error, break, Ctrl-C): threads stopped, the video finished
            logger.info("%s: %s", p.name, self.stats.summary())

    def close(self) -> None:
        """Stop and join the threads, release the source and finish the output video; idempotent."""
        self._pipeline.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is not None and not pipeline.closed:
            pipeline.close()


def stream(model: StagedModel, source: Source, options: StreamOptions | None = None, **overrides: Any) -> Stream:
    """Segment every frame of ``source`` with decode, inference and post-processing overlapped in three threads.

    ``source``: a path, camera index, URL or GStreamer pipeline (see ``sdk.sources.open_source``), an opened reader
    (anything with ``read()``; not reopened, its end ends the stream) or a zero-argument callable returning one
    (called again to reconnect). ``options``: a ``StreamOptions``; ``overrides``: any of its fields by name
    (``stream(model, "x.mp4", output="y.mp4")``). Returns a ``Stream``: iterate it once for results; ``.stats``
    for a ``StreamStats``; ``with`` or ``.close()``.
    """
    kind = source_kind(source)
    options = StreamOptions.of(options, **overrides).for_source(kind)
    output = _output_path(options.output) if options.output is not None else None
    reader, reopen = _connect(source, kind, options, getattr(model, "max_pixels", DEFAULT_MAX_PIXELS))
    if options.realtime and kind == "file":
        reader = RealTimeReader(reader, frame_rate(reader) or DEFAULT_OUTPUT_FPS)
    fps = 0.0
    if output is not None:
        fps = options.output_fps or frame_rate(reader) or 0.0
        if not fps:
            logger.warning(
                "source frame rate unknown; writing %s at %g fps (pass output_fps)", output, DEFAULT_OUTPUT_FPS
            )
            fps = DEFAULT_OUTPUT_FPS
    name = f"m2f-stream{next(_STREAM_IDS)}"
    logger.info(
        "%s: %s source %s (live=%s, keep_latest=%s)", name, kind, redacted(source), options.live, options.keep_latest
    )
    return Stream(Pipeline(model, name, reader, reopen, options, fps))


def _connect(
    source: Source, kind: str, options: StreamOptions, max_pixels: int | None
) -> tuple[Any, Callable[[], Any] | None]:
    """The opened reader, and how to open it again (None: its end is the stream's end); a source whose frames are
    over ``max_pixels`` (the model's limit) is refused when opened."""
    if kind == "reader":
        return source, None
    if kind == "factory":
        return source(), source  # type: ignore[operator,return-value]

    def reopen() -> cv2.VideoCapture:
        return open_source(
            source,  # type: ignore[arg-type]
            open_timeout_s=options.open_timeout_s,
            read_timeout_s=options.read_timeout_s + BACKEND_READ_TIMEOUT_MARGIN_S,
            max_pixels=max_pixels,
        )

    return reopen(), (None if kind == "file" else reopen)


def _output_path(output: str | Path) -> Path:
    """``output`` as a Path whose folder exists (made if needed); ``StreamError`` saying why it cannot be written."""
    path = Path(output)
    if path.is_dir():
        raise StreamError(f"output {path} is a folder: name the video file, e.g. {path / 'out.mp4'}")
    blocker = next((parent for parent in path.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise StreamError(f"cannot write {path}: {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StreamError(f"cannot create the folder {path.parent} for {path}: {err.strerror or err}") from err
    return path
