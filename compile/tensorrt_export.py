"""Checkpoint -> ONNX for TensorRT: multi-scale deformable attention as ONE plugin node per encoder layer.

For ONNX Runtime and OpenVINO the export lowers MSDA to standard ops (``GridSample`` per level). For TensorRT it
keeps the op whole, as a node TensorRT's ONNX parser imports as a plugin:

* ``m2f::ms_deform_attn`` is a ``torch.library`` custom op: the pure-torch reference is its real implementation,
  a fake (meta) implementation gives ``torch.export`` the output shape ``(N, Lq, M*D)``.
* :func:`model_with_msda_op` builds the model that is exported: a copy of the module tree (sharing the weights)
  whose deformable-attention layers are built with that op as their MSDA (``MSDeformAttn(..., msda=...)``). The
  caller's model, the model code and every other thread are untouched: no export flag, no swapped module
  attribute. The spatial shapes (``int32 (L, 2)``) and level start indices (``int32 (L,)``, the prefix sums of
  ``H*W``) come from the feature-map sizes, which are static: the TensorRT export is always at a fixed input size.
* An onnxscript translation (``custom_translation_table`` of the dynamo exporter) writes the node:

  ========================  ====================================================================================
  ``domain``                ``trt.plugins`` (:data:`PLUGIN_DOMAIN`), declared in ``opset_import`` at version 1
  ``op_type``               ``M2F_MultiscaleDeformableAttn`` (ours, ``plugin="m2f"``) or
                            ``MultiscaleDeformableAttnPlugin_TRT`` (TensorRT's own, ``plugin="builtin"``)
  inputs                    ``value (N,S,M,D) float, spatial_shapes (L,2) int32, level_start_index (L,) int32,
                            sampling_locations (N,Lq,M,L,P,2) float, attention_weights (N,Lq,M,L,P) float``
  output                    ``(N, Lq, M*D)``; the built-in plugin's ``(N, Lq, M, D)`` is followed by a
                            ``Reshape`` to ``(N, Lq, M*D)``
  attributes                ``plugin_version`` ("1"), ``plugin_namespace`` ("")
  ========================  ====================================================================================

  The domain: TensorRT's ONNX parser ignores a node's domain. It dispatches on ``op_type`` alone and imports any
  op it has no importer for as the plugin registry's creator of that name, with the version and namespace from
  the ``plugin_version`` / ``plugin_namespace`` attributes (defaults "1" and ""; onnx-tensorrt
  ``FallbackPluginImporter``). The default domain ``""`` would fail ``onnx.checker`` (no such ONNX op), so the
  node gets a custom domain, and ``trt.plugins`` is the one the other TensorRT tools expect of plugin nodes:
  ONNX Runtime's TensorRT execution provider registers TensorRT's plugins as custom ops of that domain, and
  ModelOpt (INT8 Q/DQ for TensorRT) sets it on plugin nodes (``set_trt_plugin_domain``).

Off TensorRT, :class:`PluginReferenceBackend` runs such an artifact on ONNX Runtime with the plugin nodes computed
by :func:`ms_deform_attn_numpy` (an onnxruntime-extensions Python op): the compiler's gate for the tensorrt target,
and the parity tests.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor

from compile.onnx_export import DEFAULT_OPSET, DeployableMask2Former, torch_onnx_export
from plugins.msda import openvino_extension
from plugins.msda.reference import ms_deform_attn_reference, shapes_as_pairs
from plugins.msda.tensorrt_plugin import (
    BUILTIN_PLUGIN_NAME,
    BUILTIN_PLUGIN_VERSION,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
)
from runtimes.base import RuntimeNotAvailable
from runtimes.onnxruntime_backend import OnnxRuntimeBackend
from train.model import Mask2Former, ModelMeta
from train.model.pixel_decoder import MSDeformAttn

logger = logging.getLogger(__name__)

__all__ = [
    "CUSTOM_OP",
    "PLUGIN_DOMAIN",
    "PLUGIN_OPS",
    "PluginReferenceBackend",
    "check_tensorrt_request",
    "export_openvino_fused_onnx",
    "export_tensorrt_onnx",
    "is_plugin_node",
    "model_with_msda_op",
    "ms_deform_attn_numpy",
    "ms_deform_attn_op",
    "onnxruntime_reference_model",
    "plugin_nodes",
]

PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_DOMAIN_VERSION = 1
CUSTOM_OP = "m2f::ms_deform_attn"
# plugin flavour -> (op_type, plugin_version, plugin_namespace)
PLUGIN_OPS: dict[str, tuple[str, str, str]] = {
    "m2f": (PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE),
    "builtin": (BUILTIN_PLUGIN_NAME, BUILTIN_PLUGIN_VERSION, ""),
}
# the fused node for OpenVINO's CPU extension (plugins/msda/openvino_extension.cpp): no TensorRT attributes
OPENVINO_FUSED = "openvino"
_NODE_OF: dict[str, tuple[str, str]] = {  # flavour -> (domain, op_type)
    **{flavour: (PLUGIN_DOMAIN, op_type) for flavour, (op_type, _, _) in PLUGIN_OPS.items()},
    OPENVINO_FUSED: (openvino_extension.ONNX_DOMAIN, openvino_extension.ONNX_OP),
}


# --------------------------------------------------------------------------------------------- the custom op


@torch.library.custom_op(CUSTOM_OP, mutates_args=())
def ms_deform_attn_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """MSDA as one opaque op: value (N, S, M, D), int32 shapes (L, 2) and starts (L,) -> (N, Lq, M*D)."""
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@ms_deform_attn_op.register_fake
def _ms_deform_attn_fake(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    return value.new_empty((N, Lq, M * D))


def _ms_deform_attn_via_op(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    level_start_index: Tensor | None,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Drop-in for ``plugins.msda.ms_deform_attn`` that calls the custom op with int32 shape tensors."""
    del level_start_index  # recomputed from the shapes, as the reference and our plugin do
    shapes = shapes_as_pairs(spatial_shapes)
    if not all(isinstance(v, int) for pair in shapes for v in pair):
        raise ValueError(
            f"the fused MSDA export needs static feature-map sizes, got {shapes}: export at a fixed input size"
        )
    sizes = [h * w for h, w in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    device = value.device
    shapes_t = torch.tensor(shapes, dtype=torch.int32, device=device)  # (L, 2) (H, W)
    starts_t = torch.tensor(starts, dtype=torch.int32, device=device)  # (L,)
    return ms_deform_attn_op(value, shapes_t, starts_t, sampling_locations, attention_weights)


def model_with_msda_op(model: Mask2Former) -> Mask2Former:
    """``model`` built for the fused exports: each deformable-attention layer calls ``m2f::ms_deform_attn`` (one
    opaque op per layer, which the ONNX translation writes as one node), numerically the same model.

    A copy of the module tree that shares ``model``'s parameters and buffers (no weight is duplicated), its
    ``MSDeformAttn`` layers rebuilt with the op as their ``msda`` around the same parameters; ``model`` is left as
    it is.
    """
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    exported = copy.deepcopy(model, memo=shared)
    for name, layer in [(n, m) for n, m in exported.named_modules() if isinstance(m, MSDeformAttn)]:
        with torch.device("meta"):  # no memory and no draw from the random generator for weights replaced below
            op_layer = MSDeformAttn(
                layer.d_model, layer.n_levels, layer.n_heads, layer.n_points, msda=_ms_deform_attn_via_op
            )
        op_layer.load_state_dict(layer.state_dict(keep_vars=True), assign=True)  # the very same Parameters
        exported.set_submodule(name, op_layer.train(layer.training))
    return exported


# --------------------------------------------------------------------------------------------- ONNX translation


def _plugin_schema(flavour: str) -> onnx.defs.OpSchema:
    """An ONNX schema for the fused node; only the exporter's op builder sees it (never registered globally)."""
    param = onnx.defs.OpSchema.FormalParameter
    string = onnx.defs.OpSchema.AttrType.STRING
    domain, op_type = _NODE_OF[flavour]
    attributes = [] if flavour == OPENVINO_FUSED else [
        onnx.defs.OpSchema.Attribute("plugin_version", string, "plugin creator version"),
        onnx.defs.OpSchema.Attribute("plugin_namespace", string, "plugin creator namespace"),
    ]  # fmt: skip
    return onnx.defs.OpSchema(
        op_type,
        domain,
        PLUGIN_DOMAIN_VERSION,
        inputs=[
            param("value", "T"),
            param("spatial_shapes", "tensor(int32)"),
            param("level_start_index", "tensor(int32)"),
            param("sampling_locations", "T"),
            param("attention_weights", "T"),
        ],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "the plugin's float type")],
        attributes=attributes,
    )


def _translation(plugin: str) -> Any:
    """The onnxscript function that writes ``m2f::ms_deform_attn`` as the fused node of flavour ``plugin``."""
    import onnxscript
    from onnxscript import opset18 as op

    domain, op_type = _NODE_OF[plugin]
    attributes = {} if plugin == OPENVINO_FUSED else dict(zip(("plugin_version", "plugin_namespace"),
                                                              PLUGIN_OPS[plugin][1:], strict=True))  # fmt: skip
    opset = onnxscript.values.Opset(domain, PLUGIN_DOMAIN_VERSION)
    # no ONNX schema exists for a plugin: the op carries its own (Opset.__getattr__ would look one up and fail)
    plugin_op = onnxscript.values.Op(opset, op_type, _plugin_schema(plugin))

    def ms_deform_attn_plugin(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):  # type: ignore[no-untyped-def]
        out = plugin_op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, **attributes)
        if plugin == "builtin":  # (N, Lq, M, D) -> (N, Lq, M*D)
            out = op.Reshape(out, op.Constant(value_ints=[0, 0, -1]))
        return out

    return ms_deform_attn_plugin


def is_plugin_node(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is a TensorRT MSDA plugin node (either flavour)."""
    return node.domain == PLUGIN_DOMAIN and node.op_type in {op_type for op_type, _, _ in PLUGIN_OPS.values()}


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The TensorRT MSDA plugin nodes of ``model``'s main graph."""
    return [node for node in model.graph.node if is_plugin_node(node)]


def check_tensorrt_request(precision: str, input_size: tuple[int, int] | None) -> None:
    """Fail before any work when ``compile.export`` cannot make this TensorRT artifact; the message says what to do.

    INT8 for TensorRT is explicit quantisation (a Q/DQ graph; TensorRT 10 deprecated its implicit-INT8
    calibrators) with symmetric int8 scales, which NVIDIA ModelOpt writes and which is aware of the plugin nodes.
    """
    if input_size is None:
        raise ValueError(
            "the TensorRT export is static: give an input size (H, W), e.g. `m2f export --input-size 512x512` "
            "(TensorRT builds one engine per input size)"
        )
    if precision == "int8":
        raise ValueError(
            "int8 for TensorRT is a Q/DQ artifact made with NVIDIA ModelOpt (pip install nvidia-modelopt): export "
            "fp32 for tensorrt, quantise it with modelopt.onnx.quantization.quantize(onnx_path, quantize_mode='int8', "
            "calibration_data={'images': <(B, H, W, 3) uint8 frames>}, trt_plugins=[<built libm2f_msda_trt.so>], "
            "output_path=...), write the m2f metadata back with precision 'int8', and load it on the device with "
            "precision='int8' (the engine is then built strongly typed)"
        )


def export_tensorrt_onnx(
    model: Mask2Former,
    meta: ModelMeta,
    task: str,
    path: str | Path,
    input_size: tuple[int, int] | None,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    plugin: str = "m2f",
) -> Path:
    """Export for TensorRT to ``path`` at the static ``input_size`` (H, W); MSDA becomes plugin nodes.

    ``plugin``: "m2f" (our ``M2F_MultiscaleDeformableAttn``, built from ``plugins/msda``) or "builtin"
    (TensorRT's ``MultiscaleDeformableAttnPlugin_TRT`` from libnvinfer_plugin, plus a Reshape). Same wrapper,
    inputs and outputs as :func:`compile.onnx_export.export_onnx`; the file passes ``onnx.checker``.
    """
    if plugin not in PLUGIN_OPS:
        raise ValueError(f"unknown plugin {plugin!r}; expected one of {sorted(PLUGIN_OPS)}")
    check_tensorrt_request("fp32", input_size)
    return _export_fused(model, meta, task, Path(path), input_size, batch_size, opset, plugin)


def export_openvino_fused_onnx(
    model: Mask2Former,
    meta: ModelMeta,
    task: str,
    path: str | Path,
    input_size: tuple[int, int] | None,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export for OpenVINO with each deformable-attention layer as ONE ``m2f::MSDeformAttn`` node, which the CPU
    extension (``plugins.msda.openvino_extension``) computes; static ``input_size`` only (the feature-map sizes
    are constants of the node)."""
    if input_size is None:
        raise ValueError("the fused MSDA node needs a static input size (H, W); dynamic exports use standard ops")
    return _export_fused(model, meta, task, Path(path), input_size, batch_size, opset, OPENVINO_FUSED)


def _export_fused(
    model: Mask2Former,
    meta: ModelMeta,
    task: str,
    path: Path,
    input_size: tuple[int, int],
    batch_size: int,
    opset: int,
    flavour: str,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = DeployableMask2Former(model_with_msda_op(model), meta, task).eval()
    h, w = input_size
    example = torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8)
    table = {torch.ops.m2f.ms_deform_attn.default: _translation(flavour)}
    logger.info("exporting %s with fused MSDA nodes (%s) at %dx%d to %s", task, flavour, h, w, path)
    torch_onnx_export(wrapper, example, path, task, opset, custom_translation_table=table)
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    layers = sum(1 for m in model.modules() if type(m).__name__ == "MSDeformAttn")
    domain, op_type = _NODE_OF[flavour]
    found = sum(1 for node in exported.graph.node if node.domain == domain and node.op_type == op_type)
    if found != layers:
        raise RuntimeError(
            f"the export has {found} fused MSDA nodes for {layers} deformable-attention layers: the "
            "model's MSDA no longer goes through MSDeformAttn.msda"
        )
    return path


# --------------------------------------------------------------------------------------------- off-TensorRT reference


def ms_deform_attn_numpy(
    value: np.ndarray,
    spatial_shapes: np.ndarray,
    level_start_index: np.ndarray,
    sampling_locations: np.ndarray,
    attention_weights: np.ndarray,
) -> np.ndarray:
    """MSDA in numpy, the plugin's contract: (N, S, M, D) values -> (N, Lq, M*D) in ``value``'s dtype.

    Bilinear sampling with zero padding, a normalised location ``x`` at pixel ``x * W - 0.5`` (``grid_sample``,
    ``align_corners=False``), as ``plugins.msda.reference``; accumulates in float64. ``level_start_index`` is
    not read: each level starts at the prefix sum of ``H*W``, as in the reference and our plugin.
    """
    del level_start_index
    N, S, M, D = value.shape
    Lq, L = sampling_locations.shape[1], sampling_locations.shape[3]
    shapes = [(int(h), int(w)) for h, w in np.asarray(spatial_shapes).reshape(-1, 2)]
    if len(shapes) != L:
        raise ValueError(f"{len(shapes)} spatial shapes for {L} levels in sampling_locations")
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(f"spatial shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {S}")
    out = np.zeros((N, Lq, M, D), np.float64)
    n_idx = np.arange(N)[:, None, None, None]  # broadcasts against (N, Lq, M, P)
    m_idx = np.arange(M)[None, None, :, None]
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w].reshape(N, h, w, M, D).astype(np.float64)
        start += h * w
        x = sampling_locations[:, :, :, level, :, 0].astype(np.float64) * w - 0.5  # (N, Lq, M, P) pixels
        y = sampling_locations[:, :, :, level, :, 1].astype(np.float64) * h - 0.5
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        weight = attention_weights[:, :, :, level].astype(np.float64)  # (N, Lq, M, P)
        for dy, dx, corner in (
            (0, 0, (1 - fy) * (1 - fx)),
            (0, 1, (1 - fy) * fx),
            (1, 0, fy * (1 - fx)),
            (1, 1, fy * fx),
        ):
            xi, yi = (x0 + dx).astype(np.int64), (y0 + dy).astype(np.int64)
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)  # outside the map samples zeros
            sampled = v[n_idx, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1), m_idx]  # (N, Lq, M, P, D)
            out += np.einsum("nqmp,nqmpd->nqmd", weight * corner * inside, sampled)
    return out.reshape(N, Lq, M * D).astype(value.dtype)


_ORT_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions registers its Python ops in this domain only
_registered = False
_register_lock = threading.Lock()


def _register_onnxruntime_ops() -> str:
    """Register both plugin ops as onnxruntime-extensions Python ops (float32); returns the library path."""
    global _registered
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError as err:
        raise RuntimeNotAvailable(
            "running a TensorRT-target artifact off TensorRT needs onnxruntime-extensions for the plugin op: "
            f"pip install onnxruntime-extensions ({err})"
        ) from err
    with _register_lock:
        if not _registered:
            types = dict(
                inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int32]
                + [PyCustomOpDef.dt_float] * 2,
                outputs=[PyCustomOpDef.dt_float],
            )

            @onnx_op(op_type=PLUGIN_NAME, **types)
            def _m2f_plugin(*inputs: np.ndarray) -> np.ndarray:
                return ms_deform_attn_numpy(*inputs)

            @onnx_op(op_type=BUILTIN_PLUGIN_NAME, **types)
            def _builtin_plugin(*inputs: np.ndarray) -> np.ndarray:
                value = inputs[0]
                out = ms_deform_attn_numpy(*inputs)
                return out.reshape(out.shape[0], out.shape[1], value.shape[2], value.shape[3])  # (N, Lq, M, D)

            _registered = True
    return get_library_path()


def onnxruntime_reference_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a TensorRT-target model that ONNX Runtime runs: each plugin node becomes the onnxruntime-extensions
    op of the same name (domain ``ai.onnx.contrib``, float32: Casts in, ``CastLike`` back to ``value``'s type)."""
    model = copy.deepcopy(model)
    nodes = []
    for node in model.graph.node:
        if not is_plugin_node(node):
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        inputs = list(node.input)
        for i in (0, 3, 4):  # the float inputs; the int32 shape inputs stay as they are
            nodes.append(helper.make_node("Cast", [inputs[i]], [f"{base}_f32_in{i}"], to=TensorProto.FLOAT))
            inputs[i] = f"{base}_f32_in{i}"
        nodes.append(helper.make_node(node.op_type, inputs, [f"{base}_f32_out"], domain=_ORT_DOMAIN, name=base))
        nodes.append(helper.make_node("CastLike", [f"{base}_f32_out", node.input[0]], [node.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == _ORT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_ORT_DOMAIN, 1))
    return model


class PluginReferenceBackend(OnnxRuntimeBackend):
    """A TensorRT-target artifact on ONNX Runtime (CPU), its plugin nodes computed by :func:`ms_deform_attn_numpy`.

    For checking such artifacts where TensorRT is not (the compiler's gate, tests); not for deployment.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__(path, device="cpu", threads=threads)

    def _model_source(self) -> bytes:
        return onnxruntime_reference_model(onnx.load(str(self.path))).SerializeToString()

    def _extend_options(self, options: Any) -> None:
        options.register_custom_ops_library(_register_onnxruntime_ops())
