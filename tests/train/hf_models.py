"""Tiny HF transformers Mask2Former models with random weights: the architecture oracle for parity tests."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

# HF's SwinBackbone partitions windows as the official code does (pads, keeps the shift) even for stages smaller
# than the window; tests/train/test_swin.py covers tiny inputs. SwinModel's default path differs (it shrinks the
# window), which is why we compare against the backbone only.
SWIN = {
    "model_type": "swin",
    "embed_dim": 32,
    "depths": [1, 1, 2, 1],
    "num_heads": [1, 2, 4, 8],
    "window_size": 3,
    "image_size": 160,
    "drop_path_rate": 0.0,
}
RESNET = {
    "model_type": "resnet",
    "embedding_size": 16,
    "hidden_sizes": [64, 128, 256, 512],
    "depths": [1, 2, 1, 1],
    "layer_type": "bottleneck",
}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def hf_config(backbone: dict, num_labels: int, num_queries: int, hidden: int = 64, heads: int = 4, layers: int = 4):
    """A small ``Mask2FormerConfig``; ``layers`` counts HF's ``decoder_layers`` (one more than real layers)."""
    kind = backbone["model_type"]
    bb_cls = transformers.SwinConfig if kind == "swin" else transformers.ResNetConfig
    bb = bb_cls(**{k: v for k, v in backbone.items() if k != "model_type"}, out_features=STAGES)
    return transformers.Mask2FormerConfig(
        backbone_config=bb,
        feature_size=hidden,
        mask_feature_size=hidden,
        hidden_dim=hidden,
        encoder_layers=2,
        decoder_layers=layers,
        num_queries=num_queries,
        num_attention_heads=heads,
        encoder_feedforward_dim=2 * hidden,
        dim_feedforward=2 * hidden,
        id2label={i: f"class{i}" for i in range(num_labels)},
        label2id={f"class{i}": i for i in range(num_labels)},
    )


def random_hf_model(config) -> torch.nn.Module:
    """HF model whose every weight is perturbed: HF zero-initialises several tensors (sampling offsets,
    attention weights), which would hide mapping mistakes."""
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "sampling_offsets" in name or "queries_" in name else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * scale)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model
