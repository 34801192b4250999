"""``m2f benchmark family`` (benchmarks.model_family): the packaged models beside the peer, timed both ways, charted
with held-out figures."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import cpu_precisions
from benchmarks.cli import FAMILY_COMMAND
from benchmarks.litert_peer import default_peer_path
from sdk.cli import main as m2f_main
from sdk.model_registry import default_model_name, named_model


def test_the_family_table_and_chart(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("matplotlib")
    if not default_peer_path().exists():
        pytest.skip("the LiteRT peer's file is not under ../shared")
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    name = default_model_name()
    argv = ["--models", name, "--images", str(frames), "--frames", "1", "--rounds", "1", "--threads", "1"]
    assert m2f_main(["benchmark", FAMILY_COMMAND, *argv, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "model_family.json").read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert set(rows) == {name, cpu_precisions.PEER_ROW}
    held_out = named_model(name).figures["held_out_miou"]
    assert rows[name]["held_out_miou"] == held_out["value"]
    assert rows[cpu_precisions.PEER_ROW]["held_out_miou"] == held_out["peer"]
    assert rows[cpu_precisions.PEER_ROW]["vs_peer_alone"] == 1.0 and rows[name]["vs_peer_interleaved"] > 0
    assert rows[name]["runs"] in named_model(name).files  # the file Segmenter("cpu", model=name) runs here
    assert (tmp_path / "out" / "model_family.png").stat().st_size > 1000
    assert held_out["source"] in (tmp_path / "out" / "model_family.md").read_text()
