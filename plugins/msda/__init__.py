"""Multi-scale deformable attention: one dispatch point for the model, the reference as the oracle."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from plugins.msda.reference import ms_deform_attn_reference, shapes_as_pairs

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "shapes_as_pairs"]


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    level_start_index: Tensor | None,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention, (N, S, M, D) values -> (N, Lq, M*D).

    The single place the model calls the op: CUDA tensors run the compiled kernel (``plugins/msda/extension.py``)
    when it builds, everything else (CPU, export and tracing, ``M2F_MSDA=reference``) runs the pure-torch reference.
    """
    if value.is_cuda:
        from plugins.msda import extension  # lazy: CPU-only callers never touch the extension machinery

        if extension.kernel_applies(value, sampling_locations, attention_weights):
            return extension.ms_deform_attn_cuda(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights
            )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
