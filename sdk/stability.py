"""Temporal stability of label videos: how much labels flicker, and a stabiliser that keeps them still.

``TemporalStability`` measures, frame after frame:

- **flicker on unchanged pixels** (static cameras): of the pixels whose colour moved by less than
  ``UNCHANGED_LEVEL`` (every channel, 0-255) since the previous frame, the share whose label changed; also the
  share of all pixels whose label changed;
- **flow consistency** (moving cameras): the previous labels warped onto this frame by dense optical flow (OpenCV's
  DIS, at half resolution), agreement with this frame's labels where the flow is reliable (forward and backward
  flow agree within ``FLOW_RELIABLE_PX``).

``LabelStabilizer`` is hysteresis on the label map, decided at full resolution from the labels alone: each pixel
keeps the label it shows while the model keeps giving it often enough (its support, a slow moving average of the
model agreeing, falls under one half only after many disagreeing frames, the fewer the steadier the label was),
and takes the model's label at once where the colour changed since the previous frame (something moved). A label
starts with little support (``start``), so what the first frames showed is not locked in. Hysteresis assumes
consecutive frames of one continuous shot: a frame on which more than ``cut_share`` of the pixels moved (a cut, a
skip, frames far apart: CamVid's labelled frames, one a second from a driving car, move 51-69 %; consecutive
frames of the shared clips 0-16 %) restarts it from the model's labels. It uses no class scores: smoothing the
quarter-resolution scores (the stabiliser before issue 38's second round) cost 0.76 mIoU on a still camera, its
decision overriding the model's full-resolution labels at small classes (sign symbol, pole, pedestrian).
``StreamStabilizer`` (what ``stabilize=True`` runs) drives it with one ``sdk.motion.FlowTracker``: what it holds
moves along the flow of a moving camera, the flow computed once per frame and shared with the meter; "moved" then
means the colour the flow does not explain (``FrameMotion.changed``), and near a held edge the model's label is
taken (``FrameMotion.edges``: everywhere while the whole view moves as one, else only beside a colour change, so a
vehicle passing a still camera does not let the model's flips through all over the frame). What it costs in
accuracy: ``python -m benchmarks.stream_accuracy``.
Numpy and OpenCV only, per stream: not thread-safe, one per stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from runtimes.vocabulary import VOID
from sdk.motion import FLOW_SCALE, UNCHANGED_LEVEL, FlowTracker, FlowWarp, FrameMotion, changed

__all__ = ["FLOW_RELIABLE_PX", "UNCHANGED_LEVEL", "LabelCarrier", "LabelStabilizer", "StreamStabilizer",
           "TemporalStability", "changed"]  # fmt: skip

FLOW_RELIABLE_PX = 1.0  # forward-backward flow disagreement under which a pixel's flow is trusted


def _check(frame: np.ndarray, labels: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be (H, W, 3) uint8 BGR, got {frame.shape} {frame.dtype}")
    if labels.shape != frame.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the frame {frame.shape[:2]}")


class _Tracked:
    """What the stabilisers and the meter share: the frame's ``FrameMotion``, given by the caller (one tracker per
    stream, its flow computed once for all of them) or, when not given, from a tracker of their own."""

    follow: bool = True
    _tracker: FlowTracker | None = None

    def _motion(self, frame: np.ndarray, motion: FrameMotion | None) -> FrameMotion:
        if motion is None:
            if self._tracker is None:
                self._tracker = FlowTracker(follow=self.follow)
            return self._tracker.update(frame)
        if motion.frame.shape != frame.shape:
            raise ValueError(f"motion is of a {motion.frame.shape} frame, not this {frame.shape} one")
        return motion


class LabelCarrier:
    """A model run's labels carried to later frames by optical flow, for live streams that cannot run the model on
    every frame: :meth:`remember` a model frame and its labels, then :meth:`carry` them onto each later frame (the
    flow from that frame straight back to the model frame, so errors do not pile up frame after frame). Pixels
    whose flow leaves the frame take the nearest border label. One per stream, not thread-safe."""

    def __init__(self) -> None:
        self._flow = FlowWarp(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._grey: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self.source_index: int | None = None  # the model frame the labels come from

    def remember(self, frame: np.ndarray, labels: np.ndarray, index: int | None = None) -> None:
        _check(frame, labels)
        self._grey, self._labels, self.source_index = FlowWarp.small_grey(frame), labels.copy(), index

    def carry(self, frame: np.ndarray) -> np.ndarray:
        """The remembered labels moved onto ``frame``; ValueError before the first :meth:`remember`."""
        if self._labels is None or self._grey is None:
            raise ValueError("no model labels to carry yet: remember() a model frame first")
        _check(frame, self._labels)
        grey = FlowWarp.small_grey(frame)
        flow = self._flow.flow(grey, self._grey)
        return FlowWarp.warp(self._labels, *FlowWarp.maps(flow, self._labels.shape))


@dataclass
class TemporalStability(_Tracked):
    """Accumulates flicker and flow consistency over a stream of (frame, labels); ``to_dict()`` for the figures.

    ``flow=False`` skips the optical flow (flicker only: cheap). Pixels with label ``ignore`` (void) count nowhere.
    ``update(frame, labels, motion)``: ``motion`` from the stream's ``FlowTracker`` shares its flow.
    """

    flow: bool = True
    unchanged_level: int = UNCHANGED_LEVEL
    ignore: int = VOID
    frames: int = 0
    _unchanged: int = 0
    _unchanged_flips: int = 0
    _pixels: int = 0
    _flips: int = 0
    _reliable: int = 0
    _agree: int = 0
    _labels: np.ndarray | None = field(default=None, repr=False)  # the previous frame's
    _tracker: FlowTracker | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.follow = self.flow

    def update(self, frame: np.ndarray, labels: np.ndarray, motion: FrameMotion | None = None) -> None:
        _check(frame, labels)
        motion = self._motion(frame, motion)
        prev_labels = self._labels
        if motion.previous is not None and prev_labels is not None and prev_labels.shape == labels.shape:
            valid = (labels != self.ignore) & (prev_labels != self.ignore)
            flipped = (labels != prev_labels) & valid
            unchanged = ~changed(frame, motion.previous, self.unchanged_level) & valid  # the colour as it was
            self._pixels += int(valid.sum())
            self._flips += int(flipped.sum())
            self._unchanged += int(unchanged.sum())
            self._unchanged_flips += int((flipped & unchanged).sum())
            if self.flow:
                warped, reliable = self._warp(motion, prev_labels)
                reliable &= valid & (warped != self.ignore)
                self._reliable += int(reliable.sum())
                self._agree += int(((warped == labels) & reliable).sum())
        self._labels = labels.copy()
        self.frames += 1

    @staticmethod
    def _warp(motion: FrameMotion, prev_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``prev_labels`` moved onto the current frame, and where that move is reliable (full resolution)."""
        backward = motion.backward  # current pixel -> where it was
        if backward is None:
            raise ValueError("flow consistency needs the flow: a FlowTracker made with follow=True")
        forward = motion.forward()
        map_x, map_y = FlowWarp.maps(backward)
        h, w = backward.shape[:2]
        # forward flow at the source point should bring the pixel back where it is
        fwd_at_src = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        error = np.hypot(backward[..., 0] + fwd_at_src[..., 0], backward[..., 1] + fwd_at_src[..., 1])
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        reliable = (error * (1 / FLOW_SCALE) < FLOW_RELIABLE_PX) & inside
        warped = FlowWarp.warp(prev_labels, *FlowWarp.maps(backward, prev_labels.shape))
        full_h, full_w = prev_labels.shape
        reliable = cv2.resize(reliable.astype(np.uint8), (full_w, full_h), interpolation=cv2.INTER_NEAREST) > 0
        return warped, reliable

    def to_dict(self) -> dict[str, float | int | None]:
        """Percentages (None before two frames): flicker on unchanged pixels, on all pixels, flow consistency."""

        def pct(part: int, whole: int) -> float | None:
            return round(100.0 * part / whole, 3) if whole else None

        return {
            "frames": self.frames,
            "flicker_unchanged_pct": pct(self._unchanged_flips, self._unchanged),
            "unchanged_pixels_pct": pct(self._unchanged, self._pixels),
            "flicker_all_pct": pct(self._flips, self._pixels),
            "flow_consistency_pct": pct(self._agree, self._reliable) if self.flow else None,
            "flow_reliable_pct": pct(self._reliable, self._pixels) if self.flow else None,
        }


class LabelStabilizer(_Tracked):
    """Hysteresis on a stream's label maps (see the module docstring); ``apply(frame, labels, motion)`` -> shown
    labels. Each pixel shows a label and its support: a moving average (of weight ``weight``) of whether the model
    gave that label, ``start`` when the label is first shown. The model's label is taken where the support falls
    under one half, where the colour changed by ``change_level`` or more, and, while the camera moves, near a held
    label edge. ``follow``: move what it holds along the optical flow (``motion``: the stream's ``FrameMotion``; else
    its own tracker computes it)."""

    def __init__(self, weight: float = 0.03, start: float = 0.6, change_level: int = UNCHANGED_LEVEL,
                 cut_share: float = 0.4, follow: bool = True) -> None:  # fmt: skip
        if not 0 < weight <= 1 or not 0.5 <= start <= 1 or change_level < 1 or not 0 < cut_share <= 1:
            raise ValueError("weight must be in (0, 1], start in [0.5, 1], change_level >= 1, cut_share in (0, 1]")
        self.weight, self.start, self.change_level, self.cut_share = weight, start, change_level, cut_share
        self.follow = follow
        self.restarts = 0  # frames taken as a cut
        self.reset()

    def reset(self) -> None:
        self._shown: np.ndarray | None = None  # labels shown
        self._support: np.ndarray | None = None  # float32: how steadily the model has given them
        self._tracker = None

    def _restart(self, labels: np.ndarray) -> np.ndarray:
        self._shown, self._support = labels.copy(), np.full(labels.shape, self.start, np.float32)
        return labels.copy()

    def apply(self, frame: np.ndarray, labels: np.ndarray, motion: FrameMotion | None = None) -> np.ndarray:
        _check(frame, labels)
        motion = self._motion(frame, motion)
        if self._shown is None or self._support is None or motion.previous is None or self._shown.shape != labels.shape:
            return self._restart(labels)  # the first frame, a new size
        moved = motion.changed(self.change_level)
        if moved.mean() > self.cut_share:  # a cut
            self.restarts += 1
            return self._restart(labels)
        shown, support = motion.warp(self._shown), motion.warp(self._support, nearest=False)
        agree = labels == shown
        support = np.where(agree, support + self.weight * (1 - support), support * (1 - self.weight))
        take = ~agree & (moved | (support < 0.5) | motion.edges(shown))
        self._shown = np.where(take, labels, shown)
        self._support = np.where(take | moved, np.float32(self.start), support).astype(np.float32)
        return self._shown.copy()


class StreamStabilizer:
    """What ``stabilize=True`` runs on a stream: one ``FlowTracker`` (the flow once per frame) and the label
    hysteresis, what it holds moved along that flow. ``apply(frame, labels)`` -> shown labels; ``motion`` is the last
    frame's ``FrameMotion``, for the meter."""

    def __init__(self, follow: bool = True) -> None:
        self.tracker = FlowTracker(follow=follow)
        self.labels = LabelStabilizer(follow=follow)
        self.motion: FrameMotion | None = None

    def apply(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self.motion = motion = self.tracker.update(frame)
        return self.labels.apply(frame, labels, motion)
