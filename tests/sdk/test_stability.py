"""Temporal stability: the meter sees flicker and motion-consistent labels; the stabiliser removes one-frame flips
on still pixels, takes the model's steady change after a few frames (more, the steadier the label it replaces) and
follows moving pixels at once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sdk.stability import LabelStabilizer, TemporalStability


def _scene(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))  # textured blocks: optical flow has something to track


def test_flicker_on_a_still_scene_is_measured_and_removed() -> None:
    frame, rng = _scene(), np.random.default_rng(1)
    truth = (np.arange(128)[None, :] // 32).repeat(96, axis=0).astype(np.uint8)  # 4 vertical bands
    raw, steady = TemporalStability(flow=False), TemporalStability(flow=False)
    stabilizer = LabelStabilizer()
    for _ in range(20):
        labels = truth.copy()
        flips = rng.random(truth.shape) < 0.05
        labels[flips] = (labels[flips] + 1) % 4  # 5 % of pixels wrong, somewhere else each frame
        raw.update(frame, labels)
        steady.update(frame, stabilizer.apply(frame, labels))
    assert 8.0 < raw.to_dict()["flicker_unchanged_pct"] < 11.0  # a flip in and a flip out: about 2 x 5 %
    assert raw.to_dict()["unchanged_pixels_pct"] == 100.0
    assert steady.to_dict()["flicker_unchanged_pct"] < 0.5


def _frames_to_switch(stabilizer: LabelStabilizer, frame: np.ndarray, labels: np.ndarray) -> int:
    """How many frames of ``labels`` in a row the stabiliser takes to show them at pixel (0, 0)."""
    for n in range(1, 100):
        if stabilizer.apply(frame, labels)[0, 0] == labels[0, 0]:
            return n
    raise AssertionError("never shown")


def test_a_steady_change_is_taken_the_later_the_steadier_the_label_and_motion_at_once() -> None:
    frame = _scene()
    first = np.zeros((96, 128), np.uint8)
    changed = first.copy()
    changed[:, :64] = 2  # the model changes its mind on the left half, the scene does not move
    fresh = LabelStabilizer(weight=0.03, start=0.6)
    fresh.apply(frame, first)
    assert _frames_to_switch(fresh, frame, changed) == 6  # 0.6 x 0.97^6 < 0.5: a new label is not locked in
    steady = LabelStabilizer(weight=0.03, start=0.6)
    for _ in range(40):
        steady.apply(frame, first)  # 40 frames of agreement: support 0.88
    assert _frames_to_switch(steady, frame, changed) == 19
    moved = frame.copy()
    moved[:, 64:] = 255 - moved[:, 64:]  # the right half changes colour: something moved there
    relabelled = changed.copy()
    relabelled[:, 64:] = 5
    assert (steady.apply(moved, relabelled)[:, 64:] == 5).all()  # taken at once


def test_flow_consistency_follows_motion_and_catches_labels_that_do_not() -> None:
    base = _scene(h=128, w=160)
    truth = np.zeros((128, 160), np.uint8)
    truth[32:96, 40:100] = 1
    follows, ignores = TemporalStability(), TemporalStability()
    for t in range(6):
        frame = np.roll(base, 2 * t, axis=1)  # the camera pans 2 px a frame
        follows.update(frame, np.roll(truth, 2 * t, axis=1))  # labels move with the scene
        ignores.update(frame, np.roll(truth, 40 * t, axis=0))  # labels jump on their own
    good, bad = follows.to_dict(), ignores.to_dict()
    assert good["flow_reliable_pct"] > 50.0
    assert good["flow_consistency_pct"] > 97.0
    assert bad["flow_consistency_pct"] < 80.0  # a 40-row jump of a 64x60 box: about 77 % of pixels agree


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        TemporalStability().update(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        LabelStabilizer().apply(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match="weight"):
        LabelStabilizer(weight=0)
    with pytest.raises(ValueError, match="start"):
        LabelStabilizer(start=0.4)


class _FlickeringModel:
    """A stand-in for ``Segmenter`` in ``stream``: semantic results whose labels flip on 5 % of pixels per frame."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(3)

    def preprocess(self, frame: np.ndarray) -> tuple[dict, tuple]:
        return {}, frame.shape[:2]

    def inference(self, inputs: dict) -> dict:
        return inputs

    def postprocess(self, outputs: dict, context: tuple):
        from sdk.results import SegmentationResult

        labels = np.zeros(context, np.uint8)
        labels[self.rng.random(labels.shape) < 0.05] = 1
        return SegmentationResult(task="semantic", class_names=["a", "b"], semantic=labels)


class _StillCamera:
    """40 identical textured frames, then the end."""

    def __init__(self) -> None:
        self.left, self.frame = 40, _scene()

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.left -= 1
        return (self.left >= 0), (self.frame.copy() if self.left >= 0 else None)


@pytest.mark.parametrize("stabilize", [False, True])
def test_stream_stabilizes_and_reports_flicker(stabilize: bool) -> None:
    from sdk.stream import stream

    run = stream(_FlickeringModel(), _StillCamera(), live=False, stabilize=stabilize, measure_stability=True)
    results = list(run)
    stability = run.stats.stability
    assert len(results) == 40 and stability["frames"] == 40
    if stabilize:
        assert stability["flicker_unchanged_pct"] < 0.5 and "stabilize" in run.stats.stage_ms
        assert "flicker" in run.stats.summary()
    else:
        assert stability["flicker_unchanged_pct"] > 8.0


def test_a_cut_restarts_the_stabiliser_from_the_model() -> None:
    stabilizer = LabelStabilizer()
    stabilizer.apply(_scene(seed=0), np.zeros((96, 128), np.uint8))
    other_shot, labels = _scene(seed=7), np.full((96, 128), 4, np.uint8)
    assert (stabilizer.apply(other_shot, labels) == 4).all() and stabilizer.restarts == 1


def test_a_label_the_model_wavers_on_is_held() -> None:
    """The model gives class 1 on 70 % of frames and class 0 on the rest, at random, on still pixels (a near-tie):
    the label shown stays class 1 nearly everywhere, nearly all the time."""
    frame, rng = _scene(), np.random.default_rng(5)
    raw, steady = TemporalStability(flow=False), TemporalStability(flow=False)
    stabilizer, shown = LabelStabilizer(), None
    for _ in range(60):
        labels = (rng.random((96, 128)) < 0.7).astype(np.uint8)
        raw.update(frame, labels)
        shown = stabilizer.apply(frame, labels)
        steady.update(frame, shown)
    assert raw.to_dict()["flicker_unchanged_pct"] > 30.0
    assert steady.to_dict()["flicker_unchanged_pct"] < 3.0 and shown is not None and shown.mean() > 0.97


# --- carry mode: a model run's labels moved to the frames between runs ------------------------------------------


def test_carried_labels_follow_a_panning_camera() -> None:
    from sdk.stability import LabelCarrier

    base = _scene(h=128, w=160)
    truth = np.zeros((128, 160), np.uint8)
    truth[32:96, 40:100] = 1
    carrier = LabelCarrier()
    with pytest.raises(ValueError, match="remember"):
        carrier.carry(base)
    carrier.remember(base, truth, index=0)
    for shift in (3, 6, 9):  # three frames after the model frame, 3 px a frame: flow straight back to frame 0
        carried = carrier.carry(np.roll(base, shift, axis=1))
        inner = (slice(None), slice(12, -12))  # away from the wrapped border
        moved = (carried == np.roll(truth, shift, axis=1))[inner]
        assert moved.mean() > 0.98, shift
        # it moved them: of the 2 x 64 x shift pixels where moved and unmoved boxes differ, most follow the motion
        assert moved.sum() - (carried == truth)[inner].sum() > 64 * shift, shift
    assert carrier.source_index == 0


class _SlowSemanticModel:
    """A semantic model stand-in whose inference takes ``inference_s``; labels: the frame's grey level // 64."""

    def __init__(self, inference_s: float) -> None:
        self.inference_s = inference_s

    def preprocess(self, frame: np.ndarray) -> tuple[dict, np.ndarray]:
        return {}, frame

    def inference(self, inputs: dict) -> dict:
        import time

        time.sleep(self.inference_s)
        return inputs

    def postprocess(self, outputs: dict, context: np.ndarray):
        from sdk.results import SegmentationResult

        labels = (context[..., 0] // 64).astype(np.uint8)
        return SegmentationResult(task="semantic", class_names=list("abcd"), semantic=labels)


class _PacedCamera:
    """A live camera stand-in: ``n`` textured frames released on a ``fps`` clock (a late reader gets the next one
    at once, as a camera's driver buffer would give it)."""

    def __init__(self, n: int, fps: float) -> None:
        import time

        self.n, self.period, self.count, self.start = n, 1.0 / fps, 0, time.perf_counter()
        self.base = _scene(h=64, w=96)

    def read(self) -> tuple[bool, np.ndarray | None]:
        import time

        if self.count >= self.n:
            return False, None
        delay = self.start + self.count * self.period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self.count += 1
        return True, np.roll(self.base, self.count, axis=1)

    def release(self) -> None:
        pass


def test_carry_keeps_a_live_sources_rate_with_bounded_latency() -> None:
    from sdk.stream import stream

    model_s, fps, n = 0.06, 30.0, 60  # the model takes two frame periods
    run = stream(_SlowSemanticModel(model_s), _PacedCamera(n, fps), live=True, carry=True, queue_size=4)
    results = list(run)
    stats = run.stats
    assert [r.frame_index for r in results] == list(range(n))  # every frame, in order, none dropped
    assert stats.dropped == 0 and stats.frames == n
    carried = [r for r in results if r.carried_from is not None]
    assert len(carried) == stats.frames_carried and 0.3 * n < len(carried) < 0.8 * n, len(carried)
    assert all(r.carried_from < r.frame_index and "carry_ms" in r.timings for r in carried)
    model_frames = [r.frame_index for r in results if r.carried_from is None]
    assert max(b - a for a, b in itertools.pairwise(model_frames)) <= 8 + 1  # max_carry
    assert stats.latency_ms["p90"] < 3 * model_s * 1000, stats.latency_ms
    assert "carried by flow" in stats.summary()
    plain = stream(_SlowSemanticModel(model_s), _PacedCamera(n, fps), live=True)
    list(plain)
    assert plain.stats.dropped > 0.3 * n and plain.stats.frames_carried == 0  # without carry: frames dropped


def test_carry_needs_a_live_source_and_semantic_results() -> None:
    from sdk.stream import stream
    from sdk.stream_options import StreamOptions
    from sdk.stream_pipeline import StageError

    with pytest.raises(ValueError, match="file"):
        StreamOptions(carry=True, live=False)

    class Panoptic(_SlowSemanticModel):
        def postprocess(self, outputs: dict, context: np.ndarray):
            from sdk.results import SegmentationResult

            return SegmentationResult(task="panoptic", class_names=["a"], panoptic=np.ones(context.shape[:2], np.int32))

    with pytest.raises(StageError, match="carry moves semantic label maps"):
        list(stream(Panoptic(0.0), _PacedCamera(3, 30.0), live=True, carry=True))


def test_realtime_plays_a_file_on_its_clock() -> None:
    import time

    from sdk.sources import RealTimeReader
    from sdk.stream_options import StreamOptions

    class Frames:
        def __init__(self) -> None:
            self.left = 10

        def read(self) -> tuple[bool, np.ndarray | None]:
            self.left -= 1
            return self.left >= 0, np.zeros((4, 4, 3), np.uint8)

        def get(self, prop: int) -> float:
            return 100.0

    reader = RealTimeReader(Frames(), fps=100.0)
    start = time.perf_counter()
    while reader.read()[0]:
        pass
    assert time.perf_counter() - start >= 0.09  # frame 10 not before 10 / 100 s
    assert reader.get(0) == 100.0
    assert StreamOptions(realtime=True).for_source("file").live is True
    with pytest.raises(ValueError, match="realtime"):
        StreamOptions(realtime=True, live=False)
    with pytest.raises(ValueError, match="fps"):
        RealTimeReader(Frames(), fps=0)
