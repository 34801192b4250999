"""Tiny HF transformers Mask2Former models with random weights: the architecture oracle for parity tests."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from benchmarks.peers import perturb_weights  # noqa: E402

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
    return perturb_weights(transformers.Mask2FormerForUniversalSegmentation(config).eval(), seed=1234)
