"""The TensorRT MSDA plugin: the Python helper, and (where TensorRT's headers are found, e.g. TensorRT_ROOT) that
tensorrt_plugin.cpp compiles against them and behaves through TensorRT's plugin interfaces on the host."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from plugins.msda import tensorrt_plugin
from tests.conftest import REPO_ROOT
from tests.plugins.cuda_toolchain import CXX, NVCC, cuda_home, cuda_library_dir, tensorrt_include_dir

MSDA_DIR = REPO_ROOT / "plugins" / "msda"
PLUGIN_SOURCE = MSDA_DIR / "tensorrt_plugin.cpp"
HARNESS_SOURCE = Path(__file__).with_name("msda_trt_plugin_harness.cpp")


def test_plugin_library_path(monkeypatch, tmp_path):
    monkeypatch.delenv(tensorrt_plugin.ENV_PATH, raising=False)
    assert tensorrt_plugin.plugin_library_path() == REPO_ROOT / "build" / "msda" / "libm2f_msda_trt.so"
    monkeypatch.setenv(tensorrt_plugin.ENV_PATH, str(tmp_path / "lib.so"))
    assert tensorrt_plugin.plugin_library_path() == tmp_path / "lib.so"


def test_load_missing_library_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(tensorrt_plugin.BUILD_COMMANDS)):
        tensorrt_plugin.load_plugin_library(tmp_path / "libm2f_msda_trt.so")


def test_load_broken_library_raises_oserror(tmp_path):
    broken = tmp_path / "libm2f_msda_trt.so"
    broken.write_bytes(b"not an ELF file")
    with pytest.raises(OSError, match="could not load"):
        tensorrt_plugin.load_plugin_library(broken)


def test_identity_matches_the_sources():
    source = PLUGIN_SOURCE.read_text()
    assert f'kPluginName = "{tensorrt_plugin.PLUGIN_NAME}"' in source
    assert f'kPluginVersion = "{tensorrt_plugin.PLUGIN_VERSION}"' in source
    cmake = (MSDA_DIR / "CMakeLists.txt").read_text()
    assert f'set(M2F_MSDA_PLUGIN_NAMESPACE "{tensorrt_plugin.PLUGIN_NAMESPACE}"' in cmake
    assert f"add_library({tensorrt_plugin.LIBRARY_NAME.removeprefix('lib').removesuffix('.so')} SHARED" in cmake


@pytest.fixture(scope="module")
def include_dirs() -> list[str]:
    trt, cuda = tensorrt_include_dir(), cuda_home()
    if CXX is None or trt is None or cuda is None:
        pytest.skip("needs a C++ compiler and the TensorRT and CUDA headers (set TensorRT_ROOT)")
    return ["-isystem", str(trt), "-isystem", str(cuda / "include"), f"-I{MSDA_DIR}"]


@pytest.mark.parametrize("defines", [[], ["-DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS"]], ids=["static", "loadlibrary"])
def test_plugin_compiles_against_tensorrt_headers(include_dirs, defines):
    command = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *include_dirs, *defines]
    done = subprocess.run([*command, str(PLUGIN_SOURCE)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_plugin_behaves_through_tensorrt_interfaces(include_dirs, tmp_path):
    """The harness drives the plugin as TensorRT's builder would, minus enqueue on a GPU."""
    cuda_lib = cuda_library_dir()
    if NVCC is None or cuda_lib is None:
        pytest.skip("nvcc and libcudart are needed to build the kernel the plugin links")
    kernel_obj = tmp_path / "msda_kernel.o"
    nvcc = [NVCC, "-c", "-O1", "-arch=sm_87", "-Xcompiler", "-fPIC", "-o", str(kernel_obj)]
    subprocess.run([*nvcc, str(MSDA_DIR / "msda_kernel.cu")], check=True, capture_output=True, timeout=300)
    harness = tmp_path / "harness"
    link = [f"-L{cuda_lib}", f"-Wl,-rpath,{cuda_lib}"]
    command = [CXX, "-std=c++17", "-O1", "-DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS", *include_dirs, "-o", str(harness)]
    done = subprocess.run(
        [*command, str(HARNESS_SOURCE), str(PLUGIN_SOURCE), str(kernel_obj), *link, "-lcudart"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run = subprocess.run([str(harness)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout
