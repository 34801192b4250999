"""The packaged default model: present, small, CamVid's classes, accurate on CamVid val, int8 close to fp32."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from plugins.msda import openvino_extension
from sdk.model_registry import MODELS_DIR
from sdk.segmenter import Segmenter
from tests.conftest import data_root

CAMVID = data_root() / "camvid"
FP32 = MODELS_DIR / "default_fp32.onnx"
INT8 = MODELS_DIR / "default_int8.onnx"  # NNCF, for OpenVINO
ORT_INT8 = MODELS_DIR / "default_ort_int8.onnx"  # ONNX Runtime's own quantiser
INT8_FUSED = MODELS_DIR / "default_int8_msda.onnx"  # NNCF, each deformable-attention layer one m2f::MSDeformAttn
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist"]  # fmt: skip


def test_default_models_are_packaged_with_their_gates():
    assert FP32.exists(), "sdk/models/default_fp32.onnx is the SDK's default model"
    with Segmenter("onnxruntime", precision="fp32") as seg:
        assert seg.metadata["task"] == "semantic"
        assert seg.metadata["class_names"] == CAMVID_CLASSES
        assert seg.metadata["accuracy"]["label_agreement"] >= 0.999  # its own export gate, recorded in the artifact
    openvino_int8 = INT8 if openvino_extension.unavailable_reason() else INT8_FUSED  # the fused op where it loads
    for precision, path, target in (("int8", openvino_int8, "openvino"), ("int8", ORT_INT8, "onnxruntime")):
        with Segmenter(target, precision=precision) as seg:
            assert seg.model_path == path and seg.metadata["target"] == target  # each runtime its own quantiser's
            assert seg.metadata["class_names"] == CAMVID_CLASSES
            assert seg.metadata["accuracy"]["label_agreement"] >= 0.99


def _val_pairs(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    images = sorted((CAMVID / "val").glob("*.png"))[:: 101 // count][:count]
    return [
        (cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.imread(str(CAMVID / "valannot" / p.name), cv2.IMREAD_GRAYSCALE))
        for p in images
    ]


def _miou(predictions: list[np.ndarray], labels: list[np.ndarray], classes: int = 11) -> float:
    inter, union = np.zeros(classes), np.zeros(classes)
    for pred, label in zip(predictions, labels, strict=True):
        valid = label < classes
        for c in range(classes):
            p, g = (pred == c) & valid, label == c
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    present = union > 0
    return float((inter[present] / union[present]).mean() * 100)


@pytest.mark.data
@pytest.mark.skipif(not (CAMVID / "val").exists(), reason=f"needs CamVid ({CAMVID})")
def test_default_model_segments_camvid_val_and_int8_agrees():
    pairs = _val_pairs(10)
    with Segmenter("cpu") as seg:
        fp32 = [seg.predict(image).semantic for image, _ in pairs]
    assert all(p.shape == label.shape for p, (_, label) in zip(fp32, pairs, strict=True))
    # the full val figures are in docs/models.md; 10 images of an untrained model score < 10
    assert _miou(fp32, [label for _, label in pairs]) > 45.0
    for target in ("cpu", "onnxruntime"):
        with Segmenter(target, precision="int8") as seg:
            int8 = [seg.predict(image).semantic for image, _ in pairs]
        agreement = np.mean([(a == b).mean() for a, b in zip(fp32, int8, strict=True)])
        assert agreement > 0.97, target
