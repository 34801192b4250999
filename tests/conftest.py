"""Shared fixtures: seeded RNG and the optional real-data folder (../shared/data or $M2F_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shared data folder: $M2F_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("M2F_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (set M2F_DATA)")
    return root


@pytest.fixture(autouse=True)
def _seed() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
