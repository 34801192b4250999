"""One Segmenter shared by threads and streams: every result is the single-thread result for its own frame.

Runs the packaged default model (int8) on real CamVid val frames (generated street-like frames with distinct
content when the data is absent); the tiny-artifact stress per backend is tests/runtimes/test_backend_threads.py.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk.model_registry import MODELS_DIR
from sdk.preprocess import FrameError
from sdk.segmenter import Segmenter
from tests.conftest import data_root
from tests.thread_stress import call_concurrently, wrong_answers

CAMVID_VAL = data_root() / "camvid" / "val"
THREADS = 4
CALLS = 200
RUNTIMES = ["openvino", "onnxruntime"]

pytestmark = pytest.mark.skipif(
    not (MODELS_DIR / "default_int8.onnx").exists(), reason="no packaged default_int8.onnx in this build"
)


def street_frames(count: int, offset: int = 0) -> list[np.ndarray]:
    """``count`` different 360x480 BGR frames: CamVid val frames spread over the split, else generated ones."""
    paths = sorted(CAMVID_VAL.glob("*.png"))
    if len(paths) >= 2 * count:
        step = len(paths) // (2 * count)
        return [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in paths[offset * step :: 2 * step][:count]]
    frames = []
    for seed in range(offset, offset + count):
        rng = np.random.default_rng(seed)
        frame = np.empty((360, 480, 3), np.uint8)
        horizon = int(rng.integers(100, 220))
        frame[:horizon] = (rng.integers(150, 256), rng.integers(100, 200), rng.integers(60, 140))  # sky
        frame[horizon:] = rng.integers(60, 130)  # road
        for _ in range(int(rng.integers(2, 6))):  # buildings, cars
            y, x = int(rng.integers(40, 300)), int(rng.integers(0, 420))
            h, w = int(rng.integers(30, 150)), int(rng.integers(30, 200))
            cv2.rectangle(frame, (x, y), (x + w, y + h), rng.integers(0, 256, 3).tolist(), -1)
        frames.append(frame)
    return frames


def single_thread_labels(seg: Segmenter, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Each frame's label map from one-at-a-time predict(); a mix-up must be visible, so all must differ."""
    labels = [seg.predict(frame).semantic for frame in frames]
    same = [(i, j) for i in range(len(labels)) for j in range(i) if np.array_equal(labels[i], labels[j])]
    assert not same, f"frames {same} give identical label maps: a mix-up between them would go unnoticed"
    return labels


@pytest.fixture(scope="module", params=RUNTIMES)
def segmenter(request: pytest.FixtureRequest) -> Segmenter:
    with Segmenter(request.param, precision="int8") as seg:
        yield seg


@pytest.mark.slow
def test_default_model_shared_by_threads(segmenter: Segmenter) -> None:
    frames = street_frames(8)
    labels = single_thread_labels(segmenter, frames)
    answers = call_concurrently(lambda item: segmenter.predict(frames[item]).semantic, len(frames), CALLS, THREADS)
    assert len(answers) == CALLS
    wrong = wrong_answers(answers, lambda item, got: np.array_equal(got, labels[item]))
    assert not wrong, f"{segmenter.runtime}: {len(wrong)} of {CALLS} calls went wrong, e.g. {wrong[:3]}"


@pytest.mark.parametrize("options", [{}, {"performance_mode": "throughput"}, {"num_requests": 3}])
def test_predict_batch_keeps_input_order(options: dict) -> None:
    frames = street_frames(6)
    frames[1] = cv2.resize(frames[1], (240, 180))  # each frame keeps its own size
    with Segmenter("openvino", precision="int8", **options) as seg:
        assert seg.backend.concurrency == options.get("num_requests", seg.backend.concurrency)
        labels = single_thread_labels(seg, frames)
        results = seg.predict_batch(iter(frames))
    assert [r.semantic.shape for r in results] == [f.shape[:2] for f in frames]
    for index, (result, want) in enumerate(zip(results, labels, strict=True)):
        assert np.array_equal(result.semantic, want), f"predict_batch result {index} is not its frame's"


def test_predict_batch_empty_and_bad_frame() -> None:
    with Segmenter("openvino", precision="int8", num_requests=2) as seg:
        assert seg.predict_batch([]) == []
        frames = street_frames(3)
        with pytest.raises(FrameError, match="empty"):
            seg.predict_batch([frames[0], np.zeros((0, 4, 3), np.uint8), frames[1]])


def write_clip(path: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Write ``frames`` as an MJPG video; return the frames as OpenCV decodes them back."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    capture.release()
    assert len(decoded) == len(frames)
    return decoded


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[np.ndarray]]]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        name: (folder / f"{name}.avi", write_clip(folder / f"{name}.avi", street_frames(5, offset)))
        for name, offset in (("a", 0), ("b", 1))
    }


@pytest.mark.slow
def test_predict_inside_a_stream_loop(segmenter: Segmenter, clips: dict) -> None:
    clip, decoded = clips["a"]
    stream_labels = single_thread_labels(segmenter, decoded)
    others = clips["b"][1]
    other_labels = single_thread_labels(segmenter, others)
    seen = []
    for result in segmenter.stream(clip, annotate=None, stabilize=False):
        seen.append(result.frame_index)
        assert np.array_equal(result.semantic, stream_labels[result.frame_index]), f"stream {result.frame_index}"
        other = result.frame_index % len(others)
        assert np.array_equal(segmenter.predict(others[other]).semantic, other_labels[other]), f"predict {other}"
    assert seen == list(range(len(decoded)))


@pytest.mark.slow
def test_two_streams_on_one_segmenter(segmenter: Segmenter, clips: dict) -> None:
    labels = {name: single_thread_labels(segmenter, decoded) for name, (_, decoded) in clips.items()}
    streams = {name: segmenter.stream(clip, annotate=None, stabilize=False) for name, (clip, _) in clips.items()}
    count = 0
    for result_a, result_b in zip(streams["a"], streams["b"], strict=True):
        for name, result in (("a", result_a), ("b", result_b)):
            assert np.array_equal(result.semantic, labels[name][result.frame_index]), f"{name} {result.frame_index}"
        count += 1
    assert count == len(clips["a"][1])
