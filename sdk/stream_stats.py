"""What a stream did: ``StreamStats`` (a snapshot for the caller) and the thread-safe recorder behind it."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdk.motion import FrameMotion
from sdk.stability import TemporalStability

# the steps of a frame, in order; predict() times the middle three as SegmentationResult.timings["<step>_ms"]
STAGES = ("decode", "preprocess", "inference", "postprocess", "carry", "stabilize", "annotate", "write")
LATENCY_WINDOW = 100_000  # latency percentiles are over the most recent frames


@dataclass
class StreamStats:
    """Counts, throughput, latency (frame decoded -> result ready) and mean ms per stage of one stream."""

    frames: int = 0  # results delivered to the consumer
    frames_decoded: int = 0  # frames read from the source
    frames_in_header: int | None = None  # frames the container declares (files), None when it does not say
    dropped: int = 0  # decoded but never processed (live sources, keep_latest)
    written: int = 0  # frames written to the output video
    reconnects: int = 0
    frames_carried: int = 0  # results whose labels were carried from a model frame by optical flow (carry mode)
    elapsed_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 / p90 / p99 / max
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean ms per stage that ran
    stability: dict[str, Any] | None = None  # sdk.stability.TemporalStability.to_dict() with measure_stability

    @property
    def fps(self) -> float:
        """Results per second over the stream's wall time."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (with ``fps``)."""
        return {
            "frames": self.frames,
            "frames_decoded": self.frames_decoded,
            "frames_in_header": self.frames_in_header,
            "dropped": self.dropped,
            "written": self.written,
            "reconnects": self.reconnects,
            "frames_carried": self.frames_carried,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.fps, 2),
            "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()},
            "stage_ms": {k: round(v, 2) for k, v in self.stage_ms.items()},
            "stability": self.stability,
        }

    def summary(self) -> str:
        """One line for a command line to print at the end."""
        lat = self.latency_ms
        latency = (
            f"latency p50 {lat['p50']:.1f} / p90 {lat['p90']:.1f} / p99 {lat['p99']:.1f} ms" if lat else "latency -"
        )
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items())
        header = f" of {self.frames_in_header} in the header" if self.frames_in_header is not None else ""
        carried = f", {self.frames_carried} carried by flow" if self.frames_carried else ""
        return (
            f"{self.frames} frames ({self.frames_decoded} decoded{header}, {self.dropped} dropped{carried}, "
            f"{self.reconnects} reconnects) in {self.elapsed_s:.2f} s = {self.fps:.1f} fps; {latency}; "
            f"mean ms per stage: {stages or '-'}" + _stability_text(self.stability)
        )


def _stability_text(stability: dict[str, Any] | None) -> str:
    if not stability or stability.get("flicker_unchanged_pct") is None:
        return ""
    flow = stability.get("flow_consistency_pct")
    return (f"; flicker {stability['flicker_unchanged_pct']:.2f} % of unchanged pixels"
            + (f", flow consistency {flow:.2f} %" if flow is not None else ""))  # fmt: skip


class StatsRecorder:
    """Thread-safe accumulation behind ``Stream.stats``: the stage threads add, ``snapshot`` reads."""

    def __init__(self, frames_in_header: int | None = None, stability: TemporalStability | None = None) -> None:
        self._lock = threading.Lock()
        self._stability = stability
        self._sums = dict.fromkeys(STAGES, 0.0)
        self._counts = dict.fromkeys(STAGES, 0)
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.frames = self.decoded = self.written = self.reconnects = self.carried = 0
        self.frames_in_header = frames_in_header
        self.start: float | None = None
        self.end: float | None = None

    def stage(self, name: str, ms: float) -> None:
        with self._lock:
            self._sums[name] += ms
            self._counts[name] += 1

    def measure(self, frame: np.ndarray, labels: np.ndarray, motion: FrameMotion | None = None) -> None:
        """Feed the stability meter (when there is one) a frame and the labels shown for it; ``motion``: the frame's
        flow where the stabiliser computed it (else the meter computes its own)."""
        if self._stability is not None:
            with self._lock:
                self._stability.update(frame, labels, motion)

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
                frames_decoded=self.decoded,
                frames_in_header=self.frames_in_header,
                dropped=dropped,
                written=self.written,
                reconnects=self.reconnects,
                frames_carried=self.carried,
                elapsed_s=elapsed,
                latency_ms=latency,
                stage_ms=stage_ms,
                stability=self._stability.to_dict() if self._stability is not None else None,
            )
