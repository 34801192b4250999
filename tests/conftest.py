"""Shared fixtures: seeded RNG and the optional real-data folder (../shared/data or $M2F_DATA)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The suite never reads the user's cache (~/.cache/m2f): a compiled artifact or a native op library built there
# (`m2f build-plugins`) would change what an export writes. Tests that need a cache make their own.
if "M2F_CACHE" not in os.environ:
    os.environ["M2F_CACHE"] = tempfile.mkdtemp(prefix="m2f-test-cache-")


# Runs ``python -m MODULE ARGS`` with SIGINT raising KeyboardInterrupt even when this test process was started
# with SIGINT ignored (a background job of a non-interactive shell: the ignore is inherited through exec, and Python
# then keeps it), so tests that send Ctrl-C to a CLI test the CLI, not how the suite was launched.
_INTERRUPTIBLE = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def interruptible(argv: list[str]) -> list[str]:
    """``[python, "-m", module, *args]`` made to take Ctrl-C (SIGINT) however the suite was started."""
    if argv[1] != "-m":
        raise ValueError(f"expected [python, '-m', module, ...], got {argv[:3]}")
    return [argv[0], "-c", _INTERRUPTIBLE, *argv[2:]]


def data_root() -> Path:
    """The shared data folder: $M2F_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("M2F_DATA", REPO_ROOT.parent / "shared" / "data"))


def _existing(root: Path, what: str, variable: str) -> Path:
    if not root.is_dir():
        pytest.skip(f"{what} {root} is absent (set {variable})")
    return root


@pytest.fixture
def shared_data() -> Path:
    return _existing(data_root(), "real data folder", "M2F_DATA")


@pytest.fixture
def pretrained_dir() -> Path:
    """The shared pretrained weights (LiteRT files), ``benchmarks.litert_peer.pretrained_dir``."""
    from benchmarks.litert_peer import pretrained_dir

    return _existing(pretrained_dir(), "pretrained weights folder", "M2F_PRETRAINED")


@pytest.fixture(autouse=True)
def _seed() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_leaked_sigchld_handler():
    """Fail a test that leaves a process-wide SIGCHLD handler behind, and restore the default.

    Iterating a multi-worker torch DataLoader installs one for the life of the process. In a test worker that had
    also run OpenVINO, every later child-process exit (any subprocess a test starts) then risked heap corruption
    and a segfault that took the xdist worker down (reproduced: test_backend_threads, then an in-process
    num_workers>0 training run, then subprocess.run). Tests that train with workers do it in a child process.
    """
    import signal

    before = signal.getsignal(signal.SIGCHLD)
    yield
    after = signal.getsignal(signal.SIGCHLD)
    if after is not before:
        signal.signal(signal.SIGCHLD, before)
        pytest.fail(f"the test left a SIGCHLD handler installed ({after!r}); run multi-worker loaders in a child")
