"""Frame validation (sdk.preprocess.check_frame / as_bgr): what is refused, with a message that says why and how."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.preprocess import MAX_ASPECT_RATIO, MIN_FRAME_SIDE, FrameError, as_bgr


def test_a_flat_array_is_named_as_such_not_empty():
    with pytest.raises(FrameError, match=r"1-D array of shape \(5000,\).*reshape.*cv2\.imdecode") as caught:
        as_bgr(np.zeros(5000, np.uint8))
    assert "empty" not in str(caught.value)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros((0, 10, 3), np.uint8), r"empty frame of shape \(0, 10, 3\)"),
        (np.zeros((2, 20, 20, 3), np.uint8), r"4-D array"),
        (np.zeros((20, 20, 2), np.uint8), r"1, 3 or 4 channels"),
        (np.zeros((), np.uint8), r"0-D array"),
    ],
)
def test_shapes_that_are_not_images(frame, match):
    with pytest.raises(FrameError, match=match):
        as_bgr(frame)


def test_uint16_advice_keeps_the_full_range():
    frame = np.full((32, 32, 3), 40000, np.uint16)
    with pytest.raises(FrameError, match=r"uint16.*\(frame >> 8\)\.astype\(np\.uint8\)") as caught:
        as_bgr(frame)
    assert "convertScaleAbs(frame)" not in str(caught.value)  # alpha 1 saturates every value above 255
    assert as_bgr((frame >> 8).astype(np.uint8)).max() == 40000 >> 8  # the advice, followed, is accepted


def test_float_advice_scales_unit_range():
    with pytest.raises(FrameError, match=r"float32.*\(frame \* 255\)\.clip\(0, 255\)"):
        as_bgr(np.full((32, 32, 3), 0.5, np.float32))


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 5000), (MIN_FRAME_SIDE - 1, 200), (200, MIN_FRAME_SIDE - 1)])
def test_too_small_frames_are_refused(h, w):
    with pytest.raises(FrameError, match=rf"{w}x{h} px is too small.*at least {MIN_FRAME_SIDE} px"):
        as_bgr(np.zeros((h, w, 3), np.uint8))


@pytest.mark.parametrize(("h", "w"), [(20, 5000), (5000, 20), (MIN_FRAME_SIDE, MIN_FRAME_SIDE * 17)])
def test_extreme_aspect_ratios_are_refused(h, w):
    with pytest.raises(FrameError, match=r"too elongated.*crop it, or cut it into tiles"):
        as_bgr(np.zeros((h, w), np.uint8))


@pytest.mark.parametrize(
    ("h", "w"),
    [(MIN_FRAME_SIDE, MIN_FRAME_SIDE), (MIN_FRAME_SIDE, int(MIN_FRAME_SIDE * MAX_ASPECT_RATIO)), (720, 1280)],
)
def test_frames_at_the_limits_are_accepted(h, w):
    assert as_bgr(np.zeros((h, w, 4), np.uint8)).shape == (h, w, 3)
