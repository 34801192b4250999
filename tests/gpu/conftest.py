"""Fixtures of the GPU tests (each module marks itself with ``tests.gpu.GPU``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions, so CUDA fp32 is compared with CPU fp32 at fp32 tolerances."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture
def msda_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The value shapes of every call that reached the MSDA CUDA kernel (the real kernel still runs)."""
    from plugins.msda import extension

    calls: list[tuple[int, ...]] = []
    real = extension.ms_deform_attn_cuda

    def counted(value, *args, **kwargs):
        calls.append(tuple(value.shape))
        return real(value, *args, **kwargs)

    monkeypatch.setattr(extension, "ms_deform_attn_cuda", counted)
    return calls
