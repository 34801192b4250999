"""Temporal stability of label videos: how much labels flicker, and a stabiliser that keeps them still.

``TemporalStability`` measures, frame after frame:

- **flicker on unchanged pixels** (static cameras): of the pixels whose colour moved by less than
  ``UNCHANGED_LEVEL`` (every channel, 0-255) since the previous frame, the share whose label changed; also the
  share of all pixels whose label changed;
- **flow consistency** (moving cameras): the previous labels warped onto this frame by dense optical flow (OpenCV's
  DIS, at half resolution), agreement with this frame's labels where the flow is reliable (forward and backward
  flow agree within ``FLOW_RELIABLE_PX``).

``LabelStabilizer`` is hysteresis on the label map, for models that give labels only (our semantic artifacts
output a uint8 map): a new label is shown at once where the pixel's colour changed since the previous frame by
``change_level`` or more (something moved), and elsewhere only after the model has given it ``confirm_frames``
frames in a row (the model's steady opinion wins, its one-frame flips do not). Motion is judged against the previous
frame, as the flicker meter judges "unchanged": judged against the colour a label was set at, slow drift (noise,
compression, light) let one-frame flips through (car-detection 4.21 % flicker on unchanged pixels that way, 3.25 %
this way; flow consistency 94.06 -> 94.84 %). Hysteresis assumes consecutive frames of one continuous shot: a
frame on which more than ``cut_share`` of the pixels moved (a cut, a skip, frames far apart: CamVid's labelled
frames, one a second from a driving car, move 51-69 %; consecutive frames of the shared clips 0-16 %) restarts it
from the model's labels.
``ScoreStabilizer`` runs before it where the artifact gives per-class scores (``result.class_scores``, semantic
artifacts exported since the score output exists): an exponential moving average of the scores on pixels that did
not move (restarted where they did), the smoothed class changes only when another one beats it by ``margin``, and
a still pixel keeps its label until that decision changes there. On the first 150 frames of two shared clips,
flicker on unchanged pixels, label stabiliser alone -> scores smoothed first (``python -m benchmarks.temporal``,
the packaged default on OpenVINO bf16): one-by-one-person 1.21 -> 0.29 %, car-detection 3.25 -> 1.42 %.
``StreamStabilizer`` (what ``stabilize=True`` runs) chains the two over one ``sdk.motion.FlowTracker``: what they
hold moves along the flow of a moving camera, the flow computed once per frame and shared with the meter; "moved"
then means the colour the flow does not explain (``FrameMotion.changed``), and near a held edge the model's label
is taken (``FrameMotion.edges``). What it costs in accuracy: ``python -m benchmarks.stream_accuracy``.
Numpy and OpenCV only, per stream: not thread-safe, one per stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from runtimes.vocabulary import VOID
from sdk.motion import FLOW_SCALE, UNCHANGED_LEVEL, FlowTracker, FlowWarp, FrameMotion, changed

__all__ = ["FLOW_RELIABLE_PX", "UNCHANGED_LEVEL", "LabelCarrier", "LabelStabilizer", "ScoreStabilizer",
           "StreamStabilizer", "TemporalStability", "changed"]  # fmt: skip

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
    labels. ``follow``: move what it holds along the optical flow (``motion``: the stream's ``FrameMotion``; else
    its own tracker computes it)."""

    def __init__(self, change_level: int = UNCHANGED_LEVEL, confirm_frames: int = 3, cut_share: float = 0.4,
                 follow: bool = True) -> None:  # fmt: skip
        if change_level < 1 or confirm_frames < 1:
            raise ValueError("change_level and confirm_frames must be >= 1")
        if not 0 < cut_share <= 1:
            raise ValueError(f"cut_share must be in (0, 1], got {cut_share}")
        self.change_level, self.confirm_frames, self.cut_share = change_level, confirm_frames, cut_share
        self.follow = follow
        self.restarts = 0  # frames taken as a cut
        self.reset()

    def reset(self) -> None:
        self._shown: np.ndarray | None = None  # labels shown
        self._candidate: np.ndarray | None = None  # the label the model keeps proposing instead
        self._streak: np.ndarray | None = None  # for how many frames in a row
        self._tracker = None

    def apply(self, frame: np.ndarray, labels: np.ndarray, motion: FrameMotion | None = None) -> np.ndarray:
        _check(frame, labels)
        motion = self._motion(frame, motion)
        moved = None
        if self._shown is not None and motion.previous is not None and self._shown.shape == labels.shape:
            moved = motion.changed(self.change_level)
            if moved.mean() > self.cut_share:  # a cut
                moved, self.restarts = None, self.restarts + 1
        if moved is None or self._candidate is None or self._streak is None:  # the first frame, a new size, a cut
            self._shown, self._candidate = labels.copy(), labels.copy()
            self._streak = np.zeros(labels.shape, np.uint16)
            return labels.copy()
        shown, candidate, streak = motion.warp(self._shown), motion.warp(self._candidate), motion.warp(self._streak)
        self._streak = np.where(labels == candidate, np.minimum(streak + 1, 65535), 1).astype(np.uint16)
        self._candidate = labels.copy()
        take = (labels != shown) & (moved | motion.edges(shown) | (self._streak >= self.confirm_frames))
        self._shown = np.where(take, labels, shown)
        return self._shown.copy()


class ScoreStabilizer(_Tracked):
    """Smoothing of a stream's per-class scores (see the module docstring): ``apply(frame, labels, scores, motion)``
    -> labels. ``scores``: (K, h, w) at a reduced size (``result.class_scores``: a quarter of the frame). The average
    decides a class per score pixel; a pixel of the frame that did not move keeps the label it was shown unless
    that decision changed there (the model's full-resolution flips inside a steady decision are not shown); a pixel
    that moved takes the model's label, or the smoothed class where the two decisions differ. ``weight``: of the
    newest frame in the average. ``follow``: what it holds moves along the optical flow (as ``LabelStabilizer``)."""

    def __init__(self, weight: float = 0.15, margin: float = 0.3, change_level: int = UNCHANGED_LEVEL,
                 cut_share: float = 0.4, follow: bool = True) -> None:  # fmt: skip
        if not 0 < weight <= 1 or margin < 0 or change_level < 1 or not 0 < cut_share <= 1:
            raise ValueError("weight must be in (0, 1], margin >= 0, change_level >= 1, cut_share in (0, 1]")
        self.weight, self.margin, self.change_level, self.cut_share = weight, margin, change_level, cut_share
        self.follow = follow
        self.restarts = 0
        self.reset()

    def reset(self) -> None:
        self._average: np.ndarray | None = None  # (h, w, K) smoothed scores
        self._shown: np.ndarray | None = None  # (h, w) the smoothed decision at the score size
        self._output: np.ndarray | None = None  # the labels shown for the previous frame
        self._tracker = None

    def apply(self, frame: np.ndarray, labels: np.ndarray, scores: np.ndarray,
              motion: FrameMotion | None = None) -> np.ndarray:  # fmt: skip
        _check(frame, labels)
        if scores.ndim != 3 or not np.issubdtype(scores.dtype, np.floating):
            raise ValueError(f"scores must be (K, h, w) floats, got {scores.shape} {scores.dtype}")
        motion = self._motion(frame, motion)
        now = np.ascontiguousarray(scores.transpose(1, 2, 0), dtype=np.float32)  # (h, w, K)
        raw = now.argmax(2).astype(np.uint8)
        moved = None
        held = self._output is not None and self._average is not None and motion.previous is not None
        if held and self._output.shape == labels.shape and self._average.shape == now.shape:  # type: ignore[union-attr]
            moved = motion.changed(self.change_level, now.shape[:2])
            if moved.mean() > self.cut_share:  # a cut
                moved, self.restarts = None, self.restarts + 1
        h, w = labels.shape

        def full(plane: np.ndarray) -> np.ndarray:
            return cv2.resize(plane.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)

        if moved is None or self._average is None or self._shown is None or self._output is None:
            self._average, self._shown, output = now, raw, labels.copy()  # first frame, new size or cut: the model's
        else:
            before, average = motion.warp(self._shown), motion.warp(self._average, nearest=False)
            self._average = np.where(moved[..., None], now, self.weight * now + (1 - self.weight) * average)
            current = np.take_along_axis(self._average, before[..., None], 2)[..., 0]
            take = moved | motion.edges(before) | (self._average.max(2) > current + self.margin)
            self._shown = np.where(take, self._average.argmax(2), before).astype(np.uint8)
            candidate = np.where(full(self._shown != raw) > 0, full(self._shown).astype(labels.dtype), labels)
            held = motion.warp(self._output)
            update = (full(self._shown != before) > 0) | motion.changed(self.change_level) | motion.edges(held)
            output = np.where(update, candidate, held)
        self._output = output
        return output.copy()


class StreamStabilizer:
    """What ``stabilize=True`` runs on a stream: one ``FlowTracker`` (the flow once per frame), the score smoothing
    (where a result has class scores) then the label hysteresis, both moving what they hold along that flow.
    ``apply(frame, labels, scores)`` -> shown labels; ``motion`` is the last frame's ``FrameMotion``, for the meter."""

    def __init__(self, follow: bool = True) -> None:
        self.tracker = FlowTracker(follow=follow)
        self.scores, self.labels = ScoreStabilizer(follow=follow), LabelStabilizer(follow=follow)
        self.motion: FrameMotion | None = None

    def apply(self, frame: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        self.motion = motion = self.tracker.update(frame)
        if scores is not None:
            labels = self.scores.apply(frame, labels, scores, motion)
        return self.labels.apply(frame, labels, motion)
