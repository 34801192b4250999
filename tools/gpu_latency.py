"""The GPU check's latency rows (``tools.gpu_check``): median ms end to end (letterbox + model + post-processing,
``Segmenter.predict``) and model only (the runtime call on the letterboxed input), ours on the torch runtime eager
fp32 / fp16 and as a CUDA graph fp16 / bf16, HF transformers eager fp32 / fp16 on the same device, and what
``Segmenter("cuda")`` picks, each with its labels' agreement with our eager fp32 row."""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.models import PreparedModel
from tools.gpu_steps import EDGE_CONFIG

logger = logging.getLogger(__name__)

SWIN_T_MODEL = "ade20k-semantic-swin-t"
# (label, kind, precision, cuda_graph): our rows are the torch runtime, HF's are transformers eager
ROWS = (
    ("torch eager fp32", "ours", "fp32", False),
    ("torch eager fp16", "ours", "fp16", False),
    ("CUDA graph fp16", "ours", "fp16", True),
    ("CUDA graph bf16", "ours", "bf16", True),
    ("HF eager fp32", "hf", "fp32", False),
    ("HF eager fp16", "hf", "fp16", False),
    ("Segmenter('cuda')", "sdk", "", False),  # what the SDK's cuda target picks (runtime/precision in the row)
)
GPU_BASELINE = "HF eager fp16"
Measured = tuple[float, float, list[np.ndarray], dict[str, Any]]  # (e2e ms, model ms, labels per frame, facts)


def untrained_edge(path: Path) -> Path:
    from train.data.synthetic import synthetic_meta
    from train.model import Mask2Former, Mask2FormerConfig, save_checkpoint
    from train.train_config import load_train_config

    meta = synthetic_meta()
    arch = load_train_config(EDGE_CONFIG).model["config"]
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **arch}))
    return save_checkpoint(path, model, meta)


def prepare_swin(work: Path, tiny: bool) -> PreparedModel:
    """Our checkpoint and the HF folder with the same seeded random weights (``benchmarks.models.prepare_model``)."""
    from benchmarks.models import prepare_model

    model = SWIN_T_MODEL
    if tiny:
        from benchmarks.peers import hf_config_dict
        from train.model import Mask2FormerConfig

        arch = {
            "num_classes": 5,
            "backbone": {"kind": "swin", "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [2, 2, 4, 4]},
            "pixel_decoder": {"conv_dim": 32, "mask_dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64},
            "decoder": {"hidden_dim": 32, "num_queries": 8, "num_heads": 2, "num_layers": 2, "ffn_dim": 64},
        }
        path = work / "tiny_swin.json"
        path.write_text(json.dumps(hf_config_dict(Mask2FormerConfig.from_dict(arch), [f"c{i}" for i in range(5)])))
        model = str(path)
    return prepare_model(model, work / "swin", seed=0)


def median_ms(fn: Callable[[], Any], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _segmenter_figures(seg: Any, frames: list[np.ndarray], n: tuple[int, int]) -> tuple[float, float, list]:
    """(e2e ms, model ms, labels per frame) of a Segmenter: ``predict`` and its backend's ``run`` alone."""
    from sdk.preprocess import fit_to_input

    feed = {seg.input_name: fit_to_input(frames[0], seg.metadata["input"])[0][None]}
    model_ms = median_ms(lambda: seg.backend.run(feed), *n)
    cycle = itertools.count()
    e2e_ms = median_ms(lambda: seg.predict(frames[next(cycle) % len(frames)]), *n)
    return e2e_ms, model_ms, [seg.predict(frame).semantic for frame in frames]


def bench_ours(
    checkpoint: Path, size: tuple[int, int], device: str, precision: str, graph: bool, frames, n
) -> Measured:
    """Our torch runtime behind ``Segmenter.predict``."""
    from benchmarks.pipelines import torch_segmenter

    seg = torch_segmenter(str(checkpoint), "semantic", size, device, precision, cuda_graph=graph)
    e2e_ms, model_ms, labels = _segmenter_figures(seg, frames, n)
    facts = {"device": seg.backend.device, "precision": seg.backend.precision, "cuda_graph": seg.backend.cuda_graph}
    seg.backend.close()
    return e2e_ms, model_ms, labels, facts


def bench_segmenter(checkpoint: Path, size: tuple[int, int], frames, n) -> Measured:
    """``sdk.Segmenter("cuda")`` on the checkpoint, whatever runtime it picks."""
    import sdk

    seg = sdk.Segmenter("cuda", model=checkpoint, task="semantic", input_size=size)
    e2e_ms, model_ms, labels = _segmenter_figures(seg, frames, n)
    return e2e_ms, model_ms, labels, {k: str(getattr(seg, k, "?")) for k in ("runtime", "device", "precision")}


def bench_hf(info: PreparedModel, size: tuple[int, int], device: str, precision: str, frames, n) -> Measured:
    """HF's processor on the letterboxed frame, the model on ``device``, HF's ``post_process_semantic_segmentation``
    on the device, then back to the frame size."""
    import torch

    from benchmarks import peers
    from compile.export import input_spec
    from sdk.postprocess import semantic_from_labels
    from sdk.preprocess import fit_to_input
    from train.model import load_pretrained

    meta = load_pretrained(info.checkpoint).meta
    processor = peers.hf_processor(meta.pixel_mean, meta.pixel_std, info.hf_dir)
    spec = input_spec(meta, size)
    run = peers.hf_runner(peers.load_hf_model(info.hf_dir), device, precision, to_host=False)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def pixels(frame: np.ndarray) -> tuple[Any, Any]:
        image, geometry = fit_to_input(frame, spec)
        return processor(images=image[..., ::-1].copy(), return_tensors="pt")["pixel_values"], geometry

    def predict(frame: np.ndarray) -> np.ndarray:
        pixel_values, geometry = pixels(frame)
        logits, masks = run(pixel_values)
        out = SimpleNamespace(class_queries_logits=logits, masks_queries_logits=masks)
        labels = processor.post_process_semantic_segmentation(out, target_sizes=[tuple(size)])[0]
        return semantic_from_labels(labels.cpu().numpy(), geometry)

    pixel_values, _ = pixels(frames[0])

    def model_only() -> None:
        run(pixel_values)
        sync()

    model_ms = median_ms(model_only, *n)
    cycle = itertools.count()
    e2e_ms = median_ms(lambda: predict(frames[next(cycle) % len(frames)]), *n)
    labels = [predict(frame) for frame in frames]
    return e2e_ms, model_ms, labels, {"device": device, "precision": precision}


def bench_row(kind: str, precision: str, graph: bool, ours: Path, hf: PreparedModel | None, size, device, frames, n):
    """One row of ``ROWS``: its figures, or why it cannot run here (str)."""
    if graph and not device.startswith("cuda"):
        return "needs CUDA"
    if kind == "hf" and hf is None:
        return "no HF peer (HF's Mask2Former has Swin and ResNet backbones only)"
    if kind == "sdk" and not device.startswith("cuda"):
        return "needs CUDA"
    if kind == "ours":
        return bench_ours(ours, size, device, precision, graph, frames, n)
    if kind == "sdk":
        return bench_segmenter(ours, size, frames, n)
    return bench_hf(hf, size, device, precision, frames, n)


def bench_model(
    name: str, ours: Path, hf: PreparedModel | None, size: tuple[int, int], device: str, frames, n, record
) -> None:
    """Every row of ``ROWS`` for one model into ``record["rows"]``; a row that fails records its error."""
    import torch

    rows: dict[str, dict[str, Any]] = {}
    record.update(input_size=list(size), frame_size=list(frames[0].shape[:2]), rows=rows)
    reference: list[np.ndarray] | None = None
    for label, kind, precision, graph in ROWS:
        try:
            measured = bench_row(kind, precision, graph, ours, hf, size, device, frames, n)
        except Exception as err:  # e.g. an op without a half-precision kernel on this device
            logger.exception("%s %s failed", name, label)
            measured = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        if isinstance(measured, str):
            rows[label] = {"error": measured}
            continue
        e2e, model, labels, facts = measured
        reference = labels if reference is None and label == ROWS[0][0] else reference
        agree = None
        if reference is not None:
            same = sum(int((a == b).sum()) for a, b in zip(labels, reference, strict=True))
            agree = same / sum(r.size for r in reference)
        rows[label] = {"e2e_ms": round(e2e, 2), "model_ms": round(model, 2), "agreement": agree, **facts}
        logger.info("%s %s: e2e %.2f ms, model %.2f ms", name, label, e2e, model)
