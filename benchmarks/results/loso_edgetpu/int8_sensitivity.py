"""Which layers cost fold 0001TP's int8 export its 3.33 mIoU? One NNCF variant per run, scored like
``benchmarks.fold_artifacts`` (OpenVINO int8, 64 calibration frames of the fold's training drives, the held-out
drive's 62 frames). An experiment record, run from the repository root after the fold trained:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/results/loso_edgetpu/int8_sensitivity.py VARIANT

VARIANT: ``overflow_first`` (8-bit weights after the first layer), ``cnn_preset`` (NNCF's default preset, not the
transformer one), ``conv_only`` / ``matmul_only`` (the other kind kept float), ``float_convs_A_B`` (backbone
convolutions A..B-1 in graph order kept float besides the default rules).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nncf
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.fold_artifacts import _export_fold
from runtimes import read_metadata
from train.cross_validate import hold_out
from train.data import build_dataset
from train.train_config import load_train_config

FOLD = Path("runs/loso_edgetpu/fold_0001TP")


def _variant(variant: str, kw: dict) -> dict:
    scope = kw["ignored_scope"]
    names, types = list(scope.names), list(scope.types)
    if variant == "overflow_first":
        kw["advanced_parameters"] = AdvancedQuantizationParameters(overflow_fix=OverflowFix.FIRST_LAYER)
    elif variant == "cnn_preset":
        kw.pop("model_type")
    elif variant in ("conv_only", "matmul_only"):
        types += ["MatMul", "Gemm"] if variant == "conv_only" else ["Conv"]
    elif variant.startswith("float_convs_"):
        low, high = (int(v) for v in variant.split("_")[2:4])
        names += [f"node_conv2d_{i}" if i else "node_conv2d" for i in range(low, high)]  # the export's node names
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    kw["ignored_scope"] = nncf.IgnoredScope(
        names=names, patterns=list(scope.patterns), types=types, subgraphs=list(scope.subgraphs), validate=False
    )
    return kw


def main(variant: str) -> None:
    quantize = nncf.quantize
    nncf.quantize = lambda model, dataset, **kw: quantize(model, dataset, **_variant(variant, kw))
    config = load_train_config("configs/camvid_edgetpu_cityscapes.yaml").with_overrides(
        "../shared/data/camvid", None, None
    )
    fold = hold_out(config, "0001TP")
    out = FOLD / f"openvino_int8_{variant}.onnx"
    frames = len(build_dataset(fold.val_data))
    _export_fold(FOLD / "model_final.pt", fold, "openvino", "int8", out, (360, 480), frames, 64)
    accuracy = read_metadata(out)["accuracy"]
    print(json.dumps({"variant": variant, **{k: accuracy.get(k) for k in ("artifact", "drop", "label_agreement")},
                      "int8_execution": accuracy.get("int8_execution")}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
