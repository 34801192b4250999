"""One benchmark job in its own process: ``python -m benchmarks.worker JOB SPEC.json RESULT.json``.

Jobs (``JOBS``): ``prepare_model`` (HF model with seeded weights + our checkpoint converted from it),
``export`` (our artifact for one target x precision), ``hf_export`` (the HF model's own ONNX export) and
``measure`` (one row: warm-up, timed runs, labels, accuracy, agreement, peak memory, optional profile).

A row measured in its own process has its own peak memory, and a runtime that crashes takes only its row with
it. The result file holds the job's JSON result, or ``{"error": ..., "traceback": ...}`` (exit status 1).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.openvino_backend import OV_INFERENCE_PRECISION

logger = logging.getLogger("benchmarks.worker")

REFERENCE_ROW = "m2f-torch-fp32"


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size so far.

    Linux: ``VmHWM``, the high-water mark of this program's memory map. Not ``ru_maxrss``: Linux carries it over
    ``fork`` + ``exec``, so a worker would report its parent's peak when its own is lower.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (bytes on macOS)
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def rss_mb() -> float:
    """This process's resident set size now (the peak so far where /proc is absent)."""
    return _proc_status_mb("VmRSS") or peak_rss_mb()


# ---------------------------------------------------------------------------------------------- prepare_model


def prepare_model(spec: dict) -> dict:
    """Resolve ``spec["model"]`` into ``spec["dir"]``: our ``model.pt`` and, when HF has the architecture, ``hf/``."""
    import torch

    from benchmarks import peers
    from train.model import Mask2Former, ModelMeta, load_pretrained, save_checkpoint
    from train.model.convert_hf import config_from_hf, state_dict_from_hf
    from train.model.zoo import MODEL_ZOO, find_dataset_by_classes

    model_arg, out, seed = spec["model"], Path(spec["dir"]), int(spec.get("seed", 0))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, hf_dir = out / "model.pt", out / "hf"
    info: dict[str, Any] = {"model": model_arg, "seed": seed, "checkpoint": str(checkpoint), "hf_dir": None}
    path = Path(model_arg)

    hf_dict: dict | None = None
    meta = None
    if model_arg in MODEL_ZOO:
        entry = MODEL_ZOO[model_arg]
        meta, info["task"] = entry.meta, entry.task
        info["weights"] = f"random (seed {seed})"
        try:
            hf_dict = peers.hf_config_dict(entry.config, entry.meta.class_names)
        except peers.PeerNotAvailable as err:
            info["peer_error"] = str(err)
            torch.manual_seed(seed)
            save_checkpoint(checkpoint, Mask2Former(entry.config).eval(), entry.meta)
    elif path.suffix == ".json" or (path.is_dir() and not _has_weights(path)):
        hf_dict = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        info["weights"] = f"random (seed {seed})"
    elif path.is_dir():  # an HF folder with weights
        loaded = load_pretrained(path)
        save_checkpoint(checkpoint, loaded.model, loaded.meta)
        info.update(hf_dir=str(path), weights=f"HF folder {path.name}")
        return info
    elif path.is_file():
        loaded = load_pretrained(path)
        save_checkpoint(checkpoint, loaded.model, loaded.meta)
        info["weights"] = f"checkpoint {path.name}"
        info["peer_error"] = (
            "the HF peers need the model as a zoo name, an HF config.json or an HF folder (our checkpoints have no "
            "converter back to HF)"
        )
        return info
    else:
        raise FileNotFoundError(f"--model {model_arg!r} is neither a model-zoo name, an HF config.json nor a file")

    if hf_dict is not None and "peer_error" not in info:
        try:
            hf_model = peers.random_hf_model(hf_dict, seed)
        except peers.PeerNotAvailable as err:  # transformers missing: our model alone, same seeded architecture
            info["peer_error"] = str(err)
            hf_model = None
        config, class_names = config_from_hf(hf_dict)
        if meta is None:
            meta = find_dataset_by_classes(class_names) or ModelMeta(class_names=tuple(class_names), dataset="hf")
        model = Mask2Former(config).eval()
        if hf_model is not None:
            model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), config.backbone.kind), strict=True)
            hf_model.save_pretrained(str(hf_dir))
            info["hf_dir"] = str(hf_dir)
        save_checkpoint(checkpoint, model, meta)
    return info


def _has_weights(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / "pytorch_model.bin").exists()


# ---------------------------------------------------------------------------------------------- export jobs


def export_job(spec: dict) -> dict:
    """Our artifact for one target x precision (the compiler's own gate runs with a wide budget)."""
    from compile.export import export
    from runtimes.artifact import read_metadata

    start = time.perf_counter()
    out = Path(spec["out"])
    tmp = out.with_name(out.stem + ".partial.onnx")
    export(
        spec["checkpoint"],
        spec["target"],
        spec["precision"],
        tmp,
        input_size=tuple(spec["input_size"]),
        task=spec["task"],
        calib_dir=spec.get("calib_dir"),
        calib_images=int(spec.get("calib_images", 32)),
        gate_images=int(spec.get("gate_images", 4)),
        max_drop=100.0,  # the harness measures accuracy itself; a gate refusal here would hide the row
    )
    tmp.replace(out)
    meta = read_metadata(out)
    return {"path": str(out), "export_s": time.perf_counter() - start, "gate": meta.get("accuracy")}


def hf_export_job(spec: dict) -> dict:
    """The HF model's own ``torch.onnx.export`` (dynamo, else legacy)."""
    import torch

    from benchmarks.peers import export_hf_onnx, load_hf_model

    torch.set_num_threads(int(spec["threads"]))
    start = time.perf_counter()
    result = export_hf_onnx(load_hf_model(spec["hf_dir"]), tuple(spec["input_size"]), spec["out"])
    result["export_s"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------- pipelines


class _HfPipeline:
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


class _SegmenterPipeline:
    """Our SDK path: ``Segmenter.predict`` (preprocess, runtime, numpy post-processing)."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def predict(self, frame: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        result = self.segmenter.predict(frame)
        return result.semantic, {k: v for k, v in result.timings.items() if k.endswith("_ms")}


def _torch_segmenter(spec: dict) -> Any:
    """A Segmenter over our eager torch model behind the same letterboxed input as the artifacts, on the row's
    device and precision."""
    from compile.export import reference_model
    from runtimes.torch_backend import TorchBackend
    from sdk.segmenter import Segmenter

    row = spec["row"]  # the torch runtime runs the fp32 module on the row's device, in the row's precision
    module, metadata = reference_model(spec["checkpoint"], spec["task"], tuple(spec["input_size"]))
    options = {"device": row.get("device", "cpu"), "precision": row["precision"], "cuda_graph": row.get("cuda_graph")}
    return Segmenter.from_backend(TorchBackend.from_module(module, metadata, **options), target="torch")


def build_pipeline(spec: dict) -> tuple[Any, dict]:
    """(pipeline with ``predict(frame) -> (labels, stage ms)``, facts about it) for one row."""
    row, threads = spec["row"], int(spec["threads"])
    facts: dict[str, Any] = {}
    if row["family"] == "m2f":
        if row["runtime"] == "torch":
            import torch

            torch.set_num_threads(threads)
            segmenter = _torch_segmenter(spec)
        else:
            from sdk.segmenter import Segmenter

            options: dict[str, Any] = {"threads": threads, "device": row["device"]}
            if row["runtime"] == "openvino":
                options["cache_dir"] = None  # compile every time: the cache would change the peak memory
            segmenter = Segmenter(row["runtime"], model=spec["artifact"], precision=row["precision"], **options)
            if row["runtime"] == "openvino":
                want, got = OV_INFERENCE_PRECISION[row["precision"]], segmenter.backend.inference_precision
                facts["ov_inference_precision"] = got
                if want != got and row["precision"] != "int8":  # int8: its float ops' precision (the backend's)
                    raise RuntimeError(f"OpenVINO ran the {row['precision']} artifact in {got} (this CPU lacks {want})")
        facts.update(runtime=segmenter.runtime, device=segmenter.device, run_precision=segmenter.precision)
        return _SegmenterPipeline(segmenter), facts
    if row["family"] == "litert":
        from benchmarks.litert_peer import LiteRtDeepLab

        peer = LiteRtDeepLab(spec["peer_model"], spec["class_names"], threads=threads)
        facts.update(runtime="litert", device="cpu", run_precision="int8", peer_model=spec["peer_model"])
        return peer, facts

    import torch

    from benchmarks import peers
    from compile.export import input_spec
    from train.model import load_pretrained

    torch.set_num_threads(threads)
    meta = load_pretrained(spec["checkpoint"]).meta  # normalisation and input spec, as our rows
    processor = peers.hf_processor(meta.pixel_mean, meta.pixel_std, spec["hf_dir"])
    resize = input_spec(meta, tuple(spec["input_size"]))
    if row["runtime"] == "eager":
        run_eager = peers.hf_runner(peers.load_hf_model(spec["hf_dir"]), row.get("device", "cpu"), row["precision"])
        return _HfPipeline(run_eager, processor, resize), facts

    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(spec["artifact"], "CPU", config)
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run_openvino(pixel_values: Any) -> tuple[Any, Any]:
        result = request.infer({peers.HF_INPUT: pixel_values.numpy()})
        return torch.from_numpy(result[outputs[0]]), torch.from_numpy(result[outputs[1]])

    facts["exporter"] = spec.get("exporter")
    return _HfPipeline(run_openvino, processor, resize), facts


# ---------------------------------------------------------------------------------------------- measure


def load_eval_set(path: str | Path) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Frames (BGR uint8) and ground-truth label maps (or None) written by ``harness.prepare_eval_set``."""
    with np.load(path) as data:
        count = int(data["count"])
        frames = [data[f"frame_{i}"] for i in range(count)]
        labels = [data[f"label_{i}"] for i in range(count)] if f"label_{0}" in data else None
    return frames, labels


class _FrameReader:
    """A video source over frames already in memory (``read()`` like ``cv2.VideoCapture``)."""

    def __init__(self, frames: Iterable[np.ndarray]) -> None:
        self._frames = iter(frames)

    def read(self) -> tuple[bool, np.ndarray | None]:
        frame = next(self._frames, None)
        return frame is not None, frame


def _stream_fps(pipeline: _SegmenterPipeline, frames: list[np.ndarray], count: int) -> dict[str, float]:
    """Frames per second through ``sdk.stream`` (decode, inference and post-processing overlapped)."""
    from itertools import cycle, islice

    running = pipeline.segmenter.stream(_FrameReader(islice(cycle(frames), count)), live=False, annotate=None)
    for _ in running:
        pass
    stats = running.stats
    return {"stream_fps": stats.fps, "stream_frames": stats.frames}


def _stability(pipeline: _SegmenterPipeline, frames: list[np.ndarray]) -> dict[str, float | None]:
    """Flicker and flow consistency of the row's labels over the video's frames in order, stabiliser off and on."""
    figures: dict[str, float | None] = {}
    for stabilize in (False, True):
        running = pipeline.segmenter.stream(
            _FrameReader(frames), live=False, stabilize=stabilize, measure_stability=True
        )
        for _ in running:
            pass
        suffix = "_stabilized" if stabilize else ""
        stability = running.stats.stability or {}
        figures[f"flicker_unchanged_pct{suffix}"] = stability.get("flicker_unchanged_pct")
        figures[f"flow_consistency_pct{suffix}"] = stability.get("flow_consistency_pct")
    return figures


def latency_figures(times_ms: list[float]) -> dict[str, float]:
    """Percentiles, mean and FPS of per-frame latencies (ms): one definition for a round and for merged rounds."""
    t = np.asarray(times_ms, dtype=float)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "fps": float(1000 / t.mean()),
    }


def measure(spec: dict) -> dict:
    """One row: warm-up, ``runs`` timed frames (cycling the evaluation set), then every frame's labels.

    ``latency_only`` (a later round of the harness): warm-up and timed frames only; the labels, accuracy, stream
    and profile come from the row's first round.
    """
    row = spec["row"]
    frames, gt = load_eval_set(spec["eval"])
    _preimport(row)
    base_mb = rss_mb()
    t0 = time.perf_counter()
    pipeline, facts = build_pipeline(spec)
    load_s = time.perf_counter() - t0

    labels: dict[int, np.ndarray] = {}
    official: dict[int, np.ndarray] = {}
    hf = isinstance(pipeline, _HfPipeline)
    latency_only = bool(spec.get("latency_only"))

    def run(i: int) -> tuple[dict[str, float], float, float]:
        """One frame: its stages, wall ms and process CPU ms of ``predict`` alone; then, untimed, the labels of a
        frame not seen before (and for HF rows the official post-processing of its raw outputs, ~1 s at 150
        classes: it was inside the timed span once, inflating HF rows)."""
        wall, cpu = time.perf_counter(), time.process_time()
        out, stages = pipeline.predict(frames[i % len(frames)])
        wall, cpu = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
        if not latency_only and i % len(frames) not in labels:
            labels[i % len(frames)] = out
            if hf:
                official[i % len(frames)] = pipeline.official_labels()
        return stages, wall, cpu

    warmup, runs = int(spec["warmup"]), int(spec["runs"])
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for i in range(warmup):
        run(i)
    times, stage_sums, cpu_total = [], {}, 0.0
    for i in range(warmup, warmup + runs):
        stages, wall, cpu = run(i)
        times.append(wall)
        cpu_total += cpu
        for k, v in stages.items():
            stage_sums[k] = stage_sums.get(k, 0.0) + v
    cpu_ms = cpu_total / runs
    result: dict[str, Any] = {
        **facts,
        **latency_figures(times),
        "times_ms": times,
        "cpu_ms": cpu_ms,  # process CPU time per frame, all threads: less sensitive to a busy machine
        "runs": runs,
        "warmup": warmup,
        "load_s": load_s,
        "load_avg_1min": load_avg,
        **{k: v / runs for k, v in stage_sums.items()},
        "stage_keys": sorted(stage_sums),  # the per-frame means above (preprocess_ms, ...): merged over rounds
    }
    if latency_only:
        return result
    for i in range(len(frames)):  # frames the timed loop did not reach
        if i not in labels:
            run(i)
    peak = peak_rss_mb()
    result.update(peak_rss_mb=peak, rss_delta_mb=peak - base_mb)
    ordered = [labels[i] for i in range(len(frames))]
    if spec.get("write_reference"):
        np.savez_compressed(spec["reference"], **{f"labels_{i}": x for i, x in enumerate(ordered)})
    result.update(_agreement(ordered, spec["reference"]))
    if hf:
        result["model_agreement"] = _agreement([official[i] for i in range(len(frames))], spec["reference"]).get(
            "agreement"
        )
    if gt is not None and spec.get("num_classes_match"):
        from train.evaluation.semantic import SemanticEvaluator

        evaluator = SemanticEvaluator(int(spec["num_classes"]), 255)
        for pred, truth in zip(ordered, gt, strict=True):
            evaluator.update(pred, truth)
        result["mIoU"] = evaluator.compute()["mIoU"]
    if spec.get("stream") and isinstance(pipeline, _SegmenterPipeline):
        try:
            result.update(_stream_fps(pipeline, frames, runs))
            if spec.get("video"):
                result.update(_stability(pipeline, frames))
        except Exception as err:  # the row keeps its latency figures
            result["stream_error"] = f"{type(err).__name__}: {err}"
    if spec.get("profile"):
        try:
            result["profile"] = _profile(spec, pipeline, frames[0])
        except Exception as err:
            logger.exception("profiling failed")
            result["profile_error"] = f"{type(err).__name__}: {err}"
    return result


def _preimport(row: dict) -> None:
    """Import what the row's engine needs before the memory baseline, so the delta is the model's own."""
    import sdk.segmenter  # noqa: F401

    if row["family"] == "hf" or row["runtime"] == "torch":
        import torch  # noqa: F401

        import compile.export  # noqa: F401
        import train.model  # noqa: F401
    if row["family"] == "hf":
        import transformers  # noqa: F401
    if row["family"] == "litert":
        import ai_edge_litert.interpreter  # noqa: F401
    elif row["runtime"] in ("openvino", "onnxruntime"):
        import importlib

        importlib.import_module(row["runtime"])
        importlib.import_module(f"runtimes.{row['runtime']}_backend")


def _agreement(labels: list[np.ndarray], reference: str) -> dict[str, float]:
    if not Path(reference).exists():
        return {}
    with np.load(reference) as ref:
        want = [ref[f"labels_{i}"] for i in range(len(labels))]
    same = sum(int((a.astype(np.int64) == b.astype(np.int64)).sum()) for a, b in zip(labels, want, strict=True))
    return {"agreement": same / sum(b.size for b in want)}


def _profile(spec: dict, pipeline: Any, frame: np.ndarray) -> dict:
    from benchmarks import profiling
    from sdk.preprocess import fit_to_input

    row, threads = spec["row"], int(spec["threads"])
    if row["family"] == "litert":
        raise NotImplementedError("no per-op profile of the LiteRT peer")
    if row["family"] == "m2f":
        segmenter = pipeline.segmenter
        feed = {segmenter.input_name: fit_to_input(frame, segmenter.metadata["input"])[0][None]}
        if row["runtime"] in profiling.PROFILED_RUNTIMES:
            return profiling.profile_on(row["runtime"], spec["artifact"], feed, row["precision"], threads)
        return profiling.profile_torch(lambda: segmenter.backend.run(feed))
    image, _ = fit_to_input(frame, pipeline.input_spec)
    pixel_values = pipeline.processor(images=image[..., ::-1].copy(), return_tensors="pt")["pixel_values"]
    if row["runtime"] == "openvino":
        from benchmarks.peers import HF_INPUT

        return profiling.profile_openvino(spec["artifact"], {HF_INPUT: pixel_values.numpy()}, "f32", threads)
    return profiling.profile_torch(lambda: pipeline.run_model(pixel_values))


JOBS: dict[str, Callable[[dict], dict]] = {
    "prepare_model": prepare_model,
    "export": export_job,
    "hf_export": hf_export_job,
    "measure": measure,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] not in JOBS:
        sys.stderr.write(f"usage: python -m benchmarks.worker {{{','.join(JOBS)}}} SPEC.json RESULT.json\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        result, status = JOBS[job](spec), 0
    except Exception as err:
        logger.exception("%s failed", job)
        message = f"{type(err).__name__}: {err}".strip()
        result, status = {"error": message, "traceback": traceback.format_exc()}, 1
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_jsonable))
    tmp.replace(result_path)
    return status


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
