"""One benchmark job in its own process: a JSON spec in, a JSON result out, a crash or a hang turned into an error.

    result = run_job("measure", spec, work, "m2f-openvino-int8", timeout_s=3600)   # {"error": ...} on failure

The job runs ``python -m benchmarks.worker JOB SPEC.json RESULT.json`` (``benchmarks.worker``) with this checkout
first on ``PYTHONPATH``; its log is kept in ``work/logs/NAME.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.paths import REPO_ROOT


def run_job(
    job: str,
    spec: dict[str, Any],
    work: Path,
    name: str,
    timeout_s: float,
    module: str = "benchmarks.worker",
    threads: int = 1,
) -> dict[str, Any]:
    """Run ``python -m module job spec.json result.json`` and return its result (``{"error": ...}`` on failure).

    A timeout, a crash (signal) or a non-zero exit becomes an error message with the log's last line; the full
    log stays in ``work/logs/name.log``.
    """
    for sub in ("jobs", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "jobs" / f"{name}.json", work / "jobs" / f"{name}.result.json"
    log_path = work / "logs" / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=1, default=str))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", module, job, str(spec_path), str(result_path)]
    start = time.perf_counter()
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s (log: {log_path})"}
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    if proc.returncode != 0 and "error" not in result:
        result = {"error": f"{job} {_why(proc.returncode)}: {_last_line(log_path)} (log: {log_path})"}
    result.setdefault("job_s", elapsed)
    return result


def _why(returncode: int) -> str:
    """How a job that failed without writing its error ended."""
    if returncode > 0:
        return f"exited with status {returncode}"
    try:
        return f"crashed with {signal.Signals(-returncode).name}"
    except ValueError:
        return f"crashed with signal {-returncode}"


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
