"""pytest-benchmark: multi-scale deformable attention at Mask2Former pixel-decoder shapes.

    pytest benchmarks/test_bench_msda.py --benchmark-only

The pure-torch reference on the CPU (what the exported graphs compute, as GridSample), and the CUDA kernel
(``plugins.msda.extension``) beside the reference on the GPU when there is one (skipped otherwise).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from plugins.msda.benchmark import CASES, BenchCase, make_inputs  # noqa: E402
from plugins.msda.reference import ms_deform_attn_reference  # noqa: E402

CPU_CASES = [c for c in CASES if c.name in ("m2f_512x512_b1", "m2f_1024x1024_b1")]
GPU_CASES = [c for c in CASES if c.name in ("m2f_512x512_b1", "m2f_512x512_b4", "m2f_1024x2048_b1")]


def _expected_shape(case: BenchCase) -> tuple[int, int, int]:
    return case.batch, case.queries or case.positions, case.heads * case.channels


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.name)
def test_msda_reference_cpu(benchmark, case: BenchCase) -> None:
    value, shapes, locations, weights = make_inputs(case, torch.float32, "cpu")
    benchmark.extra_info.update(
        levels=case.levels, queries=case.queries or case.positions, threads=torch.get_num_threads()
    )

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return ms_deform_attn_reference(value, shapes, None, locations, weights)

    out = benchmark(call)
    assert out.shape == _expected_shape(case)


def _cuda_kernel() -> object:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from plugins.msda import extension

    if not extension.cuda_kernel_available():
        pytest.skip(f"the MSDA CUDA extension does not build here: {extension.build_error()}")
    return extension.ms_deform_attn_cuda


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("implementation", ["kernel", "reference"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_msda_cuda(benchmark, case: BenchCase, implementation: str, dtype: str) -> None:
    kernel = _cuda_kernel()
    op = kernel if implementation == "kernel" else ms_deform_attn_reference
    value, shapes, locations, weights = make_inputs(case, getattr(torch, dtype), "cuda")
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), dtype=dtype)

    def call() -> torch.Tensor:
        with torch.inference_mode():
            out = op(value, shapes, None, locations, weights)
        torch.cuda.synchronize()
        return out

    out = benchmark(call)
    assert out.shape == _expected_shape(case)
