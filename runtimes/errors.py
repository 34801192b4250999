"""The base of every error this project raises for a user's input, files or machine: ``except sdk.M2FError``.

Each concrete error also keeps the builtin base it always had (``FrameError`` is a ``ValueError``,
``StreamTimeoutError`` a ``TimeoutError``, ``RuntimeNotAvailable`` an ``ImportError``), so existing handlers keep
working. A leaf: it imports nothing, so every package (train aside, which raises builtins) can use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class M2FError(Exception):
    """Something this project detected and explained: a bad frame, a damaged artifact, a missing runtime or
    device, a dead stream, a failed accuracy gate. Bugs stay builtin exceptions with tracebacks."""


class CheckpointError(M2FError, ValueError):
    """A checkpoint (ours, detectron2's or an HF folder) that cannot be used: damaged, unsafe, or another model's;
    the message names the file and why. Raised where the SDK and the compiler read one (the training code itself
    raises the builtin ``ValueError`` it wraps)."""


class ArtifactError(M2FError, ValueError):
    """The file is not a usable m2f artifact; the message says why and what to do."""


EXPORT_HINT = "re-export it with `m2f export`"  # what an ArtifactError about a compiled file tells the user to do


def quiet_on_broken_pipe(main: Callable[[], int]) -> int:
    """``main()``, but a reader that leaves early (``... | head``) ends it with status 0 and no traceback: that is
    no error of the user's. Standard output is pointed at /dev/null so the interpreter's final flush is quiet too."""
    try:
        return main()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
