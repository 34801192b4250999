"""Where the time goes: per-op-type profiles of one model on OpenVINO, ONNX Runtime (``runtimes.profiling``, the
engines' own profilers) or eager torch (``torch.profiler``), all in the same result shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtimes.profiling import profile_onnxruntime, profile_openvino, summarise

__all__ = ["profile_onnxruntime", "profile_openvino", "profile_torch"]


def profile_torch(call: Callable[[], Any], runs: int = 1) -> dict[str, Any]:
    """torch.profiler CPU self time per aten op (eager models)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            call()
    per_node = [
        (evt.key, evt.key, float(evt.self_cpu_time_total), "")
        for evt in prof.key_averages()
        if evt.self_cpu_time_total > 0
    ]
    # key_averages already sums over calls: one "node" per op; counts come from the averages
    result = summarise(f"torch {torch.__version__} eager", per_node, runs)
    calls = {evt.key: evt.count // max(runs, 1) for evt in prof.key_averages()}
    for op in result["ops"]:
        op["count"] = calls.get(op["op"], op["count"])
    result["nodes"] = []
    return result
