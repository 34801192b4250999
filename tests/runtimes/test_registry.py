"""runtimes.registry: the one table of runtimes and targets, consistent with itself and the only place its facts
live; options a runtime does not accept raise; artifacts go only to runtimes that can open them."""

from __future__ import annotations

import inspect
import subprocess
from pathlib import Path

import pytest

import runtimes
from runtimes.errors import ArtifactError
from runtimes.registry import (
    ARTIFACT_TARGETS,
    PRECISIONS,
    RUNTIMES,
    TARGETS,
    check_options,
    export_precisions,
)
from runtimes.registry import ARTIFACT_TARGETS as ARTIFACT_SCHEMA_TARGETS
from tests.conftest import REPO_ROOT
from tests.runtimes.tiny_artifact import build_tiny_artifact


def test_rows_are_consistent() -> None:
    for name, spec in RUNTIMES.items():
        assert spec.name == name and spec.backend.count(":") == 1
        assert "device" in spec.options, name  # every backend takes the target's device
        assert set(spec.precisions) <= set(PRECISIONS) and spec.devices
        for device, precisions in spec.device_precisions.items():
            assert device in spec.devices and set(precisions) <= set(spec.precisions)
        assert set(spec.artifact_targets) <= set(ARTIFACT_TARGETS)
    for name, target in TARGETS.items():
        assert target.name == name and target.runtimes and target.precision in PRECISIONS
        for runtime in target.runtimes:
            assert target.device in RUNTIMES[runtime].devices, (name, runtime)
        for runtime, options in target.options.items():
            assert runtime in target.runtimes, (name, runtime)
            check_options(runtime, options)  # a profile only sets what its runtime accepts
    assert ARTIFACT_TARGETS == ("onnxruntime", "openvino", "tensorrt") == ARTIFACT_SCHEMA_TARGETS


def test_targets_of_this_round() -> None:
    """cuda: TensorRT, else torch on CUDA, else ONNX Runtime's CUDA provider; jetson: TensorRT, else torch."""
    assert TARGETS["cuda"].runtimes == ("tensorrt", "torch", "onnxruntime") and TARGETS["cuda"].device == "cuda"
    assert TARGETS["jetson"].runtimes == ("tensorrt", "torch") and TARGETS["jetson"].precision == "fp16"
    assert TARGETS["cpu"].runtimes == ("openvino", "onnxruntime")
    assert TARGETS["jetson"].options_for("torch") == {"device": "cuda"}  # CUDA graphs: the backend's default there
    assert TARGETS["jetson"].options_for("tensorrt") == {"device": "cuda", "workspace_mb": 1024, "dla_core": None}


def test_unknown_option_raises_naming_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"'openvino' does not take option\(s\) turbo; it accepts cache_dir, device"):
        check_options("openvino", {"device": "cpu", "turbo": True})
    with pytest.raises(ValueError, match=r"'tensorrt' does not take option\(s\) cuda_graph, threads; it accepts"):
        check_options("tensorrt", {"threads": 2, "cuda_graph": True})
    with pytest.raises(ValueError, match="known runtimes: onnxruntime, openvino, tensorrt, torch"):
        check_options("tflite", {})


def test_load_backend_refuses_an_unknown_option(tmp_path: Path) -> None:
    path = build_tiny_artifact(tmp_path / "tiny.onnx")
    with pytest.raises(ValueError, match=r"does not take option\(s\) workspace_mb; it accepts .*performance_mode"):
        runtimes.load_backend("openvino", path, workspace_mb=512)


def test_options_rows_match_the_backend_constructors() -> None:
    """What the table says a backend accepts is what its constructor takes (for the engines installed here)."""
    from runtimes.onnxruntime_backend import OnnxRuntimeBackend
    from runtimes.openvino_backend import OpenVinoBackend

    for name, cls in (("onnxruntime", OnnxRuntimeBackend), ("openvino", OpenVinoBackend)):
        params = inspect.signature(cls.__init__).parameters
        named = {p for p, v in params.items() if v.kind is v.POSITIONAL_OR_KEYWORD} - {"self", "path"}
        assert named == set(RUNTIMES[name].options), name


def test_export_refuses_what_the_table_does_not_list(tmp_path: Path) -> None:
    """The export checks a request against the table before any work (no checkpoint is read)."""
    pytest.importorskip("torch")
    from compile.export import export

    missing = tmp_path / "never_read.pt"
    with pytest.raises(ValueError, match="onnxruntime does not take fp16; it takes fp32, int8"):
        export(missing, "onnxruntime", "fp16", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="ModelOpt"):  # tensorrt int8: how to make it, not just "no"
        export(missing, "tensorrt", "int8", tmp_path / "x.onnx", input_size=(64, 64))
    assert "int8" not in export_precisions("tensorrt")
    with pytest.raises(ValueError, match="unknown target 'torch'"):
        export(missing, "torch", "fp32", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="unknown artifact target 'torch'"):
        export_precisions("torch")


def test_an_artifact_goes_only_to_runtimes_that_open_it(tmp_path: Path) -> None:
    plugin_graph = build_tiny_artifact(tmp_path / "trt.onnx", target="tensorrt")
    with pytest.raises(ArtifactError, match=r"compiled for tensorrt, which runtime 'onnxruntime' cannot run: open it"):
        runtimes.load_backend("onnxruntime", plugin_graph)
    openvino_artifact = build_tiny_artifact(tmp_path / "ov.onnx", target="openvino")
    with runtimes.load_backend("onnxruntime", openvino_artifact) as backend:  # standard ops: ORT runs it
        assert backend.metadata["target"] == "openvino"


def _files_with(fact: str) -> list[str]:
    done = subprocess.run(
        ["git", "grep", "-l", "-F", fact, "--", "*.py", ":!tests"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return done.stdout.split()


def test_each_fact_lives_in_the_registry_only() -> None:
    """`git grep` finds each runtime's backend and install hint, and every row, in one module (a backend
    module's own import error may also say how to install its engine: it is raised when imported directly)."""
    for spec in RUNTIMES.values():
        assert _files_with(spec.backend) == ["runtimes/registry.py"], spec.backend
        own_module = spec.module.replace(".", "/") + ".py"
        assert set(_files_with(spec.install_hint)) - {own_module} == {"runtimes/registry.py"}, spec.install_hint
    for row in ("RuntimeSpec(", "TargetSpec("):  # rows are written nowhere else
        assert _files_with(row) == ["runtimes/registry.py"], row
    for gone in ("RUNTIME_PACKAGES", "_runtime_options", "GATE_RUNTIME", "LABELS = {"):  # the old copies
        assert _files_with(gone) == [], gone
    assert _files_with('"CUDAExecutionProvider", "CPUExecutionProvider"') == ["runtimes/onnxruntime_backend.py"]


def test_device_unavailable_asks_the_engine() -> None:
    import onnxruntime

    assert runtimes.device_unavailable("onnxruntime", "cpu") is None
    assert runtimes.device_unavailable("openvino", "cuda") == "runtime 'openvino' does not run on cuda (it runs on cpu)"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # this CPU-only build
        assert "onnxruntime has no CUDAExecutionProvider" in runtimes.device_unavailable("onnxruntime", "cuda")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert "sees no CUDA GPU" in runtimes.device_unavailable("torch", "cuda")
