"""The synthetic clips of ``benchmarks.stream_accuracy`` move the label map exactly as they move the picture."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.stream_accuracy import CAMERA_MOTIONS, camera_path, synthetic_clip
from runtimes.vocabulary import CAMVID_VOID


def _painted(h: int = 90, w: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A picture whose colour says its class: labels 0-3 in blocks, each class painted its own grey."""
    labels = (np.arange(h)[:, None] // 30 * 4 + np.arange(w)[None, :] // 30) % 4
    picture = np.repeat((labels * 60 + 20).astype(np.uint8)[..., None], 3, axis=2)
    return picture, labels.astype(np.uint8)


@pytest.mark.parametrize("case", CAMERA_MOTIONS)
def test_labels_move_with_the_picture(case: str) -> None:
    scene = _painted()
    other = (255 - scene[0], scene[1])  # the cut goes to another picture, its labels the same grid
    frames, labels = synthetic_clip(case, [scene, other], 12)
    assert len(frames) == len(labels) == 12
    for t, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        grey = frame[..., 0].astype(int)
        if case == "cut" and t >= 6:
            grey = 255 - grey
        known = label != CAMVID_VOID
        expected = label[known].astype(int) * 60 + 20
        assert (np.abs(grey[known] - expected) < 25).mean() > 0.97, (case, t)  # away from block edges: noise only
    moved = [not np.allclose(a, camera_path(case, 12, (90, 120))[0]) for a in camera_path(case, 12, (90, 120))]
    assert any(moved) == (case != "still")
