"""A row's pipeline: ``predict(frame) -> (labels, stage ms)`` the way each kind of user runs the model.

Ours run ``sdk.Segmenter`` (our eager torch model or an artifact on its runtime); the HF peers run HF's image
processor, the model (eager, or its own ONNX export on OpenVINO) and ``post_process_semantic_segmentation``; the
LiteRT peer runs its own ``predict`` (``benchmarks.litert_peer``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.rows import MeasureSpec
from runtimes.openvino_backend import OV_INFERENCE_PRECISION


class HfPipeline:
    """The HF user's path on our letterboxed frame: image processor -> model -> ``post_process_semantic_segmentation``.

    ``run_model(pixel_values)`` returns (class_queries_logits, masks_queries_logits) as torch tensors.
    """

    def __init__(self, run_model: Callable[[Any], tuple[Any, Any]], processor: Any, input_spec: dict) -> None:
        self.run_model = run_model
        self.processor = processor
        self.input_spec = input_spec
        self.last_raw: tuple[np.ndarray, np.ndarray, Any] | None = None

    def predict(self, frame: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        from types import SimpleNamespace

        from sdk.postprocess import semantic_from_labels
        from sdk.preprocess import fit_to_input

        t0 = time.perf_counter()
        image, geometry = fit_to_input(frame, self.input_spec)
        pixel_values = self.processor(images=image[..., ::-1].copy(), return_tensors="pt")["pixel_values"]
        t1 = time.perf_counter()
        logits, masks = self.run_model(pixel_values)
        t2 = time.perf_counter()
        outputs = SimpleNamespace(class_queries_logits=logits, masks_queries_logits=masks)
        size = tuple(self.input_spec["size"])
        labels = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[size])[0]
        labels = semantic_from_labels(labels.numpy(), geometry)
        t3 = time.perf_counter()
        self.last_raw = (logits[0].float().numpy(), masks[0].float().numpy(), geometry)
        stages = {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3, "postprocess_ms": (t3 - t2) * 1e3}
        return labels, stages

    def official_labels(self) -> np.ndarray:
        """The last frame's raw HF outputs through the official semantic inference (ours): model parity."""
        from sdk.postprocess import semantic_from_outputs

        assert self.last_raw is not None
        logits, masks, geometry = self.last_raw
        return semantic_from_outputs(logits, masks, geometry)


class SegmenterPipeline:
    """Our SDK path: ``Segmenter.predict`` (preprocess, runtime, numpy post-processing)."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def predict(self, frame: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        result = self.segmenter.predict(frame)
        return result.semantic, {k: v for k, v in result.timings.items() if k.endswith("_ms")}


def torch_segmenter(
    checkpoint: str,
    task: str,
    input_size: tuple[int, int],
    device: str = "cpu",
    precision: str = "fp32",
    cuda_graph: bool | None = None,
) -> Any:
    """A Segmenter over our eager torch model behind the same letterboxed input as the artifacts; the torch runtime
    runs the fp32 module on ``device`` in ``precision`` (``cuda_graph``: None lets the backend choose)."""
    from compile.export import reference_model
    from runtimes.torch_backend import TorchBackend
    from sdk.segmenter import Segmenter

    module, metadata = reference_model(checkpoint, task, tuple(input_size))
    options = {"device": device, "precision": precision, "cuda_graph": cuda_graph}
    return Segmenter.from_backend(TorchBackend.from_module(module, metadata, **options), target="torch")


def build_pipeline(spec: MeasureSpec) -> tuple[Any, dict[str, Any]]:
    """(pipeline with ``predict(frame) -> (labels, stage ms)``, facts about it) for one row."""
    row = spec.row
    if row.family == "m2f":
        return _m2f_pipeline(spec)
    if row.family == "litert":
        from benchmarks.litert_peer import LiteRtDeepLab

        peer = LiteRtDeepLab(spec.peer_model, spec.class_names, threads=spec.threads)
        return peer, {"runtime": "litert", "device": "cpu", "run_precision": "int8", "peer_model": spec.peer_model}
    return _hf_pipeline(spec)


def _m2f_pipeline(spec: MeasureSpec) -> tuple[SegmenterPipeline, dict[str, Any]]:
    """Our model: the eager torch reference, or the row's artifact on its runtime."""
    row, facts = spec.row, {}
    if row.runtime == "torch":
        import torch

        torch.set_num_threads(spec.threads)
        segmenter = torch_segmenter(spec.checkpoint, spec.task, spec.input_size, row.device, row.precision)
    else:
        from sdk.segmenter import Segmenter

        options: dict[str, Any] = {"threads": spec.threads, "device": row.device}
        if row.runtime == "openvino":
            options["cache_dir"] = None  # compile every time: the cache would change the peak memory
        segmenter = Segmenter(row.runtime, model=spec.artifact, precision=row.precision, **options)
        if row.runtime == "openvino":
            want, got = OV_INFERENCE_PRECISION[row.precision], segmenter.backend.inference_precision
            facts["ov_inference_precision"] = got
            if want != got and row.precision != "int8":  # int8: its float ops' precision (the backend's)
                raise RuntimeError(f"OpenVINO ran the {row.precision} artifact in {got} (this CPU lacks {want})")
    facts.update(runtime=segmenter.runtime, device=segmenter.device, run_precision=segmenter.precision)
    return SegmenterPipeline(segmenter), facts


def _hf_pipeline(spec: MeasureSpec) -> tuple[HfPipeline, dict[str, Any]]:
    """The HF peer: its model eager, or its own ONNX export on OpenVINO."""
    import torch

    from benchmarks import peers
    from compile.export import input_spec
    from train.model import load_pretrained

    row = spec.row
    torch.set_num_threads(spec.threads)
    meta = load_pretrained(spec.checkpoint).meta  # normalisation and input spec, as our rows
    processor = peers.hf_processor(meta.pixel_mean, meta.pixel_std, spec.hf_dir)
    resize = input_spec(meta, spec.input_size)
    if row.runtime == "eager":
        run_eager = peers.hf_runner(peers.load_hf_model(spec.hf_dir), row.device, row.precision)
        return HfPipeline(run_eager, processor, resize), {}

    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    config["INFERENCE_NUM_THREADS"] = spec.threads
    compiled = ov.Core().compile_model(spec.artifact, "CPU", config)
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run_openvino(pixel_values: Any) -> tuple[Any, Any]:
        result = request.infer({peers.HF_INPUT: pixel_values.numpy()})
        return torch.from_numpy(result[outputs[0]]), torch.from_numpy(result[outputs[1]])

    return HfPipeline(run_openvino, processor, resize), {"exporter": spec.exporter}
