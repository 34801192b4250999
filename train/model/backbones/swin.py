"""Swin Transformer backbone, numerically and key-for-key the official Mask2Former ``D2SwinTransformer``.

Parameter and buffer names match the official checkpoints under their ``backbone.`` prefix, so an official
state dict with that prefix stripped loads with ``strict=True``. Inputs of any size are padded the official
way: to the patch size before the patch embedding, and to the window size inside every block (the shifted
window mask is always built for the padded map, even when a stage is smaller than one window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from train.model.config import SwinConfig

# Additive mask value between tokens of different shifted regions (the official value, not -inf).
_MASK_VALUE = -100.0


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``, rescale the rest."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path` (no parameters)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window_size`` -> (B*nW, ws*ws, C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_reverse(windows: Tensor, window_size: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B*nW, ws*ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window_size: int) -> Tensor:
    """(ws*ws, ws*ws) int64 index into the ((2*ws-1)^2, nH) relative position bias table."""
    r = torch.arange(window_size)
    coords = torch.stack(torch.meshgrid(r, r, indexing="ij")).flatten(1)  # (2, ws*ws)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (ws*ws, ws*ws, 2)
    rel = rel + (window_size - 1)  # shift both axes to start at 0
    return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]


def shifted_window_mask(Hp: int, Wp: int, window_size: int, shift_size: int, device: torch.device) -> Tensor:
    """(nW, ws*ws, ws*ws) additive mask (0 / -100) for shifted-window attention on a padded (Hp, Wp) map.

    After the cyclic shift, the last ``window_size`` rows/columns of the map hold up to two regions each
    (``[-ws, -shift)`` and ``[-shift, end)``); tokens may only attend within their own region.
    """
    h = torch.arange(Hp, device=device)
    w = torch.arange(Wp, device=device)
    h_region = (h >= Hp - window_size).long() + (h >= Hp - shift_size).long()  # (Hp,)
    w_region = (w >= Wp - window_size).long() + (w >= Wp - shift_size).long()  # (Wp,)
    region = (h_region[:, None] * 3 + w_region[None, :]).float()  # (Hp, Wp)
    region = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # (nW, ws*ws)
    diff = region[:, None, :] - region[:, :, None]  # (nW, ws*ws, ws*ws)
    return torch.zeros_like(diff).masked_fill(diff != 0, _MASK_VALUE)


class Mlp(nn.Module):
    """Two-layer GELU MLP of a transformer block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows, with a learned relative position bias."""

    relative_position_index: Tensor

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent, as in the official code: official checkpoints carry it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """(nH, N, N) bias added to the attention logits, N = ws*ws."""
        N = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, nH)
        return bias.view(N, N, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B*nW, N, C) windows, batch-major; mask: (nW, N, N) additive shifted-window mask or None."""
        BnW, N, C = x.shape
        nH = self.num_heads
        qkv = self.qkv(x).view(BnW, N, 3, nH, C // nH).permute(2, 0, 3, 1, 4)  # (3, B*nW, nH, N, d)
        q, k, v = qkv.unbind(0)  # (B*nW, nH, N, d) each
        bias = self.relative_position_bias().unsqueeze(0)  # (1, nH, N, N)
        # SDPA's output layout depends on the kernel: CUDA flash / memory-efficient attention return the
        # (batch, heads, N, d) shape over a (batch, N, heads, d) memory layout. So never `.view` it: transpose,
        # then one reshape that copies at most once whichever layout came back.
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B*nW, nH, N, d)
            out = out.transpose(1, 2)  # (B*nW, N, nH, d)
        else:
            # Fold windows into the head axis so the per-window mask broadcasts over the batch only.
            nW = mask.shape[0]
            attn_mask = (bias + mask.unsqueeze(1)).reshape(1, nW * nH, N, N)  # (1, nW*nH, N, N)
            shape = (BnW // nW, nW * nH, N, C // nH)
            out = F.scaled_dot_product_attention(
                q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=attn_mask
            )  # (B, nW*nH, N, d)
            out = out.unflatten(1, (nW, nH)).transpose(2, 3)  # (B, nW, N, nH, d)
        out = out.reshape(BnW, N, C)  # (B*nW, N, C)
        return self.proj(out)


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention block: x + attn(norm1(x)), then x + mlp(norm2(x)), both with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, H: int, W: int, mask: Tensor) -> Tensor:
        """x: (B, H*W, C); mask: (nW, N, N) for the window-padded map, used only if this block shifts."""
        B, L, C = x.shape
        ws, shift = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        # Pad to multiples of the window size (zeros after norm1, as official).
        pad_b = (ws - H % ws) % ws
        pad_r = (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # (B, Hp, Wp, C)
        Hp, Wp = H + pad_b, W + pad_r
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws)  # (B*nW, ws*ws, C)
        windows = self.attn(windows, mask if shift > 0 else None)  # (B*nW, ws*ws, C)
        x = window_reverse(windows, ws, Hp, Wp)  # (B, Hp, Wp, C)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :H, :W, :].reshape(B, L, C)  # (B, H*W, C)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat + LayerNorm + linear 4C -> 2C (odd sizes zero-padded at the bottom/right)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # (B, H', W', C), H', W' even
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.reshape(B, -1, 4 * C)  # (B, H'/2*W'/2, 4C)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating regular / shifted windows, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rates: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.gradient_checkpointing = False
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path_rate=drop_path_rates[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
        """x: (B, H*W, C) -> (stage output (B, H*W, C), input of the next stage (B, ceil(H/2)*ceil(W/2), 2C))."""
        ws = self.window_size
        Hp, Wp = (H + ws - 1) // ws * ws, (W + ws - 1) // ws * ws
        mask = shifted_window_mask(Hp, Wp, ws, self.shift_size, x.device).to(x.dtype)  # (nW, N, N)
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, H, W, mask, use_reentrant=False)
            else:
                x = blk(x, H, W, mask)
        down = self.downsample(x, H, W) if self.downsample is not None else x
        return x, down


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv patchify + LayerNorm, padding H, W up to multiples of the patch."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H/p), ceil(W/p))."""
        p = self.patch_size
        H, W = x.shape[-2:]
        x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        x = self.proj(x)  # (B, C, Wh, Ww)
        B, C, Wh, Ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B, Wh*Ww, C)
        return x.transpose(1, 2).reshape(B, C, Wh, Ww)


class SwinTransformer(nn.Module):
    """Swin backbone returning the normalised 1/4, 1/8, 1/16, 1/32 maps (official D2SwinTransformer, all 4 out).

    ``gradient_checkpointing`` (default off) recomputes blocks in the backward pass to save memory.
    """

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        if len(config.depths) != 4 or len(config.num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages, got depths={config.depths} num_heads={config.num_heads}")
        self.config = config
        C = config.embed_dim
        self.num_features = [C * 2**i for i in range(4)]
        self.channels: tuple[int, int, int, int] = (C, 2 * C, 4 * C, 8 * C)
        self.strides: tuple[int, int, int, int] = (4, 8, 16, 32)
        self.patch_embed = PatchEmbed(config.patch_size, 3, C)
        if config.absolute_pos_embed:
            n = config.pretrain_img_size // config.patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, C, n, n))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        n = sum(config.depths)  # stochastic depth rising linearly to drop_path_rate (plain floats: meta-device safe)
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.layers = nn.ModuleList()
        start = 0
        for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads, strict=True)):
            self.layers.append(
                BasicLayer(
                    self.num_features[i],
                    depth,
                    heads,
                    config.window_size,
                    config.mlp_ratio,
                    config.qkv_bias,
                    rates[start : start + depth],
                    downsample=i < 3,
                )
            )
            start += depth
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.apply(_init_weights)

    @property
    def gradient_checkpointing(self) -> bool:
        return all(layer.gradient_checkpointing for layer in self.layers)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        for layer in self.layers:
            layer.gradient_checkpointing = value

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> [(B, C, H/4, W/4), (B, 2C, H/8, W/8), (B, 4C, H/16, W/16), (B, 8C, H/32, W/32)]."""
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes (B, C, H, W), got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # (B, C, Wh, Ww)
        B, _, H, W = x.shape
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        outs: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x, H, W)  # out: (B, H*W, C_i)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(B, H, W, -1).permute(0, 3, 1, 2).contiguous())  # (B, C_i, H, W)
            H, W = (H + 1) // 2, (W + 1) // 2
        return outs


def _init_weights(m: nn.Module) -> None:
    """Swin init: truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
