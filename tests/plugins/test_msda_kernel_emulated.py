"""The MSDA CUDA kernel bodies run on the host (msda_kernel_host_emulation.cpp) against the reference: indexing,
vector and scalar paths, int32/int64 shapes, zero padding and the backward's warp-shuffle reduction, checked on
machines without a GPU. The GPU tests in test_msda_cuda.py remain the real check."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest
import torch

from plugins.msda import ms_deform_attn_reference
from tests.conftest import REPO_ROOT
from tests.plugins.cuda_toolchain import CXX, cuda_home

KERNEL_SOURCE = REPO_ROOT / "plugins" / "msda" / "msda_kernel.cu"
EMULATION_SOURCE = Path(__file__).with_name("msda_kernel_host_emulation.cpp")
# where msda_kernel.cu's device part ends and its launchers (with <<<...>>>) begin, and the size check
LAUNCHERS_START = "bool aligned16("
CHECK_SIZES = 'extern "C" cudaError_t m2f_msda_check_sizes('
FIRST_LAUNCHER = 'extern "C" cudaError_t m2f_msda_forward_f32('
SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.float64: "f64"}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> ctypes.CDLL:
    cuda = cuda_home()
    if CXX is None or cuda is None:
        pytest.skip("needs a C++20 compiler and the CUDA headers")
    build = tmp_path_factory.mktemp("msda_emulation")
    probe = subprocess.run(
        [CXX, "-std=c++20", "-fsyntax-only", "-x", "c++", "-"],
        input="#include <barrier>\n#include <atomic>\nvoid f(float& x) { std::atomic_ref<float>(x).fetch_add(1.f); }",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        pytest.skip(f"{CXX} lacks C++20 <barrier>/atomic_ref<float>")
    source = KERNEL_SOURCE.read_text()
    for marker in (LAUNCHERS_START, CHECK_SIZES, FIRST_LAUNCHER):
        assert marker in source, f"msda_kernel.cu no longer has {marker!r}: update the emulation test"
    device_part = source[: source.index(LAUNCHERS_START)]
    check_sizes = source[source.index(CHECK_SIZES) : source.index(FIRST_LAUNCHER)]
    (build / "msda_kernels_extracted.inc").write_text(device_part + "} // namespace\n\n" + check_sizes)
    library = build / "libmsda_emulation.so"
    command = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-Wno-unknown-pragmas", "-pthread"]
    includes = [f"-I{build}", f"-I{KERNEL_SOURCE.parent}", "-isystem", str(cuda / "include")]
    done = subprocess.run(
        [*command, *includes, "-o", str(library), str(EMULATION_SOURCE)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return ctypes.CDLL(str(library))


def pointer(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy 2 bytes (half) or 4/8 bytes off a 16-byte boundary."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype)
    return buffer[1:].view(t.shape).copy_(t)


CASES = [
    # shapes, N, Lq, M, D, P
    pytest.param([(6, 8), (3, 4), (2, 2)], 2, 5, 2, 4, 3, id="D4"),
    pytest.param([(8, 8), (4, 4), (2, 2)], 2, 7, 3, 32, 4, id="D32"),
    pytest.param([(5, 7)], 1, 4, 1, 3, 4, id="D3"),
    pytest.param([(8, 8), (4, 4)], 1, 9, 2, 6, 2, id="D6"),
    pytest.param([(5, 6), (3, 3), (2, 2), (1, 1)], 1, 3, 2, 36, 4, id="D36-4levels"),
    pytest.param([(4, 4), (2, 2)], 1, 3, 1, 160, 2, id="D160-5groups"),
    pytest.param([(4, 4)], 1, 0, 2, 8, 2, id="no-queries"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["aligned-int64", "misaligned-int32"])
@pytest.mark.parametrize(("shapes", "N", "Lq", "M", "D", "P"), CASES)
def test_emulated_kernel_matches_reference(emulator, shapes, N, Lq, M, D, P, dtype, layout):
    L, S = len(shapes), sum(h * w for h, w in shapes)
    value = torch.randn(N, S, M, D, dtype=torch.float64).to(dtype)
    locations = (torch.rand(N, Lq, M, L, P, 2, dtype=torch.float64) * 1.4 - 0.2).to(dtype)
    weights = torch.rand(N, Lq, M, L, P, dtype=torch.float64).softmax(-1).to(dtype)
    spatial = torch.tensor(shapes, dtype=torch.int64 if layout == "aligned-int64" else torch.int32)
    out = torch.empty(N, Lq, M * D, dtype=dtype)
    if layout == "misaligned-int32":
        value, out = misaligned(value), misaligned(out)
    sizes = [ctypes.c_int(x) for x in (N, S, M, D, Lq, L, P)]
    is64 = int(spatial.dtype == torch.int64)
    forward = getattr(emulator, f"emu_forward_{SUFFIX[dtype]}")
    path = forward(pointer(value), pointer(spatial), is64, pointer(locations), pointer(weights), pointer(out), *sizes)
    assert path == (layout == "aligned-int64" and D % (16 // value.element_size()) == 0)

    oracle = torch.float32 if dtype == torch.float16 else dtype
    leaves = [t.to(oracle).requires_grad_(True) for t in (value, locations, weights)]
    want = ms_deform_attn_reference(leaves[0], spatial, None, leaves[1], leaves[2])
    tolerance = {torch.float32: 1e-5, torch.float16: 1e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.to(oracle), want.detach(), atol=tolerance, rtol=0)
    if dtype == torch.float16:
        return  # the kernel's backward is float32/float64

    grad_out = torch.randn(N, Lq, M * D, dtype=dtype)
    if layout == "misaligned-int32":
        grad_out = misaligned(grad_out)
    want.backward(grad_out)
    grads = [torch.empty_like(t) for t in (value, locations, weights)]
    backward = getattr(emulator, f"emu_backward_{SUFFIX[dtype]}")
    result = backward(
        pointer(value), pointer(spatial), is64, pointer(locations), pointer(weights), pointer(grad_out),
        *(pointer(g) for g in grads), *sizes,
    )  # fmt: skip
    chunks = -(-D // (16 // value.element_size()))
    assert result // 1000 == min(chunks & -chunks, 32)  # the shuffle group the launcher picks
    for got, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, atol=tolerance, rtol=tolerance)


def test_emulated_kernel_ignores_levels_that_do_not_fit(emulator):
    """Shapes that claim more positions than value holds read nothing beyond value: such levels sample zeros."""
    N, M, D, Lq, P = 1, 1, 4, 3, 2
    value = torch.randn(N, 6, M, D)
    spatial = torch.tensor([[2, 3], [4, 4]], dtype=torch.int32)  # the second level (16 positions) does not fit
    locations = torch.rand(N, Lq, M, 2, P, 2)
    weights = torch.rand(N, Lq, M, 2, P)
    out = torch.empty(N, Lq, M * D)
    sizes = [ctypes.c_int(x) for x in (N, 6, M, D, Lq, 2, P)]
    emulator.emu_forward_f32(
        pointer(value), pointer(spatial), 0, pointer(locations), pointer(weights), pointer(out), *sizes
    )
    first_level_only = ms_deform_attn_reference(value, [(2, 3)], None, locations[:, :, :, :1], weights[:, :, :, :1])
    torch.testing.assert_close(out, first_level_only, atol=1e-6, rtol=0)
