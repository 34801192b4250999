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
Numpy and OpenCV only, per stream: not thread-safe, one per stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from runtimes.vocabulary import VOID

UNCHANGED_LEVEL = 8  # colour change (max over channels, 0-255) under which a pixel "did not change"
FLOW_RELIABLE_PX = 1.0  # forward-backward flow disagreement under which a pixel's flow is trusted
FLOW_SCALE = 0.5  # optical flow runs at this fraction of the frame size


def _check(frame: np.ndarray, labels: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be (H, W, 3) uint8 BGR, got {frame.shape} {frame.dtype}")
    if labels.shape != frame.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the frame {frame.shape[:2]}")


def changed(a: np.ndarray, b: np.ndarray, level: int) -> np.ndarray:
    """(H, W) bool: a pixel whose colour moved by ``level`` or more in any channel."""
    return cv2.absdiff(a, b).max(axis=2) >= level


def _motion(frame: np.ndarray, previous: np.ndarray, level: int, cut_share: float) -> np.ndarray | None:
    """What moved since ``previous`` (see :func:`changed`), or None when more than ``cut_share`` did: a cut."""
    moved = changed(frame, previous, level)
    return None if moved.mean() > cut_share else moved


class FlowWarp:
    """Dense optical flow (OpenCV's DIS) between small grey frames, and label maps moved along it.

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
    def maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sampling maps (x, y) at the flow's size: each pixel's position plus its displacement."""
        h, w = flow.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        return xs + flow[..., 0], ys + flow[..., 1]

    @staticmethod
    def warp(labels: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """``labels`` (full size) sampled at the small maps scaled up: the nearest label, the border's off the frame."""
        full_h, full_w = labels.shape
        h, w = map_x.shape
        big_x = cv2.resize(map_x * (full_w / w), (full_w, full_h), interpolation=cv2.INTER_LINEAR)
        big_y = cv2.resize(map_y * (full_h / h), (full_w, full_h), interpolation=cv2.INTER_LINEAR)
        return cv2.remap(labels, big_x, big_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


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
        map_x, map_y = FlowWarp.maps(self._flow.flow(grey, self._grey))
        return FlowWarp.warp(self._labels, map_x, map_y)


@dataclass
class TemporalStability:
    """Accumulates flicker and flow consistency over a stream of (frame, labels); ``to_dict()`` for the figures.

    ``flow=False`` skips the optical flow (flicker only: cheap). Pixels with label ``ignore`` (void) count nowhere.
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
    _previous: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)
    _flow: FlowWarp | None = field(default=None, repr=False)

    def update(self, frame: np.ndarray, labels: np.ndarray) -> None:
        _check(frame, labels)
        grey = FlowWarp.small_grey(frame) if self.flow else None
        if self._previous is not None and self._previous[0].shape == frame.shape:
            prev_frame, prev_labels, prev_grey = self._previous
            valid = (labels != self.ignore) & (prev_labels != self.ignore)
            flipped = (labels != prev_labels) & valid
            unchanged = ~changed(frame, prev_frame, self.unchanged_level) & valid
            self._pixels += int(valid.sum())
            self._flips += int(flipped.sum())
            self._unchanged += int(unchanged.sum())
            self._unchanged_flips += int((flipped & unchanged).sum())
            if self.flow:
                warped, reliable = self._warp(prev_grey, grey, prev_labels)
                reliable &= valid & (warped != self.ignore)
                self._reliable += int(reliable.sum())
                self._agree += int(((warped == labels) & reliable).sum())
        self._previous = (frame.copy(), labels.copy(), grey)
        self.frames += 1

    def _warp(self, prev_grey: np.ndarray, grey: np.ndarray, prev_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``prev_labels`` moved onto the current frame, and where that move is reliable (full resolution)."""
        if self._flow is None:
            self._flow = FlowWarp()
        backward = self._flow.flow(grey, prev_grey)  # current pixel -> where it was
        forward = self._flow.flow(prev_grey, grey)
        map_x, map_y = FlowWarp.maps(backward)
        h, w = grey.shape
        # forward flow at the source point should bring the pixel back where it is
        fwd_at_src = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        error = np.hypot(backward[..., 0] + fwd_at_src[..., 0], backward[..., 1] + fwd_at_src[..., 1])
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        reliable = (error * (1 / FLOW_SCALE) < FLOW_RELIABLE_PX) & inside
        warped = FlowWarp.warp(prev_labels, map_x, map_y)
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


class LabelStabilizer:
    """Hysteresis on a stream's label maps (see the module docstring); ``apply(frame, labels)`` -> shown labels."""

    def __init__(self, change_level: int = UNCHANGED_LEVEL, confirm_frames: int = 3, cut_share: float = 0.4) -> None:
        if change_level < 1 or confirm_frames < 1:
            raise ValueError("change_level and confirm_frames must be >= 1")
        if not 0 < cut_share <= 1:
            raise ValueError(f"cut_share must be in (0, 1], got {cut_share}")
        self.change_level, self.confirm_frames, self.cut_share = change_level, confirm_frames, cut_share
        self.restarts = 0  # frames taken as a cut
        self._shown: np.ndarray | None = None  # labels shown
        self._previous: np.ndarray | None = None  # the previous frame
        self._candidate: np.ndarray | None = None  # the label the model keeps proposing instead
        self._streak: np.ndarray | None = None  # for how many frames in a row

    def reset(self) -> None:
        self._shown = self._previous = self._candidate = self._streak = None

    def apply(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        _check(frame, labels)
        moved = None
        if self._shown is not None and self._previous is not None and self._shown.shape == labels.shape:
            moved = _motion(frame, self._previous, self.change_level, self.cut_share)
            self.restarts += int(moved is None)  # a cut
        if moved is None:  # the first frame, a new size or a cut: the model's labels as they are
            self._shown, self._previous = labels.copy(), frame.copy()
            self._candidate, self._streak = labels.copy(), np.zeros(labels.shape, np.uint16)
            return labels.copy()
        same_candidate = labels == self._candidate
        self._streak = np.where(same_candidate, np.minimum(self._streak + 1, 65535), 1).astype(np.uint16)
        self._candidate = labels.copy()
        take = (labels != self._shown) & (moved | (self._streak >= self.confirm_frames))
        self._shown = np.where(take, labels, self._shown)
        self._previous = frame.copy()
        return self._shown.copy()


class ScoreStabilizer:
    """Smoothing of a stream's per-class scores (see the module docstring): ``apply(frame, labels, scores)`` ->
    labels. ``scores``: (K, h, w) at a reduced size (``result.class_scores``: a quarter of the frame). The average
    decides a class per score pixel; a pixel of the frame that did not move keeps the label it was shown unless
    that decision changed there (the model's full-resolution flips inside a steady decision are not shown); a pixel
    that moved takes the model's label, or the smoothed class where the two decisions differ. ``weight``: of the
    newest frame in the average."""

    def __init__(self, weight: float = 0.15, margin: float = 0.2, change_level: int = UNCHANGED_LEVEL,
                 cut_share: float = 0.4) -> None:  # fmt: skip
        if not 0 < weight <= 1 or margin < 0 or change_level < 1 or not 0 < cut_share <= 1:
            raise ValueError("weight must be in (0, 1], margin >= 0, change_level >= 1, cut_share in (0, 1]")
        self.weight, self.margin, self.change_level, self.cut_share = weight, margin, change_level, cut_share
        self.restarts = 0
        self.reset()

    def reset(self) -> None:
        self._average: np.ndarray | None = None  # (K, h, w) smoothed scores
        self._shown: np.ndarray | None = None  # (h, w) the smoothed decision at the score size
        self._small: np.ndarray | None = None  # the previous frame at the score size
        self._frame: np.ndarray | None = None  # the previous frame
        self._output: np.ndarray | None = None  # the labels shown for it

    def apply(self, frame: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        _check(frame, labels)
        if scores.ndim != 3 or not np.issubdtype(scores.dtype, np.floating):
            raise ValueError(f"scores must be (K, h, w) floats, got {scores.shape} {scores.dtype}")
        small = cv2.resize(frame, (scores.shape[2], scores.shape[1]), interpolation=cv2.INTER_AREA)
        raw = scores.argmax(0)
        moved = None
        same_shapes = self._output is not None and self._output.shape == labels.shape
        if same_shapes and self._average is not None and self._average.shape == scores.shape:
            moved = _motion(small, self._small, self.change_level, self.cut_share)
            self.restarts += int(moved is None)  # a cut
        h, w = labels.shape

        def full(plane: np.ndarray) -> np.ndarray:
            return cv2.resize(plane.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)

        if moved is None:  # the first frame, a new size or a cut: the model's labels as they are
            self._average, self._shown, output = scores.astype(np.float32), raw, labels.copy()
        else:
            before = self._shown
            self._average = np.where(moved[None], scores, self.weight * scores + (1 - self.weight) * self._average)
            current = np.take_along_axis(self._average, before[None], 0)[0]
            take = moved | (self._average.max(0) > current + self.margin)
            self._shown = np.where(take, self._average.argmax(0), before)
            override = self._shown != raw
            candidate = np.where(full(override) > 0, full(self._shown).astype(labels.dtype), labels)
            update = (full(self._shown != before) > 0) | changed(frame, self._frame, self.change_level)
            output = np.where(update, candidate, self._output)
        self._small, self._frame, self._output = small, frame.copy(), output
        return output.copy()
