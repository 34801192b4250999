"""Motion-compensated hold: what the stabilisers hold moves with a panning camera (along the flow computed once per
frame), so held labels stay on the scene; a still camera's flow noise moves nothing."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.motion import FlowTracker
from sdk.stability import LabelStabilizer, StreamStabilizer, TemporalStability


def _wide_scene(h: int = 128, w: int = 400, seed: int = 3) -> np.ndarray:
    """Textured blocks (something for the flow to track), wider than the view so the camera can pan over it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))


def _panning(frames: int, step: int = 4, view: int = 160) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, true labels) of a camera panning ``step`` px a frame to the right over a scene with a labelled box."""
    scene = _wide_scene()
    truth = np.zeros(scene.shape[:2], np.uint8)
    truth[32:96, 120:200] = 1
    return [(scene[:, t * step : t * step + view].copy(), truth[:, t * step : t * step + view].copy())
            for t in range(frames)]  # fmt: skip


def _wrong_box(labels: np.ndarray) -> np.ndarray:
    """The model's one-frame mistake: a block of class 2 in the background under the labelled box, clear of its
    edges (where the model's label is taken while the camera moves)."""
    wrong = labels.copy()
    wrong[102:124, 20:80] = 2
    return wrong


def test_held_labels_follow_a_panning_camera() -> None:
    """The model is right on every frame but one, where it gives a wrong box; the stabiliser holds the labels it
    showed, moved with the scene: the wrong box is not shown and what is shown stays on the moved scene. Held in
    place instead (no warp), the shown labels would lag the pan by 4 px a frame and the box would come through."""
    stabilizer = StreamStabilizer()
    for t, (frame, truth) in enumerate(_panning(10)):
        labels = _wrong_box(truth) if t == 7 else truth
        shown = stabilizer.apply(frame, labels)
        assert stabilizer.motion is not None
        if t > 0:
            assert stabilizer.motion.camera_moves, t
        inner = (slice(8, -8), slice(8, -8))  # away from where the view brings new scene in
        assert (shown == truth)[inner].mean() > 0.995, t
    assert stabilizer.labels.restarts == 0


def test_without_the_warp_held_labels_lag_the_pan() -> None:
    """The same sequence through a label stabiliser that does not follow: the one-frame mistake comes through, so
    the test above can tell a stabiliser that moves what it holds from one that does not."""
    stabilizer, shown = LabelStabilizer(follow=False), None
    for t, (frame, truth) in enumerate(_panning(8)):
        shown = stabilizer.apply(frame, _wrong_box(truth) if t == 7 else truth)
    assert shown is not None and (shown == 2).mean() > 0.04


def test_a_still_camera_moves_nothing_and_the_meter_shares_the_flow() -> None:
    """Flow noise on a still scene (here: the same frame with sensor noise) moves nothing; the meter given the
    stabiliser's motion measures what it measures with its own tracker."""
    rng = np.random.default_rng(0)
    base = _wide_scene()[:, :160]
    truth = np.zeros(base.shape[:2], np.uint8)
    truth[:, 80:] = 1
    stabilizer, shared, own = StreamStabilizer(), TemporalStability(), TemporalStability()
    for _ in range(6):
        frame = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
        shown = stabilizer.apply(frame, truth)
        assert stabilizer.motion is not None and not stabilizer.motion.camera_moves
        assert np.array_equal(stabilizer.motion.warp(truth), truth)
        shared.update(frame, shown, stabilizer.motion)
        own.update(frame, shown)
    assert shared.to_dict() == own.to_dict()
    with pytest.raises(ValueError, match="motion is of"):
        shared.update(base[:64], truth[:64], FlowTracker().update(base))


def test_near_a_held_edge_the_model_wins_while_the_camera_moves() -> None:
    """A flow a pixel off puts held labels on the wrong side of an edge: while the camera moves, a band of
    ``EDGE_PX`` either side of an edge of the held map is left to the model; a still camera holds everything."""
    from sdk.motion import EDGE_PX

    frames = _panning(2)
    tracker = FlowTracker()
    tracker.update(frames[0][0])
    moving = tracker.update(frames[1][0])
    held = np.zeros((128, 160), np.uint8)
    held[:, 80:] = 1
    band = moving.edges(held)
    assert moving.camera_moves and band[:, 80 - EDGE_PX : 80 + EDGE_PX].all() and band.sum() == 128 * 2 * EDGE_PX
    still = FlowTracker()
    still.update(frames[0][0])
    assert not still.update(frames[0][0]).edges(held).any()


def _spread_flow(h: int = 64, w: int = 80, seed: int = 1) -> np.ndarray:
    """A backward flow (at ``FLOW_SCALE``) like DIS's for a vehicle passing a still camera over a uniform road: the
    vehicle's 12 px on a third of the view, and around it a smeared, uneven flow that fades out; no camera motion."""
    rng = np.random.default_rng(seed)
    flow = np.zeros((h, w, 2), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fade = np.clip(1 - np.hypot(xs - 40, ys - 32) / 40, 0, 1)
    flow[..., 0] = -6 * fade + rng.normal(0, 0.8, (h, w))  # -6 at FLOW_SCALE: 12 full-resolution px
    flow[..., 1] = 2 * fade * np.sin(xs / 5)
    return flow


def test_a_passing_object_is_not_camera_motion() -> None:
    """The median flow of a passing vehicle is large, but no one similarity transform explains most of it (RANSAC on
    the flow grid): the view is not taken as moving, so the edge rule acts only beside a colour change; a pan, a zoom
    and a shake are explained as one motion."""
    from sdk.motion import CAMERA_STILL_PX, FLOW_SCALE, GLOBAL_SHARE, FlowWarp, FrameMotion, global_motion

    spread = _spread_flow()
    share, _ = global_motion(spread)
    assert share < GLOBAL_SHARE
    ys, xs = np.mgrid[0:64, 0:80].astype(np.float32)
    pan = np.stack([np.full_like(xs, -3), np.zeros_like(ys)], -1)
    zoom = np.stack([(xs - 40) * -0.03, (ys - 32) * -0.03], -1)
    shake = np.stack([(ys - 32) * 0.02 + 2, (xs - 40) * -0.02 - 1], -1)
    for flow in (pan, zoom, shake):
        share, px = global_motion(flow.astype(np.float32))
        assert share > 0.95 and px >= CAMERA_STILL_PX
    assert abs(global_motion(pan.astype(np.float32))[1] - 3 / FLOW_SCALE) < 0.01

    previous = np.full((128, 160, 3), 90, np.uint8)
    frame = previous.copy()
    frame[40:90, 60:100] = 200  # the vehicle: the only colour change
    held = np.zeros((128, 160), np.uint8)
    held[:, 20:22] = 1  # a thin lane marking far from it
    held[40:90, 60:100] = 2
    motion = FrameMotion(frame, previous, FlowWarp.small_grey(frame), FlowWarp.small_grey(previous), spread, None)
    assert motion.camera_moves and not motion.view_moves
    band = motion.edges(held)
    assert not band[:, :40].any()  # the marking's edges: the colour did not change there, the label is held
    assert band[39:41, 70].all() and band[60, 59:61].all()  # beside the vehicle's edge: the model's label is shown
