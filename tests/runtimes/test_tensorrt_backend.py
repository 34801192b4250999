"""runtimes/tensorrt_backend.py: its pure logic everywhere; a real engine only where TensorRT and a GPU are.

Without TensorRT (CI, this host) the tests cover what is ours: the error a missing TensorRT gives, the engine
cache key and paths, dtype mapping, the precision plan, optimisation profiles, finding the plugin op, the order of
the constructor's checks (plugin library, then the GPU) with a stand-in ``tensorrt`` module that only has what
those checks touch. The engine itself is never faked: ``test_engine_*`` skip unless the real thing is here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import runtimes
from plugins.msda import tensorrt_plugin
from runtimes import cuda_memory
from runtimes import tensorrt_backend as trt_backend
from runtimes.artifact import write_metadata
from runtimes.base import DeviceNotAvailable, RuntimeNotAvailable
from runtimes.cache import file_sha256
from runtimes.errors import ArtifactError
from runtimes.tensorrt_build import (
    BuildPlan,
    check_tensorrt_version,
    default_cache_dir,
    device_tag,
    engine_path,
    has_weak_typing,
    numpy_dtype,
    parse_device,
    plan_build,
    profile_shapes,
    timing_cache_path,
    uses_plugin_op,
)
from tests.conftest import REPO_ROOT
from tests.runtimes.tiny_artifact import build_tiny_artifact, tiny_metadata

TENSORRT_INSTALLED = runtimes.available_runtimes()["tensorrt"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("trt") / "tiny.onnx")


@pytest.fixture(scope="module")
def plugin_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid artifact whose graph is one MSDA plugin node (as the TensorRT export writes it)."""
    node = helper.make_node(
        "M2F_MultiscaleDeformableAttn",
        ["value", "shapes", "starts", "locations", "weights"],
        ["out"],
        domain="trt.plugins",
        plugin_version="1",
        plugin_namespace="",
    )
    graph = helper.make_graph(
        [node],
        "msda",
        [
            helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 5, 1, 2]),
            helper.make_tensor_value_info("locations", TensorProto.FLOAT, [1, 3, 1, 1, 2, 2]),
            helper.make_tensor_value_info("weights", TensorProto.FLOAT, [1, 3, 1, 1, 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 2])],
        [
            helper.make_tensor("shapes", TensorProto.INT32, [1, 2], [1, 5]),
            helper.make_tensor("starts", TensorProto.INT32, [1], [0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("trt.plugins", 1)])
    onnx.checker.check_model(model)
    metadata = tiny_metadata(target="tensorrt", outputs={"out": "MSDA output"})
    metadata["input"]["name"] = "value"
    write_metadata(model, metadata)
    path = tmp_path_factory.mktemp("trt_plugin") / "plugin.onnx"
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------------------------- TensorRT missing


@pytest.mark.skipif(TENSORRT_INSTALLED, reason="tensorrt is installed here")
def test_load_backend_without_tensorrt_names_nvidia_index(tiny: Path) -> None:
    with pytest.raises(RuntimeNotAvailable, match=r"NVIDIA's index.*pypi\.nvidia\.com"):
        runtimes.load_backend("tensorrt", tiny)


def test_backend_without_tensorrt_names_nvidia_index(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # blocked, whether installed or not
    with pytest.raises(RuntimeNotAvailable, match=r"NVIDIA's index: pip install tensorrt --extra-index-url"):
        trt_backend.TensorRtBackend(tiny)


def test_module_imports_no_engine_and_no_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import runtimes.tensorrt_backend\n"
        "assert not {'tensorrt', 'pycuda', 'cuda.bindings'} & set(sys.modules)\n"
        "from plugins.msda import tensorrt_plugin as plugin\n"
        "print(plugin.PLUGIN_NAME, plugin.PLUGIN_VERSION)\n"
        "try:\n"
        "    plugin.load_plugin_library('/nonexistent/libm2f_msda_trt.so')\n"
        "except FileNotFoundError as err:\n"
        "    print('missing:', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "M2F_MultiscaleDeformableAttn 1" in done.stdout
    assert f"cmake -S {REPO_ROOT / 'plugins' / 'msda'} -B " in done.stdout  # built into the cache, from the package


# --------------------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("FLOAT", np.float32),
        ("HALF", np.float16),
        ("INT8", np.int8),
        ("UINT8", np.uint8),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("BOOL", np.bool_),
        ("DataType.FLOAT", np.float32),
    ],
)
def test_numpy_dtype_by_trt_name(name: str, dtype: type) -> None:
    assert numpy_dtype(types.SimpleNamespace(name=name)) == np.dtype(dtype)
    assert numpy_dtype(name) == np.dtype(dtype)  # str(trt.DataType.X) is "DataType.X"


@pytest.mark.parametrize("name", ["BF16", "FP8", "INT4"])
def test_numpy_dtype_rejects_types_numpy_lacks(name: str) -> None:
    with pytest.raises(ArtifactError, match=f"{name} input or output, which numpy cannot hold"):
        numpy_dtype(types.SimpleNamespace(name=name))


def test_engine_path_is_keyed_by_artifact_precision_device_and_version(tmp_path: Path, tiny: Path) -> None:
    sha = file_sha256(tiny)
    device = device_tag("NVIDIA Jetson AGX Orin", (8, 7))
    path = engine_path(tmp_path, sha, "fp16", device, "10.3.0")
    # one folder per engine directly under the cache root, the plan always named model.engine
    assert path.parent.parent == tmp_path and path.name == "model.engine"
    assert path == engine_path(tmp_path, sha, "fp16", device, "10.3.0")  # the same inputs find the same plan
    # the folder is a single portable path component: no separators, spaces or other characters to escape
    assert re.fullmatch(r"[A-Za-z0-9._-]+", path.parent.name), path.parent.name
    others = {
        engine_path(tmp_path, sha, "fp32", device, "10.3.0"),
        engine_path(tmp_path, sha, "fp16", device_tag("NVIDIA Jetson AGX Orin", (8, 7), dla_core=0), "10.3.0"),
        engine_path(tmp_path, sha, "fp16", device_tag("NVIDIA H100 80GB HBM3", (9, 0)), "10.3.0"),
        engine_path(tmp_path, sha, "fp16", device, "10.13.3.9"),
        engine_path(tmp_path, "0" * 64, "fp16", device, "10.3.0"),
    }
    assert path not in others and len(others) == 5  # each key part on its own gives another engine
    assert {p.name for p in others} == {"model.engine"} and {p.parent.parent for p in others} == {tmp_path}


def test_device_tag() -> None:
    assert device_tag("Orin", (8, 7)) == "Orin_sm87"
    assert device_tag("Orin", (8, 7), dla_core=1) == "Orin_sm87_dla1"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("M2F_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tensorrt"
    monkeypatch.delenv("M2F_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "m2f" / "tensorrt"


@pytest.mark.parametrize(
    ("version", "major_minor"), [("10.3.0.30", (10, 3)), ("10.13.3.9", (10, 13)), ("11.1.0", (11, 1))]
)
def test_tensorrt_version_gate_accepts_10_and_later(version: str, major_minor: tuple[int, int]) -> None:
    assert check_tensorrt_version(version) == major_minor
    assert has_weak_typing(version) == (major_minor[0] == 10)  # TensorRT 11 builds strongly typed networks only


@pytest.mark.parametrize("version", ["8.6.2.3", "8.5.2", "7.1.3"])
def test_tensorrt_version_gate_names_jetpack(version: str) -> None:
    with pytest.raises(RuntimeNotAvailable, match=r"needs TensorRT >= 10 \(JetPack >= 6\.1\); this is TensorRT "):
        check_tensorrt_version(version)
    with pytest.raises(RuntimeNotAvailable, match="--system-site-packages"):
        check_tensorrt_version(version)


def test_tensorrt_version_gate_rejects_unreadable_versions() -> None:
    with pytest.raises(RuntimeNotAvailable, match="cannot read the TensorRT version"):
        check_tensorrt_version("unknown")


def test_backend_refuses_tensorrt_8(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JetPack 6.0's TensorRT 8.6 (a module object whose only role is its version string) fails at the gate."""
    _stand_in_tensorrt(monkeypatch).__version__ = "8.6.2.3"
    with pytest.raises(RuntimeNotAvailable, match=r"JetPack >= 6\.1"):
        trt_backend.TensorRtBackend(tiny)


def test_timing_cache_sits_beside_the_engine_cache(tmp_path: Path, tiny: Path) -> None:
    device = device_tag("NVIDIA Jetson AGX Orin", (8, 7))
    cache = timing_cache_path(tmp_path, device, "10.3.0")
    engine = engine_path(tmp_path, file_sha256(tiny), "fp16", device, "10.3.0")
    assert cache.is_relative_to(tmp_path) and not cache.is_relative_to(engine.parent)  # shared by every artifact
    assert cache == timing_cache_path(tmp_path, device, "10.3.0")
    assert cache != timing_cache_path(tmp_path, device, "10.3.1")  # a cache is valid for one TensorRT version
    assert cache != timing_cache_path(tmp_path, device_tag("NVIDIA H100", (9, 0)), "10.3.0")  # and one device
    assert re.fullmatch(r"[A-Za-z0-9._-]+", cache.name)


@pytest.mark.parametrize(
    ("precision", "artifact", "weak", "dla", "plan"),
    [
        ("fp32", "fp32", True, False, BuildPlan(True, (), ("TF32",))),
        ("fp16", "fp16", True, False, BuildPlan(True, ())),  # the fp16 graph as it is
        ("fp16", "fp16", True, True, BuildPlan(True, ("GPU_FALLBACK",))),  # DLA, MSDA falls back to the GPU
        ("int8", "int8", True, False, BuildPlan(True, ())),  # ModelOpt Q/DQ graph
        ("int8", "int8", False, False, BuildPlan(True, ())),  # TensorRT 11
        ("fp16", "fp32", True, False, BuildPlan(False, ("FP16",))),  # TensorRT 10 weak typing
        ("fp16", "fp32", True, True, BuildPlan(False, ("FP16", "GPU_FALLBACK"))),
        ("bf16", "bf16", True, False, BuildPlan(False, ("BF16",))),  # a bf16 artifact is an fp32 graph
        ("fp32", "bf16", True, False, BuildPlan(True, (), ("TF32",))),
    ],
)
def test_plan_build(precision: str, artifact: str, weak: bool, dla: bool, plan: BuildPlan) -> None:
    assert plan_build(precision, artifact, weak_typing=weak, dla=dla) == plan


def test_plan_build_weakly_typed_int8_when_asked() -> None:
    assert plan_build("int8", "int8", weak_typing=True, strongly_typed=False) == BuildPlan(False, ("INT8", "FP16"))


def test_plan_build_errors() -> None:
    with pytest.raises(ArtifactError, match=r"Q/DQ artifact.*ModelOpt"):
        plan_build("int8", "fp32", weak_typing=True)
    with pytest.raises(ArtifactError, match=r"export the artifact at fp16.*no weak typing"):
        plan_build("fp16", "fp32", weak_typing=False)  # TensorRT 11 has no FP16 flag
    with pytest.raises(ArtifactError, match="export the artifact at fp16"):
        plan_build("fp16", "fp32", weak_typing=True, strongly_typed=True)
    with pytest.raises(ValueError, match="DLA runs fp16 or int8"):
        plan_build("fp32", "fp32", weak_typing=True, dla=True)
    with pytest.raises(ValueError, match="unknown precision"):
        plan_build("fp8", "fp32", weak_typing=True)


def test_profile_shapes_from_resize_policy() -> None:
    meta = tiny_metadata(dynamic=True)  # shortest_edge, min_size 16, max_size 32
    assert profile_shapes((1, -1, -1, 3), meta) == ((1, 32, 32, 3), (1, 16, 16, 3), (1, 32, 32, 3))
    meta["input"].update(min_size=512, max_size=0)  # no cap
    assert profile_shapes((-1, -1, -1, 3), meta) == ((1, 32, 32, 3), (1, 512, 512, 3), (1, 4096, 4096, 3))
    assert profile_shapes((1, 96, 128, 3), tiny_metadata()) == ((1, 96, 128, 3),) * 3
    with pytest.raises(ArtifactError, match="only batch, height and width"):
        profile_shapes((1, 96, 128, -1), meta)


def test_uses_plugin_op(tiny: Path, plugin_artifact: Path) -> None:
    assert uses_plugin_op(plugin_artifact)
    assert not uses_plugin_op(tiny)


@pytest.mark.parametrize(("device", "index"), [("cuda", 0), ("cuda:1", 1), ("CUDA:0", 0), ("gpu", 0)])
def test_parse_device(device: str, index: int) -> None:
    assert parse_device(device) == index


@pytest.mark.parametrize("device", ["cpu", "cuda:x", "npu:0"])
def test_parse_device_rejects(device: str) -> None:
    with pytest.raises(ValueError, match="TensorRT runs on an NVIDIA GPU"):
        parse_device(device)


# --------------------------------------------------------------------------------------------- constructor checks


def _stand_in_tensorrt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A ``tensorrt`` with only what the constructor touches before it needs a GPU (no engine API at all)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.BuilderFlag = types.SimpleNamespace(FP16=1)
    trt.ILogger = type("ILogger", (), {"__init__": lambda self: None})
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def test_unbuilt_plugin_library_names_the_cmake_command(
    plugin_artifact: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _stand_in_tensorrt(monkeypatch)
    monkeypatch.setenv("M2F_MSDA_TRT_PLUGIN", str(tmp_path / "libm2f_msda_trt.so"))
    with pytest.raises(FileNotFoundError, match=r"not built.*cmake -S \S+/plugins/msda -B \S+/tensorrt_plugin"):
        trt_backend.TensorRtBackend(plugin_artifact)


def test_no_gpu_is_device_not_available(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real CUDA binding on a machine without a GPU driver (skips where a GPU is visible)."""
    _stand_in_tensorrt(monkeypatch)
    try:
        cuda_memory.open_device(0).close()
    except RuntimeNotAvailable:
        pytest.skip("no CUDA binding installed")
    except DeviceNotAvailable:
        pass
    else:
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(DeviceNotAvailable, match="no NVIDIA GPU or driver"):
        trt_backend.TensorRtBackend(tiny)


def test_missing_cuda_binding_says_how_to_install(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_tensorrt(monkeypatch)
    monkeypatch.setattr(cuda_memory, "_bindings", {})
    for module in ("cuda", "cuda.bindings", "cuda.bindings.driver", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(RuntimeNotAvailable, match=r"pip install cuda-python.*or pycuda"):
        trt_backend.TensorRtBackend(tiny)


def test_bad_options_fail_before_any_device_work(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_tensorrt(monkeypatch)
    with pytest.raises(ValueError, match="device must be 'cuda'"):
        trt_backend.TensorRtBackend(tiny, device="cpu")
    with pytest.raises(ValueError, match="dla_core must be"):
        trt_backend.TensorRtBackend(tiny, precision="fp16", dla_core=-1)
    with pytest.raises(ArtifactError, match="Q/DQ artifact"):
        trt_backend.TensorRtBackend(tiny, precision="int8")


# --------------------------------------------------------------------------------------------- the real engine


def _engine_requirements() -> None:
    """Skip, saying what is missing, unless TensorRT, a CUDA binding and a GPU are all here."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA's index; JetPack on a Jetson)")
    try:
        cuda_memory.open_device(0).close()
    except (RuntimeNotAvailable, DeviceNotAvailable) as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def tensorrt_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Mask2Former exported for TensorRT, both plugin flavours, panoptic, 96x128."""
    _engine_requirements()
    from tests.compile.test_tensorrt_export import export_tiny_tensorrt

    folder = tmp_path_factory.mktemp("trt_engine")
    return {plugin: export_tiny_tensorrt(folder, plugin) for plugin in ("m2f", "builtin")}


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("plugin", ["m2f", "builtin"])
def test_engine_matches_torch_and_is_cached(
    plugin: str, tensorrt_artifacts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.compile.test_tensorrt_export import torch_outputs

    if plugin == "m2f":
        from plugins.msda.tensorrt_plugin import build_commands, plugin_library_path

        if not plugin_library_path().is_file():
            pytest.skip(f"plugin library not built: {plugin_library_path()} ({build_commands()})")
    artifact = tensorrt_artifacts[plugin]
    image = np.random.default_rng(0).integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    want = torch_outputs(artifact, image)
    with trt_backend.TensorRtBackend(artifact, cache_dir=tmp_path) as backend:
        got = backend.run({"images": image})
        engine = backend.engine_path
    assert engine.is_file() and (engine.parent / "m2f.json").is_file()
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, atol=1e-3, rtol=0, err_msg=name)
    caplog.set_level("INFO", logger="runtimes.tensorrt_backend")
    with trt_backend.TensorRtBackend(artifact, cache_dir=tmp_path) as again:
        np.testing.assert_array_equal(again.run({"images": image})["pred_logits"], got["pred_logits"])
    assert "TensorRT engine from cache" in caplog.text


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_runs_from_several_threads_with_a_context_each(
    tensorrt_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """Four threads, each with its own frames, run one backend at once: each result is its own frame's."""
    artifact = tensorrt_artifacts["builtin"]
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (1, 96, 128, 3), dtype=np.uint8) for _ in range(4)]
    with trt_backend.TensorRtBackend(artifact, cache_dir=tmp_path) as backend:
        alone = [backend.run({"images": f})["pred_logits"] for f in frames]
        results: dict[int, list[np.ndarray]] = {}

        def work(i: int) -> None:
            results[i] = [backend.run({"images": frames[i]})["pred_logits"] for _ in range(5)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(backend._executions) == 5  # the main thread's context and one per worker
        assert backend.timing_cache_path is not None and backend.timing_cache_path.is_file()
    for i, runs in results.items():
        for got in runs:
            np.testing.assert_array_equal(got, alone[i])


def test_status_for_m2f_info(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What `m2f info` says about TensorRT, the CUDA binding and the plugin library, from what is really here."""
    monkeypatch.setenv("M2F_MSDA_TRT_PLUGIN", str(tmp_path / "libm2f_msda_trt.so"))
    status = trt_backend.tensorrt_status()
    assert set(status) == {"trt_backend", "cuda_binding", "trt_plugin"}
    assert status["trt_plugin"].startswith("not built") and tensorrt_plugin.build_commands() in status["trt_plugin"]
    (tmp_path / "libm2f_msda_trt.so").write_bytes(b"")
    assert trt_backend.tensorrt_status()["trt_plugin"] == f"built: {tmp_path / 'libm2f_msda_trt.so'}"
    assert status["cuda_binding"] == cuda_memory.binding_status()
    if not TENSORRT_INSTALLED:
        assert status["trt_backend"].startswith("not installed") and "pypi.nvidia.com" in status["trt_backend"]
    _stand_in_tensorrt(monkeypatch).__version__ = "8.6.2"  # JetPack 6.0's TensorRT, as a version string only
    assert "needs TensorRT >= 10 (JetPack >= 6.1)" in trt_backend.tensorrt_status()["trt_backend"]


def test_backend_options_match_the_constructor() -> None:
    import inspect

    parameters = set(inspect.signature(trt_backend.TensorRtBackend).parameters) - {"artifact"}
    assert parameters == trt_backend.BACKEND_OPTIONS
    assert {"device", "precision", "workspace_mb", "dla_core", "cache_dir", "timing_cache"} <= parameters
