"""One base class for every error the project explains: ``except sdk.M2FError`` catches a bad frame, a damaged
artifact, a missing runtime and a dead stream; and no public exception class of ours is left outside it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import sdk
import sdk.errors
from tests.conftest import REPO_ROOT

PACKAGES = ("sdk", "runtimes", "compile", "benchmarks", "plugins")


def _exception_classes() -> list[tuple[str, str, list[str]]]:
    """(module path, class name, base names) of every class in our packages whose bases name an exception."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = [ast.unparse(b) for b in node.bases]
                    if any(b.endswith(("Error", "Exception", "NotAvailable")) for b in bases):
                        found.append((str(path.relative_to(REPO_ROOT)), node.name, bases))
    return found


def test_every_public_exception_is_an_m2f_error() -> None:
    classes = _exception_classes()
    assert len(classes) >= 15  # the walk finds them (FrameError, ArtifactError, StreamError, ...)
    outside = []
    for path, name, _bases in classes:
        if name.startswith("_"):
            continue  # control flow inside one module, never reaches a user
        module = importlib.import_module(path[:-3].replace("/", "."))
        if not issubclass(getattr(module, name), sdk.M2FError):
            outside.append(f"{path}: {name}")
    assert outside == []


def test_every_public_error_of_the_device_side_is_reachable_as_sdk_name() -> None:
    """What a user can meet from the SDK, the runtimes or a native op library is ``sdk.<Name>``."""
    public = [name for path, name, _ in _exception_classes()
              if not name.startswith("_") and path.startswith(("sdk/", "runtimes/", "plugins/"))]  # fmt: skip
    assert len(public) >= 15
    assert [name for name in public if not hasattr(sdk, name)] == []
    # gathered in one module, which sdk re-exports
    assert sorted(set(public)) == sorted(sdk.errors.__all__)
    assert all(getattr(sdk, name) is getattr(sdk.errors, name) for name in sdk.errors.__all__)


def test_the_sdk_exports_every_error_a_user_meets() -> None:
    for name in ("FrameError", "ArtifactError", "TargetNotAvailable", "RuntimeNotAvailable", "DeviceNotAvailable",
                 "StreamError", "SourceError", "StreamTimeoutError", "StageError", "OutputsError",
                 "BackendInputError"):  # fmt: skip
        assert issubclass(getattr(sdk, name), sdk.M2FError), name
    assert issubclass(sdk.FrameError, ValueError) and issubclass(sdk.StreamTimeoutError, TimeoutError)  # old bases


@pytest.fixture(scope="module")
def segmenter(artifacts: dict[str, Path]) -> sdk.Segmenter:
    with sdk.Segmenter("onnxruntime", model=artifacts["semantic"]) as seg:
        yield seg


@pytest.mark.parametrize("frame", [np.zeros((0, 0, 3), np.uint8), np.zeros((8, 8, 3), np.float64), "frame.png"])
def test_a_bad_frame_is_an_m2f_error(segmenter: sdk.Segmenter, frame: object) -> None:
    with pytest.raises(sdk.M2FError):
        segmenter.predict(frame)


def test_a_damaged_artifact_is_an_m2f_error(artifacts: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.onnx"
    data = artifacts["semantic"].read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(sdk.M2FError, match=r"damaged|truncated|not a|checksum|hash"):
        sdk.Segmenter("onnxruntime", model=damaged)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_a_missing_runtime_is_an_m2f_error(artifacts: dict[str, Path]) -> None:
    with pytest.raises(sdk.M2FError, match=r"(?i)tensorrt"):
        sdk.Segmenter("tensorrt", model=artifacts["semantic"])


def test_a_dead_stream_is_an_m2f_error(segmenter: sdk.Segmenter) -> None:
    with pytest.raises(sdk.M2FError, match="rtsp://"):
        for _ in segmenter.stream("rtsp://127.0.0.1:9/none", open_timeout_s=2.0, reconnect=0):
            pass
