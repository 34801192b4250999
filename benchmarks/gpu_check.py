"""One prepared check of the GPU path on a fresh GPU machine: ``make gpu-check`` (``python -m benchmarks.gpu_check``).

Steps, each timed and written to ``OUT/gpu_check.md`` (+ ``gpu_check.json``) as soon as it ends:

1. build the MSDA CUDA extension (``plugins.msda.extension``);
2. ``pytest -m gpu`` over tests/ (every GPU test; on a machine without CUDA they all skip);
3. train the edge model (configs/camvid_edge.yaml's model, augmentation and solver) for ``--train-iters`` on
   generated 360x480 street-like scenes, ``num_workers: auto``: training images/s;
4. latency, median ms, end to end (letterbox + model + post-processing, ``Segmenter.predict``) and model only
   (the runtime call on the letterboxed input): our torch runtime eager fp32 / fp16 and as a CUDA graph fp16 /
   bf16, HF transformers eager fp32 / fp16 on the same device, for Swin-T ADE20K at 512x512 (seeded random
   weights, the same function in both) and the trained edge model at 360x480 (HF has no timm backbone: no peer).

It needs torch, timm, transformers, opencv and pyyaml, never OpenVINO, pycocotools, TensorRT or the internet, and
uses the python it is started with (no virtual environment): the lent GPU image has all it needs.
``--device cpu --tiny`` runs every step at toy sizes on a CPU (the CPU test of this script).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from runtimes.vocabulary import REPO_ROOT

logger = logging.getLogger("benchmarks.gpu_check")

EDGE_CONFIG = REPO_ROOT / "configs" / "camvid_edge.yaml"
SWIN_T_MODEL = "ade20k-semantic-swin-t"
FRAME_SIZE = (360, 480)  # CamVid-like camera frames, letterboxed to each model's input
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


class Report:
    """The facts gathered so far, rewritten to OUT as Markdown and JSON after every step."""

    def __init__(self, out: Path, facts: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"facts": facts, "steps": {}, "latency": {}, "training": None}
        out.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"status": "running"}
        self.data["steps"][name] = record
        start = time.perf_counter()
        try:
            yield record
            record["status"] = record.get("status_override", "ok")
        except Exception as err:  # a failed step is a result: recorded, and the next step still runs
            logger.exception("step %s failed", name)
            record["status"] = f"failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
        finally:
            record.pop("status_override", None)
            record["seconds"] = round(time.perf_counter() - start, 1)
            self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(render_markdown(self.data))


# ---------------------------------------------------------------------------------------------- steps


def build_kernel(device: str, record: dict[str, Any]) -> None:
    if not device.startswith("cuda"):
        record["status_override"] = "skipped: no CUDA device"
        return
    from plugins.msda import extension

    extension.load_extension()
    record["build_dir"] = str(extension.build_directory())


def run_gpu_tests(record: dict[str, Any], block: tuple[str, ...], timeout_s: int, log: Path) -> None:
    """``pytest -m gpu tests`` in a subprocess (``block``ed packages absent there too); its output to ``log``."""
    args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra --strict-markers", "tests"]
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({list(block)!r})); "
        f"import pytest; sys.exit(pytest.main({args!r}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    record["summary"] = lines[-1] if lines else done.stderr.strip()[-300:]
    record["failures"] = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:30]
    record["returncode"] = done.returncode
    log.write_text(done.stdout + done.stderr)
    if done.returncode not in (0, 5):  # 5: nothing collected (no GPU tests selected)
        raise RuntimeError(f"pytest -m gpu: {record['summary']}")


def write_scenes(root: Path, count: int, size: tuple[int, int]) -> Path:
    from train.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root, num_images=count, size=size, seed=0)
    return root


def train_edge(
    device: str, iters: int, scenes: Path, scene_size: tuple[int, int], out: Path, tiny: bool, record: dict[str, Any]
) -> Path:
    """configs/camvid_edge.yaml on generated scenes; returns the final checkpoint."""
    import dataclasses

    from train.train_config import load_train_config
    from train.trainer import Trainer, resolve_num_workers

    config = load_train_config(EDGE_CONFIG)
    solver = dataclasses.replace(config.solver, max_iters=iters, num_workers="auto", warmup_iters=min(10, iters))
    augmentation = dict(config.augmentation)
    if tiny:  # toy sizes for the CPU run of this script
        augmentation.update(min_sizes=[96], crop_size=[64, 64])
        solver = dataclasses.replace(solver, batch_size=2)
    log_every = max(1, iters // 6)
    config = dataclasses.replace(
        config,
        train_data={"format": "synthetic_semantic", "root": str(scenes)},
        val_data=None,
        augmentation=augmentation,
        solver=solver,
        checkpoint_every=iters,
        log_every=log_every,
    )
    trainer = Trainer(config, out, progress=False)
    if trainer.dist.device.type != device.split(":")[0]:
        raise RuntimeError(f"the trainer picked {trainer.dist.device}, the check asked for {device}")
    record.update(
        scenes="x".join(map(str, scene_size)),
        device=str(trainer.dist.device),
        workers=resolve_num_workers("auto"),
        batch_size=solver.batch_size,
        amp=solver.amp,
        iters=iters,
        crop=list(augmentation.get("crop_size", [])),
    )
    start = time.perf_counter()
    trainer.run()
    record["wall_s"] = round(time.perf_counter() - start, 1)
    import csv

    with (out / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("images_per_s")]
    steady = [float(r["images_per_s"]) for r in rows[1:]] or [float(r["images_per_s"]) for r in rows]
    record["images_per_s"] = round(statistics.mean(steady), 1)  # the windows after the first (start-up, warm-up)
    record["loss_first_last"] = [round(float(rows[0]["loss"]), 3), round(float(rows[-1]["loss"]), 3)]
    record["profile"] = profile_steps(Trainer(config, out / "profiled", progress=False), PROFILED_STEPS)
    return out / "model_final.pt"


PROFILED_STEPS = 4
HOST_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def profile_steps(trainer: Any, steps: int) -> dict[str, Any]:
    """Where a training step's time goes: ``torch.profiler`` over ``steps`` steps of a fresh trainer (batches
    loaded first, one warm-up step): ms per step, device-busy ms, how often the host reads a device value (on CUDA a
    wait: ``.item()``, a copy to the host), and the top ops by self device and self host time (ms per step)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.dist.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    loader = iter(trainer.loader())
    batches = [next(loader) for _ in range(steps + 1)]
    trainer.train_step(batches[0], 0)
    sync()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for i, batch in enumerate(batches[1:], start=1):
            trainer.train_step(batch, i)
        sync()
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    averages = prof.key_averages()

    def top(attr: str) -> list[list]:
        ranked = sorted(averages, key=lambda e: getattr(e, attr), reverse=True)[:10]
        return [[e.key, round(getattr(e, attr) / 1000 / steps, 2)] for e in ranked if getattr(e, attr) > 0]

    return {
        "steps": steps,
        "step_ms": round(wall_ms, 1),
        "device_busy_ms": round(sum(e.self_device_time_total for e in averages) / 1000 / steps, 1),
        "host_syncs_per_step": sum(e.count for e in averages if e.key in HOST_SYNCS) / steps,
        "top_device": top("self_device_time_total"),
        "top_host": top("self_cpu_time_total"),
    }


def untrained_edge(path: Path) -> Path:
    from train.data.synthetic import synthetic_meta
    from train.model import Mask2Former, Mask2FormerConfig, save_checkpoint
    from train.train_config import load_train_config

    meta = synthetic_meta()
    arch = load_train_config(EDGE_CONFIG).model["config"]
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **arch}))
    return save_checkpoint(path, model, meta)


def prepare_swin(work: Path, tiny: bool) -> dict[str, Any]:
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
    return prepare_model(model, work / "swin", seed=0).to_dict()


def median_ms(fn: Callable[[], Any], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_ours(checkpoint: Path, input_size: tuple[int, int], device: str, precision: str, graph: bool, frames, n):
    """(e2e ms, model ms, labels per frame, facts) of our torch runtime behind ``Segmenter.predict``."""
    from benchmarks.pipelines import torch_segmenter
    from sdk.preprocess import fit_to_input

    seg = torch_segmenter(str(checkpoint), "semantic", input_size, device, precision, cuda_graph=graph)
    feed = {seg.input_name: fit_to_input(frames[0], seg.metadata["input"])[0][None]}
    model_ms = median_ms(lambda: seg.backend.run(feed), *n)
    cycle = itertools.count()
    e2e_ms = median_ms(lambda: seg.predict(frames[next(cycle) % len(frames)]), *n)
    labels = [seg.predict(frame).semantic for frame in frames]
    facts = {"device": seg.backend.device, "precision": seg.backend.precision, "cuda_graph": seg.backend.cuda_graph}
    seg.backend.close()
    return e2e_ms, model_ms, labels, facts


def bench_segmenter(checkpoint: Path, input_size: tuple[int, int], frames, n):
    """(e2e ms, model ms, labels, facts) of ``sdk.Segmenter("cuda")`` on the checkpoint, whatever runtime it picks."""
    import sdk
    from sdk.preprocess import fit_to_input

    seg = sdk.Segmenter("cuda", model=checkpoint, task="semantic", input_size=input_size)
    feed = {seg.input_name: fit_to_input(frames[0], seg.metadata["input"])[0][None]}
    model_ms = median_ms(lambda: seg.backend.run(feed), *n)
    cycle = itertools.count()
    e2e_ms = median_ms(lambda: seg.predict(frames[next(cycle) % len(frames)]), *n)
    labels = [seg.predict(frame).semantic for frame in frames]
    facts = {k: str(getattr(seg, k, "?")) for k in ("runtime", "device", "precision")}
    return e2e_ms, model_ms, labels, facts


def bench_hf(info: dict[str, Any], input_size: tuple[int, int], device: str, precision: str, frames, n):
    """(e2e ms, model ms, labels per frame, facts): HF's processor on the letterboxed frame, the model on
    ``device``, HF's ``post_process_semantic_segmentation`` on the device, then back to the frame size."""
    import torch

    from benchmarks import peers
    from compile.export import input_spec
    from sdk.postprocess import semantic_from_labels
    from sdk.preprocess import fit_to_input
    from train.model import load_pretrained

    meta = load_pretrained(info["checkpoint"]).meta
    processor = peers.hf_processor(meta.pixel_mean, meta.pixel_std, info["hf_dir"])
    spec = input_spec(meta, input_size)
    run = peers.hf_runner(peers.load_hf_model(info["hf_dir"]), device, precision, to_host=False)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def pixels(frame: np.ndarray) -> tuple[Any, Any]:
        image, geometry = fit_to_input(frame, spec)
        return processor(images=image[..., ::-1].copy(), return_tensors="pt")["pixel_values"], geometry

    def predict(frame: np.ndarray) -> np.ndarray:
        pixel_values, geometry = pixels(frame)
        logits, masks = run(pixel_values)
        out = SimpleNamespace(class_queries_logits=logits, masks_queries_logits=masks)
        labels = processor.post_process_semantic_segmentation(out, target_sizes=[tuple(input_size)])[0]
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


def bench_model(name: str, ours: Path, hf: dict | None, size: tuple[int, int], device: str, frames, n, record) -> None:
    """Every row of ``ROWS`` for one model into ``record["rows"]``; a row that fails records its error."""
    import torch

    rows: dict[str, dict[str, Any]] = {}
    record.update(input_size=list(size), frame_size=list(frames[0].shape[:2]), rows=rows)
    reference: list[np.ndarray] | None = None
    for label, kind, precision, graph in ROWS:
        row: dict[str, Any] = {}
        rows[label] = row
        if graph and not device.startswith("cuda"):
            row["error"] = "needs CUDA"
            continue
        if kind == "hf" and hf is None:
            row["error"] = "no HF peer (HF's Mask2Former has Swin and ResNet backbones only)"
            continue
        try:
            if kind == "ours":
                e2e, model, labels, facts = bench_ours(ours, size, device, precision, graph, frames, n)
            elif kind == "sdk":
                if not device.startswith("cuda"):
                    row["error"] = "needs CUDA"
                    continue
                e2e, model, labels, facts = bench_segmenter(ours, size, frames, n)
            else:
                e2e, model, labels, facts = bench_hf(hf, size, device, precision, frames, n)
        except Exception as err:  # e.g. an op without a half-precision kernel on this device
            logger.exception("%s %s failed", name, label)
            row["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            continue
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        reference = labels if reference is None and label == ROWS[0][0] else reference
        agree = None
        if reference is not None:
            same = sum(int((a == b).sum()) for a, b in zip(labels, reference, strict=True))
            agree = same / sum(r.size for r in reference)
        row.update(e2e_ms=round(e2e, 2), model_ms=round(model, 2), agreement=agree, **facts)
        logger.info("%s %s: e2e %.2f ms, model %.2f ms", name, label, e2e, model)


# ---------------------------------------------------------------------------------------------- report


def render_markdown(data: dict[str, Any]) -> str:
    facts = data["facts"]
    lines = [
        "# make gpu-check",
        "",
        f"{facts.get('gpu') or 'no GPU'}; torch {facts.get('torch')} (CUDA {facts.get('cuda')}), "
        f"Python {facts.get('python')}, {facts.get('cpus')} CPUs, {facts.get('date')}",
        "",
        "| step | status | s |",
        "|---|---|---|",
    ]
    for name, step in data["steps"].items():
        detail = step.get("summary", "")
        lines.append(f"| {name} | {step['status']}{' - ' + detail if detail else ''} | {step.get('seconds', '')} |")
    failures = [f for step in data["steps"].values() for f in step.get("failures", [])]
    if failures:
        lines += ["", "Failing GPU tests:", "", *[f"- `{f}`" for f in failures]]
    train = data.get("training")
    if train and "images_per_s" in train:
        lines += [
            "",
            f"Training, {EDGE_CONFIG.name} on generated {train['scenes']} scenes: "
            f"**{train['images_per_s']} images/s** ({train['device']}, batch {train['batch_size']}, crops "
            f"{train['crop']}, amp {train['amp']}, {train['workers']} loader workers, {train['iters']} iterations, "
            f"loss {train['loss_first_last'][0]} -> {train['loss_first_last'][1]}).",
        ]
        prof = train.get("profile")
        if prof:
            lines += [
                "",
                f"Profiled ({prof['steps']} steps, `torch.profiler`): {prof['step_ms']} ms per step, device busy "
                f"{prof['device_busy_ms']} ms, the host reads device values {prof['host_syncs_per_step']} times "
                "per step. Top ops, ms per step, by self device time: "
                + ", ".join(f"{k} {v}" for k, v in prof["top_device"][:6])
                + "; by self host time: "
                + ", ".join(f"{k} {v}" for k, v in prof["top_host"][:6])
                + ".",
            ]
    for name, model in data["latency"].items():
        rows = model.get("rows", {})
        base = rows.get(GPU_BASELINE, {})
        lines += [
            "",
            f"### {name}: input {model.get('input_size')}, frames {model.get('frame_size')} (median ms)",
            "",
            f"| row | end to end ms | model only ms | x {GPU_BASELINE} e2e | x {GPU_BASELINE} model "
            "| labels = fp32 eager |",
            "|---|---|---|---|---|---|",
        ]
        for label, row in rows.items():
            if "error" in row:
                lines.append(f"| {label} | n/a: {row['error']} | | | | |")
                continue
            ratios = [f"{base[k] / row[k]:.2f}" if base.get(k) and row.get(k) else "" for k in ("e2e_ms", "model_ms")]
            agree = f"{100 * row['agreement']:.2f} %" if row.get("agreement") is not None else ""
            if "runtime" in row:
                label = f"{label} ({row['runtime']}, {row['device']}, {row['precision']})"
            lines.append(f"| {label} | {row['e2e_ms']} | {row['model_ms']} | {ratios[0]} | {ratios[1]} | {agree} |")
    lines += [
        "",
        "End to end: `Segmenter.predict` (letterbox, the runtime, numpy post-processing) for ours; letterbox, HF's "
        "image processor, the model and HF's `post_process_semantic_segmentation` on the device for HF. Model only: "
        "ours from the letterboxed uint8 frame to the label map on the host (normalisation and the semantic "
        "post-processing are in the module); HF from the processor's pixel values to the query outputs. "
        "fp16 / bf16: autocast for ours, cast weights for HF.",
    ]
    return "\n".join(lines) + "\n"


def machine_facts(device: str) -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device,
    }


GPU_CHECK_PARTS = ("kernel", "tests", "train", "latency")  # what --skip can leave out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "gpu_check")
    parser.add_argument("--device", default=None, help="cuda (default when there is a GPU) or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy models and sizes (the CPU test of this script)")
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip", action="append", default=[], choices=GPU_CHECK_PARTS)
    parser.add_argument("--tests-timeout", type=int, default=300, help="seconds for pytest -m gpu")
    parser.add_argument(
        "--absent",
        default="",
        help="comma-separated packages to treat as not installed (openvino,pycocotools): proves the check "
        "runs on an image without them",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    absent = tuple(name for name in args.absent.split(",") if name)
    sys.modules.update(dict.fromkeys(absent))  # None: `import name` raises ImportError
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = Report(args.out, machine_facts(device))
    n = (args.warmup, args.runs)
    with tempfile.TemporaryDirectory(prefix="m2f-gpu-check-") as tmp:
        work = Path(tmp)
        if "kernel" not in args.skip:
            with report.step("MSDA CUDA kernel build") as record:
                build_kernel(device, record)
        if "tests" not in args.skip:
            with report.step("pytest -m gpu") as record:
                run_gpu_tests(record, absent, args.tests_timeout, args.out / "pytest_gpu.log")
        frame_size = (48, 64) if args.tiny else FRAME_SIZE
        scenes = write_scenes(work / "scenes", 8 if args.tiny else 64, frame_size)
        edge = None
        if "train" not in args.skip:
            with report.step("train the edge model") as record:
                report.data["training"] = record
                edge = train_edge(device, args.train_iters, scenes, frame_size, work / "train", args.tiny, record)
        if "latency" not in args.skip:
            import cv2

            frames = [cv2.imread(str(p)) for p in sorted((scenes / "images").iterdir())[:8]]
            with report.step("latency: edge model") as record:
                report.data["latency"]["edge model (camvid_edge)"] = record
                edge = edge or untrained_edge(work / "edge.pt")
                size = (48, 64) if args.tiny else FRAME_SIZE
                bench_model("edge", edge, None, size, device, frames, n, record)
            with report.step("latency: Swin-T ADE20K") as record:
                report.data["latency"]["Swin-T ADE20K (random weights)"] = record
                info = prepare_swin(work, args.tiny)
                size = (64, 64) if args.tiny else (512, 512)
                bench_model("swin-t", Path(info["checkpoint"]), info if info.get("hf_dir") else None, size, device,
                            frames, n, record)  # fmt: skip
    report.write()
    print((args.out / "gpu_check.md").read_text())
    failed = [name for name, step in report.data["steps"].items() if step["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
