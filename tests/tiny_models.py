"""Tiny Mask2Former architectures (dict form, without num_classes) shared by the tests."""

from __future__ import annotations

TINY_RESNET = {
    "kind": "resnet",
    "depths": [1, 1, 1, 1],
    "stem_channels": 16,
    "bottleneck_channels": 16,
    "out_channels": 32,
    "norm": "BN",
}


def tiny_architecture(width: int = 32, queries: int = 8, encoder_layers: int = 1, decoder_layers: int = 2) -> dict:
    """A trainable-in-seconds model: 4-block ResNet, ``width``-d heads (heads of 16 channels each)."""
    heads = max(width // 16, 1)
    return {
        "backbone": dict(TINY_RESNET),
        "pixel_decoder": {
            "conv_dim": width,
            "mask_dim": width,
            "num_layers": encoder_layers,
            "num_heads": heads,
            "ffn_dim": 2 * width,
        },
        "decoder": {
            "hidden_dim": width,
            "num_queries": queries,
            "num_heads": heads,
            "num_layers": decoder_layers,
            "ffn_dim": 2 * width,
        },
    }
