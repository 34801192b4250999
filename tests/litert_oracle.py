"""LiteRT's own interpreter as the oracle for weights read from .tflite files: run an image, read any tensor back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def run_litert(model_path: Path, rgb: np.ndarray) -> Any:
    """The interpreter after one (H, W, 3) uint8 RGB image, every intermediate tensor kept (int8 inputs shifted)."""
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_mod.Interpreter(str(model_path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    pixels = rgb[None].astype(np.int16) - (128 if inp["dtype"] == np.int8 else 0)
    interpreter.set_tensor(inp["index"], pixels.astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter


def dequantized(interpreter: Any, tensor_index: int) -> np.ndarray:
    """Tensor ``tensor_index`` as float32 (its quantization undone; float tensors as they are)."""
    detail = next(t for t in interpreter.get_tensor_details() if t["index"] == tensor_index)
    raw = interpreter.get_tensor(tensor_index).astype(np.float32)
    scale, zero = detail["quantization"]
    return (raw - zero) * scale if scale else raw
