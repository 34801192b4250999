"""ONNX Runtime int8: static post-training quantisation to a QDQ ``.onnx`` (per-channel int8 weights, calibrated
activations), the ``onnxruntime`` target's int8 artifact. What it shares with the OpenVINO quantiser (config,
calibration feeds, graph preparation, what stays float) is in ``compile.quantization`` and ``compile.keep_float``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from compile.precision import check_io_unchanged, load_model, save_model
from compile.quantization import QuantizationConfig, checked_feeds, float_nodes, preprocess

logger = logging.getLogger(__name__)

ORT_CALIBRATION_CHUNK = 16  # images per histogram update: ORT keeps every intermediate tensor of a chunk in RAM
ORT_CALIBRATION_RAM_SHARE = 0.25  # of the available memory, for one chunk's intermediate tensors


def float_activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the float tensors whose shapes ONNX shape inference knows: one input's worth of intermediates."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
    total = 0
    for info in model.graph.value_info:
        tensor = info.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]
        if tensor.elem_type in floats and dims and all(d > 0 for d in dims):
            total += int(np.prod(dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
    return total


def calibration_chunk(model: onnx.ModelProto, n_feeds: int, available_bytes: int | None = None) -> int:
    """Images per calibration update: at most ORT_CALIBRATION_CHUNK, within a RAM share, dividing ``n_feeds``.

    ORT's histogram calibration keeps every collected intermediate tensor of a chunk in memory: 16 images of a
    Swin-T model at 512x512 were killed for memory on a 24 GiB machine.
    """
    if available_bytes is None:
        available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    per_input = max(float_activation_bytes(model), 1)
    limit = int(max(1, min(ORT_CALIBRATION_CHUNK, ORT_CALIBRATION_RAM_SHARE * available_bytes // per_input)))
    return max(d for d in range(1, limit + 1) if n_feeds % d == 0)


def _feed_reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """ORT's ``CalibrationDataReader`` over ``feeds``, with the ranges its strided calibration asks for."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(feeds[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return FeedReader()


def quantize_onnxruntime_int8(src: str | Path, dst: str | Path, config: QuantizationConfig) -> Path:
    """Static post-training int8 quantisation for ONNX Runtime (QDQ, per-channel int8 weights); returns ``dst``.

    Quantised: ``config.op_types`` minus ``config.exclude_op_types``, minus the nodes ``config`` keeps float
    (:func:`compile.quantization.float_nodes`); calibrated with ``config.method`` on ``config.calibration``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source = load_model(src)
    feeds = checked_feeds(config, source)
    with tempfile.TemporaryDirectory(prefix="m2f_ort_int8_") as tmp:
        prepared = preprocess(Path(src), Path(tmp))
        model = onnx.load(str(prepared))
        # calibrate in chunks that divide the set evenly (ORT's strided calibration requires it)
        chunk = calibration_chunk(model, len(feeds))
        excluded = float_nodes(model, config)
        logger.info(
            "ORT int8: %s, %s calibration over %d inputs (%d per update), %d nodes kept float",
            src,
            config.method,
            len(feeds),
            chunk,
            len(excluded),
        )
        out = Path(tmp) / "quantized.onnx"
        symmetric = config.activation_type == "int8"
        quantize_static(
            str(prepared),
            str(out),
            _feed_reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=[t for t in config.op_types if t not in set(config.exclude_op_types)],
            per_channel=True,
            # 7-bit weights: u8 x s8 products summed in pairs saturate int16 (VPMADDUBSW) on x86 CPUs without VNNI
            # (e.g. AVX2-only EPYC: 98.5 % labels equal to fp32 with 8-bit weights); the file may run on any CPU
            reduce_range=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod[config.method],
            extra_options={"ActivationSymmetric": symmetric, "CalibStridedMinMax": chunk},
        )
        model = onnx.load(str(out))
    check_io_unchanged(source, model)
    return save_model(model, dst, source)
