"""Pure-torch multi-scale deformable attention: the oracle every kernel and every export is tested against.

Interface (the same as TensorRT's ``MultiscaleDeformableAttnPlugin_TRT``):

- ``value``               (N, S, M, D)        S = sum of H_l * W_l over the L levels
- ``spatial_shapes``      (L, 2) int          (H_l, W_l) per level, a tensor or a sequence of pairs
- ``level_start_index``   (L,) int            offset of each level in S (derivable; accepted for the interface)
- ``sampling_locations``  (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]; 0 and 1 are the outer pixel edges
- ``attention_weights``   (N, Lq, M, L, P)
- returns                 (N, Lq, M * D)

Sampling is bilinear with zero padding outside the map (``grid_sample`` with ``align_corners=False``),
so a location x maps to the pixel coordinate ``x * W - 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def shapes_as_pairs(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(H, W) per level: python ints, or the symbolic sizes torch.export passes through unchanged."""
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    level_start_index: Tensor | None,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention with ``grid_sample``; see the module docstring for shapes."""
    del level_start_index  # implied by spatial_shapes; part of the plugin interface only
    shapes = shapes_as_pairs(spatial_shapes)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if len(shapes) != L:
        raise ValueError(f"{len(shapes)} spatial shapes for {L} levels in sampling_locations")
    if not torch.compiler.is_exporting() and sum(h * w for h, w in shapes) != S:
        raise ValueError(f"spatial shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {S}")
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    # Levels outermost, in one transpose each: slicing the inner level axis per level cost a Gather per slice in
    # exported graphs. Points before queries: grid_sample then writes (N*M, D, P, Lq), and the weighted sum over
    # the points is a chain of elementwise products and sums of contiguous query rows, which OpenVINO fuses and
    # keeps in f32 between the terms (a ReduceSum over an innermost P was slower; one over P as an outer axis ran
    # in the half-precision type and failed the fp16 test). Timings: benchmarks/results/issue20_msda_layout/.
    grids = (2 * sampling_locations - 1).permute(3, 0, 2, 4, 1, 5).flatten(1, 2).unbind(0)  # L x (N*M, P, Lq, 2)
    weights = attention_weights.permute(3, 0, 2, 4, 1).reshape(L, N * M, 1, P, Lq).unbind(0)  # L x (N*M, 1, P, Lq)
    out = None
    for level, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W), as the image-layout permutation (N, H, W, C) -> (N, C, H, W), which
        # OpenVINO runs with an optimised reorder kernel (a 3-D (S, M, D) -> (M, D, S) ran its generic transpose)
        v = value_levels[level].reshape(N, h, w, M * D).permute(0, 3, 1, 2).reshape(N * M, D, h, w)
        sampled = F.grid_sample(v, grids[level], mode="bilinear", padding_mode="zeros", align_corners=False)
        level_out = sampled[:, :, 0] * weights[level][:, :, 0]  # (N*M, D, Lq)
        for point in range(1, P):
            level_out = level_out + sampled[:, :, point] * weights[level][:, :, point]
        out = level_out if out is None else out + level_out  # points, then levels: the order of a per-level sum(-1)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()
