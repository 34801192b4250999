"""The cache's identity, one definition: where it lives, how a file is hashed, and the code a compiled graph
depends on. Used by the SDK's compile-on-first-use, the TensorRT engine cache, the native op builds and the
benchmark harness. A leaf: stdlib only, so every package (plugins and train included) may use it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "M2F_CACHE"
# the top level of our packages: the checkout, or site-packages for a wheel install (they are siblings in both)
PACKAGES_ROOT = Path(__file__).resolve().parents[1]
# the code an exported graph depends on, relative to PACKAGES_ROOT: a change there makes cached artifacts stale
GRAPH_SOURCES = ("compile", "train/model", "plugins/msda", "runtimes/vocabulary.py")


def cache_root() -> Path:
    """``$M2F_CACHE``, else ``~/.cache/m2f``: every cache of m2f lives below it."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "m2f")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB chunks (a checkpoint or artifact is never held whole)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def graph_code_key(root: Path | None = None, sources: tuple[str, ...] | None = None) -> str:
    """A hash of the Python sources an exported graph comes from (``sources``, default ``GRAPH_SOURCES``, under
    ``root``, default ``PACKAGES_ROOT``), so that after a change to the model or the compiler a cache compiles anew
    instead of serving an artifact the old code made."""
    root = root or PACKAGES_ROOT
    sources = GRAPH_SOURCES if sources is None else sources
    digest = hashlib.sha256()
    for source in sources:
        where = root / source
        for path in sorted(where.rglob("*.py") if where.is_dir() else [where] if where.exists() else []):
            name = path.relative_to(root) if path.is_relative_to(root) else path  # (a test's own file: absolute)
            digest.update(name.as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:12]
