"""Backbones rebuilt from a TFLite file's own graph: LiteRT's tensors and timm's network are the oracles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.litert_oracle import dequantized, run_litert
from train.model.backbones.tflite_graph import TFLiteGraphBackbone, graph_spec
from train.model.backbones.tflite_weights import read_tflite_weights
from train.model.config import (
    Mask2FormerConfig,
    PixelDecoderConfig,
    TFLiteGraphConfig,
    TimmConfig,
    TransformerDecoderConfig,
)

cv2 = pytest.importorskip("cv2")
pytest.importorskip("tflite")

CITYSCAPES = "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
MOBILENET_V2 = "tf2_mobilenet_v2_1.0_224_ptq.tflite"


def _litert_tensors(path: Path, rgb: np.ndarray, ids: list[int]) -> list[np.ndarray]:
    """LiteRT's own (dequantized) values of graph tensors ``ids`` on one image, (C, H, W) each."""
    interpreter = run_litert(path, rgb)
    return [dequantized(interpreter, i)[0].transpose(2, 0, 1) for i in ids]


def _input(rgb: np.ndarray, mean: float, std: float) -> torch.Tensor:
    return ((torch.from_numpy(rgb.astype(np.float32)) - mean) / std).permute(2, 0, 1)[None]


@pytest.mark.data
def test_cityscapes_body_as_the_file_runs_it_matches_litert(pretrained_dir: Path) -> None:
    """Coral's Cityscapes DeepLab body (MobileNet-EdgeTPU, atrous at 1/16), built from the graph with its dilations,
    at 513x513 (odd sizes: TF "SAME" pads 1/1): LiteRT's own block outputs, up to the last one before the ASPP.
    The file is uint8 per tensor (quantization-aware trained): float weights differ from it by its rounding."""
    path = pretrained_dir / CITYSCAPES
    weights = read_tflite_weights(path)
    spec = graph_spec(weights, undilate=False, strides=(4, 8, 16))
    assert [op["dilation"] for op in spec["ops"] if op["op"] == "depthwise"][-4:] == [2, 2, 2, 2]
    model = TFLiteGraphBackbone(TFLiteGraphConfig(weights=str(path), graph=spec)).eval()
    mean, std = model.load_weights()
    assert (mean[0], std[0]) == (128.0, 128.0)
    for image in ("grace_hopper.bmp", "cat.bmp"):
        rgb = cv2.resize(cv2.imread(str(pretrained_dir / image))[:, :, ::-1], (513, 513))
        with torch.no_grad():
            ours = [f[0].numpy() for f in model(_input(rgb, mean[0], std[0]))]
        theirs = _litert_tensors(path, rgb, spec["taps"])
        for tap, a, b in zip(spec["taps"], ours, theirs, strict=True):
            assert a.shape == b.shape, tap
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.97, (image, tap)
    assert [f.shape[0] for f in ours] == [24, 40, 144]


@pytest.mark.data
def test_undilated_body_reaches_stride_32_with_the_same_weights(pretrained_dir: Path) -> None:
    """Mask2Former's layout: the stride DeepLab took from block 17's depthwise put back, the dilations divided out."""
    path = pretrained_dir / CITYSCAPES
    weights = read_tflite_weights(path)
    spec = graph_spec(weights)
    by_index = {op["index"]: op for op in spec["ops"]}
    assert by_index[55]["stride"] == 2 and by_index[55]["name"].endswith("expanded_conv_17/depthwise/depthwise_Fold")
    assert all(op["dilation"] == 1 for op in spec["ops"] if op["op"] != "add")
    assert max(by_index) < weights.body_end  # the ASPP head and the classifier logits stay in the file
    model = TFLiteGraphBackbone(TFLiteGraphConfig(weights=str(path)))
    model.load_weights()
    assert model.channels == (24, 40, 72, 144)
    src = next(layer for layer in weights.layers if layer.index == 58)  # dilated in the file, plain here
    assert src.dilation == (2, 2) and tuple(model.convs["58"].dilation) == (1, 1)
    assert np.array_equal(model.convs["58"].weight.detach().numpy(), src.weight)
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, 96, 128))
    assert [tuple(m.shape[-2:]) for m in maps] == [(24, 32), (12, 16), (6, 8), (3, 4)]


@pytest.mark.data
def test_mobilenet_v2_from_its_graph_equals_timm(pretrained_dir: Path) -> None:
    """Two independent builds of one file: the graph walk and timm's mobilenetv2_100 (TF-style) give the same maps."""
    pytest.importorskip("timm")
    from train.model.backbones.timm_backbone import TimmBackbone

    path = pretrained_dir / MOBILENET_V2
    ours = TFLiteGraphBackbone(TFLiteGraphConfig(weights=str(path))).eval()
    timm_net = TimmBackbone(TimmConfig("mobilenetv2_100", weights=str(path))).eval()
    assert ours.load_weights() == timm_net.load_weights()
    assert ours.channels == timm_net.channels == (24, 32, 96, 320)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        for a, b in zip(ours(x), timm_net(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.data
def test_checkpoint_rebuilds_without_the_file(pretrained_dir: Path, tmp_path: Path) -> None:
    """The graph is computed once and kept in the config: a saved model loads where the .tflite is absent."""
    from train.model import Mask2Former
    from train.model.checkpoint import load_pretrained, save_checkpoint
    from train.model.config import ModelMeta

    config = Mask2FormerConfig(
        num_classes=3,
        backbone=TFLiteGraphConfig(weights=str(pretrained_dir / CITYSCAPES)),
        pixel_decoder=PixelDecoderConfig(conv_dim=32, mask_dim=32, num_layers=1, num_heads=2, ffn_dim=64),
        decoder=TransformerDecoderConfig(hidden_dim=32, num_queries=5, num_heads=2, num_layers=3, ffn_dim=64),
    )
    model = Mask2Former(config).eval()
    assert model.config.backbone.graph is not None and config.backbone.graph is None
    model.backbone.load_weights()
    stored = model.config.to_dict()
    stored["backbone"]["weights"] = str(tmp_path / "moved.tflite")
    model.config = Mask2FormerConfig.from_dict(stored)
    meta = ModelMeta(class_names=("a", "b", "c"))
    loaded = load_pretrained(save_checkpoint(tmp_path / "m.pt", model, meta))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded.model(x)["pred_logits"], model(x)["pred_logits"])


def test_a_backbone_needs_a_file_or_a_graph() -> None:
    with pytest.raises(ValueError, match="needs weights"):
        TFLiteGraphBackbone(TFLiteGraphConfig())


@pytest.mark.data
def test_missing_stride_and_changed_file_are_named(pretrained_dir: Path, tmp_path: Path) -> None:
    weights = read_tflite_weights(pretrained_dir / CITYSCAPES)
    with pytest.raises(ValueError, match="no block output at stride 64"):
        graph_spec(weights, strides=(4, 8, 16, 32, 64))
    spec = graph_spec(read_tflite_weights(pretrained_dir / MOBILENET_V2))
    other = TFLiteGraphBackbone(TFLiteGraphConfig(weights=str(pretrained_dir / CITYSCAPES), graph=spec))
    with pytest.raises(ValueError, match=r"operator 1 is \(16, 24, 1, 1\) in the file, \(32, 3, 3, 3\) in the network"):
        other.load_weights()  # a graph from one file, weights from another
