"""Our Mask2Former against HF transformers' Mask2FormerForUniversalSegmentation with the same random weights."""

from __future__ import annotations

import pytest
import torch

from tests.train.hf_models import RESNET, SWIN, hf_config, random_hf_model
from train.model import Mask2Former, load_pretrained
from train.model.convert_hf import config_from_hf, state_dict_from_hf

CASES = [
    # backbone, classes, queries, hidden, heads, HF decoder_layers, batch, (H, W)
    pytest.param(RESNET, 5, 7, 64, 4, 4, 2, (160, 224), id="resnet-k5-q7-b2"),
    pytest.param(RESNET, 19, 12, 32, 2, 10, 1, (256, 192), id="resnet-k19-q12-9layers"),
    pytest.param(SWIN, 5, 7, 64, 4, 4, 2, (160, 224), id="swin-k5-q7-b2"),
    pytest.param(SWIN, 11, 20, 32, 8, 5, 3, (224, 192), id="swin-k11-q20-b3"),
]


def ours_from_hf(hf_model) -> Mask2Former:
    config, _ = config_from_hf(hf_model.config.to_dict())
    model = Mask2Former(config).eval()
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), config.backbone.kind), strict=True)
    return model


@pytest.mark.parametrize(("backbone", "k", "q", "hidden", "heads", "layers", "batch", "size"), CASES)
def test_outputs_match_hf(backbone, k, q, hidden, heads, layers, batch, size):
    hf = random_hf_model(hf_config(backbone, k, q, hidden, heads, layers))
    ours = ours_from_hf(hf)
    assert ours.config.decoder.num_layers == layers - 1
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        want = hf(pixel_values=x, output_auxiliary_logits=True)
        got = ours(x)
    assert got["pred_logits"].shape == (batch, q, k + 1)
    assert got["pred_masks"].shape == (batch, q, size[0] // 4, size[1] // 4)
    torch.testing.assert_close(got["pred_logits"], want.class_queries_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got["pred_masks"], want.masks_queries_logits, atol=1e-4, rtol=0)
    # every intermediate prediction too (HF lists the same ones: queries + all layers but the last)
    assert len(got["aux_outputs"]) == len(want.auxiliary_logits) == layers - 1
    for mine, theirs in zip(got["aux_outputs"], want.auxiliary_logits, strict=True):
        torch.testing.assert_close(mine["pred_logits"], theirs["class_queries_logits"], atol=1e-4, rtol=0)
        torch.testing.assert_close(mine["pred_masks"], theirs["masks_queries_logits"], atol=1e-4, rtol=0)
    # not degenerate: queries disagree and masks vary in space by well over the 1e-4 tolerance
    masks = got["pred_masks"]
    assert masks.std(dim=1).mean() > 1e-3
    assert masks.std(dim=(-1, -2)).mean() > 1e-2


def test_hf_folder_loads_through_load_pretrained(tmp_path):
    hf = random_hf_model(hf_config(SWIN, 5, 7))
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_pretrained(tmp_path / "hf")
    assert loaded.source == "huggingface"
    assert not loaded.model.training
    assert loaded.meta.class_names == tuple(f"class{i}" for i in range(5))
    x = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(x)["pred_masks"], hf(pixel_values=x).masks_queries_logits, atol=1e-4, rtol=0
        )


def test_hf_folder_with_bin_weights_and_processor_normalisation(tmp_path):
    hf = random_hf_model(hf_config(RESNET, 3, 5))
    hf.save_pretrained(tmp_path / "hf", safe_serialization=False)
    (tmp_path / "hf" / "preprocessor_config.json").write_text(
        '{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_rescale": true}'
    )
    loaded = load_pretrained(tmp_path / "hf")
    assert loaded.meta.pixel_mean == (127.5, 127.5, 127.5)
    assert loaded.meta.pixel_std == (63.75, 63.75, 63.75)


def test_unknown_hf_keys_are_reported():
    hf = random_hf_model(hf_config(RESNET, 3, 5))
    state = hf.state_dict()
    state["model.transformer_module.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mystery"):
        state_dict_from_hf(state, "resnet")
