"""Small MP4 clips made here with OpenCV, and edits of their container: a header that over-counts its frames
(the tail of the media data cut off) and a file corrupt in the middle (some samples point past the file's end).

OpenCV's FFmpeg writer puts the index (``moov``) after the media data (``mdat``) in one chunk; ``faststart``
moves the index in front (as ``qt-faststart`` does), optionally with one chunk per frame, so that media data can
be cut or chunks redirected while the index stays readable.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

CONTAINERS = {"moov", "trak", "mdia", "minf", "stbl"}  # boxes on the path from moov to the sample tables


def write_clip(path: Path, frames: int, size: tuple[int, int] = (120, 160), fps: float = 25.0) -> Path:
    """An mp4v MP4 of ``frames`` distinct frames (a moving bar and the frame number)."""
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for k in range(frames):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:, (3 * k) % width : (3 * k) % width + 12] = (0, 0, 255)
        cv2.putText(frame, str(k), (8, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
        writer.write(frame)
    writer.release()
    return path


def header_and_decoded(path: Path) -> tuple[int, int]:
    """(frames the container declares, frames OpenCV decodes)."""
    capture = cv2.VideoCapture(str(path))
    declared, decoded = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while capture.grab():
        decoded += 1
    capture.release()
    return declared, decoded


def over_counting_clip(path: Path, frames: int, cut_fraction: float = 0.25) -> Path:
    """A valid MP4 whose header declares ``frames`` but whose last ``cut_fraction`` of media data is missing."""
    data = faststart(write_clip(path, frames).read_bytes())
    path.write_bytes(data[: len(data) - int(len(data) * cut_fraction)])
    return path


def corrupt_middle_clip(path: Path, frames: int, missing: Iterable[int]) -> Path:
    """An MP4 whose frames ``missing`` point past the end of the file; the frames after them are intact."""
    path.write_bytes(faststart(write_clip(path, frames).read_bytes(), chunk_per_frame=True, missing=missing))
    return path


def faststart(data: bytes, chunk_per_frame: bool = False, missing: Iterable[int] = ()) -> bytes:
    """``data`` (ftyp, ..., mdat, moov) rewritten as (ftyp, ..., moov, mdat) with the chunk offsets moved;
    ``missing`` chunks (frames, with ``chunk_per_frame``) point past the end of the file."""
    missing = set(missing)
    top = {kind: (start, header, size) for kind, start, header, size in _boxes(data, 0, len(data))}
    moov, mdat = top["moov"], top["mdat"]
    assert moov[0] > mdat[0], "the index is already in front"
    sample_sizes = _sample_sizes(data, *moov)

    def tables(shift: int):
        def edit(kind: str, payload: bytes) -> bytes:
            if kind == "stsc" and chunk_per_frame:  # version/flags, one entry: from chunk 1, 1 sample, description 1
                return payload[:4] + struct.pack(">IIII", 1, 1, 1, 1)
            if kind != "stco":
                return payload
            (count,) = struct.unpack(">I", payload[4:8])
            offsets = list(struct.unpack(f">{count}I", payload[8 : 8 + 4 * count]))
            if chunk_per_frame:
                offsets = [offsets[0] + sum(sample_sizes[:i]) for i in range(len(sample_sizes))]
            offsets = [1 << 31 if i in missing else offset + shift for i, offset in enumerate(offsets)]
            return payload[:4] + struct.pack(f">I{len(offsets)}I", len(offsets), *offsets)

        return edit

    index = _rebuild(data, *moov, tables(0))
    index = _rebuild(data, *moov, tables(len(index)))  # the media data moves back by the index's size
    return data[: mdat[0]] + index + data[mdat[0] : moov[0]]


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[str, int, int, int]]:
    """(kind, start, header length, size) of each box in ``data[start:end]``."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[i + 8 : i + 16])
            header = 16
        elif size == 0:
            size = end - i
        yield kind.decode("latin-1"), i, header, size
        i += size


def _rebuild(data: bytes, start: int, header: int, size: int, edit) -> bytes:
    kind = data[start + 4 : start + 8].decode("latin-1")
    if kind in CONTAINERS:
        body = b"".join(_rebuild(data, *box[1:], edit) for box in _boxes(data, start + header, start + size))
    else:
        body = edit(kind, data[start + header : start + size])
    return struct.pack(">I4s", 8 + len(body), kind.encode("latin-1")) + body


def _sample_sizes(data: bytes, start: int, header: int, size: int) -> list[int]:
    for kind, child, child_header, child_size in _boxes(data, start + header, start + size):
        if kind in CONTAINERS:
            found = _sample_sizes(data, child, child_header, child_size)
            if found:
                return found
        elif kind == "stsz":
            payload = data[child + child_header : child + child_size]
            uniform, count = struct.unpack(">II", payload[4:12])
            return [uniform] * count if uniform else list(struct.unpack(f">{count}I", payload[12 : 12 + 4 * count]))
    return []
