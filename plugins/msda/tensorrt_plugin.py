"""Where the TensorRT MSDA plugin library lives, how it is built, and loading it into the process.

The library (``tensorrt_plugin.cpp`` + ``msda_kernel.cu``) is built with CMake on the machine that runs TensorRT,
from the repository root::

    cmake -S plugins/msda -B build/msda -DTensorRT_ROOT=<TensorRT prefix>   # JetPack: TensorRT_ROOT not needed
    cmake --build build/msda

(add ``-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc`` where nvcc is not on PATH, as on JetPack).

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

from runtimes.vocabulary import REPO_ROOT

__all__ = [
    "BUILD_COMMANDS",
    "BUILTIN_PLUGIN_NAME",
    "BUILTIN_PLUGIN_VERSION",
    "LIBRARY_NAME",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
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

BUILD_COMMANDS = "cmake -S plugins/msda -B build/msda && cmake --build build/msda"
ENV_PATH = "M2F_MSDA_TRT_PLUGIN"

_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}


def plugin_library_path() -> Path:
    """The plugin library: ``$M2F_MSDA_TRT_PLUGIN`` if set, else ``<repository>/build/msda/libm2f_msda_trt.so``,
    where ``BUILD_COMMANDS`` run from the repository root put it. The file need not exist yet."""
    override = os.environ.get(ENV_PATH)
    if override:
        return Path(override).expanduser()
    return REPO_ROOT / "build" / "msda" / LIBRARY_NAME


def load_plugin_library(path: Path | str | None = None) -> ctypes.CDLL:
    """Load the plugin library (default ``plugin_library_path()``) with ``RTLD_GLOBAL``, once per process.

    Its creator registers itself in TensorRT's plugin registry on load. Raises FileNotFoundError with the build
    commands when the library is missing, OSError when it cannot be loaded (libnvinfer or libcudart not found).
    """
    library = Path(path).expanduser() if path is not None else plugin_library_path()
    if not library.is_file():
        raise FileNotFoundError(
            f"the TensorRT MSDA plugin library {library} is not built. Build it on the machine that runs TensorRT, "
            f"from {REPO_ROOT}: {BUILD_COMMANDS} (add -DTensorRT_ROOT=<TensorRT prefix> to the first command if "
            f"TensorRT is not in the system paths), or point ${ENV_PATH} at a built {LIBRARY_NAME}"
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
