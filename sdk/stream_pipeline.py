"""The thread pipeline behind ``sdk.stream.stream``: decode, inference and post-processing joined by small queues.

Three daemon stage threads (decode supervisor, inference, post-processing) and one reader thread per connection.
The decode supervisor watches the reader's blocking ``read()`` for stalls and reconnects live sources; markers
(``End``, ``Failure``) flow through every stage so results and errors reach the consumer in frame order.
``Pipeline.close()`` stops everything with bounded joins. The queues and what flows through them are
``sdk.stream_channel``; the public face is ``sdk.stream.Stream``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from sdk.sources import (
    SourceError,
    StreamError,
    StreamTimeoutError,
    frame_rate,
    frames_in_header,
    readable_frame_after,
    release,
)
from sdk.stability import LabelCarrier, StreamStabilizer, TemporalStability
from sdk.stream_channel import POLL_S, Channel, End, Failure, FrameInFlight, _StoppedError
from sdk.stream_options import HEALTHY_CONNECTION_S, Annotate, StreamOptions
from sdk.stream_stats import StatsRecorder

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 3.0  # close() waits at most this long for all threads together


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

    def preprocess(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], Any]: ...

    def inference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def postprocess(self, outputs: dict[str, np.ndarray], context: Any) -> Any: ...


class ReaderWorker:
    """One connection: a thread that calls the blocking ``read()`` and pushes frames; watched for stalls."""

    def __init__(self, pipeline: Pipeline, reader: Any, name: str) -> None:
        self.pipeline = pipeline
        self.reader = reader
        self.reading_since: float | None = None
        self.outcome = "running"  # -> "end", "max", "error", "stopped"
        self.error: BaseException | None = None
        self.readable_after: int | None = None  # a frame that decodes after a file stopped early
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
                max_frames = p.options.max_frames
                if not p.options.live and max_frames is not None and p.next_index >= max_frames:
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
                    self._probe_rest()
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
            release(self.reader)

    def _probe_rest(self) -> None:
        """A file that ended short of its header's count: does a later frame decode (corrupt in the middle)?"""
        p = self.pipeline
        if p.reopen is None and p.frame_count is not None and p.next_index < p.frame_count:
            self.reading_since = time.perf_counter()  # a probe that hangs is a stall like a read
            self.readable_after = readable_frame_after(self.reader, p.next_index, p.frame_count)
            self.reading_since = None


class Pipeline:
    """The state the stage threads share (the ``Stream`` wrapper holds it, so dropping a Stream closes it)."""

    def __init__(
        self,
        model: StagedModel,
        name: str,
        reader: Any,
        reopen: Callable[[], Any] | None,
        options: StreamOptions,
        output_fps: float,
    ) -> None:
        """``options`` resolved for this source (``live`` and ``keep_latest`` set); ``output_fps`` for the video."""
        self.model, self.name = model, name
        self.first_reader, self.reopen = reader, reopen
        self.options, self.output_fps = options, output_fps
        self.output = Path(options.output) if options.output is not None else None
        self.frame_count = frames_in_header(reader)
        self.source_fps = frame_rate(reader)
        self.stop = threading.Event()
        live = bool(options.live)
        live_size = 1 if live and not options.carry else options.queue_size  # carry: every frame gets a result
        self.frames = Channel(live_size, self.stop, keep_latest=live and bool(options.keep_latest))
        self.inferred = Channel(live_size, self.stop)
        self.results = Channel(live_size, self.stop)
        self.stats = StatsRecorder(self.frame_count, TemporalStability() if options.measure_stability else None)
        self.stabilizer = StreamStabilizer() if options.stabilize else None
        self.carrier = LabelCarrier() if options.carry else None
        self._last_result: Any = None  # carry mode: the last model frame's result
        self.next_index = 0
        self._push_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.workers: list[ReaderWorker] = []
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
            release(self.first_reader)
        if self.stats.start is not None and self.stats.end is None:
            self.stats.end = time.perf_counter()

    # ------------------------------------------------------------------ decode
    def push_frame(self, worker: ReaderWorker, frame: np.ndarray, t_decoded: float, decode_ms: float) -> None:
        with self._push_lock:  # a stalled connection that wakes up late must not push after its replacement
            if worker.abandoned.is_set():
                raise _StoppedError
            item = FrameInFlight(index=self.next_index, frame=frame, t_decoded=t_decoded)
            self.next_index += 1
            self.stats.decoded += 1
            self.stats.stage("decode", decode_ms)
        self.frames.put(item)  # files wait for room; live sources with keep_latest drop the oldest frame

    def _start_worker(self, reader: Any) -> ReaderWorker:
        worker = ReaderWorker(self, reader, f"{self.name}-read{len(self.workers)}")
        self.workers.append(worker)
        worker.thread.start()
        return worker

    def _watch(self, worker: ReaderWorker) -> str:
        """Wait for a connection to end; ``"stall"`` if one read takes longer than the read timeout."""
        while True:
            worker.thread.join(POLL_S)
            if not worker.thread.is_alive():
                return worker.outcome
            if self.stop.is_set():
                return "stopped"
            since = worker.reading_since
            if since is not None and time.perf_counter() - since > self.options.read_timeout_s:
                with self._push_lock:
                    worker.abandoned.set()
                return "stall"

    def _decode(self) -> None:
        try:
            self._decode_loop()
        except _StoppedError:
            pass
        except StreamError as err:
            self.frames.put(Failure(err))
        except BaseException as err:
            self.frames.put(Failure(StageError("decode", None, err)))

    def _decode_loop(self) -> None:
        reader, failures = self.first_reader, 0
        while True:
            worker = self._start_worker(reader)
            outcome = self._watch(worker)
            if outcome == "stopped":
                return
            if outcome == "max":
                self.frames.put(End())
                return
            problem = self._describe(outcome, worker)
            if self.reopen is None:  # files and plain reader objects: the end of the source is the end of the stream
                if outcome == "end":
                    self.frames.put(self._end_of_file(worker))
                else:
                    self.frames.put(Failure(problem))
                return
            if worker.last_frame is not None and worker.last_frame - worker.started >= HEALTHY_CONNECTION_S:
                failures = 0  # it worked for a good while: a new problem gets the full number of reconnects
            reader = None
            while reader is None:
                if failures >= self.options.reconnect:
                    if failures:
                        cause = problem.__cause__
                        problem = type(problem)(f"{problem} (gave up after {failures} reconnects)")
                        problem.__cause__ = cause
                    self.frames.put(Failure(problem))
                    return
                failures += 1
                self.stats.reconnects += 1
                logger.warning(
                    "%s: %s; reconnect %d/%d in %g s",
                    self.name,
                    problem,
                    failures,
                    self.options.reconnect,
                    self.options.reconnect_delay_s,
                )
                if self.stop.wait(self.options.reconnect_delay_s):
                    return
                try:
                    reader = self.reopen()
                except StreamError as err:  # keeps StreamTimeoutError for a URL that no longer opens in time
                    problem = err
                except (OSError, cv2.error) as err:
                    problem = SourceError(f"reconnecting failed: {err}")
                    problem.__cause__ = err

    def _describe(self, outcome: str, worker: ReaderWorker) -> StreamError:
        where = f"after {self.next_index} frames"
        if outcome == "stall":
            return StreamTimeoutError(f"source stalled: no frame within {self.options.read_timeout_s:g} s {where}")
        if outcome == "error":
            error = SourceError(f"reading the source failed {where}: {worker.error}")
            error.__cause__ = worker.error
            return error
        return StreamError(f"source ended or connection lost {where}")

    def _end_of_file(self, worker: ReaderWorker) -> End | Failure:
        """The end of a source that is not reopened: its frames against the header's count (files).

        A source that gave no frame at all is an error, whatever its header says. A file whose later frames decode
        although frame ``got`` did not is corrupt (an error naming the frame); a file that simply ends short of (or
        beyond) its header's count is complete: a warning, or with ``strict`` an error.
        """
        expected, got = self.frame_count, self.next_index
        if got == 0:  # whatever the header says: a source that gives nothing is not a stream of nothing
            says = f" (its header says {expected} frames)" if expected else ""
            return Failure(SourceError(f"not one frame could be decoded from the source{says}: corrupt or not a video"))
        if expected is None or got == expected:
            return End()
        if worker.readable_after is not None:
            return Failure(
                SourceError(
                    f"frame {got} of {expected} cannot be decoded although frame {worker.readable_after} can: "
                    f"the file is corrupt from frame {got}"
                )
            )
        mismatch = f"decoded {got} frames, the container header says {expected}"
        if self.options.strict:
            return Failure(SourceError(f"{mismatch} (strict: any mismatch is an error)"))
        logger.warning(
            "%s: %s; every decodable frame was processed (real-world headers often miscount; strict makes this "
            "an error)",
            self.name,
            mismatch,
        )
        return End()

    # ------------------------------------------------------------------ inference
    def _infer(self) -> None:
        stage, index = "preprocess", None
        since_model: int | None = None  # carry mode: frames carried since the last model run
        try:
            while True:
                item = self.frames.get()
                if not isinstance(item, FrameInFlight):
                    self.inferred.put(item)
                    return
                if self.carrier is not None:
                    # the model takes the newest frame: carry this one while a newer one waits (bounded)
                    if since_model is not None and since_model < self.options.max_carry and self.frames.waiting():
                        item.carried, since_model = True, since_model + 1
                        self.inferred.put(item)
                        continue
                    since_model = 0
                stage, index = "preprocess", item.index
                start = time.perf_counter()
                item.inputs, item.context = self.model.preprocess(item.frame)
                stage, mid = "inference", time.perf_counter()
                item.outputs = self.model.inference(item.inputs)
                end = time.perf_counter()
                item.inputs = None
                item.inference_ms = (end - mid) * 1000
                self.stats.stage("preprocess", (mid - start) * 1000)
                self.stats.stage("inference", item.inference_ms)
                self.inferred.put(item)
        except _StoppedError:
            pass
        except BaseException as err:
            self.inferred.put(Failure(StageError(stage, index, err)))

    # ------------------------------------------------------------------ post-processing
    def _post(self) -> None:
        writer: cv2.VideoWriter | None = None
        stage, index = "postprocess", None
        try:
            while True:
                item = self.inferred.get()
                if not isinstance(item, FrameInFlight):
                    if writer is not None:
                        writer.release()  # the video is complete before the consumer sees the end
                        writer = None
                    self.results.put(item)
                    return
                if item.carried:
                    stage, index = "carry", item.index
                    result, labels = self._carried(item)
                else:
                    stage, index = "postprocess", item.index
                    result, labels = self._postprocessed(item)
                motion = None
                if labels is not None and self.stabilizer is not None:
                    stage = "stabilize"
                    start = time.perf_counter()
                    labels = result.semantic = self.stabilizer.apply(item.frame, labels)
                    motion = self.stabilizer.motion  # the meter reuses its flow
                    self.stats.stage("stabilize", (time.perf_counter() - start) * 1000)
                if labels is not None:
                    self.stats.measure(item.frame, labels, motion)
                if self.output is not None:
                    stage = "annotate"
                    start = time.perf_counter()
                    image = _annotated(self.options.annotate, result, item.frame)
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
                timings = getattr(result, "timings", None)
                if isinstance(timings, dict):
                    timings["latency_ms"] = latency_ms
                self.stats.latency(latency_ms)
                self.results.put(result)
        except _StoppedError:
            pass
        except BaseException as err:
            self.results.put(Failure(StageError(stage, index, err)))
        finally:
            if writer is not None:
                writer.release()

    def _postprocessed(self, item: FrameInFlight) -> tuple[Any, np.ndarray | None]:
        """A model frame's result and its label map (semantic results); remembered for carrying."""
        start = time.perf_counter()
        result = self.model.postprocess(item.outputs, item.context)
        result.frame_index = item.index
        timings = getattr(result, "timings", None)
        if isinstance(timings, dict):
            timings.setdefault("inference_ms", item.inference_ms)
        labels = _label_map(result)
        if self.carrier is not None:
            if labels is None:
                raise ValueError("carry moves semantic label maps: stream a semantic model (or task='semantic')")
            self.carrier.remember(item.frame, labels, item.index)
            self._last_result = result
        self.stats.stage("postprocess", (time.perf_counter() - start) * 1000)
        return result, labels

    def _carried(self, item: FrameInFlight) -> tuple[Any, np.ndarray]:
        """A carried frame's result: the last model result with its labels moved onto this frame by optical flow."""
        assert self.carrier is not None
        start = time.perf_counter()
        labels = self.carrier.carry(item.frame)
        carry_ms = (time.perf_counter() - start) * 1000
        result = dataclasses.replace(self._last_result, semantic=labels, timings={"carry_ms": carry_ms},
                                     frame_index=item.index, carried_from=self.carrier.source_index)  # fmt: skip
        self.stats.carried += 1
        self.stats.stage("carry", carry_ms)
        return result, labels

    def _open_writer(self, shape: tuple[int, ...]) -> cv2.VideoWriter:
        assert self.output is not None
        height, width = shape[:2]
        writer = cv2.VideoWriter(
            str(self.output), cv2.VideoWriter.fourcc(*self.options.fourcc), self.output_fps, (width, height)
        )
        if not writer.isOpened():
            fourcc = self.options.fourcc
            raise StreamError(f"cannot write {self.output} with fourcc {fourcc!r} (codec or folder problem)")
        logger.info(
            "%s: writing %s (%dx%d, %.2f fps, %s)",
            self.name,
            self.output,
            width,
            height,
            self.output_fps,
            self.options.fourcc,
        )
        return writer


def _label_map(result: Any) -> np.ndarray | None:
    """A result's own semantic label map (a semantic task's), else None: derived maps are left alone."""
    if getattr(result, "task", None) != "semantic":
        return None
    labels = getattr(result, "semantic", None)
    return labels if isinstance(labels, np.ndarray) and labels.ndim == 2 else None


def _annotated(annotate: Annotate | None, result: Any, frame: np.ndarray) -> np.ndarray:
    """The image to write: ``annotate(result, frame)``, by default ``result.overlay(frame)`` (else the frame)."""
    if annotate is None:
        overlay = getattr(result, "overlay", None)
        image = overlay(frame) if callable(overlay) else frame
    else:
        image = annotate(result, frame)
    if not isinstance(image, np.ndarray) or image.shape != frame.shape or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"annotate must return a BGR uint8 image of the frame's shape {frame.shape}, got {got}")

    return image
