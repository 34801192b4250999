"""The TensorRT MSDA plugin: the Python helper, its one identity (plugin.json, read by CMake and Python), and that
tensorrt_plugin.cpp compiles against TensorRT's headers and behaves through TensorRT's plugin interfaces on the host.

Header sets: TensorRT 10.3 (JetPack 6.1/6.2) and 11.1 from ``<shared>/third_party/tensorrt-*/include``, where
``<shared>`` is ``benchmarks.paths.SHARED_ROOT`` (``$M2F_SHARED``, else the folder above ``$M2F_DATA``, else
``../shared`` beside the repository); plus ``$TensorRT_ROOT`` or a system install when present. Each set is skipped
only where its folder is absent.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from benchmarks.paths import SHARED_ROOT
from plugins.msda import tensorrt_plugin
from tests.conftest import REPO_ROOT
from tests.plugins.cuda_toolchain import CXX, NVCC, cuda_home, cuda_library_dir, tensorrt_include_dir

MSDA_DIR = REPO_ROOT / "plugins" / "msda"
PLUGIN_SOURCE = MSDA_DIR / "tensorrt_plugin.cpp"
HARNESS_SOURCE = Path(__file__).with_name("msda_trt_plugin_harness.cpp")


def test_plugin_library_path(monkeypatch, tmp_path):
    """$M2F_MSDA_TRT_PLUGIN, else the cache's build, else a checkout's build/msda; none built: the cache's."""
    cache, checkout = tmp_path / "cache", tmp_path / "checkout" / "build" / "msda" / tensorrt_plugin.LIBRARY_NAME
    cached = cache / "tensorrt_plugin" / tensorrt_plugin.LIBRARY_NAME
    monkeypatch.delenv(tensorrt_plugin.ENV_PATH, raising=False)
    monkeypatch.setenv("M2F_CACHE", str(cache))
    monkeypatch.setattr(tensorrt_plugin, "CHECKOUT_LIBRARY", checkout)
    assert tensorrt_plugin.plugin_library_path() == cached  # nothing built yet: where build_commands() put it
    checkout.parent.mkdir(parents=True)
    checkout.touch()
    assert tensorrt_plugin.plugin_library_path() == checkout
    cached.parent.mkdir(parents=True)
    cached.touch()
    assert tensorrt_plugin.plugin_library_path() == cached
    monkeypatch.setenv(tensorrt_plugin.ENV_PATH, str(tmp_path / "lib.so"))
    assert tensorrt_plugin.plugin_library_path() == tmp_path / "lib.so"


def test_the_checkout_build_is_found_from_the_package_itself():
    """A checkout's build/msda is beside plugins/, wherever the process runs; a wheel install has none there."""
    assert tensorrt_plugin.CHECKOUT_LIBRARY == REPO_ROOT / "build" / "msda" / tensorrt_plugin.LIBRARY_NAME


def test_load_missing_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv("M2F_CACHE", str(tmp_path / "cache"))
    commands = tensorrt_plugin.build_commands()
    assert commands == (
        f"cmake -S {MSDA_DIR} -B {tmp_path / 'cache' / 'tensorrt_plugin'} "
        f"&& cmake --build {tmp_path / 'cache' / 'tensorrt_plugin'}"
    )
    with pytest.raises(FileNotFoundError, match=re.escape(commands)):
        tensorrt_plugin.load_plugin_library(tmp_path / "libm2f_msda_trt.so")


def test_load_broken_library_raises_oserror(tmp_path):
    broken = tmp_path / "libm2f_msda_trt.so"
    broken.write_bytes(b"not an ELF file")
    with pytest.raises(OSError, match="could not load"):
        tensorrt_plugin.load_plugin_library(broken)


def test_identity_has_one_source():
    """plugin.json is what Python (hence the exporter's ONNX node) and CMake (hence the library) both read; the
    C++ defaults for builds without CMake hold the same values."""
    identity = json.loads((MSDA_DIR / "plugin.json").read_text())
    python = (tensorrt_plugin.PLUGIN_NAME, tensorrt_plugin.PLUGIN_VERSION, tensorrt_plugin.PLUGIN_NAMESPACE)
    assert python == (identity["name"], identity["version"], identity["namespace"])
    cmake = (MSDA_DIR / "CMakeLists.txt").read_text()
    for key, define in (("name", "NAME"), ("version", "VERSION"), ("namespace", "NAMESPACE")):
        assert f'string(JSON M2F_MSDA_PLUGIN_{define} GET "${{M2F_MSDA_PLUGIN_JSON}}" {key})' in cmake
        assert f'"M2F_MSDA_PLUGIN_{define}=\\"${{M2F_MSDA_PLUGIN_{define}}}\\""' in cmake
        assert f'#define M2F_MSDA_PLUGIN_{define} "{identity[key]}"' in PLUGIN_SOURCE.read_text()
    assert 'M2F_MSDA_PLUGIN_NAMESPACE "" CACHE' not in cmake  # no second, overridable copy of the namespace
    assert f"add_library({tensorrt_plugin.LIBRARY_NAME.removeprefix('lib').removesuffix('.so')} SHARED" in cmake


def test_exporter_writes_the_identity():
    pytest.importorskip("torch")
    from compile.tensorrt_export import PLUGIN_OPS

    identity = json.loads((MSDA_DIR / "plugin.json").read_text())
    assert PLUGIN_OPS["m2f"] == (identity["name"], identity["version"], identity["namespace"])


HEADER_SETS = {"tensorrt-10.3": "tensorrt-10.3.0", "tensorrt-11.1": "tensorrt-11.1"}


def _header_dir(header_set: str) -> Path | None:
    if header_set == "installed":  # $TensorRT_ROOT or a system install
        return tensorrt_include_dir()
    folder = SHARED_ROOT / "third_party" / HEADER_SETS[header_set] / "include"
    return folder if (folder / "NvInferRuntime.h").is_file() else None


@pytest.fixture(scope="module", params=[*HEADER_SETS, "installed"])
def include_dirs(request: pytest.FixtureRequest) -> list[str]:
    trt, cuda = _header_dir(request.param), cuda_home()
    if CXX is None or cuda is None:
        pytest.skip("needs a C++ compiler and the CUDA headers")
    if trt is None:
        pytest.skip(f"no {request.param} headers (shared folder {SHARED_ROOT}; or set TensorRT_ROOT)")
    return ["-isystem", str(trt), "-isystem", str(cuda / "include"), f"-I{MSDA_DIR}"]


@pytest.fixture(scope="module")
def kernel_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """msda_kernel.cu compiled once (it includes no TensorRT header) for every header set's harness."""
    if NVCC is None or cuda_library_dir() is None:
        pytest.skip("nvcc and libcudart are needed to build the kernel the plugin links")
    kernel_obj = tmp_path_factory.mktemp("msda_kernel") / "msda_kernel.o"
    nvcc = [NVCC, "-c", "-O1", "-arch=sm_87", "-Xcompiler", "-fPIC", "-o", str(kernel_obj)]
    subprocess.run([*nvcc, str(MSDA_DIR / "msda_kernel.cu")], check=True, capture_output=True, timeout=600)
    return kernel_obj


@pytest.mark.parametrize("defines", [[], ["-DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS"]], ids=["static", "loadlibrary"])
def test_plugin_compiles_against_tensorrt_headers(include_dirs, defines):
    command = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *include_dirs, *defines]
    done = subprocess.run([*command, str(PLUGIN_SOURCE)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_plugin_behaves_through_tensorrt_interfaces(include_dirs, kernel_object, tmp_path):
    """The harness drives the plugin as TensorRT's builder would, minus enqueue on a GPU."""
    cuda_lib = cuda_library_dir()
    harness = tmp_path / "harness"
    link = [f"-L{cuda_lib}", f"-Wl,-rpath,{cuda_lib}"]
    command = [CXX, "-std=c++17", "-O1", "-DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS", *include_dirs, "-o", str(harness)]
    done = subprocess.run(
        [*command, str(HARNESS_SOURCE), str(PLUGIN_SOURCE), str(kernel_object), *link, "-lcudart"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run = subprocess.run([str(harness)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout
