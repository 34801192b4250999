"""The parity / accuracy gate: the artifact, run by its runtime, against the torch model on real images.

Records max-abs-diff of the raw outputs (instance/panoptic), pixel label agreement (the semantic view of every
task) and, when ground truth is given, the metric of both and the drop. An export whose drop exceeds the budget,
or an fp32 export that disagrees with torch, fails with ``GateError``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from compile.onnx_export import INPUT_NAME, OUTPUTS, DeployableMask2Former
from runtimes.base import Backend
from runtimes.errors import M2FError
from runtimes.geometry import fit_to_input
from runtimes.vocabulary import VOID
from train.evaluation.semantic import SemanticEvaluator
from train.model.inference import semantic_labels

logger = logging.getLogger(__name__)

FP32_MIN_AGREEMENT = 0.999
# An int8 artifact must spend at least this share of its profiled kernel time in int8 kernels on its own runtime,
# else it is an fp32 model with conversions (quantised ops not fused): refused. Measured (2-core AMD EPYC, AVX512
# VNNI): OpenVINO 28.7 % (ResNet-18 CamVid default), 31.1 % (MobileNetV2 360x480), 37.6 % (the tests' tiny model),
# 0.9 % for an fp32 file; ONNX Runtime 25.1 % (MobileNetV2), 11.7 % (tiny), 2.2 % for NNCF's int8 file. The ops
# that stay float (deformable sampling, softmax, norms, the resize/argmax tail) bound what Mask2Former reaches.
INT8_SHARE_FLOOR = {"openvino": 0.15, "onnxruntime": 0.06}


class GateError(M2FError, RuntimeError):
    """The artifact does not meet its accuracy budget; the message says by how much."""


@dataclass(frozen=True)
class GateImage:
    """A model-input-sized BGR image and, optionally, its (H, W) ground-truth label map (``VOID`` = ignore)."""

    image: np.ndarray  # (H, W, 3) uint8 BGR
    labels: np.ndarray | None = None  # (H, W) int


def gate_image(frame: np.ndarray, input_spec: Mapping[str, Any], labels: np.ndarray | None = None) -> GateImage:
    """An (h, w, 3) uint8 BGR frame placed into the model input as the SDK places it (``runtimes.geometry``), and
    its (h, w) ground truth likewise (nearest resize, ``VOID`` = ignore in the padding)."""
    image, geometry = fit_to_input(frame, input_spec)  # (H, W, 3)
    if labels is None:
        return GateImage(image)
    rh, rw = geometry.resized_size
    placed = np.full(geometry.input_size, VOID, dtype=np.int64)  # (H, W)
    placed[:rh, :rw] = cv2.resize(labels.astype(np.uint8), (rw, rh), interpolation=cv2.INTER_NEAREST)
    return GateImage(image, placed)


def _semantic_view(outputs: Mapping[str, np.ndarray], task: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W) int64 labels from either kind of output (label map, or logits + low-resolution masks), by name."""
    if task == "semantic":
        return np.asarray(outputs["labels"])[0].astype(np.int64)
    logits, masks = (torch.from_numpy(np.asarray(outputs[n], dtype=np.float32)) for n in ("pred_logits", "pred_masks"))
    return semantic_labels(logits, masks, size)[0].numpy().astype(np.int64)  # from (1, Q, K+1), (1, Q, h, w)


def run_gate(
    reference: DeployableMask2Former,
    backend: Backend,
    images: Sequence[GateImage],
    precision: str,
    drop_budget: float = 1.0,
    ignore_index: int = VOID,
) -> dict:
    """Compare ``backend`` with ``reference`` on ``images``; returns the figures for the artifact metadata."""
    if not images:
        raise GateError("the accuracy gate has no images: pass calibration or validation images")
    task = reference.task
    num_classes = reference.model.config.num_classes
    ref_eval, art_eval = SemanticEvaluator(num_classes, ignore_index), SemanticEvaluator(num_classes, ignore_index)
    agree, total, max_diff = 0, 0, {}
    has_labels = all(item.labels is not None for item in images)
    for item in tqdm(images, desc=f"gate {precision}", leave=False):
        batch = item.image[None]
        with torch.no_grad():
            want = dict(zip(OUTPUTS[task], (t.numpy() for t in reference(torch.from_numpy(batch))), strict=True))
        got = backend.run({INPUT_NAME: batch})
        for name, value in want.items():  # the float outputs' drift (the label map is compared below)
            if np.issubdtype(value.dtype, np.floating):
                diff = float(np.abs(got[name].astype(np.float64) - value).max())
                max_diff[name] = max(max_diff.get(name, 0.0), diff)
        size = item.image.shape[:2]
        ref_labels, art_labels = _semantic_view(want, task, size), _semantic_view(got, task, size)
        agree += int((ref_labels == art_labels).sum())
        total += ref_labels.size
        if has_labels:
            ref_eval.update(ref_labels, item.labels)
            art_eval.update(art_labels, item.labels)
    result: dict = {"images": len(images), "label_agreement": agree / total}
    if max_diff:
        result["max_abs_diff"] = max_diff
    if has_labels:
        ref_miou, art_miou = ref_eval.compute()["mIoU"], art_eval.compute()["mIoU"]
        result.update({"metric": "mIoU", "reference": ref_miou, "artifact": art_miou, "drop": ref_miou - art_miou})
    logger.info("gate %s: %s", precision, result)
    if precision == "fp32" and result["label_agreement"] < FP32_MIN_AGREEMENT:
        raise GateError(
            f"fp32 artifact agrees with torch on {100 * result['label_agreement']:.3f}% of pixels "
            f"(< {100 * FP32_MIN_AGREEMENT:.1f}%): the export is wrong"
        )
    if has_labels and result["drop"] > drop_budget:
        raise GateError(
            f"{precision} artifact loses {result['drop']:.2f} mIoU ({result['reference']:.2f} -> "
            f"{result['artifact']:.2f}), over the budget of {drop_budget:.2f}: calibrate on more or better images, "
            "exclude more layers from quantization, or raise --max-drop"
        )
    return result


def check_int8_execution(target: str, path: str, image: np.ndarray, floor: float | None = None) -> dict:
    """Profile the int8 artifact at ``path`` on its runtime with one model-input-sized BGR ``image``; returns
    ``{"int8_share", "profiled_ms", "engine"}`` and raises :class:`GateError` below ``floor``
    (default ``INT8_SHARE_FLOOR[target]``). Eleven runs, each node at its fastest
    (``runtimes.profiling.int8_time_share``): a busy machine adds time to whichever op is running."""
    from runtimes import profiling

    if target not in INT8_SHARE_FLOOR:
        raise ValueError(f"no int8 execution check for target {target!r}")
    profile = profiling.profile_on(target, path, {INPUT_NAME: image[None]}, "int8", threads=None, runs=11)
    result = {
        "int8_share": round(profile["int8_share"], 4),
        "profiled_ms": round(profile["per_inference_ms"], 1),
        "engine": profile["engine"],
    }
    floor = INT8_SHARE_FLOOR[target] if floor is None else floor
    logger.info("int8 execution on %s: %.1f%% of kernel time in int8 kernels", target, 100 * profile["int8_share"])
    if profile["int8_share"] < floor:
        float_ops = ", ".join(f"{o['op']} {o['ms']:.1f} ms ({o['exec']})" for o in profile["ops"][:5])
        raise GateError(
            f"int8 artifact {path} spends {100 * profile['int8_share']:.1f}% of its time on {profile['engine']} in "
            f"int8 kernels (floor {100 * floor:.0f}%): its quantised operators are not fused, so it runs as fp32 "
            f"with extra conversions. Top ops: {float_ops}"
        )
    return result
