"""`m2f convert`: HF folder -> our checkpoint; the model-zoo listing."""

from __future__ import annotations

import torch

from compile.export import default_task
from sdk.cli import main
from tests.runtimes.deployable import tiny_checkpoint
from tests.train.hf_models import RESNET, hf_config, random_hf_model
from train.model import load_pretrained, save_checkpoint


def test_convert_hf_folder(tmp_path, capsys):
    hf = random_hf_model(hf_config(RESNET, 3, 4))
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "out" / "model.pt")]) == 0
    loaded = load_pretrained(tmp_path / "out" / "model.pt")
    assert loaded.source == "m2f"
    payload = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert payload["source"] == "huggingface"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(x)["pred_logits"], hf(pixel_values=x).class_queries_logits, atol=1e-4, rtol=0
        )


def test_convert_lists_zoo_and_reports_errors(tmp_path, capsys):
    assert main(["convert", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "coco-panoptic-r50" in listing and "model_final_94dc52.pkl" in listing
    (tmp_path / "model_final.pkl").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "model_final.pkl"), "--config", "coco-panoptc-r50", "--out", "x.pt"]) == 2
    assert "coco-panoptic-r50" in capsys.readouterr().err  # the close-name suggestion
    # the right name and a corrupt pickle: a message, not pickle's traceback
    assert main(["convert", str(tmp_path / "model_final.pkl"), "--config", "coco-panoptic-r50", "--out", "x.pt"]) == 2
    assert "is not a readable detectron2 pickle" in capsys.readouterr().err


def test_convert_keeps_what_a_run_was_trained_for(tmp_path):
    """A trainer's checkpoint slimmed by ``m2f convert`` (no optimiser state) still exports as the task it was trained
    for: CamVid-like classes with things would otherwise default to panoptic."""
    loaded = load_pretrained(tiny_checkpoint(tmp_path / "tiny.pt"))
    assert loaded.meta.thing_ids, "the test needs thing classes, where the default task is panoptic"
    run = save_checkpoint(tmp_path / "run.pt", loaded.model, loaded.meta,
                          extra={"train_config": {"task": "semantic"}, "iteration": 3})  # fmt: skip
    assert main(["convert", str(run), "--out", str(tmp_path / "slim.pt")]) == 0
    slim = tmp_path / "slim.pt"
    assert default_task(slim, load_pretrained(slim)) == "semantic"
    assert "iteration" not in torch.load(slim, weights_only=True)
