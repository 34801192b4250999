"""The MSDA CUDA kernel: nvcc builds it for Jetson Orin (sm_87) and Hopper (sm_90); on a GPU it matches the
reference (forward float32/float16/float64, gradients, zero padding, odd D); the dispatch falls back to the
reference on CPU and when asked to.

GPU tests are marked ``gpu`` and skip without a CUDA device. Run them on a GPU machine with
``pytest tests/plugins -m gpu``.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.msda import extension, ms_deform_attn, ms_deform_attn_reference
from plugins.msda.extension import MSDAFunction
from tests.conftest import REPO_ROOT
from tests.plugins.cuda_toolchain import NVCC, cuda_home

MSDA_DIR = REPO_ROOT / "plugins" / "msda"
KERNEL_SOURCE = MSDA_DIR / "msda_kernel.cu"
# what torch.utils.cpp_extension passes to nvcc: the kernel must build with and without them
TORCH_HALF_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
EM_CUDA = 190

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


# ---------------------------------------------------------------------------------------------------------------
# nvcc: the kernel compiles for the edge (Orin, sm_87) and the server (Hopper, sm_90)


def nvcc_archs() -> set[str]:
    """The real architectures this nvcc can build, as sm_XY."""
    done = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    return {line.strip().replace("compute_", "sm_") for line in done.stdout.split()} if done.returncode == 0 else set()


def embedded_cuda_archs(obj: bytes) -> set[int]:
    """SM numbers of the CUDA ELF images (cubins) embedded in a host object's fat binary."""
    archs = set()
    pos = obj.find(b"\x7fELF", 1)
    while pos != -1:
        is_64 = obj[pos + 4] == 2
        machine = struct.unpack_from("<H", obj, pos + 18)[0]
        if machine == EM_CUDA:
            flags = struct.unpack_from("<I", obj, pos + (48 if is_64 else 36))[0]
            archs.update({flags & 0xFF, (flags >> 8) & 0xFF})  # the SM field moved from bits 0-7 to 8-15 in CUDA 12.8
        pos = obj.find(b"\x7fELF", pos + 4)
    return archs


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_nvcc_compiles_kernel(arch, tmp_path):
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    if arch not in nvcc_archs():
        pytest.skip(f"{NVCC} cannot build {arch}")
    obj = tmp_path / f"msda_kernel_{arch}.o"
    command = [NVCC, "-c", "-O2", f"-arch={arch}", "-std=c++17", "-Xcompiler", "-Wall,-Wextra", *TORCH_HALF_FLAGS]
    done = subprocess.run(
        [*command, "-o", str(obj), str(KERNEL_SOURCE)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "msda_kernel" in line and "warning" in line.lower()]
    assert warnings == []
    assert obj.is_file() and obj.stat().st_size > 0
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is not None:
        listing = subprocess.run([cuobjdump, "--list-elf", str(obj)], capture_output=True, text=True, timeout=60)
        assert arch in listing.stdout, listing.stdout + listing.stderr
    else:
        assert int(arch.removeprefix("sm_")) in embedded_cuda_archs(obj.read_bytes())


@pytest.mark.slow
def test_torch_extension_builds_and_imports(tmp_path):
    """torch_ext.cpp + msda_kernel.cu build with torch's own recipe and import, without a GPU too."""
    home = cuda_home()
    if NVCC is None or home is None:
        pytest.skip("no CUDA toolkit (nvcc and the runtime headers)")
    env = {**os.environ, "CUDA_HOME": str(home), "M2F_CACHE": str(tmp_path), "MAX_JOBS": "1"}
    if not torch.cuda.is_available():
        env["TORCH_CUDA_ARCH_LIST"] = "8.7"  # no device to detect: build for Orin only, which keeps it fast
    code = (
        "from plugins.msda import extension\n"
        "ext = extension.load_extension()\n"
        "assert ext.max_levels == extension.MAX_LEVELS, ext.max_levels\n"
        "print(extension.build_directory())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]).is_relative_to(tmp_path / "torch_extensions")


# ---------------------------------------------------------------------------------------------------------------
# dispatch: CPU tensors always run the reference


def make_inputs(
    shapes: list[tuple[int, int]],
    N: int,
    Lq: int,
    M: int,
    D: int,
    P: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    low: float = -0.2,
    high: float = 1.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value, spatial_shapes int64, sampling_locations in [low, high), attention_weights) on a device."""
    L = len(shapes)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(N, S, M, D, dtype=torch.float64)
    locations = torch.rand(N, Lq, M, L, P, 2, dtype=torch.float64) * (high - low) + low
    weights = torch.rand(N, Lq, M, L * P, dtype=torch.float64).softmax(-1).view(N, Lq, M, L, P)
    spatial = torch.tensor(shapes, dtype=torch.int64, device=device)
    value, locations, weights = (t.to(device=device, dtype=dtype) for t in (value, locations, weights))
    return value, spatial, locations, weights


def test_dispatch_on_cpu_is_the_reference(monkeypatch):
    value, spatial, locations, weights = make_inputs([(6, 8), (3, 4)], 2, 5, 2, 4, 3)
    want = ms_deform_attn_reference(value, spatial, None, locations, weights)

    def must_not_run(*args: object) -> bool:
        raise AssertionError("the extension was consulted for CPU tensors")

    monkeypatch.setattr(extension, "kernel_applies", must_not_run)
    for mode in ("", "auto", "cuda", "reference"):
        monkeypatch.setenv("M2F_MSDA", mode)
        assert torch.equal(ms_deform_attn(value, spatial, None, locations, weights), want)
        assert torch.equal(ms_deform_attn(value, [(6, 8), (3, 4)], None, locations, weights), want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_no_kernel_without_cuda():
    assert extension.cuda_kernel_available() is False
    assert extension.build_error() is None  # nothing was built or tried


def test_msda_mode(monkeypatch):
    monkeypatch.delenv("M2F_MSDA", raising=False)
    assert extension.msda_mode() == "auto"
    monkeypatch.setenv("M2F_MSDA", "Reference")
    assert extension.msda_mode() == "reference"
    monkeypatch.setenv("M2F_MSDA", "triton")
    with pytest.raises(ValueError, match="M2F_MSDA"):
        extension.msda_mode()


def test_build_directory_follows_m2f_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("M2F_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.7;9.0")
    directory = extension.build_directory()
    assert directory.parent == tmp_path / "torch_extensions"
    assert directory.name.startswith("msda_torch") and directory.name.endswith("arch_8_7_9_0")
    monkeypatch.delenv("M2F_CACHE")
    assert extension.build_directory().is_relative_to(Path.home() / ".cache" / "m2f" / "torch_extensions")


def test_kernel_limits_match_the_header():
    header = (MSDA_DIR / "msda_kernel.h").read_text()
    assert f"#define M2F_MSDA_MAX_LEVELS {extension.MAX_LEVELS}\n" in header


# ---------------------------------------------------------------------------------------------------------------
# GPU: the kernel against the reference

CASES = [
    # shapes, N, Lq, M, D, P
    pytest.param([(6, 8), (3, 4), (2, 2)], 2, 5, 2, 4, 3, id="3levels-D4"),
    pytest.param([(16, 16), (8, 8), (4, 4)], 2, 37, 8, 32, 4, id="mask2former-D32"),
    pytest.param([(5, 7)], 1, 4, 1, 3, 4, id="1level-D3"),
    pytest.param([(8, 8), (4, 4)], 1, 9, 3, 6, 2, id="D6-partial-chunk"),
    pytest.param([(9, 5), (5, 3), (3, 2), (1, 1)], 2, 11, 4, 36, 4, id="4levels-D36"),
    pytest.param([(7, 5)], 1, 33, 2, 1, 1, id="D1"),
    pytest.param([(12, 20), (6, 10), (3, 5)], 1, 50, 8, 64, 4, id="D64"),
]


@pytest.fixture(scope="module")
def cuda_kernel():
    """The built extension on a GPU machine; a build failure there fails the tests."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert extension.cuda_kernel_available(), extension.build_error()
    return extension.load_extension()


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("shapes", "N", "Lq", "M", "D", "P"), CASES)
def test_forward_float32_matches_reference(cuda_kernel, shapes, N, Lq, M, D, P):
    value, spatial, locations, weights = make_inputs(shapes, N, Lq, M, D, P, device="cuda")
    got = extension.ms_deform_attn_cuda(value, spatial, None, locations, weights)
    want = ms_deform_attn_reference(value, spatial, None, locations, weights)
    assert got.shape == (N, Lq, M * D) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("shapes", "N", "Lq", "M", "D", "P"), CASES)
def test_forward_float16_matches_reference(cuda_kernel, shapes, N, Lq, M, D, P):
    value, spatial, locations, weights = make_inputs(shapes, N, Lq, M, D, P, dtype=torch.float16, device="cuda")
    got = extension.ms_deform_attn_cuda(value, spatial, None, locations, weights)
    assert got.dtype == torch.float16
    # the oracle in float32 on the very same float16 inputs: only the kernel's float16 I/O differs
    want = ms_deform_attn_reference(value.float(), spatial, None, locations.float(), weights.float())
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("shapes", "N", "Lq", "M", "D", "P"), CASES)
def test_forward_float64_matches_reference(cuda_kernel, shapes, N, Lq, M, D, P):
    value, spatial, locations, weights = make_inputs(shapes, N, Lq, M, D, P, dtype=torch.float64, device="cuda")
    got = extension.ms_deform_attn_cuda(value, spatial, None, locations, weights)
    want = ms_deform_attn_reference(value, spatial, None, locations, weights)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("shapes", "N", "Lq", "M", "D", "P"), CASES)
def test_backward_float32_matches_reference_autograd(cuda_kernel, shapes, N, Lq, M, D, P):
    """Analytic kernel gradients against autograd through the reference (grid_sample), both float32."""
    inputs = make_inputs(shapes, N, Lq, M, D, P, device="cuda")
    grad_out = torch.randn(N, Lq, M * D, device="cuda")
    grads = []
    for op in (extension.ms_deform_attn_cuda, ms_deform_attn_reference):
        value, spatial, locations, weights = (t.clone() for t in inputs)
        for t in (value, locations, weights):
            t.requires_grad_(True)
        op(value, spatial, None, locations, weights).backward(grad_out)
        grads.append((value.grad, locations.grad, weights.grad))
    for got, want, name in zip(*grads, ("value", "sampling_locations", "attention_weights"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.gpu
@requires_cuda
def test_backward_float16_runs_in_float32(cuda_kernel):
    value, spatial, locations, weights = make_inputs([(8, 8), (4, 4)], 1, 9, 8, 32, 4, torch.float16, "cuda")
    half = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
    full = [t.float().requires_grad_(True) for t in (value, locations, weights)]
    grad_out = torch.randn(1, 9, 8 * 32, device="cuda")
    extension.ms_deform_attn_cuda(half[0], spatial, None, half[1], half[2]).backward(grad_out.half())
    ms_deform_attn_reference(full[0], spatial, None, full[1], full[2]).backward(grad_out.half().float())
    for h, f in zip(half, full, strict=True):
        assert h.grad.dtype == torch.float16
        torch.testing.assert_close(h.grad.float(), f.grad, atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
@requires_cuda
def test_gradcheck_float64(cuda_kernel):
    """torch.autograd.gradcheck of MSDAFunction with the kernel's float64 instantiation (forward and backward)."""
    value, spatial, locations, weights = make_inputs([(4, 5), (2, 3)], 1, 3, 2, 3, 2, torch.float64, "cuda")
    inputs = (
        value.requires_grad_(True),
        spatial,
        locations.requires_grad_(True),
        weights.requires_grad_(True),
    )
    assert torch.autograd.gradcheck(MSDAFunction.apply, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@requires_cuda
def test_zero_padding_and_out_of_range_locations(cuda_kernel):
    shapes = [(6, 7), (3, 4)]
    # all points far outside the map: exactly zero, and zero gradients for locations and weights
    value, spatial, locations, weights = make_inputs(shapes, 2, 8, 2, 8, 3, device="cuda", low=1.5, high=4.0)
    locations.requires_grad_(True)
    weights.requires_grad_(True)
    out = extension.ms_deform_attn_cuda(value, spatial, None, -locations, weights)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.count_nonzero(locations.grad) == 0 and torch.count_nonzero(weights.grad) == 0
    # points in the half-pixel border band, on the edges 0 and 1, and straddling them: the reference's padding
    for low, high in ((-0.15, 0.05), (0.95, 1.15), (0.0, 0.0), (1.0, 1.0), (-1.0, 2.0)):
        value, spatial, locations, weights = make_inputs(shapes, 2, 8, 2, 8, 3, device="cuda", low=low, high=high)
        got = extension.ms_deform_attn_cuda(value, spatial, None, locations, weights)
        want = ms_deform_attn_reference(value, spatial, None, locations, weights)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.gpu
@requires_cuda
def test_spatial_shapes_forms_and_layouts(cuda_kernel):
    """int64/int32/CPU tensors and plain pairs give the same result; misaligned and strided inputs too."""
    shapes = [(8, 8), (4, 4)]
    value, spatial, locations, weights = make_inputs(shapes, 2, 7, 8, 32, 4, device="cuda")
    want = extension.ms_deform_attn_cuda(value, spatial, None, locations, weights)
    for form in (spatial.int(), spatial.cpu(), shapes):
        assert torch.equal(extension.ms_deform_attn_cuda(value, form, None, locations, weights), want)
    # a contiguous value 4 bytes off a 16-byte boundary takes the scalar path
    buffer = torch.empty(value.numel() + 1, device="cuda")
    misaligned = buffer[1:].view(value.shape).copy_(value)
    torch.testing.assert_close(
        extension.ms_deform_attn_cuda(misaligned, spatial, None, locations, weights), want, atol=1e-6, rtol=0
    )
    # non-contiguous views are made contiguous
    strided = value.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    assert torch.equal(extension.ms_deform_attn_cuda(strided, spatial, None, locations, weights), want)


@pytest.mark.gpu
@requires_cuda
def test_empty_queries(cuda_kernel):
    value, spatial, locations, weights = make_inputs([(4, 4)], 2, 0, 2, 8, 2, device="cuda")
    value.requires_grad_(True)
    out = extension.ms_deform_attn_cuda(value, spatial, None, locations, weights)
    assert out.shape == (2, 0, 16)
    out.sum().backward()
    assert torch.count_nonzero(value.grad) == 0


@pytest.mark.gpu
@requires_cuda
def test_inconsistent_shapes_raise_like_the_reference(cuda_kernel):
    value = torch.randn(1, 10, 1, 2, device="cuda")
    locations, weights = torch.rand(1, 2, 1, 1, 1, 2, device="cuda"), torch.rand(1, 2, 1, 1, 1, device="cuda")
    with pytest.raises(ValueError, match="cover"):
        extension.ms_deform_attn_cuda(value, [(3, 3)], None, locations, weights)
    with pytest.raises(ValueError, match="levels"):
        extension.ms_deform_attn_cuda(value, [(2, 5), (1, 1)], None, locations, weights)


@pytest.mark.gpu
@requires_cuda
def test_dispatch_on_cuda(cuda_kernel, monkeypatch):
    value, spatial, locations, weights = make_inputs([(6, 8), (3, 4)], 1, 5, 2, 8, 3, device="cuda")
    calls = []
    kernel_op = extension.ms_deform_attn_cuda

    def counting(*args: Any) -> torch.Tensor:
        calls.append(1)
        return kernel_op(*args)

    monkeypatch.setattr(extension, "ms_deform_attn_cuda", counting)
    monkeypatch.delenv("M2F_MSDA", raising=False)
    got = ms_deform_attn(value, spatial, None, locations, weights)
    assert calls == [1]
    want = ms_deform_attn_reference(value, spatial, None, locations, weights)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # M2F_MSDA=reference forces the reference
    monkeypatch.setenv("M2F_MSDA", "reference")
    assert torch.equal(ms_deform_attn(value, spatial, None, locations, weights), want)
    assert calls == [1]
    # more levels than the kernel holds fall back to the reference, and M2F_MSDA=cuda says why
    monkeypatch.setenv("M2F_MSDA", "auto")
    many = [(1, 1)] * (extension.MAX_LEVELS + 1)
    value, spatial, locations, weights = make_inputs(many, 1, 2, 1, 4, 1, device="cuda")
    ms_deform_attn(value, spatial, None, locations, weights)
    assert calls == [1]
    monkeypatch.setenv("M2F_MSDA", "cuda")
    with pytest.raises(RuntimeError, match="levels"):
        ms_deform_attn(value, spatial, None, locations, weights)


@pytest.mark.gpu
@requires_cuda
def test_extension_agrees_on_limits(cuda_kernel):
    assert cuda_kernel.max_levels == extension.MAX_LEVELS
