"""The evaluation, the accuracy gate and the SDK give the model the same input for the same frame, bit for bit.

All three place frames with ``runtimes.geometry``: the SDK through ``Segmenter.prepare``, the gate through
``compile.gate.gate_image``, the evaluation through ``train.evaluation.runner.model_image`` (on the dataset's RGB
tensors). The benchmarks use ``sdk.preprocess.fit_to_input``, the same function.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from runtimes import geometry
from sdk import preprocess
from sdk.segmenter import Segmenter
from tests.runtimes.tiny_artifact import build_tiny_artifact

torch = pytest.importorskip("torch")
from compile.gate import gate_image  # noqa: E402
from train.evaluation import runner  # noqa: E402

SHORTEST_EDGE = {"resize_policy": "shortest_edge", "min_size": 120, "max_size": 200}
LETTERBOX = {"resize_policy": "letterbox", "size": [96, 128], "pad_bgr": [104, 116, 124]}
FRAMES = {"downscale": (360, 480), "upscale": (75, 130), "portrait": (300, 170), "unchanged": (120, 160)}


def frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 BGR with structure at every scale (smoothed noise plus edges), so resizing is not trivial."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 2.0)
    image[size[0] // 3 :, : size[1] // 2] //= 3  # a hard edge
    return image


def artifact_input(spec: dict) -> dict:
    size = spec.get("size")
    return {
        "name": "image",
        "shape": [1, *(size or [None, None]), 3],
        "dtype": "uint8",
        "layout": "NHWC",
        "channel_order": "BGR",
        **({"size": None} if size is None else {}),
        **spec,
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("inputs")
    return {
        "shortest_edge": build_tiny_artifact(out / "dynamic.onnx", dynamic=True, input=artifact_input(SHORTEST_EDGE)),
        "letterbox": build_tiny_artifact(out / "static.onnx", input=artifact_input(LETTERBOX)),
    }


def sdk_input(artifact: Path, bgr: np.ndarray) -> np.ndarray:
    with Segmenter("onnxruntime", model=artifact) as seg:
        inputs, _ = seg.preprocess(bgr)
        return inputs[seg.input_name][0]  # (H, W, 3) BGR


def eval_input(bgr: np.ndarray, eval_resize: dict) -> np.ndarray:
    """The evaluation's model image for the dataset sample of ``bgr`` (datasets give (3, H, W) uint8 RGB)."""
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1)  # (3, H, W)
    return runner.model_image(rgb, eval_resize).permute(1, 2, 0).numpy()[..., ::-1]  # (H', W', 3) BGR


@pytest.mark.parametrize("name", list(FRAMES))
def test_shortest_edge_inputs_are_identical(artifacts, name):
    bgr = frame(FRAMES[name])
    sdk = sdk_input(artifacts["shortest_edge"], bgr)
    gate = gate_image(bgr, SHORTEST_EDGE).image
    evaluation = eval_input(bgr, {"min_size": SHORTEST_EDGE["min_size"], "max_size": SHORTEST_EDGE["max_size"]})
    assert sdk.dtype == gate.dtype == evaluation.dtype == np.uint8
    assert min(sdk.shape[:2]) == 120 or max(sdk.shape[:2]) == 200
    np.testing.assert_array_equal(gate, sdk)
    np.testing.assert_array_equal(evaluation, sdk)


@pytest.mark.parametrize("name", list(FRAMES))
def test_letterbox_inputs_are_identical_and_ground_truth_follows(artifacts, name):
    bgr = frame(FRAMES[name], seed=1)
    labels = np.arange(bgr.shape[0] * bgr.shape[1]).reshape(bgr.shape[:2]) % 7  # (h, w)
    sdk = sdk_input(artifacts["letterbox"], bgr)
    gate = gate_image(bgr, LETTERBOX, labels)
    np.testing.assert_array_equal(gate.image, sdk)
    _, placed = geometry.fit_to_input(bgr, LETTERBOX)
    rh, rw = placed.resized_size
    assert gate.labels.shape == (96, 128) and np.all(gate.labels[rh:] == 255) and np.all(gate.labels[:, rw:] == 255)
    assert set(np.unique(gate.labels[:rh, :rw])) <= set(range(7))


def test_the_sdk_reexports_the_shared_geometry():
    assert preprocess.fit_to_input is geometry.fit_to_input and preprocess.Geometry is geometry.Geometry


def test_evaluation_feeds_the_model_its_model_image():
    """predict_sample runs the model on model_image's pixels (normalised), not on a resize of its own."""
    from tests.tiny_models import tiny_architecture
    from train.data.synthetic import synthetic_meta
    from train.model import Mask2Former, Mask2FormerConfig

    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **tiny_architecture()})).eval()
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    bgr = frame(FRAMES["downscale"], seed=2)
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1)
    sample = {"image": rgb, "masks": torch.zeros(0, *bgr.shape[:2], dtype=torch.bool)}
    eval_resize = {"min_size": 120, "max_size": 200}
    result = runner.predict_sample(model, sample, meta, "semantic", eval_resize)
    image = runner.model_image(rgb, eval_resize)  # (3, 120, 160)
    want = runner.normalize_images(image[None], [tuple(image.shape[-2:])], meta)
    assert len(seen) == 1 and torch.equal(seen[0], want)
    assert result["semantic"].shape == bgr.shape[:2]
