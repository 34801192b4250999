"""Video streaming: open a file, camera, network stream or GStreamer pipeline and segment every frame in a pipeline.

    from sdk.stream import stream
    s = stream(segmenter, "street.mp4", output="street_seg.mp4", annotate=draw)
    for result in s:                      # results in frame order, result.frame_index set
        ...
    print(s.stats.summary())              # frames, dropped, fps, latency p50/p90/p99, per-stage mean ms

``stream()`` overlaps three stages, each in its own daemon thread, joined by small bounded queues:

1. decode: reads frames from the source (``cv2.VideoCapture`` or any object with ``read() -> (ok, frame)``);
   a supervisor watches the blocking ``read()`` (which runs in its own reader thread) for stalls and reconnects.
2. inference: ``model.prepare(frame)`` then ``model.infer(inputs)`` (the runtime call, which releases the GIL).
3. post-processing: ``model.finish(...)``, then the optional ``annotate(result, frame)`` and ``cv2.VideoWriter``.

Files (``live=False``, the default for files) give every frame, in order, none dropped: exactly one result per
decodable frame. Live sources (camera index, URL, GStreamer pipeline, reader objects; ``live=True`` default) keep
only the newest decoded frame (``keep_latest=True``) so latency stays bounded; dropped frames are counted and
``frame_index`` then counts every decoded frame, so gaps in it are the drops. A read that stalls longer than
``read_timeout_s`` (or a lost connection) reconnects up to ``reconnect`` times, then raises ``StreamTimeoutError`` /
``StreamError``. Leaving the loop early (``break``), closing the iterator, ``Stream.close()`` or an exception in
any stage stops every thread (bounded joins); a stage's exception is re-raised in the consumer as ``StageError``
with the original as ``__cause__``.

Sources (``open_source``):

- a file path: ``FileNotFoundError`` if missing, ``SourceError`` if empty or OpenCV cannot decode it.
- a camera index: ``0`` or ``"0"`` (V4L2 on Linux, ``/dev/video0``).
- a URL (``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://``): opened with
  the FFMPEG backend with ``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC``, so a dead URL fails
  within the open timeout. RTSP over TCP: set ``OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp"``.
- a GStreamer pipeline (any string containing ``!``): opened with ``cv2.CAP_GSTREAMER``; needs an OpenCV built
  with GStreamer (the pip wheels are not; JetPack's OpenCV is). It must end in ``appsink`` and give BGR.

Jetson pipelines (hardware decode with ``nvv4l2decoder``, colour conversion with ``nvvidconv``):

- CSI camera::

    nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv !
    video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1

- H.264 file (``h265parse`` for H.265)::

    filesrc location=x.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx !
    videoconvert ! video/x-raw,format=BGR ! appsink

- RTSP camera (``rtph265depay ! h265parse`` for H.265)::

    rtspsrc location=rtsp://host/stream latency=200 ! rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv !
    video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1

(write each pipeline on one line.) ``appsink drop=1 max-buffers=1`` keeps GStreamer itself from queueing stale
frames on live sources.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

logger = logging.getLogger(__name__)

URL_RE = re.compile(r"^(rtsps?|rtmps?|https?|udp|tcp|srt|rtp)://", re.IGNORECASE)
STAGES = ("decode", "prepare", "infer", "finish", "annotate", "write")
LATENCY_WINDOW = 100_000  # latency percentiles are over the most recent frames
JOIN_TIMEOUT_S = 3.0  # close() waits at most this long for all threads together
HEALTHY_CONNECTION_S = 30.0  # a connection that delivered frames this long resets the reconnect count
POLL_S = 0.05  # how often blocked threads look at the stop flag / the supervisor looks for stalls
# A file whose decoding ends short of the container's frame count by more than this is reported as an error
# (counts from MP4/AVI indexes are exact; MKV/TS counts are estimated from the duration and may be off by a few).
FILE_SHORTFALL_FRAMES = 2
FILE_SHORTFALL_FRACTION = 0.01


class StreamError(RuntimeError):
    """A video source or the streaming pipeline failed."""


class SourceError(StreamError):
    """A source cannot be opened or decoded (unreadable or empty file, no camera, unsupported backend)."""


class StreamTimeoutError(StreamError, TimeoutError):
    """A source stalled longer than the read timeout (after the allowed reconnects) or did not open in time."""


class StageError(StreamError):
    """A pipeline stage (the model, ``annotate`` or the video writer) raised; the original is ``__cause__``."""

    def __init__(self, stage: str, frame_index: int | None, error: BaseException) -> None:
        where = f" on frame {frame_index}" if frame_index is not None else ""
        super().__init__(f"{stage} stage failed{where}: {type(error).__name__}: {error}")
        self.stage = stage
        self.frame_index = frame_index
        self.__cause__ = error


class StagedModel(Protocol):
    """What ``stream`` needs from a model (``sdk.Segmenter`` implements it)."""

    def prepare(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], Any]: ...

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def finish(self, outputs: dict[str, np.ndarray], context: Any, frame: np.ndarray) -> Any: ...


@runtime_checkable
class FrameReader(Protocol):
    """A frame source: ``cv2.VideoCapture`` or anything with ``read() -> (ok, frame)``; ``release()`` optional."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...


Source = str | int | Path | FrameReader | Callable[[], FrameReader]
Annotate = Callable[[Any, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------- sources
def source_kind(source: Any) -> str:
    """``"file"``, ``"camera"``, ``"url"``, ``"gstreamer"``, ``"reader"`` (has ``read()``) or ``"factory"``."""
    if isinstance(source, bool):
        raise TypeError("a video source cannot be a bool")
    if isinstance(source, int):
        return "camera"
    if isinstance(source, Path):
        return "file"
    if isinstance(source, str):
        text = source.strip()
        if text.isdigit():
            return "camera"
        if URL_RE.match(text):
            return "url"
        if "!" in text and not os.path.exists(text):
            return "gstreamer"
        return "file"
    if hasattr(source, "read") and not isinstance(source, type):
        return "reader"
    if callable(source):
        return "factory"
    raise TypeError(f"unsupported video source {source!r}: a path, camera index, URL, pipeline or reader")


def backend_available(api: int, name: str) -> bool:
    """Whether this OpenCV can use a video backend (``cv2.CAP_GSTREAMER``, "GStreamer") at all."""
    registry = getattr(cv2, "videoio_registry", None)
    if registry is not None and hasattr(registry, "hasBackend"):
        try:
            if registry.hasBackend(api):
                return True
        except cv2.error:
            pass
    match = re.search(rf"^\s*{re.escape(name)}:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(match) and match.group(1).upper() == "YES"


def open_source(
    source: str | int | Path,
    *,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 5.0,
) -> cv2.VideoCapture:
    """Open a file, camera index, URL or GStreamer pipeline as an opened ``cv2.VideoCapture``.

    Raises ``FileNotFoundError`` (missing file), ``SourceError`` (cannot open/decode, empty, no backend) or
    ``StreamTimeoutError`` (a URL that did not open within ``open_timeout_s``).
    """
    kind = source_kind(source)
    if kind == "camera":
        index = int(source)
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            raise SourceError(f"cannot open camera {index} (no such device, busy, or no permission)")
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fewer stale frames where the backend supports it
        return capture
    if kind == "gstreamer":
        if not backend_available(cv2.CAP_GSTREAMER, "GStreamer"):
            raise SourceError(
                f"this OpenCV ({cv2.__version__}) was built without GStreamer, so the pipeline cannot be opened: "
                f"{source!r}. Use an OpenCV built with GStreamer (JetPack's, or build with -DWITH_GSTREAMER=ON) "
                "or pass a file, camera index or URL"
            )
        capture = cv2.VideoCapture(str(source), cv2.CAP_GSTREAMER)
        if not capture.isOpened():
            raise SourceError(f"GStreamer could not start the pipeline (check elements and caps): {source!r}")
        return capture
    if kind == "url":
        return _open_url(str(source).strip(), open_timeout_s, read_timeout_s)
    if kind == "file":
        return _open_file(Path(str(source).removeprefix("file://")))
    raise TypeError(f"open_source opens paths, camera indexes, URLs and pipelines, not {kind} {source!r}")


def _open_file(path: Path) -> cv2.VideoCapture:
    if not path.exists():
        if "%" in path.name:  # an image sequence pattern such as frames/%05d.png
            capture = cv2.VideoCapture(str(path))
            if capture.isOpened():
                return capture
        raise FileNotFoundError(f"no video file at {path}")
    if path.is_dir():
        raise SourceError(f"{path} is a directory, not a video file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes)")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"OpenCV cannot open or decode {path} (not a video, corrupt, or codec unsupported)")
    if capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0:
        return capture
    ok, _ = capture.read()  # no frame count in the container: probe one frame, then start again
    capture.release()
    if not ok:
        raise SourceError(f"{path} opened but has no decodable frames")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"OpenCV could not reopen {path}")
    return capture


def _open_url(url: str, open_timeout_s: float, read_timeout_s: float) -> cv2.VideoCapture:
    if not backend_available(cv2.CAP_FFMPEG, "FFMPEG"):
        raise SourceError(f"this OpenCV ({cv2.__version__}) has no FFMPEG backend, needed for {url}")
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        max(1, int(open_timeout_s * 1000)),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        max(1, int(read_timeout_s * 1000)),
    ]
    # FFMPEG honours the open timeout, but a name lookup can block beyond it: bound the open in a helper thread.
    box: dict[str, Any] = {}
    abandoned = threading.Event()

    def _open() -> None:
        try:
            capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        except Exception as err:  # OpenCV raises cv2.error for malformed parameters
            box["error"] = err
            return
        if abandoned.is_set():
            capture.release()
        else:
            box["capture"] = capture

    start = time.perf_counter()
    opener = threading.Thread(target=_open, name="m2f-open-url", daemon=True)
    opener.start()
    opener.join(open_timeout_s + 1.0)
    if opener.is_alive():
        abandoned.set()
        raise StreamTimeoutError(f"{url} did not open within {open_timeout_s:g} s")
    if "error" in box:
        raise SourceError(f"OpenCV/FFMPEG rejected {url}: {box['error']}") from box["error"]
    capture = box["capture"]
    if not capture.isOpened():
        elapsed = time.perf_counter() - start
        if elapsed >= open_timeout_s * 0.9:
            raise StreamTimeoutError(f"{url} did not open within {open_timeout_s:g} s")
        raise SourceError(f"cannot open {url} (refused, not found, or not a video stream)")
    return capture


# ---------------------------------------------------------------------------------------------- statistics
@dataclass
class StreamStats:
    """What a stream did: counts, throughput, latency (frame decoded -> result ready) and mean ms per stage."""

    frames: int = 0  # results delivered to the consumer
    decoded: int = 0  # frames read from the source
    dropped: int = 0  # decoded but never processed (live sources, keep_latest)
    written: int = 0  # frames written to the output video
    reconnects: int = 0
    elapsed_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 / p90 / p99 / max
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean ms per stage that ran

    @property
    def fps(self) -> float:
        """Results per second over the stream's wall time."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (with ``fps``)."""
        return {
            "frames": self.frames,
            "decoded": self.decoded,
            "dropped": self.dropped,
            "written": self.written,
            "reconnects": self.reconnects,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.fps, 2),
            "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()},
            "stage_ms": {k: round(v, 2) for k, v in self.stage_ms.items()},
        }

    def summary(self) -> str:
        """One line for a command line to print at the end."""
        lat = self.latency_ms
        latency = (
            f"latency p50 {lat['p50']:.1f} / p90 {lat['p90']:.1f} / p99 {lat['p99']:.1f} ms" if lat else "latency -"
        )
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items())
        return (
            f"{self.frames} frames ({self.dropped} dropped, {self.reconnects} reconnects) in {self.elapsed_s:.2f} s "
            f"= {self.fps:.1f} fps; {latency}; mean ms per stage: {stages or '-'}"
        )


class _StatsRecorder:
    """Thread-safe accumulation behind ``Stream.stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums = dict.fromkeys(STAGES, 0.0)
        self._counts = dict.fromkeys(STAGES, 0)
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.frames = self.decoded = self.written = self.reconnects = 0
        self.start: float | None = None
        self.end: float | None = None

    def stage(self, name: str, ms: float) -> None:
        with self._lock:
            self._sums[name] += ms
            self._counts[name] += 1

    def latency(self, ms: float) -> None:
        with self._lock:
            self._latencies.append(ms)

    def snapshot(self, dropped: int) -> StreamStats:
        with self._lock:
            end = self.end if self.end is not None else time.perf_counter()
            elapsed = end - self.start if self.start is not None else 0.0
            latency: dict[str, float] = {}
            if self._latencies:
                values = np.fromiter(self._latencies, dtype=np.float64)
                p50, p90, p99 = np.percentile(values, [50, 90, 99])
                latency = {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(values.max())}
            stage_ms = {k: self._sums[k] / self._counts[k] for k in STAGES if self._counts[k]}
            return StreamStats(
                frames=self.frames,
                decoded=self.decoded,
                dropped=dropped,
                written=self.written,
                reconnects=self.reconnects,
                elapsed_s=elapsed,
                latency_ms=latency,
                stage_ms=stage_ms,
            )


# ---------------------------------------------------------------------------------------------- plumbing
class _StoppedError(Exception):
    """Raised inside a stage thread when the stream is being closed."""


@dataclass
class _End:
    """End of stream marker, flows through every stage."""


@dataclass
class _Failure:
    """An error that flows downstream to the consumer in frame order."""

    error: BaseException


@dataclass(slots=True)
class _Item:
    index: int
    frame: np.ndarray
    t_decoded: float
    inputs: dict[str, np.ndarray] | None = None
    context: Any = None
    outputs: dict[str, np.ndarray] | None = None
    infer_ms: float = 0.0


class _Channel:
    """A bounded FIFO between two stages. With ``keep_latest`` a full channel drops its oldest frame instead of
    blocking the producer; markers (_End, _Failure) are never dropped and never wait for room."""

    def __init__(self, maxsize: int, stop: threading.Event, keep_latest: bool = False) -> None:
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._maxsize = max(1, maxsize)
        self._stop = stop
        self._keep_latest = keep_latest
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if isinstance(item, _Item):
                while len(self._items) >= self._maxsize:
                    if self._keep_latest and isinstance(self._items[0], _Item):
                        self._items.popleft()
                        self.dropped += 1
                        continue
                    if self._stop.is_set():
                        raise _StoppedError
                    self._cond.wait(POLL_S * 2)
            self._items.append(item)
            self._cond.notify_all()

    def get(self, *, stoppable: bool = True) -> Any:
        with self._cond:
            while not self._items:
                if stoppable and self._stop.is_set():
                    raise _StoppedError
                self._cond.wait(POLL_S * 2)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def poll(self, timeout: float) -> Any | None:
        """The next item, or None after ``timeout`` s (for the consumer, which checks thread health in between)."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _release(reader: Any) -> None:
    release = getattr(reader, "release", None)
    if release is None:
        return
    try:
        release()
    except Exception:  # releasing is best effort; the stream result does not depend on it
        logger.debug("releasing %r failed", reader, exc_info=True)


class _ReaderWorker:
    """One connection: a thread that calls the blocking ``read()`` and pushes frames; watched for stalls."""

    def __init__(self, pipeline: _Pipeline, reader: Any, name: str) -> None:
        self.pipeline = pipeline
        self.reader = reader
        self.reading_since: float | None = None
        self.outcome = "running"  # -> "end", "max", "error", "stopped"
        self.error: BaseException | None = None
        self.frames = 0
        self.started = time.perf_counter()
        self.last_frame: float | None = None
        self.abandoned = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        p = self.pipeline
        try:
            while True:
                if p.stop.is_set() or self.abandoned.is_set():
                    self.outcome = "stopped"
                    return
                if not p.live and p.max_frames is not None and p.next_index >= p.max_frames:
                    self.outcome = "max"
                    return
                self.reading_since = start = time.perf_counter()
                ok, frame = self.reader.read()
                now = time.perf_counter()
                self.reading_since = None
                if p.stop.is_set() or self.abandoned.is_set():
                    self.outcome = "stopped"
                    return
                if not ok or frame is None:
                    self.outcome = "end"
                    return
                self.frames += 1
                self.last_frame = now
                p.push_frame(self, frame, now, (now - start) * 1000)
        except _StoppedError:
            self.outcome = "stopped"
        except Exception as err:
            self.error, self.outcome = err, "error"
        finally:
            self.reading_since = None
            _release(self.reader)


class _Pipeline:
    """The state the stage threads share (the ``Stream`` wrapper holds it, so dropping a Stream closes it)."""

    def __init__(
        self,
        model: StagedModel,
        kind: str,
        name: str,
        reader: Any,
        reopen: Callable[[], Any] | None,
        *,
        live: bool,
        keep_latest: bool,
        queue_size: int,
        read_timeout_s: float,
        reconnect: int,
        reconnect_delay_s: float,
        max_frames: int | None,
        output: Path | None,
        annotate: Annotate | None,
        output_fps: float,
        fourcc: str,
    ) -> None:
        self.model, self.kind, self.name = model, kind, name
        self.first_reader, self.reopen = reader, reopen
        self.live, self.max_frames = live, max_frames
        self.read_timeout_s, self.reconnect, self.reconnect_delay_s = read_timeout_s, reconnect, reconnect_delay_s
        self.output, self.annotate, self.output_fps, self.fourcc = output, annotate, output_fps, fourcc
        self.frame_count = _frame_count(reader)
        fps = _get(reader, cv2.CAP_PROP_FPS)
        self.source_fps = fps if fps and 0 < fps < 1000 else None
        self.stop = threading.Event()
        live_size = 1 if live else queue_size
        self.frames = _Channel(live_size, self.stop, keep_latest=live and keep_latest)
        self.inferred = _Channel(live_size, self.stop)
        self.results = _Channel(live_size, self.stop)
        self.stats = _StatsRecorder()
        self.next_index = 0
        self._push_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.workers: list[_ReaderWorker] = []
        self.started = self.closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.started = True
        self.stats.start = time.perf_counter()
        for stage, target in (("decode", self._decode), ("infer", self._infer), ("post", self._post)):
            thread = threading.Thread(target=target, name=f"{self.name}-{stage}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        for channel in (self.frames, self.inferred, self.results):
            channel.wake()
        deadline = time.perf_counter() + JOIN_TIMEOUT_S
        for thread in self.threads + [w.thread for w in self.workers if not w.abandoned.is_set()]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.perf_counter()))
        stuck = [t.name for t in self.threads + [w.thread for w in self.workers] if t.is_alive()]
        abandoned = {w.thread.name for w in self.workers if w.abandoned.is_set()}
        if set(stuck) - abandoned:
            logger.warning(
                "stream threads still busy after close (daemon; they exit when their call returns): %s", stuck
            )
        elif stuck:
            logger.debug("stalled reads still blocked (daemon; they exit when the read returns): %s", stuck)
        if not self.started:
            _release(self.first_reader)
        if self.stats.start is not None and self.stats.end is None:
            self.stats.end = time.perf_counter()

    # ------------------------------------------------------------------ decode
    def push_frame(self, worker: _ReaderWorker, frame: np.ndarray, t_decoded: float, decode_ms: float) -> None:
        with self._push_lock:  # a stalled connection that wakes up late must not push after its replacement
            if worker.abandoned.is_set():
                raise _StoppedError
            item = _Item(index=self.next_index, frame=frame, t_decoded=t_decoded)
            self.next_index += 1
            self.stats.decoded += 1
            self.stats.stage("decode", decode_ms)
        self.frames.put(item)  # files wait for room; live sources with keep_latest drop the oldest frame

    def _start_worker(self, reader: Any) -> _ReaderWorker:
        worker = _ReaderWorker(self, reader, f"{self.name}-read{len(self.workers)}")
        self.workers.append(worker)
        worker.thread.start()
        return worker

    def _watch(self, worker: _ReaderWorker) -> str:
        """Wait for a connection to end; ``"stall"`` if one read takes longer than the read timeout."""
        while True:
            worker.thread.join(POLL_S)
            if not worker.thread.is_alive():
                return worker.outcome
            if self.stop.is_set():
                return "stopped"
            since = worker.reading_since
            if since is not None and time.perf_counter() - since > self.read_timeout_s:
                with self._push_lock:
                    worker.abandoned.set()
                return "stall"

    def _decode(self) -> None:
        try:
            self._decode_loop()
        except _StoppedError:
            pass
        except StreamError as err:
            self.frames.put(_Failure(err))
        except BaseException as err:
            self.frames.put(_Failure(StageError("decode", None, err)))

    def _decode_loop(self) -> None:
        reader, failures = self.first_reader, 0
        while True:
            worker = self._start_worker(reader)
            outcome = self._watch(worker)
            if outcome == "stopped":
                return
            if outcome == "max":
                self.frames.put(_End())
                return
            problem = self._describe(outcome, worker)
            if self.reopen is None:  # files and plain reader objects: the end of the source is the end of the stream
                if outcome == "end":
                    self.frames.put(self._end_of_file())
                else:
                    self.frames.put(_Failure(problem))
                return
            if worker.last_frame is not None and worker.last_frame - worker.started >= HEALTHY_CONNECTION_S:
                failures = 0  # it worked for a good while: a new problem gets the full number of reconnects
            reader = None
            while reader is None:
                if failures >= self.reconnect:
                    if failures:
                        cause = problem.__cause__
                        problem = type(problem)(f"{problem} (gave up after {failures} reconnects)")
                        problem.__cause__ = cause
                    self.frames.put(_Failure(problem))
                    return
                failures += 1
                self.stats.reconnects += 1
                logger.warning(
                    "%s: %s; reconnect %d/%d in %g s",
                    self.name,
                    problem,
                    failures,
                    self.reconnect,
                    self.reconnect_delay_s,
                )
                if self.stop.wait(self.reconnect_delay_s):
                    return
                try:
                    reader = self.reopen()
                except StreamError as err:  # keeps StreamTimeoutError for a URL that no longer opens in time
                    problem = err
                except (OSError, cv2.error) as err:
                    problem = SourceError(f"reconnecting failed: {err}")
                    problem.__cause__ = err

    def _describe(self, outcome: str, worker: _ReaderWorker) -> StreamError:
        where = f"after {self.next_index} frames"
        if outcome == "stall":
            return StreamTimeoutError(f"source stalled: no frame within {self.read_timeout_s:g} s {where}")
        if outcome == "error":
            error = SourceError(f"reading the source failed {where}: {worker.error}")
            error.__cause__ = worker.error
            return error
        return StreamError(f"source ended or connection lost {where}")

    def _end_of_file(self) -> _End | _Failure:
        expected, got = self.frame_count, self.next_index
        if self.kind != "file" or not expected or got >= expected:
            return _End()
        shortfall = expected - got
        if shortfall > max(FILE_SHORTFALL_FRAMES, FILE_SHORTFALL_FRACTION * expected):
            return _Failure(SourceError(f"decoding stopped at frame {got} of {expected} (truncated or corrupt file)"))
        logger.warning("%s: decoded %d frames, the container says %d", self.name, got, expected)
        return _End()

    # ------------------------------------------------------------------ inference
    def _infer(self) -> None:
        index: int | None = None
        try:
            while True:
                item = self.frames.get()
                if not isinstance(item, _Item):
                    self.inferred.put(item)
                    return
                index = item.index
                start = time.perf_counter()
                item.inputs, item.context = self.model.prepare(item.frame)
                mid = time.perf_counter()
                item.outputs = self.model.infer(item.inputs)
                end = time.perf_counter()
                item.inputs = None
                item.infer_ms = (end - mid) * 1000
                self.stats.stage("prepare", (mid - start) * 1000)
                self.stats.stage("infer", item.infer_ms)
                self.inferred.put(item)
        except _StoppedError:
            pass
        except BaseException as err:
            self.inferred.put(_Failure(StageError("inference", index, err)))

    # ------------------------------------------------------------------ post-processing
    def _post(self) -> None:
        writer: cv2.VideoWriter | None = None
        stage, index = "finish", None
        try:
            while True:
                item = self.inferred.get()
                if not isinstance(item, _Item):
                    if writer is not None:
                        writer.release()  # the video is complete before the consumer sees the end
                        writer = None
                    self.results.put(item)
                    return
                stage, index = "finish", item.index
                start = time.perf_counter()
                result = self.model.finish(item.outputs, item.context, item.frame)
                result.frame_index = item.index
                timings = getattr(result, "timings", None)
                if isinstance(timings, dict):
                    timings.setdefault("inference_ms", item.infer_ms)
                self.stats.stage("finish", (time.perf_counter() - start) * 1000)
                if self.output is not None:
                    stage = "annotate"
                    start = time.perf_counter()
                    image = item.frame if self.annotate is None else self.annotate(result, item.frame)
                    _check_annotated(image, item.frame)
                    self.stats.stage("annotate", (time.perf_counter() - start) * 1000)
                    stage = "write"
                    start = time.perf_counter()
                    if writer is None:
                        writer = self._open_writer(item.frame.shape)
                    writer.write(image)
                    self.stats.written += 1
                    self.stats.stage("write", (time.perf_counter() - start) * 1000)
                ready = time.perf_counter()
                latency_ms = (ready - item.t_decoded) * 1000
                if isinstance(timings, dict):
                    timings["latency_ms"] = latency_ms
                self.stats.latency(latency_ms)
                self.results.put(result)
        except _StoppedError:
            pass
        except BaseException as err:
            self.results.put(_Failure(StageError(stage, index, err)))
        finally:
            if writer is not None:
                writer.release()

    def _open_writer(self, shape: tuple[int, ...]) -> cv2.VideoWriter:
        assert self.output is not None
        height, width = shape[:2]
        writer = cv2.VideoWriter(
            str(self.output), cv2.VideoWriter.fourcc(*self.fourcc), self.output_fps, (width, height)
        )
        if not writer.isOpened():
            raise SourceError(f"cannot write {self.output} with fourcc {self.fourcc!r} (codec or folder problem)")
        logger.info(
            "%s: writing %s (%dx%d, %.2f fps, %s)", self.name, self.output, width, height, self.output_fps, self.fourcc
        )
        return writer


def _frame_count(reader: Any) -> int | None:
    get = getattr(reader, "get", None)
    if get is None:
        return None
    try:
        count = int(get(cv2.CAP_PROP_FRAME_COUNT))
    except (TypeError, ValueError, cv2.error):
        return None
    return count if count > 0 else None


def _check_annotated(image: Any, frame: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.shape != frame.shape or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"annotate must return a BGR uint8 image of the frame's shape {frame.shape}, got {got}")


# ---------------------------------------------------------------------------------------------- public API
_STREAM_IDS = itertools.count()


class Stream:
    """Iterable of results with ``.stats`` (a ``StreamStats`` snapshot) and ``.close()``; iterate it once.

    The source is opened when the Stream is made (so a bad source fails at once); the threads start on the first
    ``next()``. Leaving the loop, closing the iterator, ``close()``, ``with``-exit or dropping the Stream stops them.
    """

    def __init__(self, pipeline: _Pipeline) -> None:
        self._pipeline = pipeline
        self._iterated = False

    @property
    def stats(self) -> StreamStats:
        """Counts, fps, latency percentiles and per-stage means so far (final once the stream ended)."""
        return self._pipeline.stats.snapshot(self._pipeline.frames.dropped)

    @property
    def source_fps(self) -> float | None:
        """The source's frame rate as the container/driver reports it (None if unknown)."""
        return self._pipeline.source_fps

    @property
    def frame_count(self) -> int | None:
        """Frames the container says it has (files), else None."""
        return self._pipeline.frame_count

    @property
    def threads(self) -> list[threading.Thread]:
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
                if isinstance(item, _End):
                    p.stats.end = time.perf_counter()
                    logger.info("%s: %s", p.name, self.stats.summary())
                    return
                if isinstance(item, _Failure):
                    p.stats.end = time.perf_counter()
                    raise item.error from item.error.__cause__
                p.stats.frames += 1
                yield item
                if p.live and p.max_frames is not None and p.stats.frames >= p.max_frames:
                    return
        finally:
            p.close()

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


def _get(reader: Any, prop: int) -> float | None:
    get = getattr(reader, "get", None)
    if get is None:
        return None
    try:
        return float(get(prop))
    except (TypeError, ValueError, cv2.error):
        return None


def stream(
    model: StagedModel,
    source: Source,
    *,
    live: bool | None = None,
    keep_latest: bool | None = None,
    queue_size: int = 4,
    read_timeout_s: float = 5.0,
    open_timeout_s: float = 10.0,
    reconnect: int = 3,
    reconnect_delay_s: float = 1.0,
    max_frames: int | None = None,
    output: str | Path | None = None,
    annotate: Annotate | None = None,
    output_fps: float | None = None,
    fourcc: str = "mp4v",
) -> Stream:
    """Segment every frame of ``source`` with decode, inference and post-processing overlapped in three threads.

    ``source``: a path, camera index, URL or GStreamer pipeline (see ``open_source``), an opened reader (anything
    with ``read()``; not reopened, its end ends the stream) or a zero-argument callable returning one (called
    again to reconnect). ``live``: default False for files, True otherwise. ``keep_latest`` (live only, default
    True): process the newest frame and drop the rest. ``queue_size``: frames buffered between stages (files; live
    sources buffer one). ``read_timeout_s``: a read that takes longer is a stall; live sources then reconnect up to
    ``reconnect`` times (``reconnect_delay_s`` apart; the count starts again after a connection that worked for
    ``HEALTHY_CONNECTION_S``), files fail. ``open_timeout_s``: for URLs. ``max_frames``: stop after that many
    results. ``output``: write each processed frame, drawn by ``annotate(result, frame)`` when given, to this video
    (``fourcc``, at ``output_fps`` or the source's fps; live sources write only the frames not dropped).
    Returns a ``Stream``: iterate it once for results; ``.stats`` for a ``StreamStats``; ``with`` or ``.close()``.
    """
    if queue_size < 1:
        raise ValueError(f"queue_size must be >= 1, got {queue_size}")
    if read_timeout_s <= 0 or open_timeout_s <= 0:
        raise ValueError("read_timeout_s and open_timeout_s must be > 0")
    if reconnect < 0 or reconnect_delay_s < 0:
        raise ValueError("reconnect and reconnect_delay_s must be >= 0")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if len(fourcc) != 4:
        raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
    kind = source_kind(source)
    live = kind != "file" if live is None else live
    keep_latest = live if keep_latest is None else keep_latest
    if keep_latest and not live:
        raise ValueError("keep_latest drops frames and is only for live sources (live=True)")

    reopen: Callable[[], Any] | None
    if kind == "reader":
        reader, reopen = source, None
    elif kind == "factory":
        reopen = source  # type: ignore[assignment]
        reader = reopen()
    else:
        reader = open_source(source, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s)  # type: ignore[arg-type]
        reopen = None
        if kind != "file":

            def reopen() -> cv2.VideoCapture:
                return open_source(source, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s)  # type: ignore[arg-type]

    out_path = None
    fps = 0.0
    if output is not None:
        out_path = Path(output)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fps = output_fps or _get(reader, cv2.CAP_PROP_FPS) or 0.0
        if not fps or fps <= 0 or fps > 1000:
            logger.warning("source frame rate unknown; writing %s at 30 fps (pass output_fps)", out_path)
            fps = 30.0
    name = f"m2f-stream{next(_STREAM_IDS)}"
    logger.info("%s: %s source %s (live=%s, keep_latest=%s)", name, kind, source, live, keep_latest)
    pipeline = _Pipeline(
        model,
        kind,
        name,
        reader,
        reopen,
        live=live,
        keep_latest=keep_latest,
        queue_size=queue_size,
        read_timeout_s=read_timeout_s,
        reconnect=reconnect,
        reconnect_delay_s=reconnect_delay_s,
        max_frames=max_frames,
        output=out_path,
        annotate=annotate,
        output_fps=fps,
        fourcc=fourcc,
    )
    return Stream(pipeline)


def evenly_spaced(n: int, count: int) -> list[int]:
    """Up to ``count`` distinct indices spread evenly over ``range(n)``, first and last included."""
    return sorted({round(float(i)) for i in np.linspace(0, n - 1, min(n, count))})


def read_video_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` BGR frames evenly spread over a video file."""
    if not path.exists():
        raise FileNotFoundError(f"no video at {path}")
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        if not capture.isOpened():
            raise ValueError(f"OpenCV decoded no frame from {path}: it cannot open the file")
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(evenly_spaced(total if total > 0 else count, count))  # unknown count: the first frames
        for index in range(max(wanted) + 1):
            ok, frame = capture.read()
            if not ok:
                break
            if index in wanted:
                frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"OpenCV decoded no frame from {path}")
    return frames
