"""Dense optical flow between a stream's consecutive frames, computed once per frame and shared.

``FlowTracker.update(frame)`` gives a ``FrameMotion``: this frame against the previous one, with the backward flow
(each pixel of this frame -> where it was in the previous one; OpenCV's DIS on grey frames at ``FLOW_SCALE`` of the
frame size) computed once. The stabiliser (``sdk.stability.LabelStabilizer``) moves what it
holds along it (``FrameMotion.warp``) and judges what moved by the colour left over once the previous frame is moved
too (``FrameMotion.changed``); the meter (``sdk.stability.TemporalStability``) checks the labels against the same
flow, adding the forward flow it needs for its reliability test. A pixel whose colour did not change
(under ``STILL_LEVEL``) is taken as still whatever the flow says there: the flow of a uniform surface is a
guess, and DIS spreads a moving car's flow onto the still road beside it, so moving held labels along it there
would make labels flicker where the picture did not change; and while the median flow is under
``CAMERA_STILL_PX`` the camera is taken as still and nothing is moved. A large median flow is not enough for the
stabiliser's edge rule (``FrameMotion.edges``): a vehicle passing a still camera over a uniform road makes the
median flow 8-14 px (DIS spreads it), so the edge rule acts everywhere only while one similarity transform, fitted
with RANSAC on a grid of the same flow, explains ``GLOBAL_SHARE`` of it (``FrameMotion.view_moves``: the whole view
moves, 0.9-1.0 on pan, zoom, shake; 0.5-0.85 on CamVid's driving; at most 0.51 on that vehicle), else only beside
a colour change. Numpy and OpenCV only; one tracker per stream, not thread-safe.
"""

from __future__ import annotations

import cv2
import numpy as np

FLOW_SCALE = 0.5  # optical flow runs at this fraction of the frame size
UNCHANGED_LEVEL = 8  # colour change (max over channels, 0-255) under which a pixel "did not change"
EDGE_PX = 2  # while the camera moves, a held label this close to a held label edge gives way to the model's
STILL_LEVEL = 7  # colour change under which a pixel is held where it is, whatever the flow says there
CAMERA_STILL_PX = 1.0  # median flow (full-resolution px) under which the camera is taken as still: nothing is moved
GLOBAL_SHARE = 0.6  # share of the flow one similarity transform explains, from which the whole view moves as one
GLOBAL_FIT_PX = 2.0  # full-resolution px within which a flow sample agrees with that transform (RANSAC inlier)
GLOBAL_GRID = 8  # the transform is fitted on every 8th flow sample (at FLOW_SCALE) in each direction
CHANGE_REACH_PX = 1  # without such a consensus, the edge rule acts this close to a colour change only


def changed(a: np.ndarray, b: np.ndarray, level: int) -> np.ndarray:
    """(H, W) bool: a pixel whose colour moved by ``level`` or more in any channel."""
    return cv2.absdiff(a, b).max(axis=2) >= level


class FlowWarp:
    """Dense optical flow (OpenCV's DIS) between small grey frames, and arrays moved along it.

    Holds one DIS object: one per stream, not thread-safe. ``preset``: ``cv2.DISOPTICAL_FLOW_PRESET_*``.
    """

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST) -> None:
        self._dis = cv2.DISOpticalFlow_create(preset)

    @staticmethod
    def small_grey(frame: np.ndarray) -> np.ndarray:
        """The grey frame at ``FLOW_SCALE`` of its size: what the flow runs on."""
        return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), None, fx=FLOW_SCALE, fy=FLOW_SCALE)

    def flow(self, grey: np.ndarray, other: np.ndarray) -> np.ndarray:
        """(h, w, 2) float32: for each pixel of ``grey``, the displacement to where it is in ``other``."""
        return self._dis.calc(grey, other, None)

    @staticmethod
    def resized(flow: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        """The flow at ``size`` (H, W) in that size's pixels, resized with pixel centres aligned."""
        h, w = flow.shape[:2]
        height, width = size[:2]
        if (height, width) == (h, w):
            return flow
        big = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
        return big * np.array([width / w, height / h], np.float32)

    @staticmethod
    def maps(flow: np.ndarray, size: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sampling maps (x, y) at ``size`` (H, W; default the flow's own): each pixel's position plus its
        displacement (:meth:`resized`; zero flow: exactly each pixel)."""
        flow = FlowWarp.resized(flow, size or flow.shape)
        ys, xs = np.mgrid[0 : flow.shape[0], 0 : flow.shape[1]].astype(np.float32)
        return xs + flow[..., 0], ys + flow[..., 1]

    @staticmethod
    def warp(labels: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """``labels`` sampled at maps of their own size: the nearest label, the border's off the frame."""
        return cv2.remap(labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


def global_motion(flow: np.ndarray) -> tuple[float, float]:
    """(share of the grid samples of ``flow`` that one similarity transform explains, that transform's median
    displacement over them in full-resolution px): a RANSAC fit, so a passing object cannot set the camera's motion
    unless it fills most of the view."""
    half = GLOBAL_GRID // 2
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[half:h:GLOBAL_GRID, half:w:GLOBAL_GRID].astype(np.float32)
    here = np.stack([xs, ys], -1).reshape(-1, 2)
    there = here + flow[half::GLOBAL_GRID, half::GLOBAL_GRID].reshape(-1, 2)
    model, inliers = cv2.estimateAffinePartial2D(
        here, there, method=cv2.RANSAC, ransacReprojThreshold=GLOBAL_FIT_PX * FLOW_SCALE
    )
    if model is None or inliers is None:
        return 0.0, 0.0
    moved = here @ model[:, :2].T + model[:, 2] - here
    return float(inliers.mean()), float(np.median(np.hypot(moved[:, 0], moved[:, 1]))) / FLOW_SCALE


def _median_px(flow: np.ndarray) -> float:
    """The median length of ``flow`` (at ``FLOW_SCALE``, every 4th pixel) in full-resolution pixels."""
    sample = flow[::4, ::4]
    return float(np.median(np.hypot(sample[..., 0], sample[..., 1]))) / FLOW_SCALE


class FrameMotion:
    """One frame of a stream against the previous one (``FlowTracker.update`` makes it). ``previous`` is None on
    the first frame and after a change of size; ``backward`` is None without flow (a tracker with ``follow=False``):
    then nothing moves, and :meth:`warp` returns what it is given. Nothing moves either while ``camera_moves`` is
    False (the median flow under ``CAMERA_STILL_PX``: the flow of a still camera is noise, 0-0.5 px on the shared
    static clips against 1.5-3.5 px on the dash-cam; moved held labels would flicker where the picture is still)."""

    def __init__(self, frame: np.ndarray, previous: np.ndarray | None, grey: np.ndarray,
                 previous_grey: np.ndarray | None, backward: np.ndarray | None,
                 flow: FlowWarp | None, still_level: int = STILL_LEVEL) -> None:  # fmt: skip
        self.still_level = still_level
        self.frame, self.previous, self.grey, self.previous_grey = frame, previous, grey, previous_grey
        self.backward = backward  # (h, w, 2) at FLOW_SCALE: this frame's pixel -> where it was
        self.camera_moves = backward is not None and _median_px(backward) >= CAMERA_STILL_PX
        self._flow = flow
        self._view_moves: bool | None = None
        self._forward: np.ndarray | None = None
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._changed: dict[tuple[tuple[int, int], int], np.ndarray] = {}
        self._sized: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def frames_at(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(this frame, the previous one) area-resized to ``size``; ValueError on a first frame."""
        if self.previous is None:
            raise ValueError("a first frame has no previous one")
        if size not in self._sized:
            if size == self.frame.shape[:2]:
                self._sized[size] = (self.frame, self.previous)
            else:
                self._sized[size] = tuple(  # type: ignore[assignment]
                    cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in (self.frame, self.previous)
                )
        return self._sized[size]

    def forward(self) -> np.ndarray:
        """(h, w, 2): each pixel of the previous frame -> where it is in this one (computed on first use)."""
        if self._flow is None or self.previous_grey is None:
            raise ValueError("no flow: the first frame, or a tracker made with follow=False")
        if self._forward is None:
            self._forward = self._flow.flow(self.previous_grey, self.grey)
        return self._forward

    def _at(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(map_x, map_y, inside) at ``size``: where each pixel was, and whether that lies in the previous frame."""
        if size not in self._maps:
            assert self.backward is not None
            frame, previous = self.frames_at(size)
            flow = FlowWarp.resized(self.backward, size)
            still = ~changed(frame, previous, self.still_level)  # the colour says still, whatever the flow says
            flow = np.where(still[..., None], np.float32(0), flow)
            map_x, map_y = FlowWarp.maps(flow)
            h, w = size
            inside = (map_x >= -0.5) & (map_x <= w - 0.5) & (map_y >= -0.5) & (map_y <= h - 0.5)
            self._maps[size] = (map_x, map_y, inside)
        return self._maps[size]

    def warp(self, array: np.ndarray, nearest: bool = True) -> np.ndarray:
        """``array`` (H, W) or (H, W, C), of the previous frame, moved onto this one along the flow: the nearest value
        (labels) or bilinear (``nearest=False``: scores, colours); off the previous frame, its nearest border."""
        if not self.camera_moves:
            return array
        map_x, map_y, _ = self._at(array.shape[:2])
        interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.remap(array, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)

    def edges(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) bool: while the camera moves, the pixels within ``EDGE_PX`` (full-resolution) of an edge of
        ``labels`` (a held map moved here): where a flow a pixel off shows the wrong label; else all False."""
        if not self.camera_moves:
            return np.zeros(labels.shape, bool)
        edges = cv2.dilate(labels, self._disc(EDGE_PX, labels)) != cv2.erode(labels, self._disc(EDGE_PX, labels))
        if self.view_moves:
            return edges
        frame, previous = self.frames_at(labels.shape[:2])
        near = cv2.dilate(changed(frame, previous, UNCHANGED_LEVEL).view(np.uint8), self._disc(CHANGE_REACH_PX, labels))
        return edges & (near > 0)

    def _disc(self, px: int, labels: np.ndarray) -> np.ndarray:
        """A square kernel reaching ``px`` full-resolution pixels (at least 1) at the size of ``labels``."""
        reach = max(1, round(px * labels.shape[1] / self.frame.shape[1]))
        return np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)

    @property
    def view_moves(self) -> bool:
        """Whether the camera moves and one similarity transform explains at least ``GLOBAL_SHARE`` of the flow with a
        displacement of ``CAMERA_STILL_PX`` or more (:func:`global_motion`, fitted on first use): a camera pan, zoom or
        shake, not a passing vehicle whose flow DIS spreads over a uniform road."""
        if self._view_moves is None:
            share, px = global_motion(self.backward) if self.camera_moves and self.backward is not None else (0, 0)
            self._view_moves = share >= GLOBAL_SHARE and px >= CAMERA_STILL_PX
        return self._view_moves

    def changed(self, level: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) bool at ``size`` (default the frame's): where the colour differs by ``level`` or more from the
        previous frame moved here along the flow (both frames area-resized to ``size`` first), and where the flow
        comes from outside the previous frame: what the flow does not explain. All True on a first frame."""
        size = size or self.frame.shape[:2]
        key = (size, level)
        if key not in self._changed:
            if self.previous is None:
                self._changed[key] = np.ones(size, bool)
            else:
                frame, previous = self.frames_at(size)
                moved = changed(frame, self.warp(previous, nearest=False), level)
                self._changed[key] = moved | ~self._at(size)[2] if self.camera_moves else moved
        return self._changed[key]


class FlowTracker:
    """A stream's frames in order -> ``FrameMotion`` for each (:meth:`update`), the flow computed once per frame.
    ``follow=False``: no flow (still camera assumed; cheap). One per stream, not thread-safe."""

    def __init__(self, follow: bool = True, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST) -> None:
        self.follow = follow
        self._flow = FlowWarp(preset)
        self._frame: np.ndarray | None = None
        self._grey: np.ndarray | None = None

    def update(self, frame: np.ndarray) -> FrameMotion:
        """This frame against the one given before (copied: the caller may reuse its buffer)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 BGR, got {frame.shape} {frame.dtype}")
        grey = FlowWarp.small_grey(frame)
        previous, previous_grey = self._frame, self._grey
        if previous is not None and previous.shape != frame.shape:
            previous = previous_grey = None  # a new size: a new start
        backward = None
        if self.follow and previous_grey is not None:
            backward = self._flow.flow(grey, previous_grey)
        self._frame, self._grey = frame.copy(), grey
        return FrameMotion(frame, previous, grey, previous_grey, backward, self._flow if self.follow else None)
