"""How to stream: ``StreamOptions``, the one definition ``sdk.stream``, ``sdk.stream_pipeline``, ``Segmenter.stream``,
``m2f stream`` and ``m2f demo`` read. A leaf of the streaming code: it imports none of the other stream modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdk.cli_fields import replaced

HEALTHY_CONNECTION_S = 30.0  # a connection that delivered frames this long resets the reconnect count

Annotate = Callable[[Any, np.ndarray], np.ndarray]  # (result, frame) -> the frame to write


@dataclass(frozen=True)
class StreamOptions:
    """How to stream; one definition for ``stream()``, ``Segmenter.stream``, ``m2f stream`` and ``m2f demo``.

    ``live``: default False for files, True otherwise. ``keep_latest`` (live only, default True): process the newest
    frame and drop the rest. ``queue_size``: frames buffered between stages (files; live sources buffer one).
    ``read_timeout_s``: a read that takes longer is a stall; live sources then reconnect up to ``reconnect`` times
    (``reconnect_delay_s`` apart; the count starts again after a connection that worked for
    ``HEALTHY_CONNECTION_S``), files fail. ``open_timeout_s``: for URLs. ``max_frames``: stop after that many
    results. ``output``: write each processed frame to this video (``fourcc``, at ``output_fps`` or the source's
    fps; live sources write only the frames not dropped), drawn by ``annotate(result, frame)``; default
    ``result.overlay(frame)`` when results have one (a ``SegmentationResult`` does), else the frame as decoded.
    ``strict``: a file whose decoded frame count differs from its header's is an error instead of a warning.
    ``stabilize``: against flicker, semantic results only: hysteresis on the label maps
    (``sdk.stability.LabelStabilizer``), what it holds moved along the optical flow of a moving camera
    (``sdk.stability.StreamStabilizer``; its time per frame is ``stats.stage_ms["stabilize"]``); other results pass
    unchanged. Default (None): on for files (within 0.1 mIoU on every case of ``benchmarks.stream_accuracy``,
    flicker on unchanged pixels of the shared static clips under 0.5 %), off for live sources, where its time per
    frame (6-56 ms on 2 cores) drops frames a 30 fps camera sends (``benchmarks.live``); True or False forces it.
    ``carry`` (live sources, semantic results): every frame gets a result at the source's
    rate; the model runs on the newest frame whenever it is free (so on every k-th frame, k set by the model's time
    and the frame rate, at most ``max_carry`` frames apart while frames wait), and the frames in between get its
    labels moved along optical flow (``sdk.stability.LabelCarrier``; ``result.carried_from`` names the model frame,
    ``stats.frames_carried`` counts them). ``realtime`` (files): release the frames on the file's own frame-rate
    clock, as a camera would, and stream them as a live source (a live camera simulated from a file).
    ``measure_stability``: flicker and optical-flow consistency in ``stats.stability``
    (``sdk.stability.TemporalStability``; costs a dense optical flow per frame).
    """

    live: bool | None = None
    keep_latest: bool | None = None
    queue_size: int = 4
    read_timeout_s: float = 5.0
    open_timeout_s: float = 10.0
    reconnect: int = 3
    reconnect_delay_s: float = 1.0
    max_frames: int | None = None
    output: str | Path | None = None
    annotate: Annotate | None = None
    output_fps: float | None = None
    fourcc: str = "mp4v"
    strict: bool = False
    stabilize: bool | None = None
    measure_stability: bool = False
    carry: bool = False
    max_carry: int = 8
    realtime: bool = False

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.read_timeout_s <= 0 or self.open_timeout_s <= 0:
            raise ValueError("read_timeout_s and open_timeout_s must be > 0")
        if self.reconnect < 0 or self.reconnect_delay_s < 0:
            raise ValueError("reconnect and reconnect_delay_s must be >= 0")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.output_fps is not None and self.output_fps <= 0:
            raise ValueError(f"output_fps must be > 0, got {self.output_fps}")
        if len(self.fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters, got {self.fourcc!r}")
        if self.keep_latest and self.live is False:
            raise ValueError("keep_latest drops frames and is only for live sources (live=True)")
        if self.carry and self.live is False:
            raise ValueError("carry skips model runs to keep a live source's rate; a file (live=False) runs them all")
        if self.realtime and self.live is False:
            raise ValueError("realtime plays a file as a live camera: it cannot be combined with live=False")
        if self.max_carry < 1:
            raise ValueError(f"max_carry must be >= 1, got {self.max_carry}")

    @classmethod
    def of(cls, options: StreamOptions | None = None, **overrides: Any) -> StreamOptions:
        """``options`` (default: the defaults) with ``overrides``; an unknown name raises listing the known ones."""
        return replaced(cls, options, overrides, "stream")

    def for_source(self, kind: str) -> StreamOptions:
        """These options with ``live``, ``keep_latest`` and ``stabilize`` decided for a source of this kind
        (``source_kind``)."""
        live = (kind != "file" or self.realtime) if self.live is None else self.live
        return dataclasses.replace(
            self,
            live=live,
            keep_latest=live if self.keep_latest is None else self.keep_latest,
            stabilize=not live if self.stabilize is None else self.stabilize,
        )
