"""The OpenVINO CPU extension of multi-scale deformable attention: build it, find it, load it.

``openvino_extension.cpp`` (the op ``m2f::MSDeformAttn`` and the ONNX frontend's mapping of a node ``MSDeformAttn``
in the domain ``m2f``) with the kernel ``msda_cpu.hpp``, compiled by CMake against the headers and CMake config the
``openvino`` Python package ships, into ``$M2F_CACHE/openvino_extension/<key>/`` (default ``~/.cache/m2f``); the
key changes with the sources, the OpenVINO version and the ABI tag, so an upgrade builds anew and never loads a
stale library. Nothing is downloaded. ``m2f build-plugins`` builds it; ``M2F_MSDA_OPENVINO_EXTENSION`` names a
library built elsewhere. Imports no torch: an edge install loads it with OpenVINO alone.

A library is loaded only from that cache folder or the environment variable, never from a path in an artifact.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from plugins.msda.tensorrt_plugin import SOURCE_DIR
from runtimes.cache import cache_root
from runtimes.errors import M2FError

logger = logging.getLogger(__name__)

EXTENSION_SOURCES = tuple(  # every file the library is built from: its build key hashes them all
    SOURCE_DIR / name
    for name in ("openvino_extension.cpp", "msda_cpu.hpp", "msda_cpu_vector.hpp", "msda_cpu_avx512.cpp",
                 "msda_cpu_avx2.cpp", "msda_cpu_baseline.cpp", "openvino/CMakeLists.txt")
)  # fmt: skip
EXTENSION_LIBRARY = "libm2f_msda_openvino.so"
LIBRARY_ID = "m2f_msda_openvino"  # what an artifact's metadata names (native_ops.library)
EXTENSION_ENV = "M2F_MSDA_OPENVINO_EXTENSION"
ISA_ENV = "M2F_MSDA_ISA"  # a lower instruction set for the kernel to use (read by `select` in msda_cpu.hpp)
ONNX_DOMAIN, ONNX_OP = "m2f", "MSDeformAttn"
BUILD_COMMAND = "m2f build-plugins"


def _abi_version() -> int:
    """``M2F_MSDA_ABI`` of ``msda_cpu.hpp``: the one place the op's interface version is written."""
    found = re.search(r"#define M2F_MSDA_ABI (\d+)", (SOURCE_DIR / "msda_cpu.hpp").read_text())
    assert found, "msda_cpu.hpp lost its M2F_MSDA_ABI"
    return int(found.group(1))


ABI_VERSION = _abi_version()


class ExtensionUnavailable(M2FError, RuntimeError):
    """The OpenVINO MSDA extension is not built here, cannot be built, or is another ABI; the message says why."""


def _openvino_cmake_dir() -> Path:
    try:
        import openvino
    except ImportError as err:
        raise ExtensionUnavailable(f"the openvino package is not installed ({err})") from err
    folder = Path(openvino.__file__).parent / "cmake"
    if not (folder / "OpenVINOConfig.cmake").is_file():
        raise ExtensionUnavailable(f"this openvino package has no CMake config under {folder}")
    return folder


def _openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def build_key() -> str:
    """What the build folder is named by: the sources, the OpenVINO version and the ABI tag."""
    digest = hashlib.sha256()
    for path in EXTENSION_SOURCES:
        digest.update(path.read_bytes())
    digest.update(_openvino_version().encode())
    return f"abi{ABI_VERSION}-ov{_openvino_version()}-{digest.hexdigest()[:12]}"


def build_directory() -> Path:
    """``runtimes.cache.cache_root()``/openvino_extension/<build key>."""
    return cache_root() / "openvino_extension" / build_key()


def library_path() -> Path | None:
    """The library to load: ``$M2F_MSDA_OPENVINO_EXTENSION`` if set (it must exist), else the cache's build for
    these sources and this OpenVINO, else None."""
    override = os.environ.get(EXTENSION_ENV, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ExtensionUnavailable(f"{EXTENSION_ENV}={override} is not a file")
        return path
    try:
        built = build_directory() / EXTENSION_LIBRARY
    except ImportError:
        return None
    return built if built.is_file() else None


def unavailable_reason() -> str | None:
    """None when the extension can be loaded here, else one line saying why and how to build it."""
    try:
        path = library_path()
    except ExtensionUnavailable as err:
        return str(err)
    if path is None:
        missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
        if missing:
            return f"not built, and {' and '.join(missing)} missing to build it: the standard-op graph runs"
        return f"not built for these sources and OpenVINO {_openvino_version()}: run `{BUILD_COMMAND}`"
    abi, _ = library_info(path)
    if abi != ABI_VERSION:
        return f"{path} has ABI {abi}, this m2f needs {ABI_VERSION}: run `{BUILD_COMMAND}`"
    return None


def library_info(path: Path) -> tuple[int | None, str | None]:
    """(ABI tag, instruction set of the kernel it runs here) a built library reports; Nones when it has none."""
    try:
        library = ctypes.CDLL(str(path))
        library.m2f_msda_isa.restype = ctypes.c_char_p
        return int(library.m2f_msda_abi_version()), library.m2f_msda_isa().decode()
    except (OSError, AttributeError):
        return None, None


_build_lock = threading.Lock()


def build(force: bool = False) -> Path:
    """Build the library into :func:`build_directory` (if not there, or ``force``); its path.
    ExtensionUnavailable naming what is missing (cmake, a compiler, OpenVINO's CMake config) or the compiler's
    last lines."""
    with _build_lock:
        cmake_dir = _openvino_cmake_dir()
        target = build_directory()
        library = target / EXTENSION_LIBRARY
        if library.is_file() and not force:
            return library
        if shutil.which("cmake") is None:
            raise ExtensionUnavailable("cmake is not installed: it builds the OpenVINO extension")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            steps = [
                ["cmake", "-S", str(SOURCE_DIR / "openvino"), "-B", work, f"-DOpenVINO_DIR={cmake_dir}"],
                ["cmake", "--build", work, "--parallel", str(os.cpu_count() or 1)],
            ]
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    said = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                    failed = " ".join(step[:2])
                    raise ExtensionUnavailable(f"building the OpenVINO MSDA extension failed ({failed}):\n{said}")
            built = Path(work) / EXTENSION_LIBRARY
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, library.with_suffix(".tmp"))
            library.with_suffix(".tmp").replace(library)  # another process never sees half a library
        logger.info("built the OpenVINO MSDA extension: %s", library)
        return library


def metadata_record() -> dict:
    """What an artifact with the fused node records (``native_ops``): the library, its ABI and the op."""
    return {"library": LIBRARY_ID, "abi": ABI_VERSION, "op": f"{ONNX_DOMAIN}::{ONNX_OP}"}


def check_record(record: dict, artifact: Path) -> Path:
    """The library an artifact's ``native_ops`` record needs, checked: ExtensionUnavailable saying how to build it,
    or that the artifact needs another ABI."""
    if record.get("library") != LIBRARY_ID:
        raise ExtensionUnavailable(
            f"{artifact} needs native library {record.get('library')!r}, which this m2f does not have"
        )
    if record.get("abi") != ABI_VERSION:
        raise ExtensionUnavailable(
            f"{artifact} was exported for the MSDA op ABI {record.get('abi')}, this m2f builds ABI {ABI_VERSION}: "
            "re-export it with `m2f export` (or with --no-native-ops for standard ops)"
        )
    reason = unavailable_reason()
    if reason is not None:
        raise ExtensionUnavailable(
            f"{artifact} holds the fused MSDA op ({record.get('op')}), and its OpenVINO extension is not usable "
            f"here: {reason}. Or re-export with `m2f export --no-native-ops`"
        )
    return library_path()  # found: unavailable_reason said nothing against it
