"""Where a frame goes in the model input: the resize policies and the :class:`Geometry` they record (numpy + cv2).

The one definition of test-time pre-processing geometry. The SDK (``sdk.preprocess``, ``sdk.postprocess``), the
compiler's calibration and accuracy gate (``compile``), the benchmarks and the evaluation
(``train.evaluation.runner``) all place frames with these functions, so the accuracy we report is measured on the
model inputs the SDK ships. A leaf: it imports nothing of this project (and no torch), so every layer may import it.

Resize policies (artifact metadata ``input.resize_policy``):

- ``letterbox`` (static input size): scale to fit inside (H, W) keeping the aspect ratio, pad bottom/right with
  the mean colour so the padding normalises to ~0, as the official zero padding after normalisation;
- ``shortest_edge`` (dynamic input size): the official test-time resize, shortest edge to ``min_size`` with the
  long edge at most ``max_size``; the graph pads to a multiple of 32 itself.

Resizing is OpenCV's bilinear (``INTER_LINEAR``, no antialiasing), channel by channel, so the channel order of the
frame does not matter.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from runtimes.errors import M2FError

RESIZE_POLICIES = ("letterbox", "shortest_edge")


@dataclass(frozen=True)
class Geometry:
    """How a frame was placed into the model input: the frame's size and the resized region's size."""

    frame_size: tuple[int, int]  # (h, w) of the original frame
    resized_size: tuple[int, int]  # (h, w) of the frame inside the model input (top-left)
    input_size: tuple[int, int]  # (H, W) of the model input


MIN_INPUT_SIDE = 32  # the network pads to a multiple of 32; smaller model inputs are refused


class InputSizeError(M2FError, argparse.ArgumentTypeError, ValueError):
    """Not an ``HxW`` model input size (a ``ValueError``; as an argparse ``type``, a usage error with this message)."""


def parse_input_size(text: str) -> tuple[int, int]:
    """``"360x480"`` -> ``(360, 480)``: the one parser of every ``--input-size``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputSizeError(f"expected HxW such as 360x480, got {text!r}") from None
    if h < MIN_INPUT_SIDE or w < MIN_INPUT_SIDE:
        raise InputSizeError(f"input size {h}x{w} is below {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE}")
    return h, w


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) uint8 -> (rh, rw, C) by OpenCV bilinear; the frame itself when the size is unchanged."""
    rh, rw = size
    if (rh, rw) == frame.shape[:2]:
        return frame
    return cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)


def letterbox(frame: np.ndarray, size: tuple[int, int], pad_bgr: tuple[int, int, int]) -> tuple[np.ndarray, Geometry]:
    """Fit an (h, w, 3) uint8 frame into ``size`` keeping its aspect ratio; pad bottom/right with ``pad_bgr``."""
    h, w = frame.shape[:2]
    H, W = size
    scale = min(H / h, W / w)
    rh, rw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
    resized = _resize(frame, (rh, rw))  # (rh, rw, 3)
    if (rh, rw) == (H, W):
        return np.ascontiguousarray(resized), Geometry((h, w), (rh, rw), (H, W))
    canvas = np.empty((H, W, 3), dtype=np.uint8)
    canvas[:] = np.asarray(pad_bgr, dtype=np.uint8)
    canvas[:rh, :rw] = resized
    return canvas, Geometry((h, w), (rh, rw), (H, W))


def resize_shortest_edge(frame: np.ndarray, min_size: int, max_size: int = 0) -> tuple[np.ndarray, Geometry]:
    """Shortest edge to ``min_size``, longest at most ``max_size`` (0: no limit), as the official test resize."""
    h, w = frame.shape[:2]
    scale = min_size / min(h, w)
    if max_size and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _resize(frame, (rh, rw))  # (rh, rw, C)
    return np.ascontiguousarray(resized), Geometry((h, w), (rh, rw), (rh, rw))


def fit_to_input(frame: np.ndarray, input_spec: Mapping[str, Any]) -> tuple[np.ndarray, Geometry]:
    """An (h, w, 3) uint8 frame -> the model input image (H, W, 3) uint8 per the artifact's ``input`` metadata."""
    policy = input_spec.get("resize_policy")
    if policy == "letterbox":
        return letterbox(frame, tuple(input_spec["size"]), tuple(input_spec["pad_bgr"]))
    if policy == "shortest_edge":
        return resize_shortest_edge(frame, int(input_spec["min_size"]), int(input_spec.get("max_size", 0)))
    raise ValueError(f"unknown resize policy {policy!r}; expected one of {RESIZE_POLICIES}")
