"""The GPU check's report (``tools.gpu_check``): the facts gathered so far as ``gpu_check.json`` and
``gpu_check.md``, rewritten after every step so a check cut short still leaves what it found."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools.gpu_latency import GPU_BASELINE
from tools.gpu_steps import EDGE_CONFIG

logger = logging.getLogger(__name__)


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
    lines += _training_lines(data.get("training"))
    for name, model in data["latency"].items():
        lines += _latency_lines(name, model)
    lines += [
        "",
        "End to end: `Segmenter.predict` (letterbox, the runtime, numpy post-processing) for ours; letterbox, HF's "
        "image processor, the model and HF's `post_process_semantic_segmentation` on the device for HF. Model only: "
        "ours from the letterboxed uint8 frame to the label map on the host (normalisation and the semantic "
        "post-processing are in the module); HF from the processor's pixel values to the query outputs. "
        "fp16 / bf16: autocast for ours, cast weights for HF.",
    ]
    return "\n".join(lines) + "\n"


def _training_lines(train: dict[str, Any] | None) -> list[str]:
    """Training images/s and, when profiled, where a step's time goes."""
    if not train or "images_per_s" not in train:
        return []
    lines = [
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
    return lines


def _latency_lines(name: str, model: dict[str, Any]) -> list[str]:
    """One model's latency table, each row also as a ratio to ``GPU_BASELINE``."""
    rows = model.get("rows", {})
    base = rows.get(GPU_BASELINE, {})
    lines = [
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
    return lines
