"""pytest-benchmark: the speed goals of ``sdk.stream``'s thread pipeline, with stages that sleep (no model).

    pytest benchmarks/test_bench_stream.py --benchmark-only

Overlap: decode, inference and post-processing each take ~10 ms; pipelined, a frame costs ~10 ms of wall time
instead of ~30 ms serially (goal: > 1.8x). Live latency: a ~330 fps source into a ~40 fps model with
``keep_latest``; frames are dropped instead of queued, so the p90 latency stays near one inference (goal: p90 under
8 inferences, 200 ms; without dropping the last of 150 frames would wait ~3.7 s). The figures go to extra_info.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sdk.stream import stream


class SleepingModel:
    """A StagedModel whose inference / postprocess sleep the given seconds."""

    def __init__(self, inference_s: float, postprocess_s: float = 0.0) -> None:
        self.inference_s, self.postprocess_s = inference_s, postprocess_s

    def preprocess(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        return {"image": frame}, None

    def inference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.inference_s)
        return inputs

    def postprocess(self, outputs: dict[str, np.ndarray], context: Any) -> Any:
        time.sleep(self.postprocess_s)
        return type("Result", (), {"timings": {}, "frame_index": None})()


class PacedReader:
    """``n`` small frames, each read taking ``period_s``."""

    def __init__(self, n: int, period_s: float) -> None:
        self.n, self.period_s, self.count = n, period_s, 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.count >= self.n:
            return False, None
        time.sleep(self.period_s)
        self.count += 1
        return True, np.zeros((24, 32, 3), np.uint8)


def test_three_stages_overlap(benchmark) -> None:
    frames, stage_s = 40, 0.01

    def run() -> float:
        start = time.perf_counter()
        assert len(list(stream(SleepingModel(stage_s, stage_s), PacedReader(frames, stage_s), live=False))) == frames
        return time.perf_counter() - start

    elapsed = benchmark.pedantic(run, rounds=3, iterations=1)
    speedup = frames * 3 * stage_s / elapsed
    benchmark.extra_info["speedup_vs_serial"] = round(speedup, 2)
    assert speedup > 1.8, f"pipelined {elapsed:.3f} s vs serial {frames * 3 * stage_s:.3f} s"


def test_live_latency_stays_bounded_by_dropping(benchmark) -> None:
    frames, inference_s = 150, 0.025

    def run() -> Any:
        s = stream(SleepingModel(inference_s), PacedReader(frames, 0.003))  # a reader: live, keep_latest by default
        for _ in s:
            pass
        return s.stats

    stats = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(latency_p90_ms=round(stats.latency_ms["p90"], 1), dropped=stats.dropped)
    assert stats.dropped > frames // 3
    assert stats.latency_ms["p90"] < 8 * inference_s * 1000, stats.summary()
