"""Where the TensorRT MSDA plugin library lives, how it is built, and loading it into the process.

The library (``tensorrt_plugin.cpp`` + ``msda_kernel.cu``) is built with CMake on the machine that runs TensorRT,
into the m2f cache (:func:`build_commands` gives the two commands with this install's paths)::

    cmake -S <this folder> -B $M2F_CACHE/tensorrt_plugin -DTensorRT_ROOT=<TensorRT prefix>   # JetPack: not needed
    cmake --build $M2F_CACHE/tensorrt_plugin

(add ``-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc`` where nvcc is not on PATH, as on JetPack). It is found
(:func:`plugin_library_path`) through ``$M2F_MSDA_TRT_PLUGIN``, else in that cache folder, else in a development
checkout's ``build/msda/`` (``cmake -S plugins/msda -B build/msda`` from the repository root), located from this
folder; a wheel install has no such folder and looks in the cache alone.

Loading it with ``RTLD_GLOBAL`` registers the ``M2F_MultiscaleDeformableAttn`` creator in TensorRT's global plugin
registry, where the ONNX parser finds it for nodes of that op type. No torch and no TensorRT import here.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
from pathlib import Path

from runtimes.cache import cache_root

__all__ = [
    "BUILTIN_PLUGIN_NAME",
    "BUILTIN_PLUGIN_VERSION",
    "LIBRARY_NAME",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "build_commands",
    "load_plugin_library",
    "plugin_library_path",
]

_LOG = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent
IDENTITY_FILE = SOURCE_DIR / "plugin.json"  # also read by CMakeLists.txt: the one source of the three values
_IDENTITY = json.loads(IDENTITY_FILE.read_text())
PLUGIN_NAME: str = _IDENTITY["name"]
PLUGIN_VERSION: str = _IDENTITY["version"]
PLUGIN_NAMESPACE: str = _IDENTITY["namespace"]  # the ONNX node's plugin_namespace; the creator registers under it
# TensorRT's own plugin with the same inputs (in libnvinfer_plugin); its output is (N, Lq, M, D), not (N, Lq, M*D).
BUILTIN_PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT"
BUILTIN_PLUGIN_VERSION = "1"  # IPluginV2DynamicExt; "2" is the IPluginV3 port, TensorRT >= 10.11

LIBRARY_NAME = "libm2f_msda_trt.so"

ENV_PATH = "M2F_MSDA_TRT_PLUGIN"
# where a development checkout's CMake build puts the library: <checkout>/build/msda, found from this folder (in a
# wheel install the folder above plugins/ is site-packages, where no such file is)
CHECKOUT_LIBRARY = SOURCE_DIR.parents[1] / "build" / "msda" / LIBRARY_NAME

_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}


def build_directory() -> Path:
    """``runtimes.cache.cache_root()``/tensorrt_plugin: where :func:`build_commands` build the library."""
    return cache_root() / "tensorrt_plugin"


def build_commands() -> str:
    """The two CMake commands that build the library from this install's sources into :func:`build_directory`."""
    build = build_directory()
    return f"cmake -S {SOURCE_DIR} -B {build} && cmake --build {build}"


def plugin_library_path() -> Path:
    """The plugin library: ``$M2F_MSDA_TRT_PLUGIN`` if set; else the cache's build (:func:`build_directory`), else
    a development checkout's ``build/msda`` (``CHECKOUT_LIBRARY``), whichever exists first; else the cache's,
    where :func:`build_commands` put it. The file need not exist yet."""
    override = os.environ.get(ENV_PATH)
    if override:
        return Path(override).expanduser()
    cached = build_directory() / LIBRARY_NAME
    return next((path for path in (cached, CHECKOUT_LIBRARY) if path.is_file()), cached)


def load_plugin_library(path: Path | str | None = None) -> ctypes.CDLL:
    """Load the plugin library (default ``plugin_library_path()``) with ``RTLD_GLOBAL``, once per process.

    Its creator registers itself in TensorRT's plugin registry on load. Raises FileNotFoundError with the build
    commands when the library is missing, OSError when it cannot be loaded (libnvinfer or libcudart not found).
    """
    library = Path(path).expanduser() if path is not None else plugin_library_path()
    if not library.is_file():
        raise FileNotFoundError(
            f"the TensorRT MSDA plugin library {library} is not built. Build it on the machine that runs TensorRT: "
            f"{build_commands()} (add -DTensorRT_ROOT=<TensorRT prefix> to the first command if TensorRT is not in "
            f"the system paths), or point ${ENV_PATH} at a built {LIBRARY_NAME}"
        )
    library = library.resolve()
    with _lock:
        if library in _loaded:
            return _loaded[library]
        try:
            handle = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise OSError(
                f"could not load the TensorRT MSDA plugin library {library}: {exc}. libnvinfer and libcudart must "
                "be on the library path (LD_LIBRARY_PATH), from the TensorRT and CUDA it was built against"
            ) from exc
        _loaded[library] = handle
        _LOG.info("loaded TensorRT plugin %s (version %s) from %s", PLUGIN_NAME, PLUGIN_VERSION, library)
        return handle
