"""The pixel limit: image sizes read from headers, refused before decoding; the same limit for arrays handed to
``predict`` and for stream sources; post-processing memory a small multiple of the frame's own bytes.

The time and memory of ``m2f predict`` on a 30000x30000 image are measured in ``benchmarks.frame_memory``; the
allocations here are counted by tracemalloc, which is deterministic.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

import sdk
from runtimes import images
from runtimes.images import DEFAULT_MAX_PIXELS, FrameError, check_image_file, header_size, read_image
from sdk import results
from tests.conftest import REPO_ROOT
from tests.runtimes.tiny_artifact import build_tiny_artifact
from tests.sdk.clips import write_clip

SIZE = (37, 53)  # (h, w): odd, and different, so a swapped width and height shows


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pam", ".jp2"])
@pytest.mark.parametrize("channels", [1, 3])
def test_header_size_of_every_format_opencv_writes(tmp_path: Path, suffix: str, channels: int) -> None:
    shape = SIZE if channels == 1 else (*SIZE, 3)
    path = tmp_path / f"x{suffix}"
    if not cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)):
        pytest.skip(f"this OpenCV does not write {suffix}")
    assert header_size(path.read_bytes()[:65536]) == (SIZE[1], SIZE[0])
    assert read_image(path).shape == (*SIZE, 3)


def test_header_size_of_hand_made_headers() -> None:
    """Layouts OpenCV does not write: BigTIFF, an OS/2 bitmap, a top-down BMP, lossless and extended WebP."""
    import struct

    big_tiff = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2)
    big_tiff += struct.pack("<HHQQ", 256, 16, 1, 70000) + struct.pack("<HHQQ", 257, 4, 1, 50000)
    assert header_size(big_tiff) == (70000, 50000)
    assert header_size(b"BM" + b"\x00" * 12 + struct.pack("<IHH", 12, 640, 480)) == (640, 480)
    assert header_size(b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, 640, -480)) == (640, 480)
    lossless = b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f" + struct.pack("<I", (639) | (479 << 14))
    assert header_size(lossless) == (640, 480)
    extended = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (639).to_bytes(3, "little") + (479).to_bytes(3, "little")
    assert header_size(extended) == (640, 480)
    assert header_size(b"P6\n# a comment\n640 480\n255\n") == (640, 480)
    assert header_size(b"not an image at all") is None


def test_a_huge_image_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.png"
    cv2.imwrite(str(path), np.zeros((200, 300), np.uint8))

    def never(*args: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(images.cv2, "imdecode", never)
    with pytest.raises(FrameError, match=r"300x200 px .* over the limit of 0\.05 megapixels.*max_pixels="):
        read_image(path, max_pixels=50_000)
    assert check_image_file(path, max_pixels=60_000) == (300, 200)


def test_an_unknown_format_or_an_oversized_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"GIF9 not really")
    with pytest.raises(FrameError, match="size can be read before decoding"):
        read_image(tmp_path / "x.png")
    bmp = tmp_path / "liar.bmp"  # a header of 10x10 px in front of 10 MB
    cv2.imwrite(str(bmp), np.zeros((10, 10, 3), np.uint8))
    bmp.write_bytes(bmp.read_bytes() + b"\x00" * 10_000_000)
    with pytest.raises(FrameError, match="larger than any image of 100 pixels"):
        read_image(bmp, max_pixels=100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def test_the_segmenter_refuses_frames_over_its_limit(tiny: Path) -> None:
    frame = np.zeros((100, 120, 3), np.uint8)
    with (
        sdk.Segmenter("onnxruntime", model=tiny, max_pixels=10_000) as seg,
        pytest.raises(sdk.FrameError, match=r"120x100 px .* max_pixels="),
    ):
        seg.predict(frame)
    with sdk.Segmenter("onnxruntime", model=tiny, max_pixels=None) as seg:
        assert seg.predict(frame).semantic.shape == (100, 120)
    assert sdk.Segmenter("onnxruntime", model=tiny).max_pixels == DEFAULT_MAX_PIXELS
    for wrong in (0, -5, 2.5, True, "40e6"):
        with pytest.raises(ValueError, match="max_pixels must be a positive int or None"):
            sdk.Segmenter("onnxruntime", model=tiny, max_pixels=wrong)


def test_stream_sources_over_the_limit_are_refused_when_opened(tiny: Path, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=3, size=(120, 160))
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), np.zeros((120, 160, 3), np.uint8))
    with sdk.Segmenter("onnxruntime", model=tiny, max_pixels=10_000) as seg:
        for source in (clip, image):
            with pytest.raises(sdk.FrameError, match=r"160x120 px"):
                seg.stream(source)
    with sdk.Segmenter("onnxruntime", model=tiny, max_pixels=20_000) as seg:
        assert sum(1 for _ in seg.stream(clip)) == 3


def _m2f(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sdk.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_m2f_predict_refuses_from_the_header_without_loading_a_model(tmp_path: Path, tiny: Path) -> None:
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((100, 200), np.uint8))
    start = time.perf_counter()
    done = _m2f("predict", "big.png", "--max-pixels", "1e4", "--model", str(tiny), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "200x100 px" in done.stderr and "--max-pixels" in done.stderr and "no model loaded" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.perf_counter() - start < 60  # no model was loaded: far under; the bound only catches a hang
    ok = _m2f("predict", "big.png", "--max-pixels", "none", "--model", str(tiny), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = _m2f("predict", "big.png", "--max-pixels", "lots", cwd=tmp_path)
    assert bad.returncode == 2 and "expected a positive number of pixels or 'none'" in bad.stderr


def test_predict_allocates_a_fraction_of_the_frame(tmp_path: Path) -> None:
    """The packaged model on a 12-megapixel frame: labels (1 byte a pixel) and nothing of the frame's size beside
    them; class scores are resized only when asked for; the histogram counts in bands."""
    frame = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    with sdk.Segmenter("cpu") as seg:
        seg.predict(frame[:300, :400])  # warm: the engine's own first-run allocations are not the frame's
        tracemalloc.start()
        try:
            result = seg.predict(frame)
            result.class_histogram()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 0.6 * frame.nbytes, f"{peak / frame.nbytes:.2f}x the frame"
    assert result.class_scores.shape[1:] == (750, 1000)  # computed now, on first access


def test_the_banded_overlay_and_histogram_equal_whole_frame_ones(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = np.random.default_rng(1).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    with sdk.Segmenter("onnxruntime", model=tiny) as seg:
        result = seg.predict(frame)
    whole, counts = result.overlay(frame), result.class_histogram()
    monkeypatch.setattr(results, "_BAND_PIXELS", 500)  # bands of 3 rows
    np.testing.assert_array_equal(result.overlay(frame), whole)
    assert result.class_histogram() == counts
    labels = np.asarray(result.semantic)
    expected = np.bincount(labels.ravel().astype(np.int64), minlength=256)
    for typed in (labels.astype(np.uint8), labels.astype(np.int32)):  # OpenCV's histogram, bincount
        counts = results._label_counts(typed)
        np.testing.assert_array_equal(np.pad(counts, (0, 256 - len(counts))), expected)
