"""Where the CUDA toolkit, a C++ compiler and TensorRT's headers are on this machine, for the MSDA build tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")
TENSORRT_ROOT_ENV = "TensorRT_ROOT"  # the spelling CMakeLists.txt reads too


def cuda_home() -> Path | None:
    """A CUDA toolkit root with the runtime headers: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, or nvcc's root."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC is not None:
        roots.append(str(Path(NVCC).resolve().parents[1]))
    return next((Path(r) for r in roots if r and (Path(r) / "include" / "cuda_runtime_api.h").is_file()), None)


def cuda_library_dir() -> Path | None:
    """The folder with libcudart next to cuda_home()'s headers."""
    home = cuda_home()
    if home is None:
        return None
    return next((d for d in (home / "lib64", home / "lib") if any(d.glob("libcudart.so*"))), None)


def tensorrt_include_dir() -> Path | None:
    """Where NvInferRuntime.h lives: $TensorRT_ROOT/include, else the usual system places (JetPack included)."""
    candidates = [Path(os.environ[TENSORRT_ROOT_ENV]) / "include"] if os.environ.get(TENSORRT_ROOT_ENV) else []
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"), Path("/usr/include")]
    candidates.append(Path("/usr/local/TensorRT/include"))
    return next((c for c in candidates if (c / "NvInferRuntime.h").is_file()), None)
