"""sdk.stream: sources, the three-stage pipeline (files exact, live sources bounded), shutdown, errors, stats,
frame accounting against the container header, options.

A fake StagedModel stands in for the Segmenter; fake readers simulate cameras and network streams. Clips written
here with OpenCV (tests/sdk/clips.py) check the header accounting; the real clips in ../shared/data/videos check
exact frame counts end to end (skipped when the folder is absent). Speed goals (overlap speed-up, bounded live
latency) are measured in benchmarks/test_bench_stream.py, not asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sdk.sources import (
    SourceError,
    StreamError,
    StreamTimeoutError,
    backend_available,
    open_source,
    readable_frame_after,
    source_kind,
)
from sdk.stream import StageError, StreamOptions, stream
from tests.conftest import data_root
from tests.sdk.clips import corrupt_middle_clip, header_and_decoded, over_counting_clip, write_clip

CLIPS = {"car-detection.mp4": 377, "one-by-one-person-detection.mp4": 1394, "solidWhiteRight.mp4": 221}


# ---------------------------------------------------------------------------------------------- fakes
class FakeResult:
    def __init__(self, value: float) -> None:
        self.value = value
        self.timings: dict[str, float] = {}
        self.frame_index: int | None = None


class FakeModel:
    """infer returns the frame mean; optional sleeps per stage, an optional failure, and recorded intervals."""

    def __init__(
        self,
        preprocess_s: float = 0.0,
        inference_s: float = 0.0,
        postprocess_s: float = 0.0,
        fail_stage: str | None = None,
        fail_at: int = 0,
    ) -> None:
        self.sleep = {"preprocess": preprocess_s, "inference": inference_s, "postprocess": postprocess_s}
        self.fail_stage, self.fail_at = fail_stage, fail_at
        self.calls = dict.fromkeys(self.sleep, 0)
        self.intervals: list[tuple[str, float, float]] = []

    def _stage(self, name: str) -> None:
        start = time.perf_counter()
        if self.fail_stage == name and self.calls[name] == self.fail_at:
            raise ValueError(f"boom in {name}")
        self.calls[name] += 1
        if self.sleep[name]:
            time.sleep(self.sleep[name])
        self.intervals.append((name, start, time.perf_counter()))

    def preprocess(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        self._stage("preprocess")
        return {"image": frame}, {"shape": frame.shape}

    def inference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._stage("inference")
        return {"mean": np.asarray(inputs["image"][::8, ::8].mean())}

    def postprocess(self, outputs: dict[str, np.ndarray], context: Any) -> FakeResult:
        self._stage("postprocess")
        assert len(context["shape"]) == 3
        return FakeResult(float(outputs["mean"]))


class FakeReader:
    """A camera/network stand-in: frame k is filled with k % 256; can pace, stall, fail or end."""

    def __init__(
        self,
        n: int | None = None,
        period_s: float = 0.0,
        stall_after: int | None = None,
        unstall: threading.Event | None = None,
        error_after: int | None = None,
        shape: tuple[int, int, int] = (24, 32, 3),
        start: int = 0,
    ) -> None:
        self.n, self.period_s, self.shape = n, period_s, shape
        self.stall_after, self.unstall = stall_after, unstall or threading.Event()
        self.error_after = error_after
        self.count, self.start = 0, start
        self.released = False
        self.read_intervals: list[tuple[float, float]] = []

    def read(self) -> tuple[bool, np.ndarray | None]:
        begin = time.perf_counter()
        if self.stall_after is not None and self.count >= self.stall_after:
            self.unstall.wait(10)
            return False, None
        if self.error_after is not None and self.count >= self.error_after:
            raise OSError("device unplugged")
        if self.n is not None and self.count >= self.n:
            return False, None
        if self.period_s:
            time.sleep(self.period_s)
        frame = np.full(self.shape, (self.start + self.count) % 256, np.uint8)
        self.count += 1
        self.read_intervals.append((begin, time.perf_counter()))
        return True, frame

    def release(self) -> None:
        self.released = True


def alive(s: Any) -> list[str]:
    """Names of this stream's threads still running (they must also be gone from threading.enumerate())."""
    names = {t.name for t in s.threads}
    return [t.name for t in threading.enumerate() if t.name in names and t.is_alive()]


def videos() -> Path:
    folder = data_root() / "videos"
    if not folder.is_dir():
        pytest.skip(f"real clips folder {folder} is absent (set M2F_DATA)")
    return folder


def decode_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung camera)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    conns: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conns.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in conns:
        conn.close()


# ---------------------------------------------------------------------------------------------- sources
@pytest.mark.parametrize(
    ("source", "kind"),
    [
        (0, "camera"),
        ("1", "camera"),
        ("clip.mp4", "file"),
        (Path("clip.mp4"), "file"),
        ("rtsp://10.0.0.2:554/stream", "url"),
        ("HTTP://host/x.mjpg", "url"),
        ("videotestsrc ! videoconvert ! appsink", "gstreamer"),
        (FakeReader(), "reader"),
        (lambda: FakeReader(), "factory"),
    ],
)
def test_source_kind(source: Any, kind: str) -> None:
    assert source_kind(source) == kind


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no video file"):
        open_source(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError):
        stream(FakeModel(), str(tmp_path / "nope.mp4"))


def test_unreadable_empty_and_directory_sources_raise_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="cannot open or decode"):
        open_source(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        stream(FakeModel(), empty)
    with pytest.raises(SourceError, match="directory"):
        open_source(tmp_path)


class _HeaderOfOneFrame(FakeReader):
    """A reader whose container header declares one frame and which decodes none (a corrupt image file)."""

    def get(self, prop: int) -> float:
        return 1.0 if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0


def test_a_source_that_gives_no_frame_is_an_error_whatever_its_header_says() -> None:
    for reader in (FakeReader(n=0), _HeaderOfOneFrame(n=0)):
        with pytest.raises(SourceError, match=r"not one frame could be decoded"):
            list(stream(FakeModel(), reader))
    with pytest.raises(SourceError, match=r"its header says 1 frames"):
        list(stream(FakeModel(), _HeaderOfOneFrame(n=0)))


def test_dead_rtsp_url_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(SourceError, match="cannot open rtsp://"):
        open_source("rtsp://127.0.0.1:9/none", open_timeout_s=2.0)
    assert time.perf_counter() - start < 2.0 + 1.0


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_hung_server_fails_within_the_open_timeout(silent_server: int, scheme: str) -> None:
    timeout = 1.0
    start = time.perf_counter()
    with pytest.raises(StreamError):  # StreamTimeoutError (or SourceError if FFMPEG gives up first)
        stream(FakeModel(), f"{scheme}://127.0.0.1:{silent_server}/none", open_timeout_s=timeout)
    elapsed = time.perf_counter() - start
    assert elapsed < timeout + 1.5, f"took {elapsed:.2f} s with a {timeout} s open timeout"


def test_gstreamer_pipeline_is_clear_about_support() -> None:
    pipeline = "videotestsrc num-buffers=5 ! videoconvert ! video/x-raw,format=BGR ! appsink"
    if not backend_available(cv2.CAP_GSTREAMER, "GStreamer"):
        with pytest.raises(SourceError, match="built without GStreamer"):
            stream(FakeModel(), pipeline)
        return
    results = list(stream(FakeModel(), pipeline, live=False))
    assert [r.frame_index for r in results] == list(range(5))


# ---------------------------------------------------------------------------------------------- real clips
@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_real_clip_every_frame_in_order_and_output_video(name: str, tmp_path: Path) -> None:
    path = videos() / name
    capture = cv2.VideoCapture(str(path))
    container_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert container_count == decode_count(path) == CLIPS[name]

    out = tmp_path / "annotated.mp4"
    s = stream(FakeModel(inference_s=0.001), path, output=out, annotate=lambda result, frame: frame)
    indices = []
    for result in s:
        indices.append(result.frame_index)
        assert "latency_ms" in result.timings and "inference_ms" in result.timings
    assert indices == list(range(CLIPS[name]))
    stats = s.stats
    assert (stats.frames, stats.frames_decoded, stats.dropped, stats.written) == (CLIPS[name],) * 2 + (0, CLIPS[name])
    assert stats.frames_in_header == CLIPS[name]
    assert set(stats.stage_ms) == {"decode", "preprocess", "inference", "postprocess", "annotate", "write"}
    assert alive(s) == []

    written = cv2.VideoCapture(str(out))
    assert written.get(cv2.CAP_PROP_FPS) == pytest.approx(s.source_fps, rel=1e-3)
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == CLIPS[name]
    written.release()
    assert decode_count(out) == CLIPS[name]


@pytest.mark.data
def test_real_clip_early_break_stops_every_thread() -> None:
    s = stream(FakeModel(), videos() / "one-by-one-person-detection.mp4", queue_size=2)
    for result in s:
        if result.frame_index == 4:
            break
    assert alive(s) == []
    assert s.stats.frames == 5


@pytest.mark.data
def test_truncated_real_clip_gives_every_decodable_frame_without_error(tmp_path: Path) -> None:
    data = (videos() / "car-detection.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # the index (moov) is at the start, so it opens
    declared, decodable = header_and_decoded(truncated)
    assert declared == CLIPS["car-detection.mp4"] > decodable > 0
    s = stream(FakeModel(), truncated)
    assert [r.frame_index for r in s] == list(range(decodable))
    assert (s.stats.frames_decoded, s.stats.frames_in_header) == (decodable, declared)
    assert alive(s) == []


@pytest.mark.data
def test_file_max_frames_and_stats_summary() -> None:
    s = stream(FakeModel(), videos() / "solidWhiteRight.mp4", max_frames=10)
    assert s.frame_count == 221 and s.source_fps == pytest.approx(25.0)
    assert [r.frame_index for r in s] == list(range(10))
    stats = s.stats
    assert stats.frames == stats.frames_decoded == 10 and stats.frames_in_header == 221
    assert stats.fps > 0 and set(stats.latency_ms) == {"p50", "p90", "p99", "max"}
    assert "10 frames" in stats.summary()
    json.dumps(stats.to_dict())


@pytest.mark.data
def test_http_url_is_a_live_source(tmp_path: Path) -> None:
    """The FFMPEG network path end to end: a local HTTP server serves a clip; live mode, bounded by max_frames."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(videos()))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/solidWhiteRight.mp4"
        s = stream(FakeModel(inference_s=0.005), url, max_frames=20, read_timeout_s=3.0, open_timeout_s=3.0)
        indices = [r.frame_index for r in s]
    finally:
        server.shutdown()
        server.server_close()
    assert len(indices) == 20 and indices == sorted(set(indices))
    assert s.stats.frames_decoded >= 20
    assert alive(s) == []


# ---------------------------------------------------------------------------------------------- frame accounting
def test_header_that_over_counts_is_a_warning_and_every_decodable_frame_is_processed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clip = over_counting_clip(tmp_path / "over.mp4", 60)
    declared, decodable = header_and_decoded(clip)
    assert declared == 60 > decodable > 30  # the header over-counts, as real-world MP4s often do
    out = tmp_path / "out.mp4"
    s = stream(FakeModel(), clip, output=out, annotate=lambda result, frame: frame)
    with caplog.at_level("WARNING", logger="sdk.stream_pipeline"):
        assert [r.frame_index for r in s] == list(range(decodable))
    stats = s.stats
    assert (stats.frames, stats.frames_decoded, stats.frames_in_header) == (decodable, decodable, 60)
    assert stats.written == decodable and header_and_decoded(out) == (decodable, decodable)
    assert f"decoded {decodable} frames, the container header says 60" in caplog.text
    assert alive(s) == []


def test_strict_makes_a_header_mismatch_an_error(tmp_path: Path) -> None:
    clip = over_counting_clip(tmp_path / "over.mp4", 60)
    _, decodable = header_and_decoded(clip)
    seen = []
    with pytest.raises(SourceError, match=f"decoded {decodable} frames, the container header says 60 .strict"):
        for result in stream(FakeModel(), clip, StreamOptions(strict=True)):
            seen.append(result.frame_index)
    assert seen == list(range(decodable))


def test_exact_header_is_neither_warned_about_nor_strict_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clip = write_clip(tmp_path / "exact.mp4", 30)
    with caplog.at_level("WARNING", logger="sdk.stream_pipeline"):
        s = stream(FakeModel(), clip, strict=True)
        assert len(list(s)) == 30
    assert s.stats.frames_in_header == s.stats.frames_decoded == 30 and "header" not in caplog.text


def test_frames_unreadable_in_the_middle_are_an_error_naming_the_frame(tmp_path: Path) -> None:
    clip = corrupt_middle_clip(tmp_path / "corrupt.mp4", 60, missing=range(20, 26))
    assert header_and_decoded(clip) == (60, 20)
    seen = []
    with pytest.raises(SourceError, match=r"frame 20 of 60 cannot be decoded although frame [0-9]+ can"):
        for result in stream(FakeModel(), clip):
            seen.append(result.frame_index)
    assert seen == list(range(20))


def test_readable_frame_after_tells_a_corrupt_middle_from_a_missing_tail(tmp_path: Path) -> None:
    corrupt = cv2.VideoCapture(str(corrupt_middle_clip(tmp_path / "corrupt.mp4", 60, missing=range(20, 26))))
    tail = cv2.VideoCapture(str(over_counting_clip(tmp_path / "over.mp4", 60)))
    try:
        found = readable_frame_after(corrupt, 20, 60)
        assert found is not None and 26 <= found < 60
        assert readable_frame_after(tail, header_and_decoded(tmp_path / "over.mp4")[1], 60) is None
    finally:
        corrupt.release()
        tail.release()
    assert readable_frame_after(FakeReader(n=5), 2, 10) is None  # cannot seek: no claim


# ---------------------------------------------------------------------------------------------- pipeline
def test_results_match_their_frames_in_order() -> None:
    reader = FakeReader(n=300)
    s = stream(FakeModel(), reader, live=False)
    results = list(s)
    assert [r.frame_index for r in results] == list(range(300))
    assert [r.value for r in results] == [float(i % 256) for i in range(300)]
    assert reader.released and alive(s) == []


@pytest.mark.parametrize("how", ["break", "close_iterator", "close_stream", "drop"])
def test_stopping_early_leaves_no_threads(how: str) -> None:
    s = stream(FakeModel(inference_s=0.001), FakeReader(period_s=0.001), live=False, queue_size=2)
    names = None
    if how == "break":
        for result in s:
            if result.frame_index == 3:
                break
    elif how == "close_iterator":
        iterator = iter(s)
        next(iterator)
        iterator.close()
    elif how == "close_stream":
        next(iter(s))
        s.close()
    else:
        for _ in s:
            break
        names = [t.name for t in s.threads]
        del s
    deadline = time.perf_counter() + 1.0
    while names is not None and time.perf_counter() < deadline and any(t.name in names for t in threading.enumerate()):
        time.sleep(0.01)
    assert (alive(s) if names is None else [t.name for t in threading.enumerate() if t.name in names]) == []


def test_unstarted_stream_releases_its_source() -> None:
    reader = FakeReader(n=3)
    s = stream(FakeModel(), reader)
    s.close()
    assert reader.released and s.threads == []
    assert list(s) == []


def test_a_stream_is_iterated_once() -> None:
    s = stream(FakeModel(), FakeReader(n=3), live=False)
    assert len(list(s)) == 3
    with pytest.raises(RuntimeError, match="only once"):
        iter(s)


@pytest.mark.parametrize(
    ("stage", "expected"), [("preprocess", "preprocess"), ("inference", "inference"), ("postprocess", "postprocess")]
)
def test_stage_exception_propagates_with_cause(stage: str, expected: str) -> None:
    s = stream(FakeModel(fail_stage=stage, fail_at=7), FakeReader(n=100), live=False)
    seen = []
    with pytest.raises(StageError, match=f"{expected} stage failed on frame 7") as info:
        for result in s:
            seen.append(result.frame_index)
    assert isinstance(info.value.__cause__, ValueError) and info.value.stage == expected
    assert seen == list(range(7))
    assert alive(s) == []


def test_annotate_exception_and_bad_annotation(tmp_path: Path) -> None:
    def broken(result: Any, frame: np.ndarray) -> np.ndarray:
        raise KeyError("no colours")

    with pytest.raises(StageError, match="annotate stage failed on frame 0") as info:
        list(stream(FakeModel(), FakeReader(n=5), live=False, output=tmp_path / "a.mp4", annotate=broken))
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(StageError, match="BGR uint8 image"):
        list(
            stream(FakeModel(), FakeReader(n=5), live=False, output=tmp_path / "b.mp4", annotate=lambda r, f: f[..., 0])
        )


def test_reader_error_propagates() -> None:
    s = stream(FakeModel(), FakeReader(error_after=4), live=False)
    with pytest.raises(SourceError, match="device unplugged") as info:
        list(s)
    assert isinstance(info.value.__cause__, OSError)
    assert s.stats.frames == 4


def test_file_like_reader_stall_raises_timeout() -> None:
    unstall = threading.Event()
    s = stream(FakeModel(), FakeReader(stall_after=3, unstall=unstall), live=False, read_timeout_s=0.3)
    start = time.perf_counter()
    try:
        with pytest.raises(StreamTimeoutError, match="stalled"):
            list(s)
        assert time.perf_counter() - start < 0.3 + 1.5
        assert s.stats.frames == 3
    finally:
        unstall.set()
    deadline = time.perf_counter() + 2.0
    while alive(s) and time.perf_counter() < deadline:
        time.sleep(0.02)
    assert alive(s) == []


def test_live_stall_reconnects_then_gives_up() -> None:
    unstall = threading.Event()
    opened: list[FakeReader] = []

    def connect() -> FakeReader:
        reader = FakeReader(stall_after=2, unstall=unstall, start=100 * len(opened))
        opened.append(reader)
        return reader

    s = stream(FakeModel(), connect, keep_latest=False, read_timeout_s=0.25, reconnect=2, reconnect_delay_s=0.05)
    start = time.perf_counter()
    seen = []
    try:
        with pytest.raises(StreamTimeoutError, match="gave up after 2 reconnects"):
            for result in s:
                seen.append(result.value)
        assert time.perf_counter() - start < 3 * 0.25 + 2.0
    finally:
        unstall.set()
    assert len(opened) == 3 and s.stats.reconnects == 2
    assert seen == [0.0, 1.0, 100.0, 101.0, 200.0, 201.0]
    assert [t.is_alive() for t in s.threads[:3]] == [False] * 3


def test_live_lost_connection_reconnects_and_continues() -> None:
    opened: list[FakeReader] = []

    def connect() -> FakeReader:
        reader = FakeReader(n=5 if not opened else None, start=100 * len(opened))
        opened.append(reader)
        return reader

    s = stream(FakeModel(), connect, keep_latest=False, reconnect=1, reconnect_delay_s=0.0, max_frames=12)
    values = [r.value for r in s]
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0] + [100.0 + i for i in range(7)]
    assert s.stats.reconnects == 1 and len(opened) == 2
    assert all(r.released for r in opened)
    assert alive(s) == []


def test_live_slow_model_drops_frames_and_keep_latest_false_drops_none() -> None:
    frames, inference_s = 150, 0.025
    s = stream(
        FakeModel(inference_s=inference_s), FakeReader(n=frames, period_s=0.003)
    )  # ~330 fps source, ~40 fps model
    indices = [r.frame_index for r in s]
    stats = s.stats
    assert stats.frames_decoded == frames and stats.dropped > 0
    assert stats.frames + stats.dropped == frames == len(indices) + stats.dropped
    assert indices == sorted(set(indices))  # in order; gaps are the dropped frames

    backlog = stream(
        FakeModel(inference_s=inference_s), FakeReader(n=40, period_s=0.003), keep_latest=False, queue_size=8
    )
    assert len(list(backlog)) == 40 and backlog.stats.dropped == 0


def test_stages_overlap() -> None:
    """decode, infer and finish each sleep ~10 ms: pipelined, their intervals overlap (the speed-up is measured in
    benchmarks/test_bench_stream.py)."""
    n, stage_s = 40, 0.01
    reader = FakeReader(n=n, period_s=stage_s)
    model = FakeModel(inference_s=stage_s, postprocess_s=stage_s)
    s = stream(model, reader, live=False)
    assert len(list(s)) == n

    def overlapped(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
        return any(s0 < e1 and s1 < e0 for s0, e0 in a for s1, e1 in b)

    infers = [(b, e) for name, b, e in model.intervals if name == "inference"]
    finishes = [(b, e) for name, b, e in model.intervals if name == "postprocess"]
    assert overlapped(reader.read_intervals, infers) and overlapped(infers, finishes)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        stream(FakeModel(), FakeReader(n=1), queue_size=0)
    with pytest.raises(ValueError, match="keep_latest"):
        stream(FakeModel(), FakeReader(n=1), live=False, keep_latest=True)
    with pytest.raises(ValueError, match="output_fps"):
        StreamOptions(output_fps=0)
    with pytest.raises(TypeError):
        source_kind(3.5)


def test_options_are_one_frozen_dataclass_and_unknown_names_raise_listing_them() -> None:
    options = StreamOptions(max_frames=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_frames = 4  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"unknown stream option\(s\) max_frame; the options are: live, .*strict"):
        stream(FakeModel(), FakeReader(n=5), max_frame=3)
    s = stream(FakeModel(), FakeReader(n=10), options, live=False)  # keywords override the options object
    assert [r.frame_index for r in s] == [0, 1, 2]
    assert s.options.max_frames == 3 and s.options.live is False and s.options.keep_latest is False
    assert stream(FakeModel(), FakeReader(n=1)).options.keep_latest is True  # decided per source kind


def test_output_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    with pytest.raises(StreamError, match=r"notes\.txt is a file, not a folder"):
        stream(FakeModel(), FakeReader(n=3), output=blocker / "sub" / "out.mp4")
    with pytest.raises(StreamError, match="is a folder: name the video file"):
        stream(FakeModel(), FakeReader(n=3), output=tmp_path)


def test_results_that_draw_themselves_are_drawn_by_default(tmp_path: Path) -> None:
    class Drawn(FakeResult):
        def overlay(self, frame: np.ndarray) -> np.ndarray:
            return 255 - frame

    class DrawingModel(FakeModel):
        def postprocess(self, outputs: dict[str, np.ndarray], context: Any) -> FakeResult:
            return Drawn(super().postprocess(outputs, context).value)

    for name, annotate, expected in (("drawn", None, 255), ("raw", lambda r, f: f, 0)):
        out = tmp_path / f"{name}.mp4"
        list(stream(DrawingModel(), FakeReader(n=3, shape=(64, 64, 3)), live=False, output=out, annotate=annotate))
        ok, first = cv2.VideoCapture(str(out)).read()
        assert ok and abs(float(first.mean()) - expected) < 10  # frame 0 is all zeros; its overlay all 255


@pytest.mark.parametrize("how", ["end", "break"])
def test_summary_is_logged_once(how: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="sdk.stream"):
        for result in stream(FakeModel(), FakeReader(n=5), live=False):
            if how == "break" and result.frame_index == 1:
                break
    summaries = [r for r in caplog.records if "mean ms per stage" in r.getMessage()]
    assert len(summaries) == 1, caplog.text


def test_live_reconnect_that_cannot_reopen_gives_up() -> None:
    calls = []

    def connect() -> FakeReader:
        calls.append(time.perf_counter())
        if len(calls) > 1:
            raise ConnectionRefusedError("camera offline")
        return FakeReader(n=3)

    s = stream(FakeModel(), connect, keep_latest=False, reconnect=2, reconnect_delay_s=0.01)
    with pytest.raises(SourceError, match=r"camera offline.*gave up after 2 reconnects") as info:
        list(s)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert len(calls) == 3 and s.stats.reconnects == 2 and s.stats.frames == 3
    assert alive(s) == []
