"""One benchmark job in its own process: ``python -m benchmarks.worker JOB SPEC.json RESULT.json``.

Jobs (``JOBS``): ``prepare_model`` (HF model with seeded weights + our checkpoint converted from it,
``benchmarks.models``), ``export`` (our artifact for one target x precision), ``hf_export`` (the HF model's own
ONNX export) and ``measure`` (one row: warm-up, timed runs, labels, accuracy, agreement, peak memory, optional
profile; ``benchmarks.measure``).

A row measured in its own process has its own peak memory, and a runtime that crashes takes only its row with
it. The result file holds the job's JSON result, or ``{"error": ..., "traceback": ...}`` (exit status 1).
``benchmarks.jobs.run_job`` starts it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("benchmarks.worker")


def prepare_model_job(spec: dict) -> dict:
    """``benchmarks.models.prepare_model`` of ``spec["model"]`` into ``spec["dir"]``."""
    from benchmarks.models import prepare_model

    return prepare_model(spec["model"], Path(spec["dir"]), int(spec.get("seed", 0))).to_dict()


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
        calib_dir=spec["calib_dir"],
        calib_images=int(spec["calib_images"]),
        gate_images=int(spec["gate_images"]),
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


def measure_job(spec: dict) -> dict:
    """``benchmarks.measure.measure`` of one row."""
    from benchmarks.measure import measure
    from benchmarks.rows import MeasureSpec

    return measure(MeasureSpec.from_dict(spec))


JOBS: dict[str, Callable[[dict], dict]] = {
    "prepare_model": prepare_model_job,
    "export": export_job,
    "hf_export": hf_export_job,
    "measure": measure_job,
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
