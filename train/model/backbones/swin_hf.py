"""HF transformers Swin weights (as inside ``Mask2FormerForUniversalSegmentation``) -> the key layout of
``train.model.backbones.swin.SwinTransformer``, the official ``D2SwinTransformer``'s."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from train.model.backbones.swin import relative_position_index

# Older HF Swin checkpoints (the ones on the Hub) name the block parts differently; map them to the current names.
_HF_LEGACY_RENAMES = (
    (".attention.self.query.", ".attention.q_proj."),
    (".attention.self.key.", ".attention.k_proj."),
    (".attention.self.value.", ".attention.v_proj."),
    (".attention.self.relative_position_bias_table", ".attention.relative_position_bias.relative_position_bias_table"),
    (".attention.output.dense.", ".attention.o_proj."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
)
# HF keys that carry nothing our model needs: the unused final norm and recomputed index buffers.
_HF_IGNORED = re.compile(r"^layernorm\.|relative_position_index$|^embeddings\.mask_token$")
_HF_BLOCK = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.")


def _normalise_hf_key(key: str) -> str:
    """Strip the optional ``model.pixel_level_module.encoder.`` / ``swin.`` prefixes and apply legacy renames."""
    for prefix in ("model.pixel_level_module.encoder.", "swin."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    for old, new in _HF_LEGACY_RENAMES:
        key = key.replace(old, new)
    return key


class _HfKeys:
    """The normalised HF state dict being converted: what was taken from it, what was missing, what was made."""

    def __init__(self, hf_state: dict[str, Tensor]) -> None:
        self.src = {_normalise_hf_key(k): v for k, v in hf_state.items()}
        self.out: dict[str, Tensor] = {}
        self.used: set[str] = set()
        self.missing: list[str] = []

    def take(self, key: str) -> Tensor | None:
        """The HF tensor ``key`` (marked used), or None with ``key`` recorded as missing."""
        if key not in self.src:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.src[key]

    def copy(self, dst: str, key: str) -> None:
        """Our ``dst`` is HF's ``key`` unchanged."""
        value = self.take(key)
        if value is not None:
            self.out[dst] = value


def _hf_blocks(keys: _HfKeys) -> dict[int, set[int]]:
    """Stage index -> the block indices the HF keys hold; ValueError when there are none."""
    blocks: dict[int, set[int]] = {}
    for key in keys.src:
        match = _HF_BLOCK.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    if not blocks:
        raise ValueError("no HF Swin blocks found (expected keys like 'encoder.layers.0.blocks.0.attention.*')")
    return blocks


def _convert_hf_embeddings(keys: _HfKeys) -> None:
    """The patch embedding, and the absolute position embedding (1, n*n, C) -> (1, C, n, n) where there is one."""
    for wb in ("weight", "bias"):
        keys.copy(f"patch_embed.proj.{wb}", f"embeddings.patch_embeddings.projection.{wb}")
        keys.copy(f"patch_embed.norm.{wb}", f"embeddings.norm.{wb}")
    if "embeddings.position_embeddings" in keys.src:
        pos = keys.src["embeddings.position_embeddings"]  # (1, n*n, C)
        keys.used.add("embeddings.position_embeddings")
        n = math.isqrt(pos.shape[1])
        if n * n != pos.shape[1]:
            raise ValueError(f"non-square HF absolute position embeddings of length {pos.shape[1]}")
        keys.out["absolute_pos_embed"] = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2).contiguous()  # (1, C, n, n)


def _convert_hf_block(keys: _HfKeys, hf: str, ours: str) -> None:
    """One transformer block: norms, projection and MLP as they are; q, k, v fused into ``qkv``; the relative
    position table kept and its index recomputed."""
    for wb in ("weight", "bias"):
        keys.copy(f"{ours}norm1.{wb}", f"{hf}layernorm_before.{wb}")
        keys.copy(f"{ours}norm2.{wb}", f"{hf}layernorm_after.{wb}")
        keys.copy(f"{ours}attn.proj.{wb}", f"{hf}attention.o_proj.{wb}")
        keys.copy(f"{ours}mlp.fc1.{wb}", f"{hf}mlp.fc1.{wb}")
        keys.copy(f"{ours}mlp.fc2.{wb}", f"{hf}mlp.fc2.{wb}")
    qkv = [t for t in (keys.take(f"{hf}attention.{p}_proj.weight") for p in "qkv") if t is not None]
    if len(qkv) == 3:
        keys.out[f"{ours}attn.qkv.weight"] = torch.cat(qkv, dim=0)  # (3C, C), rows q | k | v
    bias_keys = [f"{hf}attention.{p}_proj.bias" for p in "qkv"]
    if any(k in keys.src for k in bias_keys):  # qkv_bias=False checkpoints have none of them
        biases = [t for t in (keys.take(k) for k in bias_keys) if t is not None]
        if len(biases) == 3:
            keys.out[f"{ours}attn.qkv.bias"] = torch.cat(biases, dim=0)  # (3C,)
    table = keys.take(f"{hf}attention.relative_position_bias.relative_position_bias_table")
    if table is not None:
        keys.out[f"{ours}attn.relative_position_bias_table"] = table  # ((2ws-1)^2, nH)
        ws = (math.isqrt(table.shape[0]) + 1) // 2
        if (2 * ws - 1) ** 2 != table.shape[0]:
            raise ValueError(f"{hf}: relative position table of {table.shape[0]} rows is not (2*ws-1)^2")
        keys.out[f"{ours}attn.relative_position_index"] = relative_position_index(ws)


def _convert_hf_stage_end(keys: _HfKeys, i: int, last: bool) -> None:
    """After stage ``i``'s blocks: its patch merging (all but the last stage) and its output norm."""
    if not last:
        keys.copy(f"layers.{i}.downsample.reduction.weight", f"encoder.layers.{i}.downsample.reduction.weight")
        for wb in ("weight", "bias"):
            keys.copy(f"layers.{i}.downsample.norm.{wb}", f"encoder.layers.{i}.downsample.norm.{wb}")
    for wb in ("weight", "bias"):
        keys.copy(f"norm{i}.{wb}", f"hidden_states_norms.stage{i + 1}.{wb}")


def swin_state_dict_from_hf(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF Swin backbone state dict (as inside ``Mask2FormerForUniversalSegmentation``) -> our key layout.

    Accepts the keys under ``model.pixel_level_module.encoder.`` with that prefix stripped, in the current
    transformers layout (``swin.encoder.layers.0.blocks.0.attention.q_proj.weight``, ``hidden_states_norms.stage1``)
    or the older Hub layout (``encoder.layers.0.blocks.0.attention.self.query.weight``). q, k, v are fused into
    ``qkv``; ``relative_position_index`` is recomputed; HF's unused final ``layernorm`` is dropped.

    Raises:
        ValueError: naming the missing keys, or any keys that would be silently dropped.
    """
    keys = _HfKeys(hf_state)
    blocks = _hf_blocks(keys)
    num_stages = max(blocks) + 1
    _convert_hf_embeddings(keys)
    for i in range(num_stages):
        for j in range(max(blocks.get(i, {-1})) + 1):
            _convert_hf_block(keys, f"encoder.layers.{i}.blocks.{j}.", f"layers.{i}.blocks.{j}.")
        _convert_hf_stage_end(keys, i, last=i == num_stages - 1)
    if keys.missing:
        raise ValueError(f"HF Swin state dict is missing {len(keys.missing)} keys: {keys.missing}")
    unexpected = sorted(k for k in keys.src if k not in keys.used and not _HF_IGNORED.search(k))
    if unexpected:
        raise ValueError(f"HF Swin state dict has {len(unexpected)} unrecognised keys: {unexpected}")
    return keys.out
