"""A small archive for the batch tests (tests/sdk/test_batch*.py): videos whose frames carry their own numbers
(tests/sdk/clips.py), one whose header over-counts its frames, one that is not a video at all, one corrupt in the
middle, a still image and a torn one; and the checks every batch test makes of a destination."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from sdk.batch_manifest import MANIFEST_DIR, TEMP_MARK, read_json
from sdk.batch_outputs import png_bytes
from sdk.segmenter import Segmenter
from tests.sdk.clips import corrupt_middle_clip, header_and_decoded, over_counting_clip, write_clip

DEFAULT_MODEL = {"target": "cpu", "threads": 1}  # the packaged model: its labels differ from frame to frame


def make_archive(root: Path, frames: int = 20, corrupt_middle: bool = False) -> dict[str, tuple[str, int]]:
    """Write the archive under ``root``; {path relative to root: (status expected, frames expected)}."""
    (root / "day2").mkdir(parents=True)
    write_clip(root / "street.mp4", frames)
    over = over_counting_clip(root / "day2" / "over.mp4", 16)
    declared, decoded = header_and_decoded(over)
    assert declared == 16 and 0 < decoded < 16, (declared, decoded)  # the header over-counts
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x20ftypisom" + bytes(range(256)) * 8)
    still = np.zeros((90, 120, 3), np.uint8)
    cv2.rectangle(still, (10, 20), (70, 80), (40, 200, 90), -1)
    cv2.imwrite(str(root / "day2" / "still.png"), still)
    _, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    (root / "torn.png").write_bytes(png.tobytes()[: len(png) // 3])  # its header says 120x90, its data stops
    expected = {
        "street.mp4": ("done", frames),
        "day2/over.mp4": ("done", decoded),
        "broken.mp4": ("failed", 0),
        "day2/still.png": ("done", 1),
        "torn.png": ("failed", 0),
    }
    if corrupt_middle:  # 20 frames decode, 20 to 25 do not, later ones do again (a seek can reach 56 on)
        corrupt_middle_clip(root / "day2" / "mid.mp4", 60, range(20, 26))
        expected["day2/mid.mp4"] = ("failed", None)
    return expected


def summary_rows(out: Path) -> dict[str, dict[str, str]]:
    """``OUT/summary.csv`` by input path."""
    with (out / "summary.csv").open() as handle:
        return {row["input"]: row for row in csv.DictReader(handle)}


def check_destination(out: Path, root: Path, expected: dict[str, tuple[str, int]]) -> dict[str, dict[str, str]]:
    """Every input a row with the status and frames expected; every frame of a done input written exactly once
    (label files named 0 .. n-1 and nothing else, each a whole PNG); no temporary file left counted as done."""
    rows = summary_rows(out)
    assert set(rows) == {str(root / name) for name in expected}, sorted(rows)
    for name, (status, frames) in expected.items():
        row = rows[str(root / name)]
        assert row["status"] == status, row
        if status == "failed":
            assert row["note"], row  # the reason
            continue
        assert int(row["frames"]) == frames, row
        labels = out / row["output"] / "labels"
        assert sorted(p.name for p in labels.iterdir() if TEMP_MARK not in p.name) == [
            f"{k:06d}.png" for k in range(frames)
        ]
        for path in labels.iterdir():
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
    return rows


def one_stream_labels(seg: Segmenter, path: Path) -> list[bytes]:
    """The label PNG of every frame of a video as one stream through the model, in order (the reference)."""
    return [png_bytes(result.semantic) for result in seg.stream(path, stabilize=False)]


def unit_records(out: Path, folder_key: str) -> dict[int, dict]:
    """An input's unit records by start frame (``folder_key``: the input's record key)."""
    folder = out / MANIFEST_DIR / "units" / folder_key
    return {int(p.stem): read_json(p) for p in folder.glob("*.json")}


def destination_files(out: Path) -> dict[str, bytes]:
    """Every output file under ``out`` (not the manifest, not the summary, no temporary file), by relative path."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and MANIFEST_DIR not in p.parts and p.stem != "summary" and TEMP_MARK not in p.name
    }
