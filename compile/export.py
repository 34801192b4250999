"""``compile.export``: checkpoint -> one verified, self-describing ``.onnx`` artifact per target and precision."""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compile.gate import GateError, GateImage, check_int8_execution, gate_image, run_gate
from compile.msda_function import attach_body, collapse_sites, inline_sites
from compile.onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUTS, DeployableMask2Former, export_onnx
from compile.precision import compact_storage, write_float_precision
from compile.quantization import QuantizationConfig, calibration_inputs
from compile.quantize_onnxruntime import quantize_onnxruntime_int8
from compile.quantize_openvino import quantize_openvino_int8
from compile.tensorrt_export import (
    PluginReferenceBackend,
    check_tensorrt_request,
    export_openvino_fused_onnx,
    export_tensorrt_onnx,
)
from compile.tensorrt_rules import check_artifact
from plugins.msda import openvino_extension
from runtimes import Backend, load_backend
from runtimes.artifact import ArtifactMetadata, Inference, InputSpec, Normalization, Source, write_metadata
from runtimes.cache import file_sha256
from runtimes.errors import CheckpointError
from runtimes.geometry import fit_to_input
from runtimes.images import FrameError, read_image
from runtimes.registry import ARTIFACT_TARGETS, export_precisions
from runtimes.vocabulary import IMAGE_SUFFIXES, VOID, image_files
from train.evaluation.semantic import semantic_gt_from_sample
from train.model import LoadedModel, load_pretrained
from train.model.checkpoint import read_checkpoint_if_ours

logger = logging.getLogger(__name__)

DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 512, 2048  # shortest-edge resize of a dynamic-size export

# what an export that ships calibrates on (int8) and compares with torch on (every precision); the benchmark's own
# exports use fewer (benchmarks.harness.BENCH_CALIB_IMAGES / BENCH_GATE_IMAGES): their rows time a file, not ship it
CALIB_IMAGES = 64
GATE_IMAGES = 32
MAX_DROP = 1.0  # the gate's metric drop budget in points (``m2f export --max-drop`` reads it)

# (model, meta, task, path, input_size, opset=...) -> path: the model as an fp32 ONNX graph
GraphExporter = Callable[..., Path]


# --------------------------------------------------------------------------------------------- the export table


@dataclass(frozen=True)
class ExportFormat:
    """How ``export`` makes and checks the artifact of one artifact target: one row of :data:`EXPORT_FORMATS`.

    Which artifact targets exist and which precisions each takes are ``runtimes.registry``'s (``ARTIFACT_TARGETS``,
    ``export_precisions``); a row says only how. fp32 / fp16 / bf16 are the same pass for every target
    (``compile.precision.write_float_precision``); int8 is the target's own quantiser.
    """

    graph: GraphExporter  # MSDA lowered as the target runs it: standard ops, or the TensorRT plugin node
    int8: Callable[[Path, Path, QuantizationConfig], Path] | None = None  # (fp32 src, dst, config) -> dst
    # each MSDA layer as one node for our OpenVINO CPU extension, where the target has one (``native_ops``)
    fused_msda_graph: GraphExporter | None = None
    fixed_input_size: bool = False  # exported at one static size only (TensorRT builds one engine per size)
    # (precision, input size): refuses before any work, saying what to do instead
    check_request: Callable[[str, tuple[int, int] | None], None] | None = None
    check_artifact: Callable[[Path], None] | None = None  # refuses a written file that breaks the parser's rules
    gate_backend: Callable[[str, Path], Backend] = load_backend  # (target, path): runs the file for the gate here


def _plugin_reference_backend(target: str, path: Path) -> Backend:
    """A tensorrt artifact on this host: ONNX Runtime, its plugin nodes computed by the MSDA reference (the engine
    itself is built on the device)."""
    return PluginReferenceBackend(path)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnxruntime": ExportFormat(graph=export_onnx, int8=quantize_onnxruntime_int8),
    "openvino": ExportFormat(
        graph=export_onnx, int8=quantize_openvino_int8, fused_msda_graph=export_openvino_fused_onnx
    ),
    "tensorrt": ExportFormat(
        graph=export_tensorrt_onnx,
        fixed_input_size=True,
        check_request=check_tensorrt_request,
        check_artifact=check_artifact,
        gate_backend=_plugin_reference_backend,
    ),
}


def export_format(target: str) -> ExportFormat:
    """The row of artifact target ``target`` (a name of ``runtimes.registry.ARTIFACT_TARGETS``)."""
    if target not in ARTIFACT_TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {sorted(ARTIFACT_TARGETS)}")
    return EXPORT_FORMATS[target]


# --------------------------------------------------------------------------------------------- export


def _images_in(folder: Path, limit: int, seed: int = 0) -> list[np.ndarray]:
    files = image_files(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    random.Random(seed).shuffle(files)
    images = []
    for path in files[:limit]:
        try:
            images.append(read_image(path))
        except FrameError as err:
            raise ValueError(f"cannot use calibration image {path}: {err}") from err
    return images


def _calibration_images(folder: str | Path | None, resize: dict, limit: int) -> list[np.ndarray] | None:
    """Up to ``limit`` images of ``folder`` fitted into the model input (``resize``), None without a folder."""
    if folder is None:
        return None
    return [fit_to_input(img, resize)[0] for img in _images_in(Path(folder), limit)]


def validation_images(loaded: LoadedModel, spec: dict, input_spec: dict, limit: int) -> list[GateImage]:
    """Up to ``limit`` labelled frames of the dataset ``spec``, placed in the model input as the SDK places them."""
    from train.data import build_dataset

    dataset = build_dataset(spec)
    items = []
    for i in range(min(limit, len(dataset))):
        sample = dataset[i]
        bgr = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy()[..., ::-1])
        h, w = bgr.shape[:2]
        gt = semantic_gt_from_sample(sample["labels"], sample["masks"], sample["iscrowd"], h, w, VOID)
        items.append(gate_image(bgr, input_spec, gt))
    return items


def input_spec(
    meta: Any,
    input_size: tuple[int, int] | None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
) -> dict:
    """The artifact's resize fields: ``letterbox`` into ``input_size`` (H, W), or ``shortest_edge`` when None."""
    pad = [round(v) for v in reversed(meta.pixel_mean)]  # BGR mean: normalises to ~0 like the official padding
    if input_size is None:
        return {"resize_policy": "shortest_edge", "size": None, "min_size": min_size, "max_size": max_size}
    return {"resize_policy": "letterbox", "size": list(input_size), "pad_bgr": pad}


def default_input_size(checkpoint: str | Path) -> tuple[int, int]:
    """The static (H, W) a fixed-size export of ``checkpoint`` gets when none is given: a square of the test-time
    short side its training evaluated at (``eval_resize.min_size``), else its zoo dataset's official test resize,
    else ``DEFAULT_MIN_SIZE``; frames are letterboxed into it."""
    from train.model.zoo import inference_resize

    record = read_checkpoint_if_ours(checkpoint)
    side = record.eval_min_size if record else None
    if side is None:
        resize = inference_resize(record.meta.get("dataset", "") if record else "")
        side = resize.min_size if resize else DEFAULT_MIN_SIZE
    return int(side), int(side)


def load_checkpoint(checkpoint: str | Path) -> LoadedModel:
    """``train.model.load_pretrained``, its refusal of a damaged, unsafe or foreign file as a ``CheckpointError``."""
    try:
        return load_pretrained(checkpoint)
    except (ValueError, FileNotFoundError) as err:
        raise CheckpointError(str(err)) from err


def reference_model(
    checkpoint: str | Path,
    task: str | None = None,
    input_size: tuple[int, int] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
) -> tuple[DeployableMask2Former, dict]:
    """(the checkpoint's deployable torch module, the metadata of the artifact it stands for): the model every
    artifact is measured against, runnable with ``runtimes.torch_backend.TorchBackend.from_module``.

    The module is what ``export`` would put in an fp32 ONNX Runtime artifact (uint8 BGR in, pre/post-processing
    inside), with the same input spec for ``input_size`` (None: dynamic, shortest edge ``min_size``/``max_size``).
    """
    checkpoint = Path(checkpoint)
    loaded = load_checkpoint(checkpoint)
    task = task or default_task(checkpoint, loaded)
    module = DeployableMask2Former(loaded.model, loaded.meta, task).eval()
    spec = input_spec(loaded.meta, input_size, min_size, max_size)
    return module, build_metadata(loaded, task, "onnxruntime", "fp32", spec, checkpoint, DEFAULT_OPSET).to_dict()


def default_task(checkpoint: Path, loaded: LoadedModel) -> str:
    """The task the checkpoint was trained for, else panoptic when it has thing classes, else semantic."""
    return stored_task(checkpoint) or ("panoptic" if loaded.meta.thing_ids else "semantic")


def build_metadata(
    loaded: LoadedModel, task: str, target: str, precision: str, input_spec: dict, checkpoint: Path, opset: int
) -> ArtifactMetadata:
    """The artifact's metadata (schema: ``runtimes.artifact.ArtifactMetadata``)."""
    meta = loaded.meta
    size = input_spec["size"]
    return ArtifactMetadata(
        task=task,
        class_names=list(meta.class_names),
        thing_ids=list(meta.thing_ids),
        colors=[list(c) for c in meta.colors] or _palette(meta.num_classes),
        input=InputSpec(
            name=INPUT_NAME,
            shape=[1, *(size or [None, None]), 3],
            dtype="uint8",
            layout="NHWC",
            channel_order="BGR",
            **input_spec,
        ),
        normalization=Normalization(mean=list(meta.pixel_mean), std=list(meta.pixel_std), in_graph=True),
        precision=precision,
        target=target,
        opset=opset,
        source=Source(checkpoint_sha256=file_sha256(checkpoint), name=checkpoint.name),
        outputs=dict(OUTPUTS[task]),
        inference=Inference(
            object_mask_threshold=meta.inference.object_mask_threshold,
            overlap_threshold=meta.inference.overlap_threshold,
            topk_per_image=meta.inference.topk_per_image,
        ),
    )


def _palette(k: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(k, 3)).tolist()


def _simplify(path: Path) -> onnx.ModelProto:
    import onnxslim

    raw = onnx.load(str(path))
    model = onnxslim.slim(raw)
    _retype_untyped_values(model, raw)
    onnx.checker.check_model(model, full_check=True)
    return model


def _retype_untyped_values(model: onnx.ModelProto, raw: onnx.ModelProto) -> None:
    """onnxslim leaves the outputs of ops without an ONNX schema (the TensorRT plugin nodes) untyped, which the
    checker rejects: put back the exporter's type where it wrote one, else drop the entry (value_info is optional)."""
    typed = {v.name: v for v in raw.graph.value_info if v.type.tensor_type.elem_type}
    kept = []
    for value in model.graph.value_info:
        source = value if value.type.tensor_type.elem_type else typed.get(value.name)
        if source is not None:
            kept.append(onnx.ValueInfoProto())
            kept[-1].CopyFrom(source)
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def _apply_precision(
    row: ExportFormat, fp32: Path, out: Path, precision: str, calibration: Sequence[np.ndarray] | None
) -> None:
    """The fp32 graph at ``precision``: a float precision the same for every target, int8 by the row's quantiser."""
    if precision != "int8":
        write_float_precision(fp32, out, precision)
        return
    if not calibration:
        raise ValueError("int8 needs calibration images: pass --calib DIR (real images of the deployment scene)")
    assert row.int8 is not None, "runtimes.registry offers int8 for a target whose export row has no quantiser"
    row.int8(fp32, out, QuantizationConfig(calibration_inputs(calibration)))


def _apply_precision_fused(
    row: ExportFormat, fp32: Path, out: Path, precision: str, calibration: Sequence[np.ndarray] | None
) -> bool:
    """``_apply_precision`` for a graph with fused MSDA nodes, which leave it with their standard-op body attached
    (``compile.msda_function``): int8 quantises the inlined graph, then folds each site back. False where a site
    cannot be folded back: the file keeps the standard ops (logged)."""
    if precision != "int8":
        _apply_precision(row, fp32, out, precision, calibration)
        onnx.save(attach_body(onnx.load(str(out))), str(out))
        return True
    inlined, sites, body = inline_sites(onnx.load(str(fp32)))
    onnx.save(inlined, str(fp32))
    _apply_precision(row, fp32, out, precision, calibration)
    try:
        onnx.save(collapse_sites(onnx.load(str(out)), sites, body), str(out))
    except ValueError as err:
        logger.warning("MSDA as standard ops in the int8 file: %s", err)
        return False
    return True


def export(
    checkpoint: str | Path,
    target: str,
    precision: str,
    out: str | Path,
    input_size: tuple[int, int] | None = None,
    task: str | None = None,
    calib_dir: str | Path | None = None,
    val_data: dict | None = None,
    max_drop: float = MAX_DROP,
    gate_images: int = GATE_IMAGES,
    calib_images: int = CALIB_IMAGES,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    opset: int = DEFAULT_OPSET,
    compact: bool = False,
    native_ops: bool | None = None,
) -> Path:
    """Export ``checkpoint`` for ``target`` at ``precision`` to ``out`` and gate it; returns ``out``. How is the
    target's row of :data:`EXPORT_FORMATS`.

    ``native_ops``: write each deformable-attention layer as one fused node for our OpenVINO CPU extension
    (``plugins.msda.openvino_extension``): None where it applies (openvino, fp32, a static size, the extension
    built here; otherwise standard ops and a log line saying why), False never, True or a ValueError why not.

    ``compact``: a smaller file (``compile.precision.compact_storage``): uniform constants as ConstantOfShape, and
    for fp32 the weights stored in fp16 behind a Cast (fp32 compute, as OpenVINO's own IR stores weights); the gate
    measures the compacted artifact.

    ``input_size=None`` exports dynamic height and width (resize policy ``shortest_edge`` with ``min_size`` /
    ``max_size``); a size exports a static graph (``letterbox``). ``val_data`` is a dataset spec whose ground
    truth gives the metric drop; without it the gate measures agreement on the calibration images.
    """
    row = export_format(target)
    if row.check_request is not None:  # first: it says how to make what the export does not (tensorrt int8)
        row.check_request(precision, input_size)
    if precision not in export_precisions(target):
        raise ValueError(f"{target} does not take {precision}; it takes {', '.join(export_precisions(target))}")
    checkpoint, out = Path(checkpoint), Path(out)
    fused = _fused_msda(row, target, precision, input_size, native_ops)
    loaded = load_checkpoint(checkpoint)
    task = task or default_task(checkpoint, loaded)
    resize = input_spec(loaded.meta, input_size, min_size, max_size)
    calibration = _calibration_images(calib_dir, resize, calib_images)
    gate_set = validation_images(loaded, val_data, resize, gate_images) if val_data else []
    if not gate_set and calibration:
        gate_set = [GateImage(img) for img in calibration[:gate_images]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        export_graph = row.fused_msda_graph if fused and row.fused_msda_graph else row.graph
        raw = export_graph(loaded.model, loaded.meta, task, Path(tmp) / "raw.onnx", input_size, opset=opset)
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(_simplify(raw), str(fp32))
        if fused:
            fused = _apply_precision_fused(row, fp32, out, precision, calibration)
        else:
            _apply_precision(row, fp32, out, precision, calibration)
    metadata = build_metadata(loaded, task, target, precision, resize, checkpoint, opset)
    if fused:
        metadata.native_ops = openvino_extension.metadata_record()
    if compact:
        fp16_weights = precision == "fp32"
        metadata.weight_storage = "fp16" if fp16_weights else precision
        _write(out, metadata, transform=lambda model: compact_storage(model, fp16_weights))
    else:
        _write(out, metadata)
    if row.check_artifact is not None:
        row.check_artifact(out)
    if gate_set:
        reference = DeployableMask2Former(loaded.model, loaded.meta, task)
        _gate(row, target, precision, out, metadata, reference, gate_set, max_drop)
    else:
        logger.warning("no gate images (pass --calib or --val-data): %s is not verified against torch", out)
    logger.info("wrote %s (%s, %s, %s)", out, target, precision, task)
    return out


def _gate(
    row: ExportFormat,
    target: str,
    precision: str,
    path: Path,
    metadata: ArtifactMetadata,
    reference: DeployableMask2Former,
    images: list[GateImage],
    max_drop: float,
) -> None:
    """Run the gate on the artifact at ``path`` (with the row's gate backend) and store its records there."""
    backend = row.gate_backend(target, path)
    try:
        metadata.accuracy = run_gate(reference, backend, images, precision, max_drop)
    finally:
        backend.close()
    if precision == "int8":  # the gate's accuracy is worth nothing if the file still computes in float
        metadata.accuracy["int8_execution"] = check_int8_execution(target, str(path), images[0].image)
    lowered = _verify_lowered(target, precision, path, reference, images, max_drop)
    if lowered:
        metadata.verified_precisions = lowered
    _write(path, metadata)


def _verify_lowered(
    target: str, precision: str, path: Path, reference: DeployableMask2Former, images: list, max_drop: float
) -> dict:
    """Gate records of the precisions the runtime can lower this artifact to on this CPU (bf16 where the CPU computes
    bf16 natively: an fp32 artifact's every op, an int8 artifact's float ops), so ``Segmenter`` may run them by
    default; a lowering over budget is logged and left out, never a failed export. The targets that lower are those
    whose export takes bf16 (``runtimes.registry``: OpenVINO; a bf16 export is the fp32 graph run at bf16)."""
    from runtimes.cpu_features import cpu_features

    features = cpu_features()
    if "bf16" not in export_precisions(target) or precision not in ("fp32", "int8") or not features.native_bf16:
        return {}
    backend = load_backend(target, path, precision="bf16")
    try:
        label = "bf16" if precision == "fp32" else "int8, bf16 float ops"
        record = run_gate(reference, backend, images, label, max_drop)
    except GateError as err:
        logger.warning("bf16 on OpenVINO not verified for %s: %s", path, err)
        return {}
    finally:
        backend.close()
    return {"bf16": {**record, "runtime": target, "cpu": features.describe()}}


def _fused_msda(
    row: ExportFormat, target: str, precision: str, input_size: tuple[int, int] | None, asked: bool | None
) -> bool:
    """Whether the export writes the fused MSDA node (see ``export``'s ``native_ops``)."""
    if row.fused_msda_graph is None:
        if asked:
            raise ValueError(f"the fused MSDA node is an OpenVINO extension; {target} artifacts use standard ops")
        return False
    if asked is False:
        return False
    if input_size is None:
        reason = "the input size is dynamic (the node's feature-map sizes are constants)"
    elif precision not in ("fp32", "int8"):
        reason = f"{precision} files keep standard ops"
    else:
        reason = openvino_extension.unavailable_reason()
    if reason is None:
        return True
    if asked:
        raise ValueError(f"cannot write the fused MSDA node: {reason}")
    logger.info("MSDA as standard ops: %s", reason)
    return False


def _write(
    path: Path, metadata: ArtifactMetadata, transform: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None
) -> None:
    """Store ``metadata`` in the artifact, after ``transform`` of its graph if given (one load, one save)."""
    model = onnx.load(str(path))
    if transform is not None:
        model = transform(model)
    write_metadata(model, metadata)
    onnx.save(model, str(path))


def stored_task(checkpoint: Path) -> str | None:
    """The task the checkpoint was trained for, if it was trained by m2f."""
    record = read_checkpoint_if_ours(checkpoint)
    return record.task if record else None
