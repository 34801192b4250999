"""The bounded queues between the stream's stages (``sdk.stream_pipeline``) and what flows through them: frames in
flight (:class:`FrameInFlight`) and the markers :class:`End` and :class:`Failure`, which keep results and errors in
frame order. A blocked ``put`` or ``get`` looks at the stream's stop flag every ``2 * POLL_S`` seconds.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

POLL_S = 0.05  # how often blocked threads look at the stop flag / the supervisor looks for stalls


class _StoppedError(Exception):
    """Raised inside a stage thread when the stream is being closed (control flow of the stream modules only: it
    never reaches a user)."""


@dataclass
class End:
    """End of stream marker, flows through every stage."""


@dataclass
class Failure:
    """An error that flows downstream to the consumer in frame order."""

    error: BaseException


@dataclass(slots=True)
class FrameInFlight:
    """One frame on its way through the stages, with what each stage made of it."""

    index: int
    frame: np.ndarray
    t_decoded: float
    inputs: dict[str, np.ndarray] | None = None
    context: Any = None
    outputs: dict[str, np.ndarray] | None = None
    inference_ms: float = 0.0
    carried: bool = False  # carry mode: no model run, labels moved here from the last model frame


class Channel:
    """A bounded FIFO between two stages. With ``keep_latest`` a full channel drops its oldest frame instead of
    blocking the producer; markers (End, Failure) are never dropped and never wait for room."""

    def __init__(self, maxsize: int, stop: threading.Event, keep_latest: bool = False) -> None:
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._maxsize = max(1, maxsize)
        self._stop = stop
        self._keep_latest = keep_latest
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if isinstance(item, FrameInFlight):
                while len(self._items) >= self._maxsize:
                    if self._keep_latest and isinstance(self._items[0], FrameInFlight):
                        self._items.popleft()
                        self.dropped += 1
                        continue
                    if self._stop.is_set():
                        raise _StoppedError
                    self._cond.wait(POLL_S * 2)
            self._items.append(item)
            self._cond.notify_all()

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                if self._stop.is_set():
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

    def waiting(self) -> int:
        """Frames queued now."""
        with self._cond:
            return sum(isinstance(item, FrameInFlight) for item in self._items)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
