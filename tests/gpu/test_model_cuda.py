"""The model on CUDA: every backbone family and the whole Mask2Former against the CPU result, and against HF
transformers' Mask2Former on the same GPU (TF32 off, fp32 tolerances)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu import GPU
from tests.train.test_model import BACKBONES, tiny_config
from train.model import Mask2Former, SwinConfig
from train.model.backbones import build_backbone

pytestmark = GPU

# Swin-T as shipped (head dim 32, window 7): the size at which CUDA picks its fused attention kernels
SWIN_T = SwinConfig(drop_path_rate=0.0)
FAMILIES = {
    "resnet": BACKBONES["resnet-bn"],
    "swin-tiny": BACKBONES["swin"],
    "swin-t": SWIN_T,
    "timm-resnet18": BACKBONES["timm-resnet18"],
    "timm-mobilenetv3": BACKBONES["timm-mobilenetv3"],
}


def assert_close_relative(got: torch.Tensor, want: torch.Tensor, tol: float, name: str = "") -> None:
    """|got - want| <= tol * max|want| everywhere (features of random weights range widely in scale)."""
    scale = want.abs().max().item()
    diff = (got.detach().cpu().float() - want.float()).abs().max().item()
    assert diff <= tol * max(scale, 1e-6), f"{name}: max |diff| {diff:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_backbone_on_cuda_matches_cpu(name: str, exact_fp32: None) -> None:
    backbone = build_backbone(FAMILIES[name]).eval()
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        want = backbone(x)
        got = backbone.cuda()(x.cuda())
    assert len(got) == len(want) == 4
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.is_cuda and g.shape == w.shape
        assert_close_relative(g, w, 1e-4, f"{name} stage {i}")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mask2former_on_cuda_matches_cpu(name: str, exact_fp32: None, msda_kernel_calls: list) -> None:
    model = Mask2Former(tiny_config(FAMILIES[name])).eval()
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        want = model(x)
        got = model.cuda()(x.cuda())
    assert msda_kernel_calls, "the pixel decoder did not run the MSDA CUDA kernel"
    for key in ("pred_logits", "pred_masks"):
        assert_close_relative(got[key], want[key], 1e-4, f"{name} {key}")


@pytest.mark.parametrize("kind", ["resnet", "swin"])
def test_matches_hf_transformers_on_the_same_gpu(kind: str, exact_fp32: None, msda_kernel_calls: list) -> None:
    from tests.train.hf_models import RESNET, SWIN, hf_config, random_hf_model
    from tests.train.test_hf_parity import ours_from_hf

    hf = random_hf_model(hf_config(RESNET if kind == "resnet" else SWIN, 5, 7, 64, 4, 4))
    ours = ours_from_hf(hf).cuda()
    hf = hf.cuda()
    x = torch.randn(2, 3, 160, 224, device="cuda")
    with torch.no_grad():
        want = hf(pixel_values=x)
        got = ours(x)
    assert msda_kernel_calls
    torch.testing.assert_close(got["pred_logits"], want.class_queries_logits, atol=5e-4, rtol=0)
    torch.testing.assert_close(got["pred_masks"], want.masks_queries_logits, atol=5e-4, rtol=0)
    assert got["pred_masks"].std(dim=(-1, -2)).mean() > 1e-2  # not degenerate


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_swin_t_under_autocast_on_cuda(dtype: torch.dtype) -> None:
    """Half-precision fused attention on CUDA returns the transposed layout too: the forward must not crash."""
    backbone = build_backbone(SWIN_T).eval().cuda()
    x = torch.randn(1, 3, 224, 320, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype):
        features = backbone(x)
    with torch.no_grad():
        reference = backbone(x)
    for f, r in zip(features, reference, strict=True):
        assert torch.isfinite(f).all()
        assert torch.nn.functional.cosine_similarity(f.float().flatten(), r.flatten(), dim=0) > 0.99
