"""``Segmenter``: one object per model and target; ``predict(frame)`` and ``stream(source)`` on every target.

import sdk
seg = sdk.Segmenter("cpu", model="street.onnx")
result = seg.predict(frame)                  # HxWx3 uint8 BGR, as OpenCV gives it
for result in seg.stream("street.mp4"):       # file, camera index, RTSP URL, GStreamer pipeline
    ...
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtimes import load_backend
from sdk.postprocess import postprocess
from sdk.preprocess import Geometry, as_bgr, fit_to_input
from sdk.results import SegmentationResult
from sdk.targets import resolve_target

if TYPE_CHECKING:
    from sdk.sources import Source
    from sdk.stream import Stream, StreamOptions

logger = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path(__file__).parent / "models"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pkl")


def cache_dir() -> Path:
    """Where compiled artifacts and engines are cached: $M2F_CACHE or ~/.cache/m2f."""
    return Path(os.environ.get("M2F_CACHE", Path.home() / ".cache" / "m2f"))


def default_model(precision: str) -> Path:
    """The packaged default artifact for a precision (falls back to fp32)."""
    for name in (f"default_{precision}.onnx", "default_fp32.onnx"):
        path = DEFAULT_MODELS_DIR / name
        if path.exists():
            return path
    raise FileNotFoundError(
        f"no default model is packaged in this build ({DEFAULT_MODELS_DIR}): pass model=<artifact .onnx or checkpoint>"
    )


def _host(module: str) -> Any:
    """A host-side module (compile/, train/), imported only when a checkpoint must be compiled or run."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"using a checkpoint needs the host extras (pip install 'm2f-edge[train]'): {err}; "
            "or pass an artifact made with `m2f export`"
        ) from err


class Segmenter:
    """Segment frames with one model on one target.

    ``target``: a name from ``sdk.targets.TARGETS`` or ``"auto"``. ``model``: an artifact (.onnx), a checkpoint
    (.pt; compiled for the target on first use and cached), or None for the packaged default. ``task``: the
    artifact's own task by default; a panoptic artifact can also give ``"semantic"`` or ``"instance"`` views.
    ``input_size``: (H, W) used when a checkpoint is compiled (default: dynamic size).
    """

    def __init__(
        self,
        target: str = "auto",
        model: str | Path | None = None,
        task: str | None = None,
        precision: str | None = None,
        input_size: tuple[int, int] | None = None,
        **options: Any,
    ) -> None:
        self.target, self.runtime = resolve_target(target)
        self.precision = precision or self.target.precision
        backend_options = {**self.target.options, **options}
        if self.runtime == "torch":
            self.backend = self._torch_backend(model, task)
        else:
            artifact = self._artifact(model, input_size)
            if self.runtime == "openvino" and precision in ("fp16", "bf16"):
                backend_options.setdefault("precision", precision)  # OpenVINO runs an fp32 artifact in bf16/fp16
            if self.runtime == "tensorrt":  # the engine is built at the profile's precision (jetson: fp16)
                backend_options.setdefault("precision", self.precision)
            self.backend = load_backend(self.runtime, artifact, **_runtime_options(self.runtime, backend_options))
            # what actually runs: the artifact's precision unless the runtime was told otherwise
            self.precision = backend_options.get("precision") or self.backend.metadata["precision"]
            if precision and precision != self.precision:
                logger.warning("asked for %s, but %s is a %s artifact: running it as is", precision, artifact,
                               self.precision)  # fmt: skip
        self.metadata = self.backend.metadata
        self.task = task or self.metadata["task"]
        if self.task != self.metadata["task"] and self.metadata["task"] != "panoptic":
            raise ValueError(f"a {self.metadata['task']} artifact cannot give {self.task} results")
        self.input_name = self.metadata["input"]["name"]
        logger.info("Segmenter: target %s via %s, %s %s", self.target.name, self.runtime, self.task, self.precision)

    # ------------------------------------------------------------------ model resolution
    def _artifact(self, model: str | Path | None, input_size: tuple[int, int] | None) -> Path:
        if model is None:
            return default_model(self.precision)
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"no model at {path}")
        if path.suffix == ".onnx":
            return path  # read_metadata names a directory or damaged file
        if path.is_dir():
            raise ValueError(f"{path} is a directory: pass an artifact (.onnx) or a checkpoint file inside it")
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"{path}: expected an artifact (.onnx) or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
        return self._compile(path, input_size)

    def _compile(self, checkpoint: Path, input_size: tuple[int, int] | None) -> Path:
        digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
        size = "x".join(map(str, input_size)) if input_size else "dynamic"
        target = "tensorrt" if self.runtime == "tensorrt" else self.runtime
        out = cache_dir() / "artifacts" / f"{digest}-{target}-{self.precision}-{size}.onnx"
        if out.exists():
            return out
        logger.info("compiling %s for %s %s (cached as %s)", checkpoint, target, self.precision, out)
        _host("compile.export").export(checkpoint, target, self.precision, out, input_size=input_size)
        return out

    def _torch_backend(self, model: str | Path | None, task: str | None) -> Any:
        if model is None or Path(model).suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError("the torch target needs a checkpoint (model=...pt)")
        checkpoint = Path(model)
        export = _host("compile.export")
        loaded = _host("train.model").load_pretrained(checkpoint)
        task = task or export.stored_task(checkpoint) or "semantic"
        module = _host("compile.onnx_export").DeployableMask2Former(loaded.model, loaded.meta, task)
        spec = export._input_spec(loaded.meta, None, 512, 2048)
        metadata = export.build_metadata(loaded, task, "onnxruntime", "fp32", spec, checkpoint, 0)
        return _host("runtimes.torch_backend").TorchBackend.from_module(module, metadata)

    # ------------------------------------------------------------------ stages (used by stream())
    def prepare(self, frame: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[Geometry, dict[str, float]]]:
        start = time.perf_counter()
        image, geometry = fit_to_input(as_bgr(frame), self.metadata["input"])
        inputs = {self.input_name: image[None]}
        return inputs, (geometry, {"preprocess_ms": (time.perf_counter() - start) * 1000})

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.run(inputs)

    def finish(self, outputs: dict[str, np.ndarray], context: tuple[Geometry, dict], frame: np.ndarray) -> Any:
        geometry, timings = context
        start = time.perf_counter()
        processed = postprocess(outputs, self.metadata, geometry)
        result = SegmentationResult.from_postprocess(processed, self.metadata, task=self.task)
        result.timings.update(timings)
        result.timings["postprocess_ms"] = (time.perf_counter() - start) * 1000
        return result

    # ------------------------------------------------------------------ public API
    def predict(self, frame: np.ndarray) -> SegmentationResult:
        """One HxWx3 uint8 BGR frame (grey and BGRA are converted) -> SegmentationResult at the frame's size."""
        inputs, context = self.prepare(frame)
        start = time.perf_counter()
        outputs = self.infer(inputs)
        context[1]["inference_ms"] = (time.perf_counter() - start) * 1000
        return self.finish(outputs, context, frame)

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

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runtime_options(runtime: str, options: dict[str, Any]) -> dict[str, Any]:
    """Profile options a runtime understands (the jetson row's TensorRT options mean nothing to the others)."""
    if runtime == "openvino":
        accepted = ("device", "precision", "threads", "cache_dir", "num_requests", "performance_mode")
        options = {k: v for k, v in options.items() if k in accepted}
        options.setdefault("cache_dir", str(cache_dir() / "openvino"))
        return options
    if runtime == "onnxruntime":
        return {k: v for k, v in options.items() if k in ("device", "threads", "providers")}
    return options
