"""The HF peers (``benchmarks.peers``): the runner casts and places the model as asked."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_hf_runner_places_and_casts_the_model() -> None:
    from benchmarks.peers import hf_runner, random_hf_model
    from tests.benchmarks.test_harness import TINY_HF_CONFIG

    model = random_hf_model(TINY_HF_CONFIG, seed=0)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = model(pixel_values=pixel_values).masks_queries_logits
    _, masks = hf_runner(model, "cpu", "fp32")(pixel_values)
    torch.testing.assert_close(masks, want)
    _, masks = hf_runner(model, "cpu", "bf16")(pixel_values)
    assert next(model.parameters()).dtype == torch.bfloat16  # cast weights, as torch_dtype does
    assert masks.dtype == torch.float32 and masks.device.type == "cpu"
    assert torch.corrcoef(torch.stack([masks.flatten(), want.flatten()]))[0, 1] > 0.99
    with pytest.raises(ValueError, match="runs precision fp32, fp16, bf16, not 'int8'"):
        hf_runner(model, "cpu", "int8")
