"""The MSDA CUDA kernel (``msda_kernel.cu``) as a torch extension built on first use, and its autograd Function.

The extension is compiled with ``torch.utils.cpp_extension.load`` into ``$M2F_CACHE/torch_extensions/`` (default
``~/.cache/m2f/torch_extensions/``), one folder per torch and CUDA version; later processes reuse the build. A failed
build (no nvcc, no CUDA_HOME, a compiler error) is logged once with its reason and callers fall back to the
pure-torch reference. ``M2F_MSDA`` picks the implementation: ``auto`` (default: the kernel for CUDA tensors when it
builds), ``reference`` (always the reference) or ``cuda`` (the kernel for CUDA tensors, an error if it cannot build).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from plugins.msda.reference import shapes_as_pairs
from runtimes.cache import cache_root

__all__ = [
    "KERNEL_DTYPES",
    "MAX_LEVELS",
    "MSDAFunction",
    "build_directory",
    "build_error",
    "cuda_kernel_available",
    "kernel_applies",
    "load_extension",
    "ms_deform_attn_cuda",
    "msda_mode",
]

_LOG = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "torch_ext.cpp", HERE / "msda_kernel.cu")
EXTENSION_NAME = "m2f_msda_cuda"
MAX_LEVELS = 16  # M2F_MSDA_MAX_LEVELS in msda_kernel.h
KERNEL_DTYPES = (torch.float32, torch.float16, torch.float64)  # forward; backward runs float16 in float32
MODES = ("auto", "reference", "cuda")

_lock = threading.Lock()
_extension: ModuleType | None = None
_build_error: str | None = None


def msda_mode() -> str:
    """The implementation ``M2F_MSDA`` asks for: ``auto`` (unset), ``reference`` or ``cuda``."""
    mode = os.environ.get("M2F_MSDA", "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"M2F_MSDA={mode!r} is not one of {', '.join(MODES)}")
    return mode


def _arch_tag() -> str:
    """The GPU architectures a build targets, as torch.utils.cpp_extension picks them (TORCH_CUDA_ARCH_LIST, else
    the visible devices): part of the build folder, since torch's rebuild check does not look at them."""
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if arch_list:
        return "arch_" + re.sub(r"[^A-Za-z0-9]+", "_", arch_list).strip("_")
    if torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return "sm" + "_".join(f"{major}{minor}" for major, minor in capabilities)
    return "nodevice"


def build_directory() -> Path:
    """Build folder of the extension: ``$M2F_CACHE`` (else ``~/.cache/m2f``)/torch_extensions/
    msda_torch<version>_cuda<version>_<architectures>."""
    root = cache_root()
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", f"torch{torch.__version__}_cuda{torch.version.cuda}")
    return root / "torch_extensions" / f"msda_{tag}_{_arch_tag()}"


def _build() -> ModuleType:
    from torch.utils import cpp_extension  # heavy import, and it logs about CUDA_HOME: only when building

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    _LOG.info("loading the MSDA CUDA extension from %s (compiles on first use, about a minute)", directory)
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(path) for path in SOURCES],
        extra_include_paths=[str(HERE)],
        extra_cflags=["-O2"],
        extra_cuda_cflags=["-O3"],
        build_directory=str(directory),
        verbose=_LOG.isEnabledFor(logging.DEBUG),
    )


def load_extension() -> ModuleType:
    """The compiled extension (built on the first call); RuntimeError with the reason when it cannot be built."""
    global _extension, _build_error
    with _lock:
        if _extension is not None:
            return _extension
        if _build_error is not None:
            raise RuntimeError(_build_error)
        try:
            _extension = _build()
        except Exception as exc:  # any build or import failure means: use the reference
            _build_error = f"building the MSDA CUDA extension failed ({type(exc).__name__}: {exc})"
            _LOG.warning("%s; multi-scale deformable attention falls back to the pure-torch reference", _build_error)
            raise RuntimeError(_build_error) from exc
        return _extension


def build_error() -> str | None:
    """Why the extension could not be built, or None (not tried yet, or built)."""
    return _build_error


def cuda_kernel_available() -> bool:
    """True when a CUDA device is present and the extension is built (building it now if needed)."""
    if not torch.cuda.is_available():
        return False
    try:
        load_extension()
    except RuntimeError:
        return False
    return True


def _tracing() -> bool:
    """Export, TorchScript, ONNX export or torch.compile: these must see the traceable reference."""
    return (
        torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def kernel_applies(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor) -> bool:
    """Whether ``ms_deform_attn`` runs the CUDA kernel for these tensors (``M2F_MSDA``, device, dtypes, levels).

    Raises RuntimeError under ``M2F_MSDA=cuda`` when CUDA tensors cannot run on the kernel.
    """
    mode = msda_mode()
    if mode == "reference" or not value.is_cuda or _tracing():
        return False
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    reason = None
    if dtype not in KERNEL_DTYPES:
        reason = f"dtype {dtype} is not one of {KERNEL_DTYPES}"
    elif not (sampling_locations.is_cuda and attention_weights.is_cuda):
        reason = "sampling_locations and attention_weights are not all on CUDA"
    elif sampling_locations.dim() == 6 and sampling_locations.shape[3] > MAX_LEVELS:
        reason = f"{sampling_locations.shape[3]} levels exceed the kernel's {MAX_LEVELS}"
    if reason is not None:
        if mode == "cuda":
            raise RuntimeError(f"M2F_MSDA=cuda but the MSDA kernel cannot run: {reason}")
        return False
    if mode == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("M2F_MSDA=cuda but torch.cuda.is_available() is False")
        load_extension()  # raises with the build failure
        return True
    return cuda_kernel_available()


@functools.lru_cache(maxsize=64)
def _shapes_on_device(pairs: tuple[tuple[int, int], ...], device: torch.device) -> Tensor:
    return torch.tensor(pairs, dtype=torch.int32, device=device)


def _spatial_shapes_tensor(spatial_shapes: Tensor | Sequence[Sequence[int]], value: Tensor, levels: int) -> Tensor:
    """(L, 2) int tensor on value's device, checked like the reference (a host read, as the reference does)."""
    pairs = shapes_as_pairs(spatial_shapes)
    if len(pairs) != levels:
        raise ValueError(f"{len(pairs)} spatial shapes for {levels} levels in sampling_locations")
    covered = sum(h * w for h, w in pairs)
    if covered != value.shape[1]:
        raise ValueError(f"spatial shapes {pairs} cover {covered} positions, value has {value.shape[1]}")
    if (
        isinstance(spatial_shapes, Tensor)
        and spatial_shapes.device == value.device
        and spatial_shapes.dtype in (torch.int32, torch.int64)
    ):
        return spatial_shapes.contiguous()
    return _shapes_on_device(tuple((int(h), int(w)) for h, w in pairs), value.device)


class MSDAFunction(torch.autograd.Function):
    """Autograd wrapper of the CUDA kernel: (value, spatial_shapes, sampling_locations, attention_weights) -> out.

    ``spatial_shapes`` is an (L, 2) int32/int64 tensor on the values' device; the three float tensors share a dtype
    (float32, float16 or float64). The backward runs in float32 (float64 for float64 inputs) and casts back.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        value: Tensor,
        spatial_shapes: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        ext = load_extension()
        value, sampling_locations, attention_weights = (
            t.contiguous() for t in (value, sampling_locations, attention_weights)
        )
        ctx.save_for_backward(value, spatial_shapes, sampling_locations, attention_weights)
        return ext.forward(value, spatial_shapes, sampling_locations, attention_weights)  # (N, Lq, M * D)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, Tensor | None, Tensor | None]:
        value, spatial_shapes, sampling_locations, attention_weights = ctx.saved_tensors
        dtype = value.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        grad_value, grad_locations, grad_weights = load_extension().backward(
            value.to(compute),
            spatial_shapes,
            sampling_locations.to(compute),
            attention_weights.to(compute),
            grad_output.to(compute).contiguous(),
        )
        needs = ctx.needs_input_grad
        return (
            grad_value.to(dtype) if needs[0] else None,
            None,
            grad_locations.to(dtype) if needs[2] else None,
            grad_weights.to(dtype) if needs[3] else None,
        )


def ms_deform_attn_cuda(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    level_start_index: Tensor | None,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The reference's interface on the CUDA kernel; mixed float dtypes run in their promoted dtype (as autocast)."""
    del level_start_index  # implied by spatial_shapes, as in the reference
    if sampling_locations.dim() != 6:
        raise ValueError(f"sampling_locations must be (N, Lq, M, L, P, 2), got {tuple(sampling_locations.shape)}")
    shapes = _spatial_shapes_tensor(spatial_shapes, value, sampling_locations.shape[3])
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    return MSDAFunction.apply(value.to(dtype), shapes, sampling_locations.to(dtype), attention_weights.to(dtype))
