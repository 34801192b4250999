"""``Segmenter``: one object per model and target; ``predict(frame)`` and ``stream(source)`` on every target.

import sdk
seg = sdk.Segmenter("cpu", model="street.onnx")
result = seg.predict(frame)                  # HxWx3 uint8 BGR, as OpenCV gives it
for result in seg.stream("street.mp4"):       # file, camera index, RTSP URL, GStreamer pipeline
    ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtimes import Backend, check_options, load_backend, read_metadata
from runtimes.registry import RUNTIMES, TARGETS, TargetSpec
from runtimes.vocabulary import PRECISIONS
from sdk import host
from sdk.artifact_choice import FLOAT_OPS_BF16, artifact_target, asked_reason, cache_dir, choose_artifact
from sdk.model_registry import default_model_name, is_model_name
from sdk.postprocess import postprocess as postprocess_outputs
from sdk.preprocess import DEFAULT_MAX_PIXELS, Geometry, as_bgr, fit_to_input
from sdk.results import SegmentationResult
from sdk.targets import PrecisionChoice, resolve_target

if TYPE_CHECKING:
    from sdk.sources import Source
    from sdk.stream import Stream
    from sdk.stream_options import StreamOptions

logger = logging.getLogger(__name__)


class Segmenter:
    """Segment frames with one model on one target.

    ``target``: a name from ``sdk.targets.TARGETS`` or ``"auto"``. ``model``: an artifact (.onnx), a checkpoint
    (.pt; compiled for the target on first use and cached), or None for the packaged default. ``task``: the
    artifact's own task by default; a panoptic artifact can also give ``"semantic"`` or ``"instance"`` views.
    ``precision``: what to run at (default: the target's where the runtime can lower an fp32 artifact, else the
    artifact's own). ``input_size``: (H, W) used when a checkpoint is compiled or run by torch (default: dynamic
    size; for TensorRT, whose export is fixed-size, ``compile.export.default_input_size``). ``options``: backend
    options of the chosen runtime (``runtimes.registry``; one it does not accept raises ValueError).
    ``max_pixels``: the largest frame accepted, in pixels (``DEFAULT_MAX_PIXELS``, 40 megapixels; None: no limit),
    for ``predict`` and for the frames of ``stream`` sources; the post-processing allocates at the frame's size.

    ``runtime``, ``device`` and ``precision`` say what really runs.
    """

    def __init__(
        self,
        target: str = "auto",
        model: str | Path | None = None,
        task: str | None = None,
        precision: str | None = None,
        input_size: tuple[int, int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        **options: Any,
    ) -> None:
        if max_pixels is not None and (type(max_pixels) is not int or max_pixels <= 0):
            raise ValueError(f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}")
        self.max_pixels = max_pixels
        if precision is not None and precision not in PRECISIONS:  # every runtime alike, before any loading
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)} or None")
        spec, runtime = resolve_target(target, artifact_target(model))
        backend_options = {**spec.options_for(runtime), **options}
        if "cache_dir" in RUNTIMES[runtime].options:
            backend_options.setdefault("cache_dir", str(cache_dir() / runtime))
        check_options(runtime, backend_options)  # before any compilation: a wrong option fails fast
        if runtime == "torch":  # resolve_target chose it for a checkpoint
            if model is None:
                raise ValueError("the torch target runs a checkpoint: pass model=<checkpoint .pt>")
            module, metadata = host.compiler().reference_model(Path(model), task, input_size)
            _set_precision(backend_options, precision, spec.precision, metadata["precision"])
            backend = host.torch_runtime().TorchBackend.from_module(module, metadata, **backend_options)
            choice = PrecisionChoice(precision or spec.precision, Path(model), asked_reason(precision, spec))
        else:
            choice = choose_artifact(model, runtime, precision, spec, input_size)
            artifact_precision = read_metadata(choice.artifact)["precision"]
            if "precision" in RUNTIMES[runtime].options:
                _set_precision(backend_options, choice.precision, spec.precision, artifact_precision)
            backend = load_backend(runtime, choice.artifact, **backend_options)
        self.model_path = choice.artifact
        self.model_name = model if is_model_name(model) else default_model_name() if model is None else None
        self.precision_reason = choice.reason
        self._attach(backend, task, spec)
        if self.precision == "int8" and getattr(backend, "inference_precision", None) == "bf16":
            self.precision_reason += f"; {FLOAT_OPS_BF16}"
        if precision and precision != self.precision:
            logger.warning("asked for %s, but %s runs this %s artifact as %s", precision, runtime,
                           self.metadata["precision"], self.precision)  # fmt: skip

    @classmethod
    def from_backend(cls, backend: Backend, task: str | None = None, target: str | None = None) -> Segmenter:
        """A Segmenter over a backend that is already open (e.g. ``TorchBackend.from_module`` over a reference
        model). ``target``: the profile it stands for (default: the one named after the backend's runtime)."""
        segmenter = cls.__new__(cls)
        segmenter.max_pixels = DEFAULT_MAX_PIXELS
        segmenter._attach(backend, task, TARGETS[target or backend.runtime])
        segmenter.model_path, segmenter.model_name = None, None
        segmenter.precision_reason = "the backend's own (from_backend)"
        return segmenter

    def _attach(self, backend: Backend, task: str | None, spec: TargetSpec) -> None:
        """Take ``backend`` as the engine and record what really runs, as the backend reports it."""
        self.target = spec
        self.backend = backend
        self.runtime, self.device, self.precision = backend.runtime, backend.device, backend.precision
        self.metadata = backend.metadata
        self.task = task or self.metadata["task"]
        if self.task != self.metadata["task"] and self.metadata["task"] != "panoptic":
            raise ValueError(f"a {self.metadata['task']} artifact cannot give {self.task} results")
        self.input_name = self.metadata["input"]["name"]
        logger.info("Segmenter: target %s via %s on %s, %s %s", spec.name, self.runtime, self.device, self.task,
                    self.precision)  # fmt: skip

    # ------------------------------------------------------------------ the steps of predict() and stream()
    def preprocess(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[Geometry, dict[str, float]]]:
        """Frame -> (the engine's inputs, what postprocess needs to map results back onto the frame)."""
        start = time.perf_counter()
        image, geometry = fit_to_input(as_bgr(frame, self.max_pixels), self.metadata["input"])
        inputs = {self.input_name: image[None]}
        return inputs, (geometry, {"preprocess_ms": (time.perf_counter() - start) * 1000})

    def inference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The engine call."""
        return self.backend.run(inputs)

    def postprocess(self, outputs: dict[str, np.ndarray], context: tuple[Geometry, dict]) -> SegmentationResult:
        """Engine outputs -> the frame's SegmentationResult (timings of the steps included)."""
        geometry, timings = context
        start = time.perf_counter()
        processed = postprocess_outputs(outputs, self.metadata, geometry)
        result = SegmentationResult.from_postprocess(processed, self.metadata, task=self.task)
        result.timings.update(timings)
        result.timings["postprocess_ms"] = (time.perf_counter() - start) * 1000
        return result

    # ------------------------------------------------------------------ public API
    def predict(self, frame: np.ndarray) -> SegmentationResult:
        """One HxWx3 uint8 BGR frame (grey and BGRA are converted) -> SegmentationResult at the frame's size."""
        inputs, context = self.preprocess(frame)
        start = time.perf_counter()
        outputs = self.inference(inputs)
        context[1]["inference_ms"] = (time.perf_counter() - start) * 1000
        return self.postprocess(outputs, context)

    def predict_batch(self, frames: Iterable[np.ndarray]) -> list[SegmentationResult]:
        """Several frames, each at its own size -> their results, in input order.

        Up to ``backend.concurrency`` frames run at once (OpenVINO: one per infer request; 1 in the default
        latency mode, several with ``performance_mode="throughput"`` or ``num_requests``), each in its own
        thread from pre-processing to result, so batches gain throughput where the runtime has requests to
        spare. A bad frame raises as in :meth:`predict`.
        """
        frames = list(frames)
        workers = min(self.backend.concurrency, len(frames))
        if workers <= 1:
            return [self.predict(frame) for frame in frames]
        pool = ThreadPoolExecutor(workers, thread_name_prefix="m2f-batch")
        try:
            return list(pool.map(self.predict, frames))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after an error, start no further frames

    def stream(self, source: Source, options: StreamOptions | None = None, **overrides: Any) -> Stream:
        """Results for every frame of ``source``: ``sdk.stream.stream`` with this model (``StreamOptions`` there)."""
        from sdk.stream import stream

        return stream(self, source, options, **overrides)

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        size = self.metadata["input"].get("size")
        model = self.model_path.name if self.model_path else None
        named = f"{self.model_name!r} ({model})" if self.model_name else repr(model)
        return (
            f"Segmenter(target={self.target.name!r}, runtime={self.runtime!r}, device={self.device!r}, "
            f"precision={self.precision!r}, model={named}, "
            f"input={'x'.join(map(str, size)) if size else 'dynamic'}, task={self.task!r}; "
            f"precision: {self.precision_reason})"
        )

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _set_precision(options: dict[str, Any], asked: str | None, default: str, artifact: str) -> None:
    """Tell the backend what to run at when that is not the artifact's own precision: what was asked, else the
    target's default where the artifact is fp32 (an fp32 artifact can be lowered; a reduced one runs as it is)."""
    want = asked or (default if artifact == "fp32" else artifact)
    if want != artifact:
        options.setdefault("precision", want)
