"""Every backend is safe to share between threads: each run() returns the outputs of its own inputs.

OpenVINO runs calls through a pool of infer requests, ONNX Runtime's session is re-entrant, torch holds a lock;
these tests hammer one backend from several threads with different inputs and compare every answer with the
single-thread answer for the same input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runtimes
from tests.runtimes.tiny_artifact import build_tiny_artifact, random_image, reference
from tests.thread_stress import call_concurrently, wrong_answers

THREADS = 8
CALLS = 400
IMAGES = 16


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("threads") / "static.onnx")


def _images() -> list[np.ndarray]:
    images = [random_image(seed=seed) for seed in range(IMAGES)]  # (1, H, W, 3) uint8, all different
    assert len({image.tobytes() for image in images}) == IMAGES
    return images


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return got.keys() == want.keys() and all(np.array_equal(got[name], want[name]) for name in want)


def _stress(backend: runtimes.Backend) -> list[str]:
    images = _images()
    single = [backend.run({"image": image}) for image in images]
    for image, outputs in zip(images, single, strict=True):  # the single-thread answers are right to begin with
        np.testing.assert_array_equal(outputs["labels"], reference(image)["labels"])
    answers = call_concurrently(lambda item: backend.run({"image": images[item]}), IMAGES, CALLS, THREADS)
    assert len(answers) == CALLS
    return wrong_answers(answers, lambda item, outputs: _same(outputs, single[item]))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"name": "onnxruntime"}, id="onnxruntime"),
        pytest.param({"name": "openvino"}, id="openvino-latency"),
        pytest.param({"name": "openvino", "performance_mode": "throughput"}, id="openvino-throughput"),
        pytest.param({"name": "openvino", "num_requests": 3}, id="openvino-3-requests"),
    ],
)
def test_one_backend_shared_by_threads(artifact: Path, options: dict) -> None:
    options = dict(options)
    with runtimes.load_backend(options.pop("name"), artifact, threads=1, **options) as backend:
        wrong = _stress(backend)
    assert not wrong, f"{len(wrong)} of {CALLS} calls went wrong, e.g. {wrong[:3]}"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_backend_shared_by_threads(artifact: Path, device: str) -> None:
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from runtimes.torch_backend import TorchBackend

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([103.5, 116.25, 123.75]))
            self.register_buffer("std", torch.tensor([57.375, 57.125, 58.375]))

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            normalized = (image.float() - self.mean) / self.std  # (1, H, W, 3)
            return normalized, normalized.argmax(dim=3), (normalized.sum(dim=3) > 0).to(torch.uint8)

    metadata = runtimes.read_metadata(artifact)
    names = (["image"], ["normalized", "labels", "mask"])
    with TorchBackend.from_module(Tiny(), metadata, *names, device=device) as backend:
        wrong = _stress(backend)
    assert not wrong, f"{len(wrong)} of {CALLS} calls went wrong, e.g. {wrong[:3]}"


def test_openvino_request_pool_size(artifact: Path) -> None:
    with runtimes.load_backend("openvino", artifact) as backend:  # latency: one request uses every core
        assert backend.performance_mode == "latency"
        assert backend.concurrency == backend._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") == 1
    with runtimes.load_backend("openvino", artifact, performance_mode="THROUGHPUT") as backend:
        assert backend.performance_mode == "throughput"
        assert backend.concurrency == backend._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") >= 1
    with runtimes.load_backend("openvino", artifact, performance_mode="throughput", num_requests=3) as backend:
        assert backend.concurrency == 3
        assert int(backend._compiled.get_property("PERFORMANCE_HINT_NUM_REQUESTS")) == 3
    with pytest.raises(ValueError, match="performance_mode 'fast'; use one of latency, throughput"):
        runtimes.load_backend("openvino", artifact, performance_mode="fast")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_requests must be a positive integer"):
            runtimes.load_backend("openvino", artifact, num_requests=bad)


def test_onnxruntime_and_base_report_one_concurrent_call(artifact: Path) -> None:
    with runtimes.load_backend("onnxruntime", artifact) as backend:
        assert backend.concurrency == 1  # re-entrant, but one session's thread pool already uses every core
