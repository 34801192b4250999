"""Temporal stability of label videos: how much labels flicker, and a stabiliser that keeps them still.

``TemporalStability`` measures, frame after frame:

- **flicker on unchanged pixels** (static cameras): of the pixels whose colour moved by less than
  ``UNCHANGED_LEVEL`` (every channel, 0-255) since the previous frame, the share whose label changed; also the
  share of all pixels whose label changed;
- **flow consistency** (moving cameras): the previous labels warped onto this frame by dense optical flow (OpenCV's
  DIS, at half resolution), agreement with this frame's labels where the flow is reliable (forward and backward
  flow agree within ``FLOW_RELIABLE_PX``).

``LabelStabilizer`` is hysteresis on the label map, for models that give labels only (our semantic artifacts
output a uint8 map): a pixel keeps its shown label while its colour stays within ``change_level`` of what it was
when that label was shown; a new label is shown at once where the pixel's colour changed (something moved), and
elsewhere only after the model has given it ``confirm_frames`` frames in a row (the model's steady opinion wins,
its one-frame flips do not). Hysteresis assumes consecutive frames of one continuous shot: a frame on which more
than ``cut_share`` of the pixels moved (a cut, a skip, frames far apart: CamVid's labelled frames, one a second from
a driving car, move 51-69 %; consecutive frames of the shared clips 0-16 %) restarts it from the model's labels.
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


def _changed(a: np.ndarray, b: np.ndarray, level: int) -> np.ndarray:
    """(H, W) bool: a pixel whose colour moved by ``level`` or more in any channel."""
    return cv2.absdiff(a, b).max(axis=2) >= level


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
    _dis: cv2.DISOpticalFlow | None = field(default=None, repr=False)

    def update(self, frame: np.ndarray, labels: np.ndarray) -> None:
        _check(frame, labels)
        grey = (
            cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), None, fx=FLOW_SCALE, fy=FLOW_SCALE)
            if self.flow
            else None
        )
        if self._previous is not None and self._previous[0].shape == frame.shape:
            prev_frame, prev_labels, prev_grey = self._previous
            valid = (labels != self.ignore) & (prev_labels != self.ignore)
            flipped = (labels != prev_labels) & valid
            unchanged = ~_changed(frame, prev_frame, self.unchanged_level) & valid
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
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        backward = self._dis.calc(grey, prev_grey, None)  # current pixel -> where it was
        forward = self._dis.calc(prev_grey, grey, None)
        h, w = grey.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]
        # forward flow at the source point should bring the pixel back where it is
        fwd_at_src = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        error = np.hypot(backward[..., 0] + fwd_at_src[..., 0], backward[..., 1] + fwd_at_src[..., 1])
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        reliable = (error * (1 / FLOW_SCALE) < FLOW_RELIABLE_PX) & inside
        full_h, full_w = prev_labels.shape
        scale_x, scale_y = full_w / w, full_h / h
        big_x = cv2.resize(map_x * scale_x, (full_w, full_h), interpolation=cv2.INTER_LINEAR)
        big_y = cv2.resize(map_y * scale_y, (full_w, full_h), interpolation=cv2.INTER_LINEAR)
        warped = cv2.remap(prev_labels, big_x, big_y, cv2.INTER_NEAREST, borderValue=self.ignore)
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
        self._anchor: np.ndarray | None = None  # each pixel's colour when its shown label was set
        self._candidate: np.ndarray | None = None  # the label the model keeps proposing instead
        self._streak: np.ndarray | None = None  # for how many frames in a row

    def reset(self) -> None:
        self._shown = self._anchor = self._candidate = self._streak = None

    def apply(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        _check(frame, labels)
        moved = None
        if self._shown is not None and self._shown.shape == labels.shape:
            moved = _changed(frame, self._anchor, self.change_level)
            if moved.mean() > self.cut_share:
                self.restarts += 1
                moved = None
        if moved is None:  # the first frame, a new size or a cut: the model's labels as they are
            self._shown, self._anchor = labels.copy(), frame.copy()
            self._candidate, self._streak = labels.copy(), np.zeros(labels.shape, np.uint16)
            return labels.copy()
        same_candidate = labels == self._candidate
        self._streak = np.where(same_candidate, np.minimum(self._streak + 1, 65535), 1).astype(np.uint16)
        self._candidate = labels.copy()
        take = (labels != self._shown) & (moved | (self._streak >= self.confirm_frames))
        self._shown = np.where(take, labels, self._shown)
        self._anchor = np.where((take | moved)[..., None], frame, self._anchor)
        return self._shown.copy()
