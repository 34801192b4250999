"""The torch backend on the CPU: options, autocast precision, the run lock, from_module over the deployable model.

The CUDA paths (CUDA graphs, fp16/bf16 on the GPU) are in tests/gpu/test_torch_cuda.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtimes.base import BackendInputError, DeviceNotAvailable  # noqa: E402
from runtimes.torch_backend import TORCH_OPTIONS, TorchBackend  # noqa: E402
from tests.runtimes.deployable import deployable, tiny_checkpoint  # noqa: E402
from tests.runtimes.tiny_artifact import HEIGHT, WIDTH, tiny_metadata  # noqa: E402


class Scale(torch.nn.Module):
    """image uint8 (1, H, W, 3) -> "normalized" (a Linear over channels), "labels" (argmax), "mask"; records the
    dtype its Linear computed in and how many calls overlapped."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.delay_s = delay_s
        self.seen_dtypes: list[torch.dtype] = []
        self.active = 0
        self.max_active = 0
        self._count = threading.Lock()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay_s)  # a window in which an unlocked second caller would enter
        y = self.linear(image.float() / 255.0)  # (1, H, W, 3)
        self.seen_dtypes.append(y.dtype)
        with self._count:
            self.active -= 1
        return {"normalized": y, "labels": y.argmax(dim=3), "mask": (y.sum(dim=3) > 0).to(torch.uint8)}


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, HEIGHT, WIDTH, 3), dtype=np.uint8)


def test_defaults_report_what_runs() -> None:
    backend = TorchBackend.from_module(Scale(), tiny_metadata())
    assert (backend.device, backend.precision, backend.cuda_graph) == ("cpu", "fp32", False)
    out = backend.run({"image": frame(0)})
    assert out["normalized"].dtype == np.float32 and out["normalized"].shape == (1, HEIGHT, WIDTH, 3)
    assert out["labels"].dtype == np.int64 and out["mask"].dtype == np.uint8


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_requests": 2}, ValueError, r"does not take option\(s\) num_requests; it accepts cuda_graph, device"),
        ({"device": "tpu"}, ValueError, "runs on device 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"device": "GPU"}, ValueError, "got 'GPU'"),
        ({"precision": "int8"}, ValueError, "not 'int8' .*quantised artifact"),
        ({"cuda_graph": True}, ValueError, "cuda_graph=True needs device='cuda'"),
        ({"threads": 0}, ValueError, "threads must be a positive int"),
    ],
)
def test_bad_options_are_named(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TorchBackend.from_module(Scale(), tiny_metadata(), **options)


def test_options_constant_is_what_the_constructor_takes() -> None:
    import inspect

    assert set(inspect.signature(TorchBackend).parameters) >= TORCH_OPTIONS


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(DeviceNotAvailable, match="sees no CUDA GPU"):
        TorchBackend.from_module(Scale(), tiny_metadata(), device="cuda")


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precisions_autocast_on_cpu(precision: str, dtype: torch.dtype) -> None:
    image = frame(1)
    want = TorchBackend.from_module(Scale(), tiny_metadata()).run({"image": image})
    torch.manual_seed(0)  # same Linear init as Scale() above got from the autouse seed
    module = Scale()
    backend = TorchBackend.from_module(module, tiny_metadata(), precision=precision.upper())
    assert backend.precision == precision
    got = backend.run({"image": image})
    assert module.seen_dtypes == [dtype]  # the Linear really ran in half precision
    assert got["normalized"].dtype == np.float32  # half outputs come back as float32
    np.testing.assert_allclose(got["normalized"], want["normalized"], atol=2e-2)
    assert not np.array_equal(got["normalized"], want["normalized"])


def test_threads_sets_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        TorchBackend.from_module(Scale(), tiny_metadata(), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_runs_are_serialised_and_bound_to_their_input() -> None:
    module = Scale(delay_s=0.01)
    backend = TorchBackend.from_module(module, tiny_metadata())
    images = {seed: frame(seed) for seed in range(8)}
    with torch.no_grad():
        expected = {seed: module.linear(torch.from_numpy(im).float() / 255.0).numpy() for seed, im in images.items()}
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(seeds: list[int]) -> None:
        try:
            for _ in range(3):
                for seed in seeds:
                    out = backend.run({"image": images[seed]})["normalized"]
                    np.testing.assert_array_equal(out, expected[seed])
                    results[seed] = out
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=([s, s + 4],)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert module.max_active == 1  # the lock let one run in at a time
    assert sorted(results) == list(range(8))
    assert len(module.seen_dtypes) == 8 * 3


def test_results_do_not_alias_module_tensors() -> None:
    """A module that returns its input: the numpy result must be a copy, not the caller's (or a reused) buffer."""

    class Identity(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return image, image[..., 0].long(), image[..., 1]

    image = frame(2)
    out = TorchBackend.from_module(Identity(), tiny_metadata()).run({"image": image})
    out["mask"][...] = 0
    assert image[..., 1].any()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_from_module_runs_the_deployable_model(checkpoint: Path, task: str) -> None:
    module, metadata = deployable(checkpoint, task)
    image = np.random.default_rng(3).integers(0, 256, (1, 128, 160, 3), dtype=np.uint8)
    with torch.inference_mode():
        want = [t.numpy() for t in module(torch.from_numpy(image))]
    with TorchBackend.from_module(module, metadata, precision="fp32", threads=1) as backend:
        got = backend.run({"images": image})
        assert list(got) == list(metadata["outputs"])
        for name, value in zip(metadata["outputs"], want, strict=True):
            np.testing.assert_array_equal(got[name], value)
        with pytest.raises(BackendInputError, match="expected shape"):
            backend.run({"images": image[:, :64]})
    with pytest.raises(RuntimeError, match="closed"):
        backend.run({"images": image})


def test_bf16_deployable_model_stays_close(checkpoint: Path) -> None:
    """bf16 autocast through the whole model (Swin/ResNet, MSDA reference, decoder) on the CPU: float32 outputs
    that track the fp32 ones (random weights: compared by correlation and a loose bound, not label agreement)."""
    module, metadata = deployable(checkpoint, "panoptic")
    image = np.random.default_rng(4).integers(0, 256, (1, 128, 160, 3), dtype=np.uint8)
    fp32 = TorchBackend.from_module(module, metadata).run({"images": image})
    bf16 = TorchBackend.from_module(module, metadata, precision="bf16").run({"images": image})
    for name, want in fp32.items():
        got = bf16[name]
        assert got.dtype == np.float32 and got.shape == want.shape
        assert not np.array_equal(got, want)
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999, name
        np.testing.assert_allclose(got, want, atol=0.1 * np.abs(want).max(), err_msg=name)
