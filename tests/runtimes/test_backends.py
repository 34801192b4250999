"""runtimes/: the artifact contract, the Backend input checks, ONNX Runtime / OpenVINO / torch backends."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import runtimes
from runtimes.artifact import read_metadata, validate_metadata, write_metadata
from runtimes.artifact_file import graph_sha256, read_io_names, read_metadata_props
from runtimes.base import BackendInputError, DeviceNotAvailable, RuntimeNotAvailable
from runtimes.cache import file_sha256
from runtimes.errors import ArtifactError
from tests.conftest import REPO_ROOT
from tests.runtimes.tiny_artifact import (
    HEIGHT,
    WIDTH,
    build_tiny_artifact,
    random_image,
    reference,
    tiny_metadata,
    tiny_model,
)

BACKENDS = ["onnxruntime", "openvino"]
TOLERANCE = {"onnxruntime": 1e-6, "openvino": 1e-5}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("artifacts")
    return {
        "static": build_tiny_artifact(folder / "static.onnx"),
        "dynamic": build_tiny_artifact(folder / "dynamic.onnx", dynamic=True),
    }


@pytest.fixture(scope="module", params=BACKENDS)
def static_backend(request: pytest.FixtureRequest, artifacts: dict[str, Path]) -> runtimes.Backend:
    with runtimes.load_backend(request.param, artifacts["static"], threads=1) as backend:
        yield backend


def _assert_matches_reference(outputs: dict[str, np.ndarray], image: np.ndarray, tolerance: float) -> None:
    expected = reference(image)
    assert set(outputs) == set(expected)
    for name, want in expected.items():
        got = outputs[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


# --- the artifact contract ---------------------------------------------------------------------------------------


def test_metadata_round_trip_and_fast_reader_agrees_with_onnx(artifacts: dict[str, Path]) -> None:
    path = artifacts["static"]
    assert read_metadata(path) == {**validate_metadata(tiny_metadata()), "graph_sha256": graph_sha256(path)}
    proto = onnx.load(str(path), load_external_data=False)
    assert read_metadata_props(path) == {p.key: p.value for p in proto.metadata_props}
    document = read_metadata_props(path)["m2f"]
    assert document == json.dumps(json.loads(document), sort_keys=True)  # keys sorted


def test_read_io_names(tmp_path: Path) -> None:
    model = tiny_model()
    model.graph.input.append(onnx.helper.make_tensor_value_info("mean", onnx.TensorProto.FLOAT, [3]))  # IR<4 style
    write_metadata(model, tiny_metadata())
    onnx.save(model, str(tmp_path / "io.onnx"))
    assert read_io_names(tmp_path / "io.onnx") == (["image"], ["normalized", "labels", "mask"])


def test_write_metadata_replaces_and_keeps_other_props() -> None:
    model = tiny_model()
    model.metadata_props.add(key="author", value="tests")
    write_metadata(model, tiny_metadata())
    write_metadata(model, tiny_metadata(precision="bf16"))
    keys = [p.key for p in model.metadata_props]
    assert sorted(keys) == ["author", "m2f"]
    assert json.loads(next(p.value for p in model.metadata_props if p.key == "m2f"))["precision"] == "bf16"


def test_artifact_without_m2f_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    onnx.save(tiny_model(), str(path))
    with pytest.raises(ArtifactError, match=r"not an m2f artifact: export it with `m2f export`"):
        read_metadata(path)
    with pytest.raises(ArtifactError, match="not an m2f artifact"):
        runtimes.load_backend("onnxruntime", path)


def test_artifact_from_a_newer_m2f(tmp_path: Path) -> None:
    model = tiny_model()
    model.metadata_props.add(key="m2f", value=json.dumps(tiny_metadata(format_version=99)))
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match=r"made by a newer m2f \(format 99\); this build reads 1: upgrade m2f"):
        read_metadata(path)


def test_other_format_versions_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="unsupported format_version 0"):
        validate_metadata(tiny_metadata(format_version=0))
    model = tiny_model()
    model.metadata_props.add(key="m2f", value="{not json")
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_metadata(tmp_path / "broken.onnx")


def test_missing_and_invalid_fields_are_named() -> None:
    meta = tiny_metadata()
    del meta["precision"], meta["input"]["size"], meta["source"]
    with pytest.raises(ArtifactError, match=r"missing required fields input\.size, precision, source:"):
        validate_metadata(meta)
    with pytest.raises(ArtifactError, match=r"task='depth' \(expected one of 'semantic'"):
        validate_metadata(tiny_metadata(task="depth"))
    with pytest.raises(ArtifactError, match="colors has 2 entries for 3 class_names"):
        validate_metadata(tiny_metadata(colors=[[0, 0, 0], [1, 1, 1]]))
    with pytest.raises(ArtifactError, match=r"thing_ids \[7\]"):
        validate_metadata(tiny_metadata(thing_ids=[7]))
    with pytest.raises(ArtifactError, match="invalid fields"):
        write_metadata(tiny_model(), tiny_metadata(precision="fp8"))


def test_resize_policy_fields() -> None:
    validate_metadata(tiny_metadata(dynamic=True))
    meta = tiny_metadata()
    del meta["input"]["pad_bgr"]
    with pytest.raises(ArtifactError, match=r"input\.pad_bgr is missing \(resize_policy 'letterbox' needs"):
        validate_metadata(meta)
    meta = tiny_metadata(dynamic=True)
    meta["input"]["min_size"] = 0
    with pytest.raises(ArtifactError, match=r"input\.min_size=0 \(expected a positive int\)"):
        validate_metadata(meta)


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "model.engine"
    path.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        read_metadata(path)


def test_metadata_must_match_the_graph(tmp_path: Path) -> None:
    meta = tiny_metadata()
    meta["input"]["name"] = "pixels"
    path = build_tiny_artifact(tmp_path / "renamed.onnx", input=meta["input"])
    for name in BACKENDS:
        with pytest.raises(ArtifactError, match="'pixels' is not an input of the graph"):
            runtimes.load_backend(name, path)


def test_file_sha256(tmp_path: Path) -> None:
    """Against published SHA-256 test vectors (FIPS 180-2), and across the 1 MiB read chunks."""
    (tmp_path / "abc").write_bytes(b"abc")
    assert file_sha256(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    (tmp_path / "million_a").write_bytes(b"a" * 1_000_000)
    assert file_sha256(tmp_path / "million_a") == ("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")


# --- backends against the numpy reference -----------------------------------------------------------------------


def test_static_backend_matches_numpy(static_backend: runtimes.Backend) -> None:
    spec = static_backend.input_specs["image"]
    assert spec.shape == (1, HEIGHT, WIDTH, 3) and spec.dtype == np.uint8
    assert static_backend.output_names == ["normalized", "labels", "mask"]
    assert static_backend.metadata["task"] == "semantic"
    image = random_image()
    _assert_matches_reference(static_backend.run({"image": image}), image, TOLERANCE[static_backend.name])


@pytest.mark.parametrize("name", BACKENDS)
def test_dynamic_backend_matches_numpy(name: str, artifacts: dict[str, Path]) -> None:
    with runtimes.load_backend(name, artifacts["dynamic"], threads=1) as backend:
        assert backend.input_specs["image"].shape == (1, None, None, 3)
        for height, width in [(5, 7), (16, 9)]:
            image = random_image(height, width, seed=height)
            _assert_matches_reference(backend.run({"image": image}), image, TOLERANCE[name])


def test_backend_says_what_runs_in_our_words(static_backend: runtimes.Backend) -> None:
    """runtime, device and precision are the project's words, whatever the engine calls them ("CPU", "f32")."""
    from runtimes.registry import RUNTIMES
    from runtimes.vocabulary import PRECISIONS

    assert static_backend.runtime == static_backend.name in RUNTIMES
    assert static_backend.device in RUNTIMES[static_backend.runtime].devices
    assert static_backend.precision == "fp32" and static_backend.precision in PRECISIONS
    assert "cpu fp32" in repr(static_backend)


def test_non_contiguous_input_is_accepted(static_backend: runtimes.Backend) -> None:
    wide = random_image(HEIGHT, 2 * WIDTH)
    view = wide[:, :, ::2]
    assert not view.flags.c_contiguous
    _assert_matches_reference(static_backend.run({"image": view}), np.ascontiguousarray(view), 1e-5)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": random_image().astype(np.float32)}, r"input 'image': expected dtype uint8, got float32"),
        ({"image": random_image()[0]}, r"input 'image': expected rank 4 .* got rank 3"),
        ({"image": random_image(HEIGHT + 1, WIDTH)}, r"input 'image': expected shape .* \(dim 1 differs\)"),
        ({}, r"missing input\(s\) 'image'"),
        ({"image": random_image(), "depth": random_image()}, r"unknown input\(s\) 'depth'.*'image' uint8"),
        ({"image": random_image().tolist()}, r"input 'image': expected a numpy array"),
    ],
    ids=["dtype", "rank", "static-dim", "missing", "extra", "not-array"],
)
def test_bad_inputs_raise_backend_input_error(static_backend: runtimes.Backend, inputs: dict, message: str) -> None:
    with pytest.raises(BackendInputError, match=message):
        static_backend.run(inputs)


def test_run_takes_a_dict(static_backend: runtimes.Backend) -> None:
    with pytest.raises(BackendInputError, match=r"run\(\) takes a dict .* inputs: 'image' uint8 \(1, 8, 12, 3\)"):
        static_backend.run(random_image())


def test_closed_backend_refuses_to_run(artifacts: dict[str, Path]) -> None:
    with runtimes.load_backend("onnxruntime", artifacts["static"]) as backend:
        backend.run({"image": random_image()})
    with pytest.raises(RuntimeError, match="closed"):
        backend.run({"image": random_image()})


# --- the registry -----------------------------------------------------------------------------------------------


def test_available_runtimes_follow_what_imports() -> None:
    """Each runtime is available exactly when its package imports here; blocking one makes only it unavailable."""
    code = (
        "import importlib, json, sys\n"
        "if sys.argv[1]: sys.modules[sys.argv[1]] = None\n"
        "import runtimes\n"
        "def imports(name):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        return True\n"
        "    except ImportError:\n"
        "        return False\n"
        "print(json.dumps([runtimes.available_runtimes(), {n: imports(n) for n in ('onnxruntime', 'openvino',"
        " 'tensorrt', 'torch')}]))\n"
    )

    def run(blocked: str) -> tuple[dict, dict]:
        done = subprocess.run([sys.executable, "-c", code, blocked], cwd=REPO_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return tuple(json.loads(done.stdout))

    available, imports = run("")
    assert available == imports
    assert available["onnxruntime"] and available["openvino"]  # this project's CI installs both
    blocked, _ = run("openvino")
    assert blocked == {**available, "openvino": False}


def test_tensorrt_missing_names_nvidia_index(artifacts: dict[str, Path]) -> None:
    if runtimes.available_runtimes()["tensorrt"]:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(RuntimeNotAvailable, match=r"NVIDIA's index: pip install tensorrt --extra-index-url"):
        runtimes.load_backend("tensorrt", artifacts["static"])


def test_missing_backend_module_is_not_available(monkeypatch: pytest.MonkeyPatch, artifacts: dict[str, Path]) -> None:
    import dataclasses

    spec = runtimes.RUNTIMES["tensorrt"]  # the package is there (numpy), the module not
    fake = dataclasses.replace(spec, backend="runtimes.no_such_backend:Nothing", package="numpy")
    monkeypatch.setitem(runtimes.RUNTIMES, "tensorrt", fake)
    assert runtimes.available_runtimes()["tensorrt"] is False
    with pytest.raises(RuntimeNotAvailable, match=r"runtimes\.no_such_backend"):
        runtimes.load_backend("tensorrt", artifacts["static"])


def test_unknown_runtime_lists_the_known_ones(artifacts: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="known runtimes: onnxruntime, openvino, tensorrt, torch"):
        runtimes.load_backend("tflite", artifacts["static"])


def test_onnxruntime_cuda_without_gpu_build_names_onnxruntime_gpu(artifacts: dict[str, Path]) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(RuntimeNotAvailable, match="pip install onnxruntime-gpu"):
        runtimes.load_backend("onnxruntime", artifacts["static"], device="cuda")


def test_onnxruntime_session_options(artifacts: dict[str, Path]) -> None:
    with runtimes.load_backend("onnxruntime", artifacts["static"], threads=1, enable_mem_pattern=False) as backend:
        assert backend.providers == ["CPUExecutionProvider"]
    with pytest.raises(TypeError, match=r"unknown onnxruntime\.SessionOptions attribute 'turbo'"):
        runtimes.load_backend("onnxruntime", artifacts["static"], turbo=True)


# --- OpenVINO specifics -----------------------------------------------------------------------------------------


def _cpu_has(capability: str) -> bool:
    import openvino

    return capability in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_openvino_bf16(artifacts: dict[str, Path]) -> None:
    if not _cpu_has("BF16"):
        pytest.skip("this CPU has no BF16")
    image = random_image()
    with runtimes.load_backend("openvino", artifacts["static"], precision="bf16", threads=1) as backend:
        assert (backend.inference_precision, backend.precision) == ("bf16", "bf16")
        outputs = backend.run({"image": image})
    expected = reference(image)
    assert outputs["normalized"].dtype == np.float32  # the graph's output type, whatever the inner precision
    np.testing.assert_allclose(outputs["normalized"], expected["normalized"], rtol=1e-2, atol=1e-2)
    assert outputs["labels"].dtype == np.int64 and outputs["mask"].dtype == np.uint8


def test_openvino_precision_from_metadata(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from runtimes.openvino_backend import OpenVinoBackend

    backend = OpenVinoBackend(build_tiny_artifact(tmp_path / "bf16.onnx", precision="bf16"), threads=1)

    class NoBf16Core:
        def get_property(self, device: str, name: str) -> list[str]:
            return ["FP32", "INT8"]

    with caplog.at_level(logging.WARNING):
        assert backend._inference_precision(NoBf16Core(), "CPU", None) == "f32"  # from metadata: fall back
    assert "no BF16 support" in caplog.text
    with pytest.raises(DeviceNotAvailable, match="no BF16 support"):
        backend._inference_precision(NoBf16Core(), "CPU", "bf16")  # asked for: refuse
    assert backend._inference_precision(NoBf16Core(), "CPU", "int8") == "f32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        backend._inference_precision(NoBf16Core(), "CPU", "fp8")


@pytest.mark.parametrize(
    ("cpu_flags", "verified", "expected"),
    [
        ("avx512f avx512_bf16 avx512_vnni", True, "bf16"),  # gate verified, native bf16: float ops in bf16
        ("avx512f avx512_vnni", True, "f32"),  # no native bf16 on this CPU
        ("avx512f avx512_bf16 avx512_vnni", False, "f32"),  # never verified in bf16
    ],
)
def test_openvino_int8_float_ops_run_in_bf16_only_where_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_flags: str, verified: bool, expected: str
) -> None:
    from runtimes.openvino_backend import OpenVinoBackend

    monkeypatch.setenv("M2F_CPU_FLAGS", cpu_flags)
    record = {"verified_precisions": {"bf16": {"runtime": "openvino", "label_agreement": 0.997}}} if verified else {}
    path = build_tiny_artifact(tmp_path / "int8.onnx", precision="int8", **record)
    backend = OpenVinoBackend(path, threads=1)

    class Bf16Core:
        def get_property(self, device: str, name: str) -> list[str]:
            return ["FP32", "BF16", "INT8"]

    assert backend._inference_precision(Bf16Core(), "CPU", None) == expected
    assert backend._inference_precision(Bf16Core(), "CPU", "int8") == expected  # asking for int8 is the same
    assert backend._inference_precision(Bf16Core(), "CPU", "fp32") == "f32"  # the way to f32 float ops
    assert backend.precision == "int8"


def test_openvino_fp32_artifact_runs_in_f32(artifacts: dict[str, Path]) -> None:
    """OpenVINO's CPU default is bf16 where the CPU has it; an fp32 artifact must not get it silently."""
    with runtimes.load_backend("openvino", artifacts["static"], threads=1) as backend:
        assert backend.inference_precision == "f32"


def test_openvino_cache_dir_is_populated(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    from runtimes.openvino_backend import openvino_version

    image = random_image()
    with runtimes.load_backend("openvino", artifacts["static"], cache_dir=tmp_path, threads=1) as backend:
        first = backend.run({"image": image})
        folder = backend.cache_dir
    sha = file_sha256(artifacts["static"])
    assert folder.parent == tmp_path
    assert folder.name == f"{sha[:16]}-openvino-f32-CPU-{openvino_version()}"
    assert json.loads((folder / "m2f.json").read_text()) == read_metadata(artifacts["static"])
    blobs = [p for p in folder.iterdir() if p.name != "m2f.json"]
    assert blobs, "OpenVINO wrote nothing to its cache"
    with runtimes.load_backend("openvino", artifacts["static"], cache_dir=tmp_path, threads=1) as backend:
        np.testing.assert_array_equal(backend.run({"image": image})["normalized"], first["normalized"])
    assert sorted(folder.iterdir()) == sorted([*blobs, folder / "m2f.json"])  # a cache hit writes no new blob


def test_openvino_keeps_onnx_output_names(tmp_path: Path) -> None:
    """OpenVINO's "mask" port is also named "is_positive" (Cast fused into Greater): the backend says "mask"."""
    path = build_tiny_artifact(tmp_path / "subset.onnx", outputs={"labels": "argmax"})
    with runtimes.load_backend("openvino", path, threads=1) as backend:
        assert backend.output_names == ["normalized", "labels", "mask"]


def test_openvino_unknown_device(artifacts: dict[str, Path]) -> None:
    import openvino

    if "NPU" in openvino.Core().available_devices:
        pytest.skip("this machine has an NPU")
    with pytest.raises(DeviceNotAvailable, match="no NPU device"):
        runtimes.load_backend("openvino", artifacts["static"], device="NPU")


# --- torch --------------------------------------------------------------------------------------------------------


def test_torch_backend_matches_onnxruntime(artifacts: dict[str, Path]) -> None:
    torch = pytest.importorskip("torch")
    from runtimes.torch_backend import TorchBackend

    class Tiny(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            normalized = (image.float() - torch.tensor([103.5, 116.25, 123.75])) / torch.tensor(
                [57.375, 57.125, 58.375]
            )
            return normalized, normalized.argmax(dim=3), (normalized.sum(dim=3) > 0).to(torch.uint8)

    metadata = read_metadata(artifacts["static"])
    backend = TorchBackend.from_module(Tiny(), metadata, ["image"], ["normalized", "labels", "mask"])
    image = random_image()
    with runtimes.load_backend("onnxruntime", artifacts["static"]) as onnx_backend:
        expected = onnx_backend.run({"image": image})
    got = backend.run({"image": image})
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-6, err_msg=name)
    with pytest.raises(BackendInputError, match="expected dtype uint8"):
        backend.run({"image": image.astype(np.float32)})
    with pytest.raises(TypeError, match="from_module"):
        runtimes.load_backend("torch", artifacts["static"])


# --- an edge install: torch blocked ------------------------------------------------------------------------------


def test_runtimes_work_with_torch_blocked(artifacts: dict[str, Path]) -> None:
    code = f"""
import sys
sys.modules["torch"] = None
import numpy as np
import runtimes
assert not any(m in sys.modules for m in ("onnxruntime", "openvino", "tensorrt")), "import runtimes is not lazy"
import runtimes.onnxruntime_backend, runtimes.openvino_backend
assert runtimes.available_runtimes()["torch"] is False
image = np.random.default_rng(0).integers(0, 256, (1, {HEIGHT}, {WIDTH}, 3), dtype=np.uint8)
for name in ("onnxruntime", "openvino"):
    with runtimes.load_backend(name, {str(artifacts["static"])!r}, threads=1) as backend:
        outputs = backend.run({{"image": image}})
    print(name, {{k: (v.dtype.name, v.shape) for k, v in outputs.items()}})
try:
    runtimes.load_backend("torch", None)
except runtimes.RuntimeNotAvailable as err:
    print("torch:", err)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime {'normalized': ('float32', (1, 8, 12, 3))" in done.stdout
    assert "openvino {'normalized'" in done.stdout
    assert "pip install 'm2f-edge[train]'" in done.stdout


def test_one_schema_for_writer_validator_and_description() -> None:
    """ArtifactMetadata is the schema: the packaged artifacts (written by compile.export and compile.tensorrt_rules)
    hold no key it does not declare, an unknown key survives a round trip, and the description lists every field."""
    from runtimes.artifact import ArtifactMetadata, describe_schema
    from sdk.artifact_choice import packaged_artifacts

    for path, meta in packaged_artifacts():
        parsed = ArtifactMetadata.from_dict(meta)
        assert parsed.extra == {}, (path, parsed.extra)
        assert parsed.to_dict() == meta
    future = tiny_metadata(added_later={"x": 1})
    future["input"]["new_hint"] = "nearest"
    parsed = ArtifactMetadata.from_dict(future)
    assert parsed.extra == {"added_later": {"x": 1}} and parsed.input.extra == {"new_hint": "nearest"}
    assert validate_metadata(future) == future  # kept at every level, nothing lost
    described = "\n".join(describe_schema())
    for name in ("task", "input", "    resize_policy", "    pad_bgr (optional)", "rewrites (optional)"):
        assert f"\n{name}" in f"\n{described}", name
    with pytest.raises(TypeError):
        ArtifactMetadata(taks="semantic")  # a writer's typo fails where it is written
