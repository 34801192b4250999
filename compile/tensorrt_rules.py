"""TensorRT's ONNX parser rules that can be checked without TensorRT, and the exact rewrites that satisfy them.

:func:`lint` checks any ONNX file (``onnx`` only, no torch, no TensorRT) against what onnx-tensorrt's parser
accepts, per TensorRT version (10.3 = JetPack 6.1/6.2, and 11.x). Rules (``Violation.rule``):

``opset``             the default-domain opset is outside the version's range.
``operator``          an op type the parser has no importer for and which is not one of our known plugins
                      (the parser ignores the domain: an unknown op is looked up as a plugin creator by its name).
``dtype``             the op's main input (output for ``Constant``/``ConstantOfShape``) has a type outside the op's
                      row of the support table; ``Cast`` also checks its target type.
``uint8``             a UINT8 tensor that is not a graph input or output ("TensorRT does not support UINT8 types
                      for intermediate tensors", onnx-tensorrt ``ModelImporter.cpp``): cast first, then lay out.
``qdq-uint8``         a Quantize/DequantizeLinear with a UINT8 input or zero point (``QuantDequantLinearHelper``
                      rejects both).
``qdq-zero-point``    a constant zero point that is not all zeros: "TensorRT only supports symmetric quantization"
                      (same helper). A uint8 zero point z is the same arithmetic as the int8 zero point z - 128,
                      which is zero only for z = 128: an asymmetric (or unsigned) Q/DQ graph made for ONNX Runtime
                      or OpenVINO is not a TensorRT graph; TensorRT int8 is symmetric int8 (NVIDIA ModelOpt).

The support table is data, ``compile/tensorrt_onnx_support.json``, with its sources named there (onnx-tensorrt
``docs/operators.md``). Subgraphs of ``If``/``Loop``/``Scan`` are not walked (our graphs have none).

Rewrites (:func:`rewrite_for_tensorrt`), each the same arithmetic as before:

* ``cast_before_transpose``: ``uint8 input -> Transpose -> Cast(float)`` becomes ``Cast -> Transpose``.
* ``qdq_uint8_to_int8``: uint8 Q/DQ to int8: zero points z -> z - 128, uint8 quantised initializers q -> q - 128.

``python -m compile.tensorrt_rules FILE.onnx ...`` prints the violations (exit 1 when there are any);
``--rewrite SRC DST`` writes the rewritten graph with the artifact's metadata and the rewrite recorded in it, and
lists what DST still breaks without failing for it (an OpenVINO int8 file keeps its asymmetric activations): name
DST among the FILES to make its rules decide the exit status.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

logger = logging.getLogger(__name__)

SUPPORT_FILE = Path(__file__).with_name("tensorrt_onnx_support.json")
VERSIONS: tuple[str, ...] = ("10.3", "11")  # JetPack 6.1/6.2's TensorRT, and TensorRT 11.x
# our plugin ops (plugins.msda.tensorrt_plugin.PLUGIN_NAME / BUILTIN_PLUGIN_NAME): the parser imports them from the
# plugin registry; written here as names so that the lint needs neither torch nor the plugins package
KNOWN_PLUGINS: frozenset[str] = frozenset({"M2F_MultiscaleDeformableAttn", "MultiscaleDeformableAttnPlugin_TRT"})
QDQ = ("QuantizeLinear", "DequantizeLinear")
_OUTPUT_TYPED = ("Constant", "ConstantOfShape")  # the table's types are those of the produced tensor
_MAIN_INPUT = {"Where": 1}  # input 0 of Where is the BOOL condition; the table's types are the data's
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP32",  # the parser casts DOUBLE down to FLOAT
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}


@dataclass(frozen=True)
class Violation:
    """One parser rule a graph breaks: which rule, where (node or tensor name), why, for which TensorRT versions."""

    rule: str
    where: str
    message: str
    versions: tuple[str, ...] = VERSIONS

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.message} (TensorRT {', '.join(self.versions)})"


@dataclass(frozen=True)
class Support:
    """One TensorRT version's parser support: opset range and op type -> main-input type names."""

    version: str
    opset: tuple[int, int]
    operators: dict[str, frozenset[str]]
    source: str


@functools.cache
def support_table(version: str) -> Support:
    """The parser support of TensorRT ``version`` (a key of the JSON file: "10.3", "11")."""
    versions = json.loads(SUPPORT_FILE.read_text())["versions"]
    if version not in versions:
        raise ValueError(f"no TensorRT support table for {version!r}; known: {sorted(versions)}")
    entry = versions[version]
    operators = dict(support_table(entry["base"]).operators) if "base" in entry else {}
    for name, types in {**entry.get("operators", {}), **entry.get("add_operators", {})}.items():
        operators[name] = frozenset(types.split())
    low, high = entry["opset"]
    return Support(version, (int(low), int(high)), operators, entry["source"])


# --------------------------------------------------------------------------------------------- graph facts


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX elem type for every tensor whose type is known (ONNX type inference, non-strict)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as err:  # inference is a help: without it only the declared types are known
        logger.debug("ONNX type inference failed (%s); using the declared types only", err)
        inferred = model
    graph = inferred.graph
    types: dict[str, int] = {i.name: i.data_type for i in graph.initializer}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _constant_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    arrays[node.output[0]] = numpy_helper.to_array(attr.t)
    return arrays


def _main_type(node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    if node.op_type in _OUTPUT_TYPED:
        return types.get(node.output[0])
    index = _MAIN_INPUT.get(node.op_type, 0)
    return types.get(node.input[index]) if len(node.input) > index and node.input[index] else None


def _name(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


# --------------------------------------------------------------------------------------------- the lint


def lint(
    model: onnx.ModelProto | str | Path,
    versions: Sequence[str] = VERSIONS,
    plugins: Iterable[str] = KNOWN_PLUGINS,
) -> list[Violation]:
    """The parser rules ``model`` (a ModelProto or a path) breaks for the TensorRT ``versions``; [] when none."""
    model = _load(model)
    graph, plugins = model.graph, frozenset(plugins)
    tables = [support_table(v) for v in versions]
    types = tensor_types(model)
    io = {v.name for v in [*graph.input, *graph.output]}
    found: list[Violation] = []

    def per_version(rule: str, where: str, message_of: dict[str, str]) -> None:
        """One violation per distinct message, naming the versions it applies to."""
        by_message: dict[str, list[str]] = {}
        for version, message in message_of.items():
            by_message.setdefault(message, []).append(version)
        for message, names in by_message.items():
            found.append(Violation(rule, where, message, tuple(names)))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    bad_opset = {
        t.version: f"opset {opset} is outside {t.opset[0]}..{t.opset[1]}"
        for t in tables
        if opset is not None and not t.opset[0] <= opset <= t.opset[1]
    }
    per_version("opset", "model", bad_opset)

    constants = _constant_arrays(model)
    for node in graph.node:
        where = _name(node)
        if node.op_type in plugins:
            continue
        missing = "no importer in the parser and not a known plugin"
        per_version("operator", where, {t.version: missing for t in tables if node.op_type not in t.operators})
        main = _main_type(node, types)
        checked = [(main, "input")] if main is not None else []
        if node.op_type == "Cast":
            checked += [(a.i, "target") for a in node.attribute if a.name == "to"]
        for elem, role in checked:
            name = _TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))
            bad = {
                t.version: f"{role} type {name} is not among its types ({' '.join(sorted(t.operators[node.op_type]))})"
                for t in tables
                if node.op_type in t.operators and name not in t.operators[node.op_type]
            }
            per_version("dtype", where, bad)
        for output in node.output:
            if types.get(output) == TensorProto.UINT8 and output not in io:
                message = f"UINT8 intermediate tensor (made by {where}): UINT8 is for graph inputs and outputs only"
                found.append(Violation("uint8", output, message))
        if node.op_type in QDQ:
            found += _qdq_violations(node, types, constants)
    return found


def check_artifact(path: Path) -> None:
    """Refuse an artifact that breaks TensorRT's ONNX parser rules: ValueError listing (the first ten of) them."""
    violations = lint(path)
    if violations:
        shown = "\n  ".join(str(v) for v in violations[:10])
        more = f"\n  ... and {len(violations) - 10} more" if len(violations) > 10 else ""
        raise ValueError(f"{path} breaks TensorRT's ONNX parser rules ({len(violations)}):\n  {shown}{more}")


def _qdq_violations(node: onnx.NodeProto, types: dict[str, int], constants: dict[str, np.ndarray]) -> list[Violation]:
    where, found = _name(node), []
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    uint8_inputs = [n for n in (node.input[0], zero_point) if n and types.get(n) == TensorProto.UINT8]
    if uint8_inputs:
        found.append(Violation("qdq-uint8", where, f"UINT8 {', '.join(uint8_inputs)}: TensorRT quantises to INT8"))
    if zero_point is not None and zero_point in constants and np.any(constants[zero_point] != 0):
        values = np.unique(constants[zero_point])
        found.append(
            Violation(
                "qdq-zero-point",
                where,
                f"zero point {zero_point!r} is not all zeros ({values[:4].tolist()}{' ...' * (values.size > 4)}): "
                "TensorRT only takes symmetric quantisation",
            )
        )
    return found


# --------------------------------------------------------------------------------------------- rewrites


def cast_before_transpose(model: onnx.ModelProto) -> int:
    """``uint8 graph input -> Transpose -> Cast`` becomes ``Cast -> Transpose`` (same values); in place.

    Returns how many Transposes were moved. Only a Transpose whose every consumer is a Cast to one type is moved.
    """
    graph = model.graph
    inputs = {v.name for v in graph.input if v.type.tensor_type.elem_type == TensorProto.UINT8}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    moved = 0
    for transpose in [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inputs]:
        casts = consumers.get(transpose.output[0], [])
        targets = {a.i for c in casts for a in c.attribute if a.name == "to"}
        if not casts or any(c.op_type != "Cast" for c in casts) or len(targets) != 1:
            continue
        keep, drop = casts[0], casts[1:]
        source, laid_out = transpose.input[0], keep.output[0]
        # Cast(source) -> cast_out; Transpose(cast_out) -> the Cast's old output
        keep.input[0] = source
        keep.output[0] = f"{source}__cast"
        transpose.input[0] = keep.output[0]
        transpose.output[0] = laid_out
        for other in drop:  # further Casts of the same type read the one result
            for node in graph.node:
                for i, name in enumerate(node.input):
                    if name == other.output[0]:
                        node.input[i] = laid_out
            graph.node.remove(other)
        _reorder(graph, keep, transpose)
        _forget_types(graph, {laid_out, keep.output[0]})
        moved += 1
    return moved


def _reorder(graph: onnx.GraphProto, first: onnx.NodeProto, second: onnx.NodeProto) -> None:
    """Put ``first`` just before ``second`` (topological order after swapping two nodes' roles)."""
    nodes = [n for n in graph.node if n is not first]
    index = next(i for i, n in enumerate(nodes) if n is second)
    nodes.insert(index, first)
    del graph.node[:]
    graph.node.extend(nodes)


def _forget_types(graph: onnx.GraphProto, names: set[str]) -> None:
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def qdq_uint8_to_int8(model: onnx.ModelProto) -> int:
    """uint8 Quantize/DequantizeLinear become int8 with the same arithmetic; in place; returns the Q/DQ changed.

    ``q_u8 = clamp(round(x / s) + z, 0, 255)`` and ``q_i8 = clamp(round(x / s) + z - 128, -128, 127)`` differ by
    exactly 128 everywhere, and ``(q_u8 - z) * s == (q_i8 - (z - 128)) * s``: zero points z -> z - 128 and uint8
    quantised initializers q -> q - 128. A Q/DQ without a zero point (uint8 0 by default) gets int8 -128.
    """
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    types = tensor_types(model)
    shifted: dict[str, str] = {}  # uint8 constant name -> its int8 copy

    def shift(name: str) -> str:
        if name not in shifted:
            if name in initializers:
                array = numpy_helper.to_array(initializers[name])
            elif name in constant_nodes:
                array = numpy_helper.to_array(next(a.t for a in constant_nodes[name].attribute if a.name == "value"))
            else:
                raise ValueError(f"uint8 Q/DQ operand {name!r} is neither an initializer nor a Constant")
            shifted[name] = f"{name}__int8"
            int8 = (array.astype(np.int16) - 128).astype(np.int8)
            graph.initializer.append(numpy_helper.from_array(int8, shifted[name]))
        return shifted[name]

    changed, retyped = 0, set()
    for node in [n for n in graph.node if n.op_type in QDQ]:
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        is_uint8 = types.get(zero_point or node.input[0]) == TensorProto.UINT8
        if node.op_type == "QuantizeLinear" and zero_point is None:
            is_uint8 = not any(a.name == "output_dtype" for a in node.attribute)  # ONNX default: uint8
        if not is_uint8:
            continue
        if zero_point is None:
            scale_init = initializers.get(node.input[1])
            scale = numpy_helper.to_array(scale_init) if scale_init is not None else np.zeros(())
            name = f"{node.name or node.output[0]}__zero_point_int8"
            graph.initializer.append(numpy_helper.from_array(np.full(scale.shape, -128, np.int8), name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        else:
            node.input[2] = shift(zero_point)
        if node.op_type == "DequantizeLinear" and (node.input[0] in initializers or node.input[0] in constant_nodes):
            node.input[0] = shift(node.input[0])
        if node.op_type == "QuantizeLinear":
            retyped.add(node.output[0])
        changed += 1
    used = {name for n in graph.node for name in n.input}
    unused = [i for i in graph.initializer if i.name in shifted and i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    for name in [c for c in constant_nodes if c in shifted and c not in used]:
        graph.node.remove(constant_nodes[name])
    _forget_types(graph, retyped)
    return changed


def rewrite_for_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Both rewrites, in place; returns a line per rewrite that changed something (for the artifact record)."""
    done = []
    moved = cast_before_transpose(model)
    if moved:
        done.append(f"cast_before_transpose: {moved} uint8 input Transpose(s) now after the Cast")
    changed = qdq_uint8_to_int8(model)
    if changed:
        done.append(f"qdq_uint8_to_int8: {changed} Q/DQ nodes from uint8 to int8 (zero points and weights - 128)")
    return done


def rewrite_artifact(src: str | Path, dst: str | Path) -> list[str]:
    """:func:`rewrite_for_tensorrt` on an artifact file; the m2f metadata is kept and the rewrite recorded in it."""
    from runtimes.artifact import read_metadata, write_metadata

    metadata = read_metadata(src)
    model = onnx.load(str(src))
    done = rewrite_for_tensorrt(model)
    onnx.checker.check_model(model)
    if done:
        # the module's own name, not __name__ (that is "__main__" under python -m)
        metadata.setdefault("rewrites", []).append({"by": "compile.tensorrt_rules", "changes": done})
    write_metadata(model, metadata)
    onnx.save(model, str(dst))
    return done


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compile.tensorrt_rules", description="TensorRT ONNX parser rules, checked without TensorRT"
    )
    parser.add_argument("files", nargs="*", type=Path, help="ONNX files to check")
    parser.add_argument("--tensorrt", action="append", choices=VERSIONS, help="TensorRT versions (default: all)")
    parser.add_argument("--rewrite", nargs=2, type=Path, metavar=("SRC", "DST"), help="write SRC rewritten to DST")
    args = parser.parse_args(argv)
    rewritten = None
    if args.rewrite:
        src, dst = args.rewrite
        if not src.is_file():
            print(f"{src}: no such file", file=sys.stderr)
            return 2
        from runtimes.errors import ArtifactError

        try:
            done = rewrite_artifact(src, dst)
        except (ArtifactError, onnx.checker.ValidationError) as err:
            print(f"{src}: {err}", file=sys.stderr)
            return 2
        for line in done or ["nothing to rewrite"]:
            print(f"{src} -> {dst}: {line}")
        rewritten = dst
    failed = 0
    checks = [(path, True) for path in args.files] + ([(rewritten, False)] if rewritten else [])
    for path, counted in checks:  # the rewritten file is listed for information unless also named in FILES
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
        violations = lint(path, tuple(args.tensorrt or VERSIONS))
        failed += bool(violations) and counted
        note = "" if counted or not violations else " (written; not counted in the exit status)"
        print(f"{path}: {len(violations)} violation(s){note}")
        for violation in violations:
            print(f"  {violation}")
    return 1 if failed else 0


if __name__ == "__main__":
    from runtimes.errors import quiet_on_broken_pipe

    sys.exit(quiet_on_broken_pipe(_main))  # `... | head`
