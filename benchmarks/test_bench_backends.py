"""pytest-benchmark: one inference per backend on a small exported Mask2Former (semantic, label map in the graph).

    pytest benchmarks/test_bench_backends.py --benchmark-only

The model is small (ResNet-18, 64-wide decoder, 16 queries) with random weights, exported once per session at
256x256; every installed runtime runs the same artifact on one uint8 frame, and the torch backend runs the
module it was exported from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtimes import available_runtimes, load_backend  # noqa: E402

INPUT = (256, 256)
CONFIG = {
    "num_classes": 11,
    "backbone": {"kind": "timm", "model_name": "resnet18"},
    "pixel_decoder": {"conv_dim": 64, "mask_dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 128},
    "decoder": {"hidden_dim": 64, "num_queries": 16, "num_heads": 4, "num_layers": 3, "ffn_dim": 128},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from train.model import Mask2Former, Mask2FormerConfig, ModelMeta, save_checkpoint

    torch.manual_seed(0)
    model = Mask2Former(Mask2FormerConfig.from_dict(CONFIG)).eval()
    meta = ModelMeta(class_names=tuple(f"class{i}" for i in range(CONFIG["num_classes"])))
    return save_checkpoint(tmp_path_factory.mktemp("bench_backends") / "small.pt", model, meta)


@pytest.fixture(scope="module")
def artifact(checkpoint: Path) -> Path:
    from compile.export import export

    return export(checkpoint, "onnxruntime", "fp32", checkpoint.with_suffix(".onnx"), input_size=INPUT, task="semantic")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, *INPUT, 3), dtype=np.uint8)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_backend_inference(benchmark, runtime: str, artifact: Path, frame: np.ndarray) -> None:
    if not available_runtimes().get(runtime):
        pytest.skip(f"{runtime} is not installed")
    with load_backend(runtime, artifact, threads=torch.get_num_threads()) as backend:
        benchmark.extra_info.update(runtime=runtime, input=list(INPUT), threads=torch.get_num_threads())
        out = benchmark(backend.run, {"images": frame})
    assert out["labels"].shape == (1, *INPUT)


def test_torch_backend_inference(benchmark, checkpoint: Path, artifact: Path, frame: np.ndarray) -> None:
    from compile.onnx_export import DeployableMask2Former
    from runtimes.artifact import read_metadata
    from runtimes.torch_backend import TorchBackend
    from train.model import load_pretrained

    loaded = load_pretrained(checkpoint)
    module = DeployableMask2Former(loaded.model, loaded.meta, "semantic")
    with TorchBackend.from_module(module, read_metadata(artifact)) as backend:
        out = benchmark(backend.run, {"images": frame})
    assert out["labels"].shape == (1, *INPUT)
