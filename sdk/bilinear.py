"""Bilinear resizing in numpy with torch's arithmetic: ``F.interpolate(mode="bilinear", align_corners=False)``.

Our own separable code with torch's index/weight arithmetic (float32, width pass then height pass, as
``upsample_bilinear2d`` on CPU); it agrees with torch to 1-2 ulp (2e-6 at |logit| ~ 16). ``cv2.resize``
(INTER_LINEAR) agrees to ~2e-6 at the exact x4 stage but only to ~2e-4 at other scales. Exact x2/x4/x8 upsamples
slice instead of gathering; a crop computes only the rows and columns that survive it. ``sdk.postprocess`` brings
mask logits to the frame with it.
"""

from __future__ import annotations

import numpy as np


def linear_taps(in_size: int, out_size: int, count: int | None = None) -> tuple[np.ndarray, ...]:
    """Source indices and weights of the first ``count`` outputs of a 1-D linear resize, align_corners=False.

    Returns (i0, i1, w0, w1), each (count,): torch's ``area_pixel_compute_source_index`` with a float32 scale and
    one rounding of ``scale * (dst + 0.5) - 0.5`` (torch's build fuses it into an FMA; two float32 roundings give
    weights ~6e-7 off and outputs ~1e-4 off).
    """
    count = out_size if count is None else count
    scale = np.float32(in_size / out_size)  # torch: (float) in / out
    src = ((np.arange(count, dtype=np.float64) + 0.5) * np.float64(scale) - 0.5).astype(np.float32)
    np.maximum(src, np.float32(0), out=src)
    i0 = src.astype(np.int64)  # trunc == floor, src >= 0
    i1 = i0 + (i0 < in_size - 1)
    w1 = src - i0.astype(np.float32)
    w0 = np.float32(1) - w1
    return i0, i1, w0, w1


def _along(axis: int, start: int | None, stop: int | None) -> tuple[slice, ...]:
    """Index tuple selecting ``start:stop`` along ``axis`` (counted from the front)."""
    return (slice(None),) * axis + (slice(start, stop),)


def _upsample_int_axis(x: np.ndarray, axis: int, factor: int, count: int) -> np.ndarray:
    """The first ``count`` outputs of an exact x``factor`` linear upsample along ``axis``, by slicing, no gathers.

    Output ``factor * j + r`` reads source ``j + d_r`` with ``d_r = (2r + 1 - factor) / (2 factor)``: the same
    indices and (exactly representable, for a power-of-two factor) weights as :func:`linear_taps`, with torch's
    clamping at both ends.
    """
    n = x.shape[axis]
    J = min(n, -(-count // factor))  # sources whose outputs are needed
    first, last = x[_along(axis, 0, 1)], x[_along(axis, n - 1, n)]
    padded = np.concatenate([first, x[_along(axis, 0, min(n, J + 1))], last], axis=axis)  # one clamp row each side
    shape = list(x.shape)
    shape[axis : axis + 1] = [J, factor]
    out = np.empty(shape, dtype=np.float32)  # (..., J, factor, ...)
    for r in range(factor):
        d = (2 * r + 1 - factor) / (2 * factor)
        lo = 0 if d < 0 else 1  # padded index of source j - 1 (d < 0) or j (d >= 0), for j = 0
        w1 = np.float32(1 + d if d < 0 else d)
        view = out[(slice(None),) * (axis + 1) + (r,)]  # (..., J, ...)
        np.multiply(padded[_along(axis, lo, lo + J)], np.float32(1) - w1, out=view)
        view += padded[_along(axis, lo + 1, lo + 1 + J)] * w1
        if d < 0:  # output left of source 0: clamped to exactly x[0]
            view[_along(axis, 0, 1)] = first
    out = out.reshape((*x.shape[:axis], J * factor, *x.shape[axis + 1 :]))
    return out[_along(axis, 0, count)]


def resize_axis(x: np.ndarray, axis: int, in_size: int, out_size: int, count: int | None = None) -> np.ndarray:
    """Linear resize of ``x`` along ``axis`` (the first ``count`` outputs); identity when sizes match."""
    count = out_size if count is None else count
    if in_size == out_size:
        return x if count == in_size else x[_along(axis, 0, count)]
    factor = out_size // in_size
    if factor * in_size == out_size and factor in (2, 4, 8):
        return _upsample_int_axis(x, axis, factor, count)
    i0, i1, w0, w1 = linear_taps(in_size, out_size, count)
    shape = [1] * x.ndim
    shape[axis] = -1
    out = np.take(x, i0, axis=axis)
    out *= w0.reshape(shape)
    tmp = np.take(x, i1, axis=axis)
    tmp *= w1.reshape(shape)
    out += tmp
    return out


def resize_bilinear(x: np.ndarray, size: tuple[int, int], crop: tuple[int, int] | None = None) -> np.ndarray:
    """(N, h, w) float32 -> (N, H, W) as ``F.interpolate(mode="bilinear", align_corners=False)``.

    ``crop=(ch, cw)`` returns only the top-left (ch, cw) of the (H, W) result, computing nothing else.
    """
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    H, W = size
    ch, cw = crop if crop is not None else (H, W)
    out = resize_axis(x, x.ndim - 1, w, W, cw)  # (N, h, cw): width first, as torch
    return resize_axis(out, x.ndim - 2, h, H, ch)  # (N, ch, cw)
