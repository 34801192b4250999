"""Multi-scale deformable attention: one dispatch point for the model, the reference as the oracle.

Importing the package imports no torch: ``plugins.msda.tensorrt_plugin`` (stdlib only) is what an edge install
with TensorRT and no torch loads. The torch parts (:func:`ms_deform_attn`, the reference, the CUDA extension) import
torch when first used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "shapes_as_pairs"]
_FROM_REFERENCE = ("ms_deform_attn_reference", "shapes_as_pairs")


def __getattr__(name: str) -> Any:
    """The reference's names, imported (with torch) on first access."""
    if name in _FROM_REFERENCE:
        from plugins.msda import reference

        return getattr(reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from plugins.msda.reference import ms_deform_attn_reference

    if value.is_cuda:
        from plugins.msda import extension  # lazy: CPU-only callers never touch the extension machinery

        if extension.kernel_applies(value, sampling_locations, attention_weights):
            return extension.ms_deform_attn_cuda(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights
            )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
