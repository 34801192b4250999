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
from runtimes.cache import cache_root, file_sha256, graph_code_key
from runtimes.registry import RUNTIMES, TARGETS, TargetSpec, export_precisions
from runtimes.vocabulary import INT8_BF16, PRECISIONS
from sdk import host
from sdk.postprocess import postprocess as postprocess_outputs
from sdk.preprocess import DEFAULT_MAX_PIXELS, Geometry, as_bgr, fit_to_input
from sdk.results import SegmentationResult
from sdk.targets import PrecisionChoice, choose_precision, resolve_target

if TYPE_CHECKING:
    from sdk.sources import Source
    from sdk.stream import Stream
    from sdk.stream_options import StreamOptions

logger = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path(__file__).parent / "models"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pkl")


def cache_dir() -> Path:
    """Where compiled artifacts and engines are cached (``runtimes.cache.cache_root``)."""
    return cache_root()


def packaged_artifacts() -> list[tuple[Path, dict]]:
    """(path, metadata) of every artifact packaged in ``sdk/models``, by file name."""
    found = [(path, read_metadata(path)) for path in sorted(DEFAULT_MODELS_DIR.glob("*.onnx"))]
    if not found:
        raise FileNotFoundError(
            f"no default model is packaged in this build ({DEFAULT_MODELS_DIR}): pass model=<artifact .onnx or "
            "checkpoint>"
        )
    return found


def default_model(precision: str, runtime: str = "openvino") -> Path:
    """The packaged artifact ``runtime`` runs ``precision`` from (see :func:`artifact_for`)."""
    return artifact_for(packaged_artifacts(), runtime, precision)


def artifact_for(artifacts: list[tuple[Path, dict]], runtime: str, precision: str) -> Path:
    """The artifact to run ``precision`` from: one made at that precision (compiled for ``runtime`` first), else an
    fp32 one (runtimes with a ``precision`` option lower it), else the first ``runtime`` opens."""
    opens = [(path, meta) for path, meta in artifacts if meta["target"] in RUNTIMES[runtime].artifact_targets]
    if not opens:
        raise ValueError(f"none of {[str(p) for p, _ in artifacts]} can be opened by {runtime}")

    def rank(item: tuple[Path, dict]) -> tuple[int, int]:
        meta = item[1]
        return (0 if meta["precision"] == precision else 1 if meta["precision"] == "fp32" else 2,
                0 if meta["target"] == runtime else 1)  # fmt: skip

    return min(opens, key=rank)[0]


FLOAT_OPS_BF16 = "its float ops in bf16, as its gate verified"  # said of an int8 file run so (repr, m2f info)


def gated_offers(artifacts: list[tuple[Path, dict]], runtime: str) -> dict[str, Path]:
    """precision -> artifact, for each precision whose accuracy gate passed for ``runtime``.

    An artifact offers its own precision when its metadata carries the gate's record (an export whose gate fails
    is never written); an int8 artifact only to the runtime it was quantised for (NNCF's Q/DQ layout runs slower
    than fp32 on ONNX Runtime, ORT's is not what OpenVINO fuses best). An fp32 artifact also offers the
    precisions the gate verified the runtime lowering it to (``verified_precisions``, e.g. OpenVINO bf16). An int8
    artifact's bf16 lowering is how its float ops run, not another precision: it is offered as ``INT8_BF16`` too,
    which the speed order places where that runs faster than int8 with f32 float ops.
    """
    offers: dict[str, Path] = {}
    for path, meta in sorted(artifacts, key=lambda item: item[1]["target"] != runtime):
        if meta["target"] not in RUNTIMES[runtime].artifact_targets or "accuracy" not in meta:
            continue
        if meta["precision"] != "int8" or meta["target"] == runtime:
            offers.setdefault(meta["precision"], path)
        for lowered, record in (meta.get("verified_precisions") or {}).items():
            if record.get("runtime") != runtime:
                continue
            if meta["precision"] == "fp32":
                offers.setdefault(lowered, path)
            elif meta["precision"] == "int8" and lowered == "bf16" and meta["target"] == runtime:
                offers.setdefault(INT8_BF16, path)
    return offers


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
        spec, runtime = resolve_target(target, _artifact_target(model))
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
            choice = PrecisionChoice(precision or spec.precision, Path(model), _asked(precision, spec))
        else:
            choice = choose_artifact(model, runtime, precision, spec, input_size)
            artifact_precision = read_metadata(choice.artifact)["precision"]
            if "precision" in RUNTIMES[runtime].options:
                _set_precision(backend_options, choice.precision, spec.precision, artifact_precision)
            backend = load_backend(runtime, choice.artifact, **backend_options)
        self.model_path = choice.artifact
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
        segmenter.model_path, segmenter.precision_reason = None, "the backend's own (from_backend)"
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
        model = self.model_path
        return (
            f"Segmenter(profile={self.target.name!r}, runtime={self.runtime!r}, device={self.device!r}, "
            f"precision={self.precision!r}, model={model.name if model else None!r}, "
            f"input={'x'.join(map(str, size)) if size else 'dynamic'}, task={self.task!r}; "
            f"precision: {self.precision_reason})"
        )

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def choose_artifact(
    model: str | Path | None,
    runtime: str,
    precision: str | None,
    spec: TargetSpec,
    input_size: tuple[int, int] | None,
) -> PrecisionChoice:
    """The artifact and precision to run: as asked; else on a CPU the fastest gated one (``choose_precision``);
    else the profile's precision. A checkpoint is compiled at the asked or the profile's precision."""
    if model is None:
        artifacts = packaged_artifacts()
    else:
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"no model at {path}")
        if path.suffix != ".onnx":
            if path.is_dir():
                raise ValueError(f"{path} is a directory: pass an artifact (.onnx) or a checkpoint file inside it")
            if path.suffix not in CHECKPOINT_SUFFIXES:
                raise ValueError(
                    f"{path}: expected an artifact (.onnx) or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
                )
            wanted = precision or spec.precision
            return PrecisionChoice(wanted, _compile(path, runtime, wanted, input_size), _asked(precision, spec))
        artifacts = [(path, read_metadata(path))]  # names a damaged file or a foreign model
    if precision is not None:
        return PrecisionChoice(precision, artifact_for(artifacts, runtime, precision), "asked for")
    offers = gated_offers(artifacts, runtime)
    if spec.device == "cpu" and offers:
        return choose_precision(runtime, offers)
    return PrecisionChoice(
        spec.precision, artifact_for(artifacts, runtime, spec.precision),
        _asked(None, spec) + ("" if offers else " (no artifact with a passed accuracy gate to choose from)"),
    )  # fmt: skip


def _artifact_target(model: str | Path | None) -> str | None:
    """What ``model`` was compiled for (the packaged fp32 artifact's target when None); None for a checkpoint, or a
    file the backend will refuse with its own message."""
    try:
        if model is None:
            return next(meta["target"] for _, meta in packaged_artifacts() if meta["precision"] == "fp32")
        path = Path(model)
        if path.suffix in CHECKPOINT_SUFFIXES or not path.is_file():
            return None
        return read_metadata(path, validate=False).get("target")
    except (FileNotFoundError, ValueError, OSError, StopIteration):
        return None


def _asked(precision: str | None, spec: TargetSpec) -> str:
    return "asked for" if precision else f"profile {spec.name}'s default"


def _compile(checkpoint: Path, runtime: str, precision: str, input_size: tuple[int, int] | None) -> Path:
    """The checkpoint's artifact for ``runtime`` (the artifact target named after it), compiled once and cached.

    The artifact is made at ``precision`` where the export makes it for that target, else at fp32 (which the
    runtime then lowers where it can). A fixed-size export (TensorRT) without ``input_size`` gets the checkpoint's.
    """
    export = host.compiler()
    if precision not in export_precisions(runtime):
        precision = "fp32"
    if input_size is None and export.EXPORT_FORMATS[runtime].fixed_input_size:
        input_size = export.default_input_size(checkpoint)
    digest = file_sha256(checkpoint)[:16]
    size = "x".join(map(str, input_size)) if input_size else "dynamic"
    # the compiler's code is part of the key: after a change to it the checkpoint compiles anew
    out = cache_dir() / "artifacts" / f"{digest}-code{graph_code_key()}-{runtime}-{precision}-{size}.onnx"
    if out.exists():
        return out
    logger.info("compiling %s for %s %s (cached as %s)", checkpoint, runtime, precision, out)
    export.export(checkpoint, runtime, precision, out, input_size=input_size)
    return out


def _set_precision(options: dict[str, Any], asked: str | None, default: str, artifact: str) -> None:
    """Tell the backend what to run at when that is not the artifact's own precision: what was asked, else the
    target's default where the artifact is fp32 (an fp32 artifact can be lowered; a reduced one runs as it is)."""
    want = asked or (default if artifact == "fp32" else artifact)
    if want != artifact:
        options.setdefault("precision", want)
