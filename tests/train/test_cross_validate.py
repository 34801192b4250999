"""Leave-one-sequence-out: pooled splits, whole sequences held out, folds trained, scored and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.fold_artifacts import markdown, score_folds
from runtimes.cache import graph_code_key
from tests.tiny_models import tiny_architecture
from train.cross_validate import cross_validate, hold_out, labelled_pool, pool_sequences
from train.data import build_dataset
from train.data.presets import camvid
from train.data.semantic_folder import sequence_of
from train.train_config import TrainConfig

CLASSES = "id,name,r,g,b\n0,Sky,128,128,128\n1,Road,128,64,128\n2,Car,64,0,128\n11,Unlabelled,0,0,0\n"
# CamVid's pattern: val holds later frames of a drive that train also has (here "DRIVEB")
LAYOUT = {"train": {"DRIVEA": 3, "DRIVEB": 2}, "val": {"DRIVEB": 2, "DRIVEC": 1}}


@pytest.fixture(scope="module")
def camvid_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CamVid's SegNet layout, 3 classes + void, frames named ``<sequence>_<frame>.png`` (48x64)."""
    root = tmp_path_factory.mktemp("camvid_like")
    (root / "classes.csv").write_text(CLASSES)
    rng = np.random.default_rng(0)
    colours = np.array([[200, 180, 150], [90, 90, 90], [30, 30, 200]], np.uint8)
    for split, sequences in LAYOUT.items():
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for sequence, frames in sequences.items():
            for f in range(frames):
                label = np.ones((48, 64), np.uint8)
                label[: int(rng.integers(12, 24))] = 0
                label[30:40, int(rng.integers(0, 40)) :][:, :20] = 2
                label[-2:] = 11
                image = colours[np.minimum(label, 2)] + rng.integers(0, 20, (48, 64, 3)).astype(np.uint8)
                name = f"{sequence}_{split}{f:05d}.png"
                cv2.imwrite(str(root / split / name), image)
                cv2.imwrite(str(root / f"{split}annot" / name), label)
    return root


def _config(root: Path, max_iters: int = 2) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "task": "semantic",
            "model": {"config": tiny_architecture(width=32, queries=6)},
            "train_data": {"format": "camvid", "root": str(root), "split": "train"},
            "val_data": {"format": "camvid", "root": str(root), "split": "val"},
            "augmentation": {"name": "none"},
            "solver": {"batch_size": 2, "max_iters": max_iters, "lr": 1e-3, "num_workers": 0, "warmup_iters": 0},
            "criterion": {"num_points": 256},
            "checkpoint_every": 100,
            "eval_every": 100,
            "log_every": 1,
        }
    )


def test_sequence_is_the_file_name_prefix():
    assert sequence_of("0016E5_07959") == "0016E5"
    assert sequence_of("sub/Seq05VD_f00000") == "Seq05VD"
    assert sequence_of("frame7") == "frame7"


def test_trainval_pools_both_folders_once(camvid_like: Path):
    pooled = camvid(camvid_like, "trainval")
    assert len(pooled) == 8
    assert dict(pooled.sequences()) == {"DRIVEA": 3, "DRIVEB": 4, "DRIVEC": 1}
    assert len(camvid(camvid_like, ["trainval", "val"])) == 8  # a folder named twice is read once
    assert [item[2] for item in camvid(camvid_like, "val", sequences=["DRIVEC"]).items] == ["DRIVEC_val00000"]


def test_every_fold_holds_out_a_whole_sequence(camvid_like: Path):
    config = _config(camvid_like)
    assert labelled_pool(config)["split"] == ["train", "val"]
    assert pool_sequences(config) == {"DRIVEA": 3, "DRIVEB": 4, "DRIVEC": 1}
    for sequence, frames in pool_sequences(config).items():
        fold = hold_out(config, sequence)
        train_ids = [item[2] for item in build_dataset(fold.train_data).items]
        val_ids = [item[2] for item in build_dataset(fold.val_data).items]
        assert len(val_ids) == frames and {sequence_of(i) for i in val_ids} == {sequence}
        assert sequence not in {sequence_of(i) for i in train_ids}
        assert len(train_ids) + len(val_ids) == 8  # nothing lost, nothing counted twice


def test_unknown_or_empty_selection_is_a_clear_error(camvid_like: Path):
    with pytest.raises(ValueError, match=r"no frames of sequence\(s\) \['NOPE'\].*DRIVEA"):
        camvid(camvid_like, "trainval", sequences=["NOPE"])
    with pytest.raises(ValueError, match="leave no frames"):
        camvid(camvid_like, "val", exclude_sequences=["DRIVEB", "DRIVEC"])
    bad = TrainConfig.from_dict({**_config(camvid_like).to_dict(), "train_data": {"format": "camvid"}})
    with pytest.raises(ValueError, match="needs a 'split'"):
        hold_out(bad, "DRIVEA")


@pytest.fixture(scope="module")
def loso_run(camvid_like: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two folds of a tiny model, 2 iterations each."""
    output = tmp_path_factory.mktemp("loso")
    return output, cross_validate(_config(camvid_like), output, sequences=["DRIVEA", "DRIVEC"], progress=False)


@pytest.mark.slow
def test_cross_validation_trains_scores_and_resumes(camvid_like: Path, loso_run: tuple[Path, dict]):
    output, report = loso_run
    assert list(report["folds"]) == ["DRIVEA", "DRIVEC"]
    assert report["folds"]["DRIVEA"]["frames"] == 3 and report["folds"]["DRIVEA"]["train_frames"] == 5
    assert report["mean_mIoU"] == pytest.approx(np.mean([f["mIoU"] for f in report["folds"].values()]))
    table = (output / "cross_validation.md").read_text()
    assert "| DRIVEC | 1 | 7 |" in table and "mean of folds" in table
    # a scored fold is kept: rerunning does not train it again (its checkpoint is not rewritten)
    final = output / "fold_DRIVEA" / "model_final.pt"
    stamp = final.stat().st_mtime_ns
    again = cross_validate(_config(camvid_like), output, sequences=["DRIVEA", "DRIVEC"], progress=False)
    assert final.stat().st_mtime_ns == stamp and again["mean_mIoU"] == report["mean_mIoU"]


@pytest.mark.slow
def test_fold_artifacts_score_the_exported_model_on_its_held_out_sequence(
    camvid_like: Path, loso_run: tuple[Path, dict]
):
    output, report = loso_run
    scored = score_folds(output, _config(camvid_like), "onnxruntime", "fp32", (48, 64))
    assert list(scored["folds"]) == ["DRIVEA", "DRIVEC"]
    for sequence, fold in scored["folds"].items():
        assert fold["frames"] == report["folds"][sequence]["frames"]
        # the gate's torch figure is the fold's own score (same frames, same pre-processing at native size)
        assert fold["torch_fp32"] == pytest.approx(report["folds"][sequence]["mIoU"], abs=1e-6)
        assert fold["label_agreement"] >= 0.999  # fp32 artifact == torch
        # the SDK on the frames at their own size (48x64 here, the export's size): the gate's figure
        assert fold["sdk"] == pytest.approx(fold["artifact"], abs=0.05)
        assert (output / f"fold_{sequence}" / "onnxruntime_fp32.onnx").is_file()
    assert "| **mean of folds** |" in markdown(scored)
    # a rerun keeps the scored artifacts (newer than their checkpoints, gated at this size) and re-exports the rest
    kept = output / "fold_DRIVEA" / "onnxruntime_fp32.onnx"
    redone = output / "fold_DRIVEC" / "onnxruntime_fp32.onnx"
    (output / "fold_DRIVEC" / "model_final.pt").touch()  # its checkpoint is newer now
    before = {path: path.stat().st_mtime_ns for path in (kept, redone)}
    again = score_folds(output, _config(camvid_like), "onnxruntime", "fp32", (48, 64))
    assert kept.stat().st_mtime_ns == before[kept] and redone.stat().st_mtime_ns > before[redone]
    assert again["folds"]["DRIVEA"] == scored["folds"]["DRIVEA"]
    # exported from other graph code (the model or the compiler changed since): exported again, not trusted
    kept.with_suffix(".graph_code").write_text("another")
    before = kept.stat().st_mtime_ns
    score_folds(output, _config(camvid_like), "onnxruntime", "fp32", (48, 64))
    assert kept.stat().st_mtime_ns > before and kept.with_suffix(".graph_code").read_text() == graph_code_key()


@pytest.mark.slow
def test_eval_by_sequence_and_hold_out_on_the_command_line(camvid_like: Path, tmp_path: Path):
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(_config(camvid_like).to_dict()))
    run = [sys.executable, "-m", "sdk.cli"]
    bad = subprocess.run([*run, "train", str(config_path), "--hold-out", "NOPE", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "NOPE" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "fold"
    trained = subprocess.run([*run, "train", str(config_path), "--hold-out", "DRIVEB", "--out", str(out)],
                             capture_output=True, text=True)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    stored = json.loads(
        subprocess.run(
            [*run, "eval", str(out / "model_final.pt"), "--by-sequence", "--json"], capture_output=True, text=True
        ).stdout.splitlines()[-1]
    )
    assert list(stored["sequences"]) == ["DRIVEB"]  # the fold's validation set is the held-out drive only
    spec = json.dumps({"format": "camvid", "root": str(camvid_like), "split": "trainval"})
    result = subprocess.run(
        [*run, "eval", str(out / "model_final.pt"), "--data", spec, "--by-sequence", "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout.splitlines()[-1])
    assert list(scores["sequences"]) == ["DRIVEA", "DRIVEB", "DRIVEC"]
    assert all(0 <= s["mIoU"] <= 100 for s in scores["sequences"].values())


def test_fold_table_shows_the_lowering_and_the_sdk_figure_beside_the_artifact():
    """An OpenVINO int8 fold whose float ops the gate also scored in bf16 gets that column; a fold without the
    record shows a dash and no mean."""
    folds = {
        "A": {"frames": 3, "torch_fp32": 60.0, "artifact": 59.0, "drop": 1.0, "lowered": {"bf16": 58.5}, "sdk": 59.1,
              "peer": {"mIoU": 55.0}},
        "B": {"frames": 4, "torch_fp32": 50.0, "artifact": 49.5, "drop": 0.5, "lowered": {}, "sdk": 49.4},
    }  # fmt: skip
    report = {"target": "openvino", "precision": "int8", "folds": folds, "mean_torch_fp32": 55.0,
              "mean_artifact": 54.25, "mean_lowered": {"bf16": None}, "mean_sdk": 54.25}  # fmt: skip
    text = markdown(report)
    assert "| openvino int8, bf16 lowering mIoU |" in text
    assert "| A | 3 | 60.00 | 59.00 | 1.00 | 58.50 | 59.10 | 55.00 | +4.10 |" in text  # ours - peer: the SDK's
    assert "| B | 4 | 50.00 | 49.50 | 0.50 | – | 49.40 | – | – |" in text
