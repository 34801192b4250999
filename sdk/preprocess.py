"""Frames in: validation, conversion to HxWx3 uint8 BGR, and fitting into the artifact's input size (numpy + cv2).

Resize policies (artifact metadata ``input.resize_policy``):

- ``letterbox`` (static input size): scale to fit inside (H, W) keeping the aspect ratio, pad bottom/right with
  the mean colour so the padding normalises to ~0, as the official zero padding after normalisation;
- ``shortest_edge`` (dynamic input size): the official test-time resize, shortest edge to ``min_size`` with the
  long edge at most ``max_size``; the graph pads to a multiple of 32 itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

RESIZE_POLICIES = ("letterbox", "shortest_edge")


class FrameError(ValueError):
    """A frame the SDK cannot turn into a BGR image, with what was wrong."""


# Frames the SDK refuses rather than segment into noise. The model resizes every frame to its input (e.g. 512 px):
# below MIN_FRAME_SIDE a frame is a thumbnail blown up 30x; beyond MAX_ASPECT_RATIO its short side keeps less than
# 1/16 of the input, one or two cells of the model's coarsest (1/32) feature map. Crop or tile such frames first.
MIN_FRAME_SIDE = 16
MAX_ASPECT_RATIO = 16.0


def _dtype_advice(dtype: np.dtype) -> str:
    """How to turn pixels of ``dtype`` into uint8 without saturating them."""
    if dtype == np.uint16:
        return (
            "(frame >> 8).astype(np.uint8) for 16-bit data (e.g. a 16-bit PNG), "
            "cv2.convertScaleAbs(frame, alpha=255 / 4095) for 12-bit data"
        )
    if dtype.kind == "f":
        return (
            "(frame * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1], "
            "frame.clip(0, 255).astype(np.uint8) for floats in [0, 255]"
        )
    if dtype == np.bool_:
        return "frame.astype(np.uint8) * 255"
    return "scale the values into 0..255, then .astype(np.uint8)"


def check_frame(frame: np.ndarray) -> None:
    """Raise FrameError unless ``frame`` is an HxW, HxWx1, HxWx3 or HxWx4 uint8 image the model can segment."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"expected a numpy array (as cv2 gives), got {type(frame).__name__}")
    if frame.ndim not in (2, 3):
        hint = (
            ": a flat buffer is not an image; reshape it to (height, width, channels), or decode encoded bytes "
            "(JPEG/PNG) with cv2.imdecode"
            if frame.ndim == 1
            else ""
        )
        raise FrameError(
            f"expected an image HxW, HxWx1, HxWx3 or HxWx4, got a {frame.ndim}-D array of shape {frame.shape}{hint}"
        )
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        raise FrameError(f"expected 1, 3 or 4 channels (HxW, HxWx1, HxWx3, HxWx4), got shape {frame.shape}")
    if frame.size == 0:
        raise FrameError(f"empty frame of shape {frame.shape} (no pixels)")
    if frame.dtype != np.uint8:
        raise FrameError(f"expected uint8 pixels, got {frame.dtype}: convert first, e.g. {_dtype_advice(frame.dtype)}")
    h, w = frame.shape[:2]
    if min(h, w) < MIN_FRAME_SIDE:
        raise FrameError(f"frame of {w}x{h} px is too small to segment (each side needs at least {MIN_FRAME_SIDE} px)")
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        raise FrameError(
            f"frame of {w}x{h} px is too elongated to segment (aspect ratio {max(h, w) / min(h, w):.0f}:1, at most "
            f"{MAX_ASPECT_RATIO:.0f}:1): crop it, or cut it into tiles and segment each"
        )


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 BGR from a grey (HxW, HxWx1), BGR or BGRA uint8 frame; anything else raises FrameError.

    Frames smaller than MIN_FRAME_SIDE or more elongated than MAX_ASPECT_RATIO are refused too (see above).
    """
    check_frame(frame)
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame)


@dataclass(frozen=True)
class Geometry:
    """How a frame was placed into the model input: the frame's size and the resized region's size."""

    frame_size: tuple[int, int]  # (h, w) of the original frame
    resized_size: tuple[int, int]  # (h, w) of the frame inside the model input (top-left)
    input_size: tuple[int, int]  # (H, W) of the model input


def letterbox(frame: np.ndarray, size: tuple[int, int], pad_bgr: tuple[int, int, int]) -> tuple[np.ndarray, Geometry]:
    """Fit a BGR frame into ``size`` keeping its aspect ratio; pad bottom/right with ``pad_bgr``."""
    h, w = frame.shape[:2]
    H, W = size
    scale = min(H / h, W / w)
    rh, rw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
    resized = frame if (rh, rw) == (h, w) else cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)
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
    resized = frame if (rh, rw) == (h, w) else cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized), Geometry((h, w), (rh, rw), (rh, rw))


def fit_to_input(frame: np.ndarray, input_spec: dict) -> tuple[np.ndarray, Geometry]:
    """A validated BGR frame -> the model input image (H, W, 3) uint8 per the artifact's ``input`` metadata."""
    policy = input_spec.get("resize_policy")
    if policy == "letterbox":
        return letterbox(frame, tuple(input_spec["size"]), tuple(input_spec["pad_bgr"]))
    if policy == "shortest_edge":
        return resize_shortest_edge(frame, int(input_spec["min_size"]), int(input_spec.get("max_size", 0)))
    raise ValueError(f"unknown resize policy {policy!r}; expected one of {RESIZE_POLICIES}")


def labels_to_frame(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(H, W) label map of the model input -> (h, w) of the original frame (crop padding, nearest resize)."""
    rh, rw = geometry.resized_size
    cropped = labels[:rh, :rw]
    h, w = geometry.frame_size
    if (rh, rw) == (h, w):
        return np.ascontiguousarray(cropped)
    return cv2.resize(cropped, (w, h), interpolation=cv2.INTER_NEAREST)
