"""``m2f export --target`` takes the project's words: a profile (where it runs) or a runtime (the engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compile.cli import export_main
from runtimes import read_metadata
from tests.tiny_models import tiny_architecture
from train.data.synthetic import synthetic_meta
from train.model import Mask2Former, Mask2FormerConfig, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **tiny_architecture()})).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, meta)


def test_a_profile_exports_what_runs_there(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cpu.onnx"
    assert export_main([str(checkpoint), "--target", "cpu", "--input-size", "64x96", "--out", str(out)]) == 0
    assert "cpu runs openvino artifacts; exporting one at fp32" in capsys.readouterr().err
    meta = read_metadata(out)
    assert (meta["target"], meta["precision"]) == ("openvino", "fp32")


@pytest.mark.parametrize(("name", "suggestion"), [("jetsn", "jetson"), ("openvnio", "openvino")])
def test_a_misspelt_target_is_a_usage_error_with_a_suggestion(checkpoint: Path, capsys, name, suggestion) -> None:
    with pytest.raises(SystemExit) as stop:
        export_main([str(checkpoint), "--target", name, "--input-size", "64x96", "--out", "x.onnx"])
    assert stop.value.code == 2
    assert f"did you mean '{suggestion}'" in capsys.readouterr().err


def test_torch_has_nothing_to_export(checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        export_main([str(checkpoint), "--target", "torch", "--input-size", "64x96", "--out", "x.onnx"])
    assert "no artifact to export" in capsys.readouterr().err


def test_help_states_the_defaults_export_uses(capsys) -> None:
    from compile.export import CALIB_IMAGES, GATE_IMAGES, MAX_DROP

    with pytest.raises(SystemExit):
        export_main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in (f"(default {MAX_DROP})", f"(default {CALIB_IMAGES})", f"(default {GATE_IMAGES})"):
        assert default in help_text
