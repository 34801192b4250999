"""Where the benchmarks find the development checkout and the shared files kept beside it.

Paths of a checkout, which mean nothing in a wheel install: only benchmarks use them (the device side finds its
native libraries through ``plugins.msda`` and the cache, ``runtimes.cache``). Read once, at import:

* ``REPO_ROOT``: this checkout (configs/, benchmarks/results/, git worktrees for A/B runs);
* ``SHARED_ROOT``: ``$M2F_SHARED``, else the folder holding ``$M2F_DATA``, else ``../shared`` beside the checkout
  (data/, third_party/);
* ``DATA_ROOT``: ``$M2F_DATA``, else ``SHARED_ROOT/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdk.model_registry import REPO_ROOT  # the checkout's root, defined where the packaged models find checkpoints/


def _shared_root() -> Path:
    if os.environ.get("M2F_SHARED"):
        return Path(os.environ["M2F_SHARED"])
    if os.environ.get("M2F_DATA"):
        return Path(os.environ["M2F_DATA"]).parent
    return REPO_ROOT.parent / "shared"


SHARED_ROOT = _shared_root()
DATA_ROOT = Path(os.environ.get("M2F_DATA") or SHARED_ROOT / "data")
