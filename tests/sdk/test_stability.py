"""Temporal stability: the meter sees flicker and motion-consistent labels; the stabiliser removes one-frame flips
on still pixels, takes the model's steady change after ``confirm_frames`` and follows moving pixels at once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sdk.stability import LabelStabilizer, ScoreStabilizer, TemporalStability


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


def test_a_steady_change_is_taken_after_confirm_frames_and_motion_at_once() -> None:
    frame = _scene()
    stabilizer = LabelStabilizer(confirm_frames=3)
    first = np.zeros((96, 128), np.uint8)
    stabilizer.apply(frame, first)
    changed = first.copy()
    changed[:, :64] = 2  # the model changes its mind on the left half, the scene does not move
    shown = [stabilizer.apply(frame, changed)[0, 0] for _ in range(4)]
    assert shown == [0, 0, 2, 2]  # the third frame in a row confirms it
    moved = frame.copy()
    moved[:, 64:] = 255 - moved[:, 64:]  # the right half changes colour: something moved there
    relabelled = changed.copy()
    relabelled[:, 64:] = 5
    assert (stabilizer.apply(moved, relabelled)[:, 64:] == 5).all()  # taken at once


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
    with pytest.raises(ValueError, match=">= 1"):
        LabelStabilizer(confirm_frames=0)


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
    stabilizer = LabelStabilizer(confirm_frames=3)
    stabilizer.apply(_scene(seed=0), np.zeros((96, 128), np.uint8))
    other_shot, labels = _scene(seed=7), np.full((96, 128), 4, np.uint8)
    assert (stabilizer.apply(other_shot, labels) == 4).all() and stabilizer.restarts == 1


# --- score smoothing: a model that wavers between two classes on still pixels ------------------------------------


def _wavering_scores(rng: np.random.Generator, h: int = 24, w: int = 32) -> np.ndarray:
    """(3, h, w) scores: class 1 leads class 0 on the right half by a little, noise larger than the lead."""
    scores = np.zeros((3, h, w), np.float32)
    scores[0], scores[1] = 0.45, 0.40
    scores[1, :, w // 2 :] = 0.50
    scores[:2] += rng.normal(0, 0.08, (2, h, w)).astype(np.float32)
    return scores


def _labels_of(scores: np.ndarray, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    return np.kron(
        scores.argmax(0).astype(np.uint8), np.ones((size[0] // scores.shape[1], size[1] // scores.shape[2]), np.uint8)
    )


def test_smoothed_scores_hold_still_pixels_where_label_hysteresis_cannot() -> None:
    """Near-ties flip the argmax every few frames: label hysteresis lets runs of 3 through, the score average holds
    the class the scores favour over time."""
    frame, rng = _scene(), np.random.default_rng(5)
    raw, labels_only, smoothed = (TemporalStability(flow=False) for _ in range(3))
    label_stabilizer, score_stabilizer, after = LabelStabilizer(), ScoreStabilizer(), LabelStabilizer()
    shown = None
    for _ in range(60):
        scores = _wavering_scores(rng)
        labels = _labels_of(scores)
        raw.update(frame, labels)
        labels_only.update(frame, label_stabilizer.apply(frame, labels))
        shown = after.apply(frame, score_stabilizer.apply(frame, labels, scores))
        smoothed.update(frame, shown)
    assert raw.to_dict()["flicker_unchanged_pct"] > 20.0
    assert smoothed.to_dict()["flicker_unchanged_pct"] < 0.5 * labels_only.to_dict()["flicker_unchanged_pct"]
    assert set(np.unique(shown)) <= {0, 1}  # what the model says, held (a lead under the margin never overturns)
    steady = np.zeros((3, 24, 32), np.float32)
    steady[2] = 0.9  # the model's opinion really changes, the scene does not move: taken within a few frames
    taken = [
        (after.apply(frame, score_stabilizer.apply(frame, _labels_of(steady), steady)) == 2).mean() for _ in range(8)
    ]
    assert taken[0] == 0.0 and taken[-1] == 1.0


def test_score_smoothing_follows_motion_at_once_and_keeps_the_model_edges() -> None:
    frame, stabilizer = _scene(), ScoreStabilizer()
    scores = np.zeros((3, 24, 32), np.float32)
    scores[0] = 0.9
    labels = np.zeros((96, 128), np.uint8)
    labels[40:41, :] = 2  # a one-pixel line the score grid cannot hold: the model's own edge, kept
    assert np.array_equal(stabilizer.apply(frame, labels, scores), labels)
    moved = frame.copy()
    moved[:, 64:] = 255 - moved[:, 64:]
    now = np.zeros_like(scores)
    now[0], now[1, :, 16:] = 0.9, 1.0  # class 1 wins where the picture changed
    relabelled = labels.copy()
    relabelled[:, 64:] = 1
    assert (stabilizer.apply(moved, relabelled, now)[:, 64:] == 1).all()
    with pytest.raises(ValueError, match="floats"):
        stabilizer.apply(frame, labels, np.zeros((24, 32), np.float32))
    with pytest.raises(ValueError, match="weight"):
        ScoreStabilizer(weight=0)


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
