"""The fused MSDA op (our OpenVINO CPU extension) against the standard-op subgraph our exports write otherwise.

    python -m benchmarks.msda_openvino --out DIR [--rounds 15 --iters 20 --threads 2]

For each case (one deformable-attention layer of the packaged default model at 360x480 and of Swin-T at 512x512)
and each OpenVINO inference precision (f32, and bf16 where the CPU has it), two graphs on the same inputs: the
pure-torch reference exported to ONNX (``GridSample`` per level, what ``m2f export --no-native-ops`` writes) and
one ``m2f::MSDeformAttn`` node. Rounds alternate between the two, so a busy machine slows both alike; the median
ms per call of each, their ratio and the largest difference between the two outputs are written to
``msda_openvino.md/.json`` in ``--out``, with the CPU. Builds the extension into the cache when it is not built.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from plugins.msda import openvino_extension
from plugins.msda.benchmark import BenchCase, pyramid
from plugins.msda.reference import ms_deform_attn_reference

LAYERS = (  # one deformable-attention call each; queries = positions, as in the pixel decoder
    BenchCase("default 360x480 (4 heads x 32)", 1, pyramid(360, 480), heads=4, channels=32),
    BenchCase("Swin-T 512x512 (8 heads x 32)", 1, pyramid(512, 512), heads=8, channels=32),
)


def _inputs(layer: BenchCase, seed: int = 0) -> dict[str, np.ndarray]:
    """As the pixel decoder calls it: every position is a query, sampling around its own place on each level (its
    reference point plus offsets of a few pixels of that level, some off the map at the borders)."""
    rng = np.random.default_rng(seed)
    S = sum(h * w for h, w in layer.levels)
    M, D, L, P = layer.heads, layer.channels, len(layer.levels), layer.points
    reference = np.concatenate([
        np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1).reshape(-1, 2)
        for h, w in layer.levels
    ])  # (S, 2) normalised (x, y) of each query's own position  # fmt: skip
    scale = np.array([[w, h] for h, w in layer.levels], np.float64)  # (L, 2) pixels per unit, per level
    offsets = rng.normal(0.0, 2.0, (1, S, M, L, P, 2)) / scale[None, None, None, :, None, :]
    logits = rng.standard_normal((1, S, M, L * P))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {
        "value": rng.standard_normal((1, S, M, D)).astype(np.float32),
        "loc": (reference[None, :, None, None, None, :] + offsets).astype(np.float32),
        "w": weights.reshape(1, S, M, L, P).astype(np.float32),
    }


class _Reference(torch.nn.Module):
    def __init__(self, levels: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.levels = [list(pair) for pair in levels]

    def forward(self, value: torch.Tensor, loc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ms_deform_attn_reference(value, self.levels, None, loc, w)


def standard_graph(layer: BenchCase, inputs: dict[str, np.ndarray], path: Path) -> Path:
    """The reference exported as our exports write it (static shapes)."""
    args = tuple(torch.from_numpy(inputs[k]) for k in ("value", "loc", "w"))
    torch.onnx.export(_Reference(layer.levels), args, str(path), input_names=["value", "loc", "w"],
                      output_names=["out"], dynamo=True, external_data=False)  # fmt: skip
    return path


def fused_graph(
    path: Path,
    levels: Sequence[tuple[int, int]],
    value_shape: Sequence[int],
    locations_shape: Sequence[int],
    value_type: int = TensorProto.FLOAT,
    index_type: type = np.int32,
    locations_type: int = TensorProto.FLOAT,
) -> Path:
    """An ONNX model of one ``m2f::MSDeformAttn`` node with inputs ``value``, ``loc``, ``w`` (f32) and output
    ``out``; with ``value_type`` BFLOAT16 the value is cast to bf16 on its way in and the result back to f32, with
    ``locations_type`` BFLOAT16 the locations and weights are. ``index_type``: of the spatial-shape and
    level-start constants."""
    N, _, M, D = value_shape
    sizes = [h * w for h, w in levels]
    consts = [
        numpy_helper.from_array(np.array(levels, index_type), "hw"),
        numpy_helper.from_array(np.array([sum(sizes[:i]) for i in range(len(sizes))], index_type), "starts"),
    ]
    nodes, fed = [], {}
    for name, to in (("value", value_type), ("loc", locations_type), ("w", locations_type)):
        fed[name] = name
        if to != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_cast"], to=to))
            fed[name] = f"{name}_cast"
    out = "out" if value_type == TensorProto.FLOAT else "out_cast"
    domain, op = openvino_extension.ONNX_DOMAIN, openvino_extension.ONNX_OP
    nodes.append(helper.make_node(op, [fed["value"], "hw", "starts", fed["loc"], fed["w"]], [out], domain=domain))
    if value_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["out_cast"], ["out"], to=TensorProto.FLOAT))
    inputs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, list(value_shape)),
              helper.make_tensor_value_info("loc", TensorProto.FLOAT, list(locations_shape)),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, list(locations_shape[:-1]))]  # fmt: skip
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, [N, locations_shape[1], M * D])
    model = helper.make_model(helper.make_graph(nodes, "msda", inputs, [output], consts),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(domain, 1)])  # fmt: skip
    onnx.save(model, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    import openvino as ov

    from runtimes.cpu_features import cpu_features

    parser = argparse.ArgumentParser(prog="python -m benchmarks.msda_openvino", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=20, help="calls per round and side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    library = openvino_extension.library_path() or openvino_extension.build()
    features = cpu_features()
    precisions = ["f32", "bf16"] if features.native_bf16 else ["f32"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layer in LAYERS:
            inputs = _inputs(layer)
            graphs = {"standard ops": standard_graph(layer, inputs, Path(tmp) / "standard.onnx"),
                      "fused op": fused_graph(Path(tmp) / "fused.onnx", layer.levels, inputs["value"].shape,
                                              inputs["loc"].shape)}  # fmt: skip
            for precision in precisions:
                core = ov.Core()
                core.add_extension(str(library))
                config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": args.threads,
                          "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
                compiled = {k: core.compile_model(str(p), "CPU", config) for k, p in graphs.items()}
                outputs = {k: c(inputs)[c.output(0)] for k, c in compiled.items()}
                times: dict[str, list[float]] = {k: [] for k in compiled}
                for index in range(args.rounds):
                    order = list(compiled) if index % 2 == 0 else list(compiled)[::-1]
                    for name in order:
                        request = compiled[name].create_infer_request()
                        for _ in range(args.iters):
                            start = time.perf_counter()
                            request.infer(inputs, share_inputs=True)  # the op's time, not numpy's copy
                            times[name].append((time.perf_counter() - start) * 1000)
                medians = {k: statistics.median(v) for k, v in times.items()}
                rows.append({
                    "layer": layer.name, "precision": precision, **{f"{k} ms": round(v, 3) for k, v in medians.items()},
                    "speed-up": round(medians["standard ops"] / medians["fused op"], 2),
                    "max |difference|": float(np.abs(outputs["fused op"] - outputs["standard ops"]).max()),
                })  # fmt: skip
                print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"cpu": features.describe(), "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
              "openvino": ov.__version__, "rows": rows}  # fmt: skip
    (args.out / "msda_openvino.json").write_text(json.dumps(report, indent=2) + "\n")
    columns = list(rows[0])
    lines = [
        "# Fused MSDA op (OpenVINO CPU extension) vs the standard-op subgraph, one deformable-attention layer",
        "",
        f"CPU: {report['cpu']}; {args.threads} threads; OpenVINO {ov.__version__}; median of {args.rounds} "
        f"interleaved rounds x {args.iters} calls. Command: `python -m benchmarks.msda_openvino --out DIR`.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(f"{row[c]:.2e}" if c.startswith("max") else str(row[c]) for c in columns) + " |"
          for row in rows),
    ]  # fmt: skip
    (args.out / "msda_openvino.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
