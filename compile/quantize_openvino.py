"""OpenVINO int8: NNCF post-training quantisation (ONNX backend, transformer preset) to a QDQ ``.onnx``, the
``openvino`` target's int8 artifact, and what OpenVINO then really runs in int8. What it shares with the ONNX Runtime
quantiser (config, calibration feeds, graph preparation, what stays float) is in ``compile.quantization`` and
``compile.keep_float``.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from compile.msda_function import SITE_PATTERN, SITE_PREFIX
from compile.precision import check_io_unchanged, load_model, save_model
from compile.quantization import QuantizationConfig, checked_feeds, float_nodes, preprocess

logger = logging.getLogger(__name__)


def quantize_openvino_int8(src: str | Path, dst: str | Path, config: QuantizationConfig) -> Path:
    """NNCF post-training int8 quantisation (ONNX backend, transformer preset) to a QDQ ``.onnx``; returns ``dst``.

    OpenVINO reads the QuantizeLinear/DequantizeLinear pairs and runs the convolutions and fully connected layers
    in u8/i8 (check with :func:`openvino_runtime_precisions`); ONNX Runtime runs the same file. NNCF ignores the
    nodes ``config`` keeps float (:func:`compile.quantization.float_nodes`) and calibrates on the first
    ``config.subset_size`` of ``config.calibration``.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    source = load_model(src)
    feeds = checked_feeds(config, source)
    with tempfile.TemporaryDirectory(prefix="m2f_ov_int8_") as tmp:
        model = onnx.load(str(preprocess(Path(src), Path(tmp), keep_transposes=True)))
    inlined_msda = any(node.name.startswith(SITE_PREFIX) for node in model.graph.node)  # folded back afterwards
    scope = nncf.IgnoredScope(names=float_nodes(model, config), patterns=[SITE_PATTERN] if inlined_msda else [])
    subset = min(config.subset_size, len(feeds))
    logger.info(
        "OpenVINO int8 (NNCF %s): %s, %d calibration inputs, %d nodes kept float",
        nncf.__version__,
        src,
        subset,
        len(scope.names),
    )
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=subset,
        ignored_scope=scope,
        # 7-bit weights in every layer (NNCF's default fixes the first only): u8 x i8 pair sums saturate on x86
        # CPUs without VNNI (an AVX2-only EPYC gave 98.96 % labels equal to fp32 on CamVid), and the file may run
        # on any CPU; the same choice as ``reduce_range`` for ONNX Runtime
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )
    check_io_unchanged(source, quantized)
    return save_model(quantized, dst, source)


def openvino_runtime_precisions(path: str | Path, device: str = "CPU") -> Counter[tuple[str, str]]:
    """(layer type, runtime precision) counts of the model as OpenVINO compiled it, e.g. ("Convolution", "u8").

    Compiled with ``INFERENCE_PRECISION_HINT=f32`` so that non-quantised layers show as f32, not the bf16 that
    OpenVINO picks by default on bf16-capable CPUs.
    """
    from runtimes.openvino_backend import openvino_core

    core = openvino_core(path)
    config = {"INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" else {}
    compiled = core.compile_model(str(path), device, config)
    counts: Counter[tuple[str, str]] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        counts[(layer, precision)] += 1
    return counts
