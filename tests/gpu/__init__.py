"""GPU tests: every module sets ``pytestmark = GPU``: marked ``gpu``, skipped without a CUDA device.

Run them on a GPU machine with ``pytest -m gpu`` (``make gpu-check`` does, see tools/gpu_check.py).
"""

from __future__ import annotations

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:
    _HAS_CUDA = False

GPU = [pytest.mark.gpu, pytest.mark.skipif(not _HAS_CUDA, reason="no CUDA device")]
