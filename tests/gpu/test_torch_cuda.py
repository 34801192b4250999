"""The torch runtime on CUDA: CUDA-graph replay equals eager, per-shape recapture, fp16/bf16, threads, and
``Segmenter("cuda")`` against ``Segmenter("torch")`` on the CPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from runtimes.torch_backend import GRAPH_CACHE_SIZE, TorchBackend
from tests.gpu import GPU
from tests.runtimes.deployable import deployable, tiny_checkpoint

pytestmark = GPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def frames(n: int, size: tuple[int, int] = (128, 160), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (1, *size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_cuda_graph_equals_eager(checkpoint: Path, task: str, precision: str, msda_kernel_calls: list) -> None:
    module, metadata = deployable(checkpoint, task)
    eager = TorchBackend.from_module(module, metadata, device="cuda", precision=precision, cuda_graph=False)
    graphed = TorchBackend.from_module(module, metadata, device="cuda", precision=precision)
    assert (graphed.device, graphed.torch_device, graphed.precision, graphed.cuda_graph) == (
        "cuda",
        "cuda:0",
        precision,
        True,
    )
    assert not eager.cuda_graph
    for image in frames(3):  # the first run captures, the others replay with new inputs
        want = eager.run({"images": image})
        got = graphed.run({"images": image})
        for name in metadata["outputs"]:
            if want[name].dtype == np.uint8:
                assert (got[name] == want[name]).mean() >= 0.999, name
            else:
                np.testing.assert_allclose(got[name], want[name], atol=1e-3, rtol=1e-3, err_msg=name)
    assert len(graphed._graphs) == 1
    assert msda_kernel_calls  # the kernel ran in the eager runs and was captured in the graph


def test_recaptures_per_shape_and_keeps_a_bounded_cache(checkpoint: Path) -> None:
    module, metadata = deployable(checkpoint, "semantic", input_size=None)  # dynamic height and width
    eager = TorchBackend.from_module(module, metadata, device="cuda", cuda_graph=False)
    graphed = TorchBackend.from_module(module, metadata, device="cuda", cuda_graph=True)
    sizes = [(128, 160), (96, 128), (128, 160), *[(64 + 32 * i, 96) for i in range(GRAPH_CACHE_SIZE)]]
    for i, size in enumerate(sizes):
        (image,) = frames(1, size, seed=i)
        got, want = graphed.run({"images": image})["labels"], eager.run({"images": image})["labels"]
        assert got.shape == want.shape == (1, *size) and (got == want).mean() >= 0.999
    assert len(graphed._graphs) == GRAPH_CACHE_SIZE
    assert graphed.cuda_graph


def test_concurrent_callers_get_their_own_results(checkpoint: Path) -> None:
    module, metadata = deployable(checkpoint, "semantic")
    backend = TorchBackend.from_module(module, metadata, device="cuda", precision="fp16")
    images = frames(8, seed=5)
    want = [backend.run({"images": image})["labels"] for image in images]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for _ in range(5):
                for i in range(offset, len(images), 4):
                    np.testing.assert_array_equal(backend.run({"images": images[i]})["labels"], want[i])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A tiny model trained on CUDA for 150 steps on generated scenes (confident, unlike random weights), and
    held-out scenes as BGR frames."""
    import cv2

    from tests.train.test_training import tiny_train_config
    from train.data.synthetic import write_synthetic_dataset
    from train.train_config import TrainConfig
    from train.trainer import Trainer

    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(root / "train", num_images=64, seed=1)
    write_synthetic_dataset(root / "val", num_images=6, seed=2)
    config = tiny_train_config(root, max_iters=150, val_data=None, task="semantic")
    config["train_data"]["format"] = "synthetic_semantic"
    config["solver"]["num_workers"] = "auto"
    out = tmp_path_factory.mktemp("run")
    Trainer(TrainConfig.from_dict(config), out, progress=False).run()
    images = sorted((root / "val" / "images").iterdir())
    bgr = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in images]
    assert bgr and all(f is not None for f in bgr), images
    return out / "model_final.pt", bgr


def test_segmenter_cuda_matches_torch_on_cpu(trained_checkpoint: tuple[Path, list[np.ndarray]]) -> None:
    import sdk

    checkpoint, bgr_frames = trained_checkpoint
    cuda = sdk.Segmenter("cuda", model=checkpoint)
    cpu = sdk.Segmenter("torch", model=checkpoint)
    assert str(cuda.device).startswith("cuda"), cuda.device
    agree = total = 0
    for frame in bgr_frames:
        got, want = cuda.predict(frame).semantic, cpu.predict(frame).semantic
        assert got.shape == want.shape == frame.shape[:2]
        agree += int((got == want).sum())
        total += want.size
    assert agree / total >= 0.999, (agree / total, cuda.runtime, cuda.precision)


def test_explicit_cuda_graph_raises_when_capture_fails(checkpoint: Path) -> None:
    """Last in this file: a broken capture is the one test here that leaves CUDA error handling to torch."""

    class Syncs(torch.nn.Module):  # .item() is a host sync: not capturable; runs eagerly as the graph would
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            labels = images[..., 0]
            return {"labels": labels + int(labels.float().mean().item() > 300), "class_scores": images.float()}

    _, metadata = deployable(checkpoint, "semantic")
    (image,) = frames(1)
    with pytest.raises(RuntimeError, match="capturing the module as a CUDA graph failed"):
        TorchBackend.from_module(Syncs(), metadata, device="cuda", cuda_graph=True).run({"images": image})
    fallback = TorchBackend.from_module(Syncs(), metadata, device="cuda")  # default: log and run eagerly
    np.testing.assert_array_equal(fallback.run({"images": image})["labels"], image[..., 0])
    assert not fallback.cuda_graph
