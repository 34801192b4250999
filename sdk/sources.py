"""Video sources: open a file, camera, URL or GStreamer pipeline as a ``cv2.VideoCapture``; read sample frames.

Sources (``open_source``):

- a file path: ``FileNotFoundError`` if missing, ``SourceError`` if empty or OpenCV cannot decode it.

Every kind: ``FrameError`` when its frames are larger than ``max_pixels`` (the size an image file's header states,
checked before OpenCV decodes it; a video's size as its container or driver reports it, after opening).
- a camera index: ``0`` or ``"0"`` (V4L2 on Linux, ``/dev/video0``).
- a URL (``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://``): opened with
  the FFMPEG backend with ``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC``, so a dead URL fails
  within the open timeout. RTSP runs over TCP (OpenCV's default); ``OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;udp"``
  asks for UDP (the variable replaces OpenCV's options). An ``rtsp://`` URL that does not open says what its server
  answered (``404 Not Found``, ``401 Unauthorized``) or that nothing listens there. Messages and logs show a URL's
  password as ``***``.
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

import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from runtimes.errors import M2FError
from runtimes.images import DEFAULT_MAX_PIXELS, check_pixels, file_header_size

logger = logging.getLogger(__name__)

URL_RE = re.compile(r"^(rtsps?|rtmps?|https?|udp|tcp|srt|rtp)://", re.IGNORECASE)
PROBES_AFTER_FAILURE = 8  # seeks tried after a file stops decoding early, to tell corruption from an over-count


class StreamError(M2FError, RuntimeError):
    """A video source or the streaming pipeline failed."""


class SourceError(StreamError):
    """A source cannot be opened or decoded (unreadable or empty file, no camera, unsupported backend)."""


class StreamTimeoutError(StreamError, TimeoutError):
    """A source stalled longer than the read timeout (after the allowed reconnects) or did not open in time."""


@runtime_checkable
class FrameReader(Protocol):
    """A frame source: ``cv2.VideoCapture`` or anything with ``read() -> (ok, frame)``; ``release()`` optional."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...


Source = str | int | Path | FrameReader | Callable[[], FrameReader]


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> cv2.VideoCapture:
    """Open a file, camera index, URL or GStreamer pipeline as an opened ``cv2.VideoCapture``.

    Raises ``FileNotFoundError`` (missing file), ``SourceError`` (cannot open/decode, empty, no backend),
    ``StreamTimeoutError`` (a URL that did not open within ``open_timeout_s``) or ``FrameError`` (frames over
    ``max_pixels``; None: no limit).
    """
    capture = _open(source, open_timeout_s, read_timeout_s, max_pixels)
    width, height = (capture_property(capture, p) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        check_pixels(
            int(width or 0), int(height or 0), max_pixels, f"{source_kind(source)} {redacted(source)}: a frame"
        )
    except M2FError:
        capture.release()
        raise
    return capture


def _open(source: str | int | Path, open_timeout_s: float, read_timeout_s: float, max_pixels: int | None) -> Any:
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
        return _open_file(Path(str(source).removeprefix("file://")), max_pixels)
    raise TypeError(f"open_source opens paths, camera indexes, URLs and pipelines, not {kind} {source!r}")


def _open_file(path: Path, max_pixels: int | None) -> cv2.VideoCapture:
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
    size = file_header_size(path)  # an image file: OpenCV decodes it while opening, so its size is checked first
    if size is not None:
        check_pixels(*size, max_pixels, f"{path}: an image")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"OpenCV cannot open or decode {path} (not a video, corrupt, or codec unsupported)")
    if frames_in_header(capture):
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
    name = redacted(url)
    if not backend_available(cv2.CAP_FFMPEG, "FFMPEG"):
        raise SourceError(f"this OpenCV ({cv2.__version__}) has no FFMPEG backend, needed for {name}")
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
        raise StreamTimeoutError(f"{name} did not open within {open_timeout_s:g} s")
    if "error" in box:
        raise SourceError(f"OpenCV/FFMPEG rejected {name}: {box['error']}") from box["error"]
    capture = box["capture"]
    if not capture.isOpened():
        elapsed = time.perf_counter() - start
        if elapsed >= open_timeout_s * 0.9:
            raise StreamTimeoutError(f"{name} did not open within {open_timeout_s:g} s")
        refusal = rtsp_refusal(url, min(open_timeout_s - elapsed, 2.0))  # within the open timeout
        raise SourceError(
            f"cannot open {name}: {refusal}"
            if refusal
            else f"cannot open {name} (refused, not found, or not a video stream)"
        )
    return capture


def redacted(source: object) -> str:
    """``source`` for messages and logs: a URL's password as ``***`` (camera URLs carry credentials)."""
    text = str(source)
    try:
        parts = urllib.parse.urlsplit(text)
        if parts.password is None:
            return text
    except ValueError:  # not a URL that parses (a path with brackets): nothing to hide
        return text
    userinfo, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))


RTSP_HINTS = {
    401: "a user name and password are needed: rtsp://USER:PASSWORD@host/path",
    403: "this user may not read this stream",
    404: "the server has no stream at this path",
}


def rtsp_refusal(url: str, timeout_s: float) -> str | None:
    """Why an ``rtsp://`` URL that FFmpeg did not open was refused, in words; None when that cannot be told.

    FFmpeg writes the server's answer (``DESCRIBE failed: 404``) to its log, and OpenCV only says "not opened": ask
    the server once more as a player starts (``DESCRIBE``, no credentials) and read its status line. Nothing
    listening on the port is said too. Other schemes, a server that answers 2xx, or no answer in time: None.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        host, port = parts.hostname, parts.port or 554
    except ValueError:  # a port that is not a number
        return None
    if parts.scheme.lower() != "rtsp" or not host:
        return None
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    target = urllib.parse.urlunsplit(("rtsp", netloc, parts.path or "/", parts.query, ""))  # no user:password
    request = f"DESCRIBE {target} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\nUser-Agent: m2f\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.sendall(request.encode())
            status = conn.makefile("rb").readline(256).decode("latin-1")
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {host} port {port}"
    except OSError:  # unreachable, timed out, reset: FFmpeg's generic failure stands
        return None
    match = re.match(r"RTSP/\d\.\d\s+(\d{3})\s*(.*)", status)
    if match is None or match.group(1).startswith("2"):
        return None
    code, reason = int(match.group(1)), match.group(2).strip()
    hint = RTSP_HINTS.get(code)
    if code == 401 and parts.username:
        hint = "check the user name and password in the URL"
    return f"the RTSP server answered {code} {reason}".rstrip() + (f" ({hint})" if hint else "")


def capture_property(reader: Any, prop: int) -> float | None:
    """``reader.get(prop)`` (``cv2.CAP_PROP_*``) as a float; None when the reader has no ``get`` or it fails."""
    get = getattr(reader, "get", None)
    if get is None:
        return None
    try:
        return float(get(prop))
    except (TypeError, ValueError, cv2.error):
        return None


def frames_in_header(reader: Any) -> int | None:
    """The frame count the container declares (files); None when unknown or not positive."""
    count = capture_property(reader, cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if count and count > 0 else None


def frame_rate(reader: Any) -> float | None:
    """The source's frame rate as the container/driver reports it; None when unknown or implausible."""
    fps = capture_property(reader, cv2.CAP_PROP_FPS)
    return fps if fps and 0 < fps < 1000 else None


class RealTimeReader:
    """A reader whose frames are released on a clock of ``fps`` (frame k not before k / fps after the first read):
    a file played as a live camera would deliver it. A reader that is late gets the next frame at once."""

    def __init__(self, reader: Any, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.reader, self.period = reader, 1.0 / fps
        self.count = 0
        self.start: float | None = None

    def read(self) -> tuple[bool, np.ndarray | None]:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        delay = self.start + self.count * self.period - now
        if delay > 0:
            time.sleep(delay)
        self.count += 1
        return self.reader.read()

    def __getattr__(self, name: str) -> Any:
        """Everything else (``get``, ``set``, ``grab``: header counts, the end-of-file probe) is the reader's."""
        if name == "reader":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.reader, name)

    def release(self) -> None:
        release(self.reader)


def release(reader: Any) -> None:
    """``reader.release()`` if it has one; best effort (a failure is logged at debug level)."""
    close = getattr(reader, "release", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # releasing is best effort; the stream result does not depend on it
        logger.debug("releasing %r failed", reader, exc_info=True)


def readable_frame_after(reader: Any, index: int, total: int) -> int | None:
    """A frame after ``index`` that still decodes when sought to, or None (or when ``reader`` cannot seek).

    After a file stops decoding at frame ``index`` of the ``total`` its header declares, this tells a file corrupt
    in the middle (later frames decode) from one whose header over-counts or whose tail is missing (none do).
    Tries up to ``PROBES_AFTER_FAILURE`` positions spread over the rest; the reader's position is lost.
    """
    if not (hasattr(reader, "set") and hasattr(reader, "grab")) or total <= index + 1:
        return None
    for target in evenly_spaced(total - index - 1, PROBES_AFTER_FAILURE):
        position = index + 1 + target
        try:
            if reader.set(cv2.CAP_PROP_POS_FRAMES, position) and reader.grab():
                return position
        except cv2.error:
            return None
    return None


def evenly_spaced(n: int, count: int) -> list[int]:
    """Up to ``count`` distinct indices spread evenly over ``range(n)``, first and last included."""
    return sorted({round(float(i)) for i in np.linspace(0, n - 1, min(n, count))})


def read_video_frames(path: Path, count: int, consecutive: bool = False) -> list[np.ndarray]:
    """``count`` BGR frames evenly spread over a video file (for benchmarks and the demo's table); with
    ``consecutive``, its first ``count`` frames (for what compares a frame with the one before)."""
    if not path.exists():
        raise FileNotFoundError(f"no video at {path}")
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        if not capture.isOpened():
            raise ValueError(f"OpenCV decoded no frame from {path}: it cannot open the file")
        total = count if consecutive else frames_in_header(capture) or count  # unknown count: the first frames
        wanted = set(evenly_spaced(total, count))
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
