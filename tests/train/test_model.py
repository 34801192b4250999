"""Every backbone builds at tiny widths into a full Mask2Former: shapes, finiteness, any input size, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from train.model import (
    Mask2Former,
    Mask2FormerConfig,
    PixelDecoderConfig,
    ResNetConfig,
    SwinConfig,
    TimmConfig,
    TransformerDecoderConfig,
)
from train.model.backbones import build_backbone

BACKBONES = {
    "resnet-frozenbn": ResNetConfig(depths=(1, 1, 1, 1), stem_channels=16, bottleneck_channels=8, out_channels=32),
    "resnet-bn": ResNetConfig(depths=(1, 2, 1, 1), stem_channels=16, bottleneck_channels=8, out_channels=32, norm="BN"),
    "swin": SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4, drop_path_rate=0.1),
    "timm-resnet18": TimmConfig("resnet18"),
    "timm-mobilenetv3": TimmConfig("mobilenetv3_small_050"),
    "timm-efficientnet": TimmConfig("efficientnet_b0"),
    "timm-convnext": TimmConfig("convnext_atto"),
}


def tiny_config(backbone, num_classes: int = 3, queries: int = 5) -> Mask2FormerConfig:
    return Mask2FormerConfig(
        num_classes=num_classes,
        backbone=backbone,
        pixel_decoder=PixelDecoderConfig(conv_dim=32, mask_dim=32, num_layers=1, num_heads=2, ffn_dim=64),
        decoder=TransformerDecoderConfig(hidden_dim=32, num_queries=queries, num_heads=2, num_layers=3, ffn_dim=64),
    )


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_strides_and_channels(name):
    backbone = build_backbone(BACKBONES[name]).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        features = backbone(x)
    assert [f.shape[1] for f in features] == list(backbone.channels)
    assert [(f.shape[2], f.shape[3]) for f in features] == [(96 // s, 128 // s) for s in (4, 8, 16, 32)]
    assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("size", [(64, 64), (100, 75), (97, 130)])
def test_model_any_input_size(name, size):
    model = Mask2Former(tiny_config(BACKBONES[name])).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    padded = [math.ceil(s / 32) * 32 for s in size]
    assert out["pred_logits"].shape == (2, 5, 4)
    assert out["pred_masks"].shape == (2, 5, padded[0] // 4, padded[1] // 4)
    assert len(out["aux_outputs"]) == 3  # the query features + every layer but the last
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_masks"]).all()


@pytest.mark.parametrize("name", ["resnet-bn", "swin", "timm-mobilenetv3"])
def test_gradients_reach_every_stage(name):
    model = Mask2Former(tiny_config(BACKBONES[name])).train()
    out = model(torch.randn(2, 3, 64, 96))
    loss = out["pred_logits"].logsumexp(-1).mean() + out["pred_masks"].sigmoid().mean()
    loss = loss + sum(a["pred_masks"].sigmoid().mean() for a in out["aux_outputs"])
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == [], no_grad[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_matches_explicit_zero_padding():
    model = Mask2Former(tiny_config(BACKBONES["resnet-frozenbn"])).eval()
    x = torch.randn(1, 3, 50, 70)
    padded = torch.zeros(1, 3, 64, 96)
    padded[..., :50, :70] = x
    with torch.no_grad():
        torch.testing.assert_close(model(x)["pred_masks"], model(padded)["pred_masks"])


def test_bad_inputs_and_configs_raise():
    model = Mask2Former(tiny_config(BACKBONES["resnet-frozenbn"])).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="strides"):
        build_backbone(TimmConfig("resnet18", out_indices=(0, 1, 2, 3)))
    with pytest.raises(ValueError, match="norm"):
        build_backbone(ResNetConfig(norm="LayerNorm"))


def test_config_round_trips_through_dict():
    for backbone in BACKBONES.values():
        config = tiny_config(backbone)
        assert Mask2FormerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown backbone kind"):
        Mask2FormerConfig.from_dict({"num_classes": 2, "backbone": {"kind": "vgg"}})


@pytest.mark.parametrize("size", [(64, 64), (97, 130)])
def test_inference_without_aux_outputs_gives_the_same_prediction(size):
    """aux=False computes the earlier attention masks from resized mask features (resizing and the mask product
    commute): the last prediction equals the full path's to float rounding, and no aux outputs are built."""
    torch.manual_seed(0)
    model = Mask2Former(tiny_config(BACKBONES["resnet-bn"])).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        full, lean = model(x), model(x, aux=False)
    assert lean["aux_outputs"] == []
    torch.testing.assert_close(lean["pred_logits"], full["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean["pred_masks"], full["pred_masks"], atol=1e-5, rtol=1e-5)
    config = tiny_config(BACKBONES["resnet-bn"])
    no_layers = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, num_layers=0))
    with torch.no_grad():  # no decoder layers: the query features' prediction is the last
        assert Mask2Former(no_layers).eval()(x, aux=False)["pred_masks"].shape == full["pred_masks"].shape
    # the identity it rests on, on the decoder's own shapes: product then resize == resize then product
    embed, features = torch.randn(2, 5, 32), torch.randn(2, 32, 24, 32)
    resize = dict(size=(3, 4), mode="bilinear", align_corners=False)
    product_first = torch.nn.functional.interpolate(torch.einsum("bqc,bchw->bqhw", embed, features), **resize)
    resize_first = torch.einsum("bqc,bchw->bqhw", embed, torch.nn.functional.interpolate(features, **resize))
    torch.testing.assert_close(resize_first, product_first, atol=1e-5, rtol=1e-5)


def test_exported_deformable_attention_samples_each_level_once(tmp_path):
    """What OpenVINO runs fast (benchmarks/results/issue20_msda_layout/): one GridSample per level, the sampling
    offsets scaled in one division (no per-level stacks: Concat), the points summed elementwise (no ReduceSum)."""
    onnx = pytest.importorskip("onnx")
    from train.model.pixel_decoder import MSDeformAttn, MSDeformAttnEncoder

    shapes = [(8, 8), (4, 4), (2, 2)]
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=2, n_points=4).eval()

    class Layer(torch.nn.Module):
        def forward(self, src: torch.Tensor) -> torch.Tensor:
            return attn(src, MSDeformAttnEncoder.reference_points(shapes, 1, src.device), src, shapes)

    src = torch.randn(1, sum(h * w for h, w in shapes), 32)
    with torch.no_grad():
        torch.onnx.export(Layer().eval(), (src,), str(tmp_path / "msda.onnx"), dynamo=True, external_data=False)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "msda.onnx")).graph.node]
    assert ops.count("GridSample") == len(shapes)
    assert "Concat" not in ops and "ReduceSum" not in ops, sorted(set(ops))
