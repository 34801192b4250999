"""Where the time goes, by each engine's own profiler: per-op-type profiles of an artifact on OpenVINO
(``PERF_COUNT``) or ONNX Runtime (its profiling JSON), and the share of that time spent in int8 kernels.

Each function runs the model ``runs`` times after one warm-up and returns the same shape of result::

    {"engine": ..., "per_inference_ms": float, "int8_share": float,
     "ops": [{"op", "ms", "share", "count", "exec"}...], "nodes": [{"name", "op", "ms"}...]}

``ms`` are per inference (summed over the nodes of that type), ``share`` is of the profiled total. Sessions are
separate from the timed ones, so the profiling overhead never reaches the latency figures.

``int8_share``: the fraction of kernel time in kernels that compute on int8 data. OpenVINO names the precision a
node executed in (``exec_type`` ``brgconv_avx512_I8``, ``jit_uni_u8``, ...); ONNX Runtime runs int8 only in its
quantised operators (``QLinearConv``, ``QGemm``, ``MatMulInteger``, ...), while a Conv between a
DequantizeLinear and a QuantizeLinear that it did not fuse runs in float and counts as float, as do the Q/DQ
conversions themselves. Each node counts at its fastest of the runs (:func:`int8_time_share`): load from other
processes only adds time. An int8 artifact whose share is near zero is an fp32 model with extra conversions.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.registry import TARGETS

logger = logging.getLogger(__name__)

TOP_OPS = 12
TOP_NODES = 10
PROFILED_RUNTIMES = TARGETS["cpu"].runtimes  # the CPU runtimes (OpenVINO first): profile_on runs each one's profiler


def openvino_int8_kernel(op: str, exec_type: str) -> bool:
    """An OpenVINO node that executed in int8 (its ``exec_type`` names the precision: ``..._I8``, ``..._u8``)."""
    return re.search(r"(^|_)[iu]8$", exec_type.lower()) is not None


ORT_INT8_OPS = ("QLinear", "QGemm", "QAttention", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")


def onnxruntime_int8_kernel(op: str, exec_type: str) -> bool:
    """An ONNX Runtime kernel that computes on int8 (its quantised operators; not the Q/DQ conversions)."""
    return op.startswith(ORT_INT8_OPS) or (op.startswith("Nhwc") and "QLinear" in op)


def int8_time_share(per_node: list[tuple[str, str, float, str]], is_int8: Callable[[str, str], bool]) -> float:
    """The share of kernel time in int8 kernels, each node at its fastest over the runs: load from other processes
    only ever adds time, and it lands on whichever (mostly float) op is running, so a sum over a busy machine's runs
    understates the share (a test model at 12 % alone measured 5.8 % beside another test process)."""
    fastest: dict[tuple[str, str, str], float] = {}
    for name, op, us, exec_type in per_node:
        key = (name, op, exec_type)
        fastest[key] = min(us, fastest.get(key, us))
    total = sum(fastest.values())
    return sum(us for (_, op, ex), us in fastest.items() if is_int8(op, ex)) / total if total else 0.0


def summarise(
    engine: str,
    per_node: list[tuple[str, str, float, str]],
    runs: int,
    is_int8: Callable[[str, str], bool] | None = None,
    wall_ms: float | None = None,
) -> dict[str, Any]:
    """(name, op type, total µs over ``runs``, exec type) per node -> the profile dict."""
    by_op: dict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    execs: dict[str, Counter[str]] = defaultdict(Counter)
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    for name, op, us, exec_type in per_node:
        by_op[op] += us
        count[op] += 1
        if exec_type:
            execs[op][exec_type] += 1
        by_node[(name, op)] += us
    total = sum(by_op.values()) or 1.0
    ops = [
        {
            "op": op,
            "ms": us / runs / 1000,
            "share": us / total,
            "count": count[op] // runs if count[op] >= runs else count[op],
            "exec": ", ".join(e for e, _ in execs[op].most_common(2)),
        }
        for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:TOP_OPS]
    ]
    nodes = [
        {"name": name, "op": op, "ms": us / runs / 1000}
        for (name, op), us in sorted(by_node.items(), key=lambda kv: -kv[1])[:TOP_NODES]
    ]
    result = {"engine": engine, "per_inference_ms": total / runs / 1000, "ops": ops, "nodes": nodes}
    if is_int8 is not None:
        result["int8_share"] = int8_time_share(per_node, is_int8)
    if wall_ms is not None:
        result["wall_ms"] = wall_ms
    return result


def profile_openvino(
    model_path: str | Path, feed: dict[str, np.ndarray], precision_hint: str, threads: int | None, runs: int = 3
) -> dict[str, Any]:
    """OpenVINO CPU per-node execution times (``PERF_COUNT``), aggregated by the executed layer type."""
    import openvino as ov

    from runtimes.openvino_backend import openvino_core

    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision_hint,
        "PERFORMANCE_HINT": "LATENCY",
        "PERF_COUNT": True,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = openvino_core(model_path).compile_model(str(model_path), "CPU", config)
    request = compiled.create_infer_request()
    request.infer(feed)
    per_node = []
    for _ in range(runs):
        request.infer(feed)
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            per_node.append((info.node_name, info.node_type, info.real_time.total_seconds() * 1e6, info.exec_type))
    return summarise(
        f"openvino {ov.get_version().split('-')[0]} ({precision_hint})", per_node, runs, openvino_int8_kernel
    )


def profile_onnxruntime(
    model_path: str | Path, feed: dict[str, np.ndarray], threads: int | None, runs: int = 3
) -> dict[str, Any]:
    """ONNX Runtime's profiling JSON (kernel time per node), aggregated by op type."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        session.run(None, feed)  # warm-up: also profiled, skipped below by counting runs
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    skip = len(nodes) // len(runs_seen) if runs_seen else 0  # the warm-up's nodes come first
    per_node = [
        (
            e["name"].removesuffix("_kernel_time"),
            e["args"].get("op_name", "?"),
            float(e["dur"]),
            e["args"].get("provider", ""),
        )
        for e in nodes[skip:]
    ]
    return summarise(f"onnxruntime {ort.__version__}", per_node, runs, onnxruntime_int8_kernel)


def profile_on(
    runtime: str,
    model_path: str | Path,
    feed: dict[str, np.ndarray],
    precision: str,
    threads: int | None,
    runs: int = 3,
) -> dict[str, Any]:
    """The artifact's profile on ``runtime`` (one of ``PROFILED_RUNTIMES``) run at our ``precision`` name."""
    if runtime == "onnxruntime":
        return profile_onnxruntime(model_path, feed, threads, runs)
    if runtime == "openvino":
        from runtimes.openvino_backend import OV_INFERENCE_PRECISION, int8_float_ops_of

        # an int8 file's float ops as the backend runs them (bf16 where verified and native)
        hint = int8_float_ops_of(model_path) if precision == "int8" else OV_INFERENCE_PRECISION[precision]
        return profile_openvino(model_path, feed, hint, threads, runs)
    raise ValueError(f"no engine profiler for runtime {runtime!r}; expected one of {', '.join(PROFILED_RUNTIMES)}")
