"""Frames in: validation and conversion to HxWx3 uint8 BGR (numpy + cv2).

Placing a frame into the model input (resize policies, :class:`Geometry`) is ``runtimes.geometry``, the one
definition the evaluation, the compiler's gate and the benchmarks share with the SDK; its names are re-exported here.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtimes.geometry import RESIZE_POLICIES, Geometry, fit_to_input, letterbox, resize_shortest_edge
from runtimes.images import DEFAULT_MAX_PIXELS, FrameError, check_pixels

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT_RATIO",
    "MIN_FRAME_SIDE",
    "RESIZE_POLICIES",
    "FrameError",
    "Geometry",
    "as_bgr",
    "check_frame",
    "fit_to_input",
    "letterbox",
    "resize_shortest_edge",
]


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


def check_frame(frame: np.ndarray, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Raise FrameError unless ``frame`` is an HxW, HxWx1, HxWx3 or HxWx4 uint8 image the model can segment, of at
    most ``max_pixels`` pixels (None: no limit; the post-processing allocates at the frame's size)."""
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
    check_pixels(w, h, max_pixels, "frame")
    if min(h, w) < MIN_FRAME_SIDE:
        raise FrameError(f"frame of {w}x{h} px is too small to segment (each side needs at least {MIN_FRAME_SIDE} px)")
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        raise FrameError(
            f"frame of {w}x{h} px is too elongated to segment (aspect ratio {max(h, w) / min(h, w):.0f}:1, at most "
            f"{MAX_ASPECT_RATIO:.0f}:1): crop it, or cut it into tiles and segment each"
        )


def as_bgr(frame: np.ndarray, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 BGR from a grey (HxW, HxWx1), BGR or BGRA uint8 frame; anything else raises FrameError.

    Frames smaller than MIN_FRAME_SIDE, more elongated than MAX_ASPECT_RATIO or larger than ``max_pixels`` are
    refused too (see above).
    """
    check_frame(frame, max_pixels)
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame)
