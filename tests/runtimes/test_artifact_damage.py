"""A damaged or misplaced artifact is named as such: corrupt/truncated files, directories, engine errors passed on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import runtimes
from runtimes.artifact import read_metadata
from runtimes.artifact_file import _fields, engine_reads, find_damage
from runtimes.errors import ArtifactError
from sdk.model_registry import MODELS_DIR
from sdk.segmenter import Segmenter
from tests.runtimes.tiny_artifact import build_tiny_artifact

BACKENDS = ["onnxruntime", "openvino"]


def _zeroed(source: Path, out: Path, offset: int, length: int) -> Path:
    data = bytearray(source.read_bytes())
    data[offset : offset + length] = bytes(length)
    out.write_bytes(bytes(data))
    return out


def _first_node_offset(path: Path) -> int:
    """Byte offset of the first node message inside the graph (a structural byte, not tensor data)."""
    buf = path.read_bytes()
    graph_start, graph_end = next((s, e) for f, w, s, e in _fields(buf) if f == 7 and w == 2)
    return next(s for f, w, s, e in _fields(buf, graph_start, graph_end) if f == 1 and w == 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zeroed_graph_bytes_are_a_corrupt_artifact_not_a_parser_message(backend, tmp_path):
    good = build_tiny_artifact(tmp_path / "good.onnx")
    assert find_damage(good) is None
    offset = _first_node_offset(good)
    bad = _zeroed(good, tmp_path / "bad.onnx", offset, 8)
    read_metadata(bad)  # the metadata is intact: only the engine's full read can notice
    assert find_damage(bad) == f"field number 0 at byte {offset}, in a node message"
    with pytest.raises(ArtifactError, match=r"bad\.onnx is corrupt or truncated .*copy the file again") as caught:
        runtimes.load_backend(backend, bad)
    assert "can't be parsed" not in str(caught.value) and "INVALID_PROTOBUF" not in str(caught.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packaged_model_zeroed_as_in_the_report(backend, tmp_path):
    """4 KiB of zeros 15 KB into the packaged model: OpenVINO said "Model can't be parsed", ORT "INVALID_PROTOBUF"."""
    source = MODELS_DIR / "default_fp32.onnx"
    bad = _zeroed(source, tmp_path / "default_fp32.onnx", 15_000, 4096)
    with pytest.raises(ArtifactError, match=r"default_fp32\.onnx is corrupt or truncated"):
        runtimes.load_backend(backend, bad)


def test_truncated_artifact(tmp_path):
    good = build_tiny_artifact(tmp_path / "good.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=r"cut\.onnx .*truncated"):
        runtimes.load_backend("onnxruntime", cut)


def test_other_engine_failures_pass_through_unchanged(tmp_path):
    good = build_tiny_artifact(tmp_path / "good.onnx")
    with pytest.raises(RuntimeError, match=r"^out of device memory$"), engine_reads(good, "openvino"):
        raise RuntimeError("out of device memory")


def test_a_directory_named_like_an_artifact(tmp_path):
    folder = tmp_path / "x.onnx"
    folder.mkdir()
    shutil.copy(build_tiny_artifact(tmp_path / "good.onnx"), folder / "model.onnx")
    with pytest.raises(ArtifactError, match=r"x\.onnx is a directory, not an artifact file.*holds model\.onnx"):
        runtimes.load_backend("onnxruntime", folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runtimes.load_backend("onnxruntime", tmp_path / "absent.onnx")


def test_segmenter_names_a_directory_given_as_model(tmp_path):

    (tmp_path / "weights.pt").mkdir()
    with pytest.raises(ValueError, match=r"weights\.pt is a directory: pass an artifact \(\.onnx\) or a checkpoint"):
        Segmenter("onnxruntime", model=tmp_path / "weights.pt")
    (tmp_path / "x.onnx").mkdir()
    with pytest.raises(ArtifactError, match=r"x\.onnx is a directory"):
        Segmenter("onnxruntime", model=tmp_path / "x.onnx")
