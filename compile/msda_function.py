"""The fused MSDA node with a body: ONNX Runtime (and so NNCF's calibration) runs it, OpenVINO takes our kernel.

An ``m2f::MSDeformAttn`` node is our OpenVINO extension's op. Given a model-local ONNX function of the same name
(``attach_body``) whose body is the standard-op decomposition (``plugins.msda.reference``, exported at the call
sites' shapes), ONNX Runtime runs the node through that body, while OpenVINO's frontend maps it to the extension's
kernel when the library is loaded (checked: OpenVINO 2026.4 prefers the registered conversion over the body).

Int8: NNCF drops a model's functions when it builds its statistics model, and ONNX Runtime's pre-processing
inlines them under names it picks. So the sites are inlined here first, each body node named
``m2f_msda.<site>/<name>`` (``inline_sites``), kept float by NNCF (``SITE_PATTERN`` in its ignored scope), and
folded back into one node per site after quantisation (``collapse_sites``), which checks that each region still
reads only its site's inputs and feeds only its site's output; otherwise it raises, and the export keeps the
standard graph.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from plugins.msda.openvino_extension import ONNX_DOMAIN, ONNX_OP

INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
SITE_PREFIX = "m2f_msda."
SITE_PATTERN = r"m2f_msda\.\d+/.*"  # NNCF ignored-scope pattern of every inlined body node


@dataclass(frozen=True)
class Site:
    """One fused node as it was before inlining: its inputs (the two shape constants as arrays) and output."""

    index: int
    name: str
    value: str
    sampling_locations: str
    attention_weights: str
    output: str
    spatial_shapes: np.ndarray
    level_start_index: np.ndarray


def _is_site(node: onnx.NodeProto) -> bool:
    return node.domain == ONNX_DOMAIN and node.op_type == ONNX_OP


def _sites_of(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if _is_site(n)]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def build_body(model: onnx.ModelProto) -> onnx.FunctionProto:
    """The standard-op body of the model's fused nodes, exported from the reference at their shapes; ValueError
    when the sites differ in shapes (one body serves every site) or the shape inputs are not constants."""
    import torch

    from plugins.msda.reference import ms_deform_attn_reference

    sites = _sites_of(model)
    if not sites:
        raise ValueError("the model has no fused MSDA node")
    known = {vi.name: vi for vi in (*shape_inference.infer_shapes(model).graph.value_info, *model.graph.input)}
    constants = _constants(model)

    def shape(name: str) -> tuple[int, ...]:
        dims = known[name].type.tensor_type.shape.dim if name in known else ()
        if not dims or any(not d.HasField("dim_value") for d in dims):
            raise ValueError(f"the fused MSDA input {name} has no static shape")
        return tuple(d.dim_value for d in dims)

    signatures = set()
    for node in sites:
        if node.input[1] not in constants or node.input[2] not in constants:
            raise ValueError(f"{node.name}: spatial shapes are not constants")
        signatures.add((shape(node.input[0]), shape(node.input[3]), shape(node.input[4]),
                        tuple(constants[node.input[1]].ravel().tolist())))  # fmt: skip
    if len(signatures) != 1:
        raise ValueError(f"the fused MSDA nodes differ in shapes ({len(signatures)} kinds): one body cannot serve all")
    value, locations, weights, flat = signatures.pop()
    levels = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    class Reference(torch.nn.Module):
        def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
            return ms_deform_attn_reference(value, levels, None, sampling_locations, attention_weights)

    example = (torch.zeros(value), torch.tensor(levels), torch.zeros(len(levels), dtype=torch.int64),
               torch.zeros(locations), torch.zeros(weights))  # fmt: skip
    buffer = io.BytesIO()
    opset = _default_opset(model)
    torch.onnx.export(Reference(), example, buffer, opset_version=opset, dynamo=False, input_names=list(INPUTS),
                      output_names=["output"])  # fmt: skip
    body = onnx.load_from_string(buffer.getvalue())
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in body.graph.initializer]
    return helper.make_function(ONNX_DOMAIN, ONNX_OP, list(INPUTS), ["output"], [*nodes, *body.graph.node],
                                [helper.make_opsetid("", opset)])  # fmt: skip


def attach_body(model: onnx.ModelProto, body: onnx.FunctionProto | None = None) -> onnx.ModelProto:
    """``model`` with the fused nodes' body as a model-local function (built from the model when not given)."""
    body = body or build_body(model)
    kept = [f for f in model.functions if (f.domain, f.name) != (ONNX_DOMAIN, ONNX_OP)]
    del model.functions[:]
    model.functions.extend([*kept, body])
    return model


def inline_sites(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Site], onnx.FunctionProto]:
    """Every fused node replaced by its body's nodes, named ``m2f_msda.<site>/...``; the sites, to collapse."""
    body = build_body(model)
    constants = _constants(model)
    sites, nodes = [], []
    for node in model.graph.node:
        if not _is_site(node):
            nodes.append(node)
            continue
        site = Site(len(sites), node.name, node.input[0], node.input[3], node.input[4], node.output[0],
                    constants[node.input[1]], constants[node.input[2]])  # fmt: skip
        sites.append(site)
        nodes += _renamed_body(body, site, dict(zip(INPUTS, node.input, strict=True)))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.functions[:]
    return model, sites, body


def _renamed_body(body: onnx.FunctionProto, site: Site, formal: dict[str, str]) -> list[onnx.NodeProto]:
    prefix = f"{SITE_PREFIX}{site.index}/"

    def tensor(name: str) -> str:
        if name == "output":
            return site.output
        return formal.get(name) or (prefix + name if name else "")

    renamed = []
    for index, node in enumerate(body.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}{node.name or node.op_type}_{index}"
        copy.input[:] = [tensor(name) for name in node.input]
        copy.output[:] = [tensor(name) for name in node.output]
        renamed.append(copy)
    return renamed


def collapse_sites(model: onnx.ModelProto, sites: list[Site], body: onnx.FunctionProto) -> onnx.ModelProto:
    """The inlined regions folded back into one fused node each, with ``body`` attached; ValueError naming the
    first region that no longer reads only its site's inputs or feeds only its site's output."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    replacement: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    for site in sites:
        prefix = f"{SITE_PREFIX}{site.index}/"
        members = [i for i, n in enumerate(graph.node) if n.name.startswith(prefix)]
        if not members:
            raise ValueError(f"site {site.index} ({site.name}): no inlined node left")
        produced = {out for i in members for out in graph.node[i].output}
        read = {name for i in members for name in graph.node[i].input if name} - produced - initializers
        if not read <= {site.value, site.sampling_locations, site.attention_weights}:
            raise ValueError(f"site {site.index} ({site.name}) reads {sorted(read)} after quantisation")
        member_set = set(members)
        outside = {name for i, n in enumerate(graph.node) if i not in member_set for name in n.input}
        outside |= {o.name for o in graph.output}
        if (produced & outside) != {site.output}:
            raise ValueError(f"site {site.index} ({site.name}) feeds {sorted(produced & outside)} outside itself")
        shapes, starts = f"{prefix}spatial_shapes", f"{prefix}level_start_index"
        graph.initializer.extend([numpy_helper.from_array(site.spatial_shapes, shapes),
                                  numpy_helper.from_array(site.level_start_index, starts)])  # fmt: skip
        replacement[members[-1]] = helper.make_node(
            ONNX_OP, [site.value, shapes, starts, site.sampling_locations, site.attention_weights], [site.output],
            name=site.name, domain=ONNX_DOMAIN,
        )  # fmt: skip
        drop |= member_set
    nodes = [replacement.get(i, node) for i, node in enumerate(graph.node) if i not in drop or i in replacement]
    del graph.node[:]
    graph.node.extend(_topological(nodes, {i.name for i in graph.input} | {t.name for t in graph.initializer}))
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if not t.name.startswith(SITE_PREFIX) or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)  # the regions' constants that ONNX Runtime's pre-processing folded
    if not any(o.domain == ONNX_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ONNX_DOMAIN, 1))
    return attach_body(model, body)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each runs after the producers of its inputs (stable where already so)."""
    ready, pending, ordered = set(available) | {""}, list(nodes), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError(f"{len(waiting)} nodes read values nothing produces, e.g. {waiting[0].name}")
        pending = waiting
    return ordered
