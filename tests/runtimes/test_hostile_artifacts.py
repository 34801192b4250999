"""Artifacts from strangers: an engine is handed only what was exported, and reads no file but its own.

External data outside the artifact's folder, metadata of absurd size, nesting or types, a flipped bit in a weight
and graphs nested without end are each an ``ArtifactError`` naming the file, on every runtime here; no native
library is loaded from a path an artifact names.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtimes import load_backend
from runtimes.artifact import read_metadata, write_metadata
from runtimes.artifact_file import graph_sha256, verify_artifact
from runtimes.errors import ArtifactError
from tests.conftest import REPO_ROOT
from tests.runtimes.tiny_artifact import build_tiny_artifact, random_image, reference, tiny_metadata, tiny_model

RUNTIMES = ["onnxruntime", "openvino"]


def _with_external_mean(path: Path, location: str, data_file: Path) -> Path:
    """The tiny artifact whose ``mean`` initializer lives in ``data_file``, named in the graph as ``location``."""
    model = tiny_model()
    mean = next(t for t in model.graph.initializer if t.name == "mean")
    data_file.write_bytes(mean.raw_data or np.array(mean.float_data, np.float32).tobytes())
    del mean.float_data[:]
    mean.ClearField("raw_data")
    mean.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(data_file.stat().st_size))):
        entry = mean.external_data.add()
        entry.key, entry.value = key, value
    write_metadata(model, tiny_metadata())
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_external_data_beside_the_artifact_runs(tmp_path: Path, runtime: str) -> None:
    path = _with_external_mean(tmp_path / "a.onnx", "weights.bin", tmp_path / "weights.bin")
    backend = load_backend(runtime, path)
    image = random_image()
    np.testing.assert_array_equal(backend.run({"image": image})["labels"], reference(image)["labels"])


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, runtime: str, how: str) -> None:
    folder = tmp_path / "artifact"
    folder.mkdir()
    secret = tmp_path / "secret.bin"  # stands for /etc/shadow, ~/.ssh/id_rsa, ...
    location = {"parent": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[how]
    path = _with_external_mean(folder / "a.onnx", location, secret)
    if how == "symlink":
        os.symlink(secret, folder / "link.bin")
    with pytest.raises(ArtifactError, match=r"points outside the artifact's folder"):
        load_backend(runtime, path)


def test_missing_external_data_is_named(tmp_path: Path) -> None:
    path = _with_external_mean(tmp_path / "a.onnx", "weights.bin", tmp_path / "weights.bin")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match=r"external data file 'weights.bin' is missing"):
        verify_artifact(path)


def _with_document(path: Path, document: str) -> Path:
    model = tiny_model()
    model.metadata_props.add(key="m2f", value=document)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("document", "said"),
    [
        (json.dumps({**tiny_metadata(), "padding": "x" * (5 << 20)}), r"more than any model's"),
        ("[" * 100_000 + "]" * 100_000, r"not valid JSON"),
        ("[1, 2, 3]", r"a JSON list, not an object"),
        (json.dumps(tiny_metadata(class_names=list(range(200_000)))), r"class_names=\[0, 1, 2, "),
        (json.dumps(tiny_metadata(colors="red" * 100_000)), r"colors='redred"),
        (json.dumps(tiny_metadata(input={"name": {"deep": [[[[1]]]]}})), r"input"),
        (json.dumps(tiny_metadata(format_version=1e308)), r"format_version"),
    ],
)
def test_absurd_metadata_is_refused_briefly(tmp_path: Path, document: str, said: str) -> None:
    path = _with_document(tmp_path / "a.onnx", document)
    with pytest.raises(ArtifactError, match=said) as caught:
        read_metadata(path)
    assert len(str(caught.value)) < 1500, str(caught.value)[:3000]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_flipped_bit_in_a_weight_is_refused(tmp_path: Path, runtime: str) -> None:
    path = build_tiny_artifact(tmp_path / "a.onnx")
    data = bytearray(path.read_bytes())
    mean = np.array([103.5, 116.25, 123.75], np.float32).tobytes()
    at = bytes(data).index(mean)
    data[at + 5] ^= 0x10  # 116.25 becomes another float: the graph still parses and runs
    damaged = tmp_path / "flipped.onnx"
    damaged.write_bytes(bytes(data))
    assert read_metadata(damaged)["graph_sha256"] == graph_sha256(path) != graph_sha256(damaged)
    with pytest.raises(ArtifactError, match=r"graph's SHA-256 differs"):
        load_backend(runtime, damaged)


def test_the_digest_covers_the_graph_as_saved(tmp_path: Path) -> None:
    """write_metadata's digest of the in-memory graph equals the digest of the bytes onnx.save wrote."""
    path = build_tiny_artifact(tmp_path / "a.onnx")
    assert read_metadata(path)["graph_sha256"] == graph_sha256(path)
    verify_artifact(path)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_graphs_nested_without_end_are_damage_not_a_crash(tmp_path: Path) -> None:
    """A node whose attribute holds a graph whose node holds a graph ... 5000 deep: a walk that recursed without
    a bound would crash the interpreter."""
    graph = b""
    for _ in range(5000):  # GraphProto.node (1) -> NodeProto.attribute (5) -> AttributeProto.g (6) -> GraphProto
        graph = _field(1, _field(5, _field(6, graph)))
    model = tiny_model()
    model.metadata_props.add(key="m2f", value=json.dumps(tiny_metadata()))
    path = tmp_path / "deep.onnx"
    path.write_bytes(model.SerializeToString() + _field(7, graph))  # a second graph field merges into the first
    with pytest.raises(ArtifactError, match=r"nested deeper than any model"):
        verify_artifact(path)


# ---------------------------------------------------------------------------------------------------------------
# native libraries: only from our build folder, the cache, an option or an environment variable

# every call that loads native code into the process, and the function it is allowed in (its path comes from the
# package's build location or cache, the backend's own option, or an environment variable; never an artifact)
NATIVE_LOADS = {
    ("plugins/msda/tensorrt_plugin.py", "load_plugin_library", "CDLL"),  # option, $M2F_MSDA_TRT_PLUGIN, cache, build/
    ("compile/tensorrt_export.py", "_extend_options", "register_custom_ops_library"),  # onnxruntime-extensions'
    ("plugins/msda/extension.py", "_build", "cpp_extension.load"),  # compiled into $M2F_CACHE from our sources
    # the OpenVINO MSDA extension: $M2F_MSDA_OPENVINO_EXTENSION or the cache's build of our sources
    ("plugins/msda/openvino_extension.py", "library_info", "CDLL"),
    ("runtimes/openvino_backend.py", "openvino_core", "add_extension"),
    ("benchmarks/msda_openvino.py", "main", "add_extension"),
}
_LOADERS = ("CDLL", "LoadLibrary", "add_extension", "register_custom_ops_library", "load_library", "dlopen")


def _native_loads() -> set[tuple[str, str, str]]:
    found = set()
    for package in ("plugins", "runtimes", "sdk", "compile", "train", "benchmarks"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(function):
                    if isinstance(node, ast.Call):
                        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                        if ast.unparse(node.func).endswith("cpp_extension.load"):
                            name = "cpp_extension.load"
                        if name in (*_LOADERS, "cpp_extension.load"):
                            found.add((str(path.relative_to(REPO_ROOT)), function.name, name))
    return found


def test_native_libraries_are_loaded_only_where_reviewed() -> None:
    """A new place that loads a shared library fails here until it is reviewed: its path must never come from
    an artifact's metadata or graph."""
    assert _native_loads() == NATIVE_LOADS


def test_the_plugin_library_path_ignores_the_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugins.msda.tensorrt_plugin import ENV_PATH, plugin_library_path

    monkeypatch.delenv(ENV_PATH, raising=False)
    default = plugin_library_path()
    build_tiny_artifact(tmp_path / "a.onnx", plugin_library=str(tmp_path / "evil.so"))
    assert read_metadata(tmp_path / "a.onnx")["plugin_library"].endswith("evil.so")  # kept, as unknown keys are
    assert plugin_library_path() == default
    monkeypatch.setenv(ENV_PATH, str(tmp_path / "mine.so"))
    assert plugin_library_path() == tmp_path / "mine.so"
