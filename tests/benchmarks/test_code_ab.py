"""benchmarks.code_ab: two trees' Segmenters on the same frames, interleaved; each side imports its own tree."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import code_ab
from tests.conftest import REPO_ROOT


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="needs a git checkout")
def test_before_after_of_the_same_commit_agree(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout

    worktrees = git("worktree", "list")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        cv2.imwrite(str(images / f"{k}.png"), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    out = tmp_path / "out"
    head = git("rev-parse", "HEAD").strip()
    code_ab.main(["--before", head, "--images", str(images), "--frames", "2", "--rounds", "2", "--threads", "1",
                  "--precision", "fp32", "--out", str(out)])  # fmt: skip
    report = json.loads((out / "code_ab.json").read_text())
    assert report["labels_equal"] and set(report["sides"]) == {"before", "after"}
    assert all(side["precision"] == "fp32" and side["inference_ms"] > 0 for side in report["sides"].values())
    assert "after / before" in (out / "code_ab.md").read_text()
    assert git("worktree", "list") == worktrees  # its worktree is removed again
