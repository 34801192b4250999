"""The one seam through which the device-side SDK reaches host code: the compiler and the torch runtime for a
checkpoint given to ``Segmenter``, and the host-side ``m2f`` commands. They are imported by name here, only when
used, so an edge install (sdk + runtimes + one runtime, no torch) works; ``tests/test_import_rules.py`` checks that
no other SDK module names host code, and that every name here is one of ``HOST_MODULES`` or a command."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from runtimes.registry import RUNTIMES

# what Segmenter needs for a checkpoint (.pt): compile it (compile.export) or run it in torch
HOST_MODULES = ("compile.export", "runtimes.torch_backend")

# command -> (entry point "module:function" taking argv, one-line help, pip extra it needs)
HOST_COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": ("train.cli:convert_main", "official detectron2 / HF checkpoint -> our .pt format", "train"),
    "train": ("train.cli:train_main", "train Mask2Former from a config (torchrun for several processes)", "train"),
    "eval": ("train.cli:eval_main", "metrics (mIoU / PQ / AP) of a checkpoint on a dataset", "train"),
    "cross-validate": (
        "train.cli:cross_validate_main",
        "leave-one-sequence-out training and scoring (honest validation on video datasets)",
        "train",
    ),
    "export": ("compile.cli:export_main", "checkpoint -> verified ONNX artifact per target and precision", "train"),
    "benchmark": (
        "benchmarks.cli:benchmark_main",
        "latency / memory / accuracy per target x precision; `family`: the named models' speed/accuracy chart",
        "train",
    ),
    # device-side, but with its own parser: a street clip through the packaged model, then the per-target table
    "demo": ("sdk.demo:demo_main", "stream a street clip through the default model; per-target table", "openvino"),
}


def compiler() -> ModuleType:
    """``compile.export``: compiles a checkpoint given to ``Segmenter`` (or builds its torch reference model)."""
    return _host_module("compile.export")


def torch_runtime() -> ModuleType:
    """``runtimes.torch_backend``: runs a checkpoint in torch (the ``torch`` profile)."""
    return _host_module("runtimes.torch_backend")


def _host_module(name: str) -> ModuleType:
    """A module of ``HOST_MODULES``; ImportError saying what to install, or to pass an artifact."""
    assert name in HOST_MODULES, name
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"using a checkpoint needs the host extras ({RUNTIMES['torch'].install_hint}): {err}; "
            "or pass an artifact made with `m2f export`"
        ) from err


def run_host_command(name: str, argv: list[str]) -> int:
    """Run ``m2f NAME argv`` from ``HOST_COMMANDS``; 2 with a message when its extra is not installed."""
    target, _, extra = HOST_COMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        print(f"m2f {name} needs the [{extra}] extra (pip install 'm2f-edge[{extra}]'): {err}", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(argv) or 0)
