"""Network sources against real stream servers on the loopback, killed, restarted and stalled mid-stream.

- HTTP: ffmpeg serving MPEG-TS (``-listen 1``). ffmpeg comes from the PATH or the ``imageio-ffmpeg`` wheel (the
  [dev] extra); without either those tests skip with that reason.
- RTSP: GStreamer's RTSP server (``tests/sdk/rtsp_server.py``, run by Debian's Python with python3-gi) serving the
  clip as RTP/JPEG; read by OpenCV's FFmpeg RTSP client (over TCP, OpenCV's default) as a camera would be. Restarted
  mid-stream, stalled (SIGSTOP: the connection stays open, nothing comes), asked for a path it does not serve (in
  the SDK and through ``m2f stream``), behind a password, and gone. ``make test`` installs its Debian packages (the
  Makefile's ``rtsp-server`` target, as root with apt-get); without them those tests skip with what is missing.

Every frame carries its own number (8 black/white bars), so the tests can tell a repeated or invented frame from a
dropped one."""

from __future__ import annotations

import functools
import itertools
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sdk.sources import SourceError, StreamTimeoutError
from sdk.stream import stream
from tests.conftest import REPO_ROOT

CLIP_FRAMES, CLIP_FPS, BITS, BAR = 200, 25, 8, 40  # frame k: bar b white when bit b of k is set


def _ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        pytest.skip("no ffmpeg: install Debian's ffmpeg or the imageio-ffmpeg wheel (pip install imageio-ffmpeg)")
    return imageio_ffmpeg.get_ffmpeg_exe()


def frame_number(frame: np.ndarray) -> int:
    """The number a frame of the test clip carries (robust to MPEG compression: bar means, not pixels)."""
    grey = frame.mean(axis=2)
    return sum(1 << b for b in range(BITS) if grey[:, b * BAR + 8 : (b + 1) * BAR - 8].mean() > 127)


def _numbered_clip(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (BITS * BAR, 96))
    for k in range(frames):
        frame = np.zeros((96, BITS * BAR, 3), np.uint8)
        for b in range(BITS):
            if k >> b & 1:
                frame[:, b * BAR : (b + 1) * BAR] = 255
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def numbered_clip(tmp_path_factory) -> Path:
    return _numbered_clip(tmp_path_factory.mktemp("clip") / "numbered.avi", CLIP_FRAMES)


class StreamServer:
    """ffmpeg playing ``clip`` at its frame rate to one HTTP client on ``port`` (``-re``: like a live camera)."""

    def __init__(self, clip: Path, port: int) -> None:
        self.clip, self.port, self.process = clip, port, None
        self.url = f"http://127.0.0.1:{port}/live.ts"

    def start(self) -> None:
        command = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(self.clip), "-an",
                   "-c:v", "mpeg1video", "-q:v", "2", "-f", "mpegts", "-listen", "1", self.url]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # listening?
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)
        # the probe above was the server's one client: ffmpeg -listen 1 serves one connection, so start again
        self.process.kill()
        self.process.wait()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def server(numbered_clip: Path) -> Iterator[StreamServer]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = StreamServer(numbered_clip, port)
    yield served
    served.kill()


@dataclass
class Seen:
    number: int  # the number the decoded frame carries
    frame_index: int = -1  # set by the stream: its own count of decoded frames


class NumberReader:
    """A model stand-in for ``stream``: reads each frame's number."""

    def preprocess(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        return {}, frame_number(frame)

    def inference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def postprocess(self, outputs: dict[str, np.ndarray], context: Any) -> Seen:
        return Seen(context)


def _increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def _read_across_a_restart(server: StreamServer | RtspServer) -> None:
    """60 frames, the server killed (a crash: no goodbye), 1 s with nothing served, the server started again on the
    same address, 60 more frames: every number in order on each side of the gap, and the stream's own count too."""
    server.start()
    live = stream(NumberReader(), server.url, live=True, reconnect=20, reconnect_delay_s=0.25, read_timeout_s=2.0,
                  open_timeout_s=3.0)  # fmt: skip
    before, after, killed_at = [], [], None
    for seen in live:
        if killed_at is None:
            before.append(seen)
            if len(before) == 60:
                server.kill()
                killed_at = time.monotonic()
                time.sleep(1.0)  # the gap: nothing is served
                server.start()
        else:
            after.append(seen)
            if len(after) == 60:
                break
    stats = live.stats
    live.close()
    numbers_before, numbers_after = [s.number for s in before], [s.number for s in after]
    assert stats.reconnects >= 1
    assert _increasing(numbers_before), numbers_before  # nothing repeated before the kill
    assert all(0 <= n < CLIP_FRAMES for n in numbers_before + numbers_after)  # nothing invented
    # after the restart the server plays the clip from its start again; frames buffered before the kill may
    # still arrive first, so the restarted run is the part after the last drop in the numbers
    restart = max((i for i in range(1, len(numbers_after)) if numbers_after[i] < numbers_after[i - 1]), default=0)
    resumed = numbers_after[restart:]
    assert _increasing(numbers_after[:restart]) and _increasing(resumed), numbers_after
    assert len(resumed) >= 30 and resumed[0] < 30, numbers_after  # it really reconnected to the new server
    indices = [s.frame_index for s in before + after]
    assert _increasing(indices)  # the stream's own count never goes back: gaps are drops, not re-reads
    assert stats.frames == len(before) + len(after) and stats.dropped == stats.frames_decoded - stats.frames


@pytest.mark.slow
def test_http_stream_survives_a_server_restart(server: StreamServer) -> None:
    _read_across_a_restart(server)


@pytest.mark.slow
def test_http_stream_that_ends_raises_after_its_reconnects_with_every_frame_delivered(tmp_path: Path) -> None:
    """A live source that stops for good (the server plays its clip and exits): the frames it sent arrive in
    order, then the reconnects run out and the stream raises ``StreamError`` saying so, not a silent end."""
    from sdk.sources import StreamError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = StreamServer(_numbered_clip(tmp_path / "short.avi", 40), port)
    served.start()
    try:
        seen = []
        live = stream(NumberReader(), served.url, live=True, reconnect=2, reconnect_delay_s=0.2, read_timeout_s=2.0,
                      open_timeout_s=2.0)  # fmt: skip
        with pytest.raises(StreamError, match=r"reconnect|lost|ended|closed"):
            for result in live:
                seen.append(result.number)
        assert _increasing(seen) and seen[-1] >= 35, seen  # in order, to (about) the end of the clip
        assert live.stats.reconnects == 2
    finally:
        served.kill()


# ---------------------------------------------------------------------------------------------------------------- RTSP
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi binds GStreamer


@functools.cache
def _rtsp_server_missing() -> str | None:
    """What the RTSP server lacks here, in words (the tests skip with it); None when it runs."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"no {SYSTEM_PYTHON}"
    done = subprocess.run([SYSTEM_PYTHON, str(RTSP_SERVER), "--check"], capture_output=True, text=True, timeout=120)
    return None if done.returncode == 0 else done.stderr.strip() or f"{RTSP_SERVER.name} --check: {done.returncode}"


class RtspServer:
    """GStreamer's RTSP server (``rtsp_server.py``) serving ``clip`` at ``rtsp://127.0.0.1:PORT/live`` in real time;
    restarted on the port it first got, paused with SIGSTOP (it keeps its connections and sends nothing)."""

    def __init__(self, clip: Path, log: Path, credentials: str | None = None) -> None:
        self.clip, self.log, self.port, self.process = clip, log, 0, None
        self.credentials = credentials  # "user:password": the stream needs them

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def start(self) -> None:
        command = [SYSTEM_PYTHON, str(RTSP_SERVER), str(self.clip), str(self.port), "/live"]
        command += [self.credentials] if self.credentials else []
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True
            )
        ready, _, _ = select.select([self.process.stdout], [], [], 60.0)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("ready "):
            self.kill()
            raise RuntimeError(f"the RTSP server did not start ({line!r}): {self.log.read_text()[-2000:]}")
        self.port = int(line.split()[1])

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()  # a stopped process dies too
            self.process.wait()
            self.process.stdout.close()
            self.process = None


@pytest.fixture
def rtsp_server(numbered_clip: Path, tmp_path: Path) -> Iterator[RtspServer]:
    missing = _rtsp_server_missing()
    if missing:
        pytest.skip(f"no RTSP server here ({missing}): `make rtsp-server` installs its Debian packages (as root)")
    served = RtspServer(numbered_clip, tmp_path / "rtsp_server.log")
    yield served
    served.kill()


@pytest.mark.slow
def test_rtsp_stream_survives_a_server_restart(rtsp_server: RtspServer) -> None:
    _read_across_a_restart(rtsp_server)


@pytest.mark.slow
def test_rtsp_server_that_stalls_is_the_read_timeout_then_the_open_timeout(rtsp_server: RtspServer) -> None:
    """The server stops sending mid-stream but keeps the connection (SIGSTOP): no frame is invented, the stream
    raises ``StreamTimeoutError`` naming the read timeout within about that time, and opening the silent server
    again is the open timeout, not a hang."""
    rtsp_server.start()
    live = stream(NumberReader(), rtsp_server.url, live=True, reconnect=0, read_timeout_s=1.5, open_timeout_s=3.0)
    seen, paused_at = [], None
    with pytest.raises(StreamTimeoutError, match=r"^source stalled: no frame within 1\.5 s after \d+ frames$"):
        for result in live:
            seen.append(result.number)
            if len(seen) == 25:
                rtsp_server.pause()
                paused_at = time.monotonic()
    waited = time.monotonic() - paused_at
    live.close()
    assert _increasing(seen) and seen[-1] < CLIP_FRAMES, seen  # frames in flight at the pause still arrive
    assert 1.5 <= waited < 1.5 + 6.0, waited  # the timeout, not OpenCV's own 30 s (slack: a loaded 2-core CI)

    started = time.monotonic()
    with pytest.raises(StreamTimeoutError, match=r"did not open within 2 s"):
        stream(NumberReader(), rtsp_server.url, open_timeout_s=2.0)
    assert time.monotonic() - started < 2.0 + 6.0


@pytest.mark.slow
def test_rtsp_wrong_path_or_no_server_is_a_clear_error_in_the_sdk_and_the_cli(
    rtsp_server: RtspServer, tmp_path: Path
) -> None:
    """What the server answered (404 Not Found), or that nothing listens, is the error; ``m2f stream`` prints it as
    one line and exits 2 without a traceback or an output file."""
    rtsp_server.start()
    wrong = rtsp_server.url.replace("/live", "/wrong")
    with pytest.raises(SourceError, match=r"^cannot open rtsp://\S+/wrong: the RTSP server answered 404 Not Found"):
        stream(NumberReader(), wrong, open_timeout_s=3.0)

    out = tmp_path / "x.mp4"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sdk.cli", "stream", wrong, "--out", str(out)], env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    messages = [line for line in done.stderr.splitlines() if line.startswith("m2f stream:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(messages) == 1 and "404 Not Found" in messages[0] and wrong in messages[0], done.stderr
    assert not out.exists()

    rtsp_server.kill()  # nothing listens on the port now
    with pytest.raises(SourceError, match=r"connection refused: nothing listens on 127\.0\.0\.1 port \d+"):
        stream(NumberReader(), rtsp_server.url, open_timeout_s=3.0)


@pytest.mark.slow
def test_rtsp_stream_behind_a_password(rtsp_server: RtspServer, caplog: pytest.LogCaptureFixture) -> None:
    """A camera that wants credentials (RTSP Basic auth): without them or with a wrong password the error says so
    (401 Unauthorized); with them the frames flow. Neither the error nor the log shows the password."""
    rtsp_server.credentials = "cam:s3cret"
    rtsp_server.start()
    bare = rtsp_server.url
    with pytest.raises(SourceError, match=r"answered 401 Unauthorized \(a user name and password are needed"):
        stream(NumberReader(), bare, open_timeout_s=3.0)
    wrong = bare.replace("rtsp://", "rtsp://cam:guess@")
    with pytest.raises(SourceError, match=r"401 Unauthorized \(check the user name and password") as raised:
        stream(NumberReader(), wrong, open_timeout_s=3.0)
    assert "guess" not in str(raised.value) and "rtsp://cam:***@127.0.0.1" in str(raised.value)
    right = bare.replace("rtsp://", "rtsp://cam:s3cret@")
    with caplog.at_level("INFO", logger="sdk.stream"), stream(NumberReader(), right, open_timeout_s=3.0) as live:
        numbers = [seen.number for seen in itertools.islice(live, 10)]
    assert _increasing(numbers), numbers
    assert "rtsp://cam:***@127.0.0.1" in caplog.text and "s3cret" not in caplog.text
