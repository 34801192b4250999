"""Whether two videos hold the same pixels frame by frame: ``m2f demo`` before and after a refactor.

``python -m benchmarks.video_diff BEFORE.mp4 AFTER.mp4``: the frames each decodes and how many differ.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import cv2
import numpy as np


def video_diff(before: str, after: str) -> dict:
    """Frames decoded from each file and the number of frame pairs whose pixels differ."""
    a, b = cv2.VideoCapture(before), cv2.VideoCapture(after)
    counts, differ = [0, 0], 0
    try:
        while True:
            got_a, frame_a = a.read()
            got_b, frame_b = b.read()
            counts[0] += got_a
            counts[1] += got_b
            if not (got_a and got_b):
                if got_a or got_b:  # the longer file's remaining frames
                    continue
                break
            differ += int(not np.array_equal(frame_a, frame_b))
    finally:
        a.release(), b.release()
    return {"before_frames": counts[0], "after_frames": counts[1], "frames_differ": differ}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args(argv)
    r = video_diff(args.before, args.after)
    print(f"{r['before_frames']} frames before, {r['after_frames']} after, {r['frames_differ']} pairs differ")


if __name__ == "__main__":
    main()
