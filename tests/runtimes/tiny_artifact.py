"""A tiny real m2f artifact built with onnx.helper, and its numpy reference, for runtime and SDK tests.

Graph: image uint8 (1, H, W, 3) -> Cast f32 -> (x - mean) / std = "normalized" (f32, NHWC),
"labels" = ArgMax over channels (int64, (1, H, W)), "mask" = uint8(sum over channels > 0) (uint8, (1, H, W)).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtimes.artifact import write_metadata

MEAN = np.array([103.5, 116.25, 123.75], np.float32)
STD = np.array([57.375, 57.125, 58.375], np.float32)
HEIGHT, WIDTH = 8, 12
OUTPUTS = {
    "normalized": "normalised input, float32 (1, H, W, 3)",
    "labels": "argmax over channels, int64 (1, H, W)",
    "mask": "1 where the normalised channels sum above 0, uint8 (1, H, W)",
}


def tiny_metadata(dynamic: bool = False, **overrides: object) -> dict:
    """Valid metadata for the tiny graph; ``overrides`` replace top-level fields."""
    meta = {
        "format_version": 1,
        "task": "semantic",
        "class_names": ["road", "car", "sky"],
        "thing_ids": [1],
        "colors": [[128, 64, 128], [0, 0, 142], [70, 130, 180]],
        "input": {
            "name": "image",
            "shape": [1, None, None, 3] if dynamic else [1, HEIGHT, WIDTH, 3],
            "dtype": "uint8",
            "layout": "NHWC",
            "channel_order": "BGR",
            "size": None if dynamic else [HEIGHT, WIDTH],
            **(
                {"resize_policy": "shortest_edge", "min_size": 16, "max_size": 32}
                if dynamic
                else {"resize_policy": "letterbox", "pad_bgr": [104, 116, 124]}
            ),
        },
        "normalization": {"mean": MEAN.tolist(), "std": STD.tolist(), "in_graph": True},
        "precision": "fp32",
        "target": "onnxruntime",
        "opset": 17,
        "source": {"checkpoint_sha256": None, "name": "tiny"},
        "outputs": dict(OUTPUTS),
        "inference": {"object_mask_threshold": 0.8, "overlap_threshold": 0.8, "topk_per_image": 100},
    }
    meta.update(copy.deepcopy(overrides))
    return meta


def tiny_model(dynamic: bool = False) -> onnx.ModelProto:
    """The tiny graph without metadata; H and W are symbolic when ``dynamic``."""
    hw: list[int | str] = ["H", "W"] if dynamic else [HEIGHT, WIDTH]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normalized"]),
        helper.make_node("ArgMax", ["normalized"], ["labels"], axis=3, keepdims=0),
        helper.make_node("ReduceSum", ["normalized", "axes"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["is_positive"]),
        helper.make_node("Cast", ["is_positive"], ["mask"], to=TensorProto.UINT8),
    ]
    initializers = [
        numpy_helper.from_array(MEAN, "mean"),
        numpy_helper.from_array(STD, "std"),
        numpy_helper.from_array(np.array([3], np.int64), "axes"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, *hw, 3])],
        [
            helper.make_tensor_value_info("normalized", TensorProto.FLOAT, [1, *hw, 3]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, [1, *hw]),
            helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, *hw]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="m2f-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_tiny_artifact(path: str | Path, dynamic: bool = False, **overrides: object) -> Path:
    """Write the tiny graph with valid m2f metadata to ``path``."""
    model = tiny_model(dynamic)
    write_metadata(model, tiny_metadata(dynamic, **overrides))
    onnx.save(model, str(path))
    return Path(path)


def reference(image: np.ndarray) -> dict[str, np.ndarray]:
    """What the tiny graph computes, in numpy."""
    normalized = (image.astype(np.float32) - MEAN) / STD
    return {
        "normalized": normalized,
        "labels": normalized.argmax(axis=3).astype(np.int64),
        "mask": (normalized.sum(axis=3) > 0).astype(np.uint8),
    }


def random_image(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """A (1, H, W, 3) uint8 BGR batch."""
    return np.random.default_rng(seed).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
