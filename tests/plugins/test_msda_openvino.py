"""The fused CPU kernel of multi-scale deformable attention as an OpenVINO extension, against the pure-torch oracle.

The extension is built by the fixture (``plugins.msda.openvino_extension.build``: CMake against the openvino
package's own headers) into a cache folder of this test session; a machine without cmake or a compiler skips
with the reason. Each graph here is one ``m2f::MSDeformAttn`` node read by OpenVINO's ONNX frontend through the
extension's mapping, as an exported artifact's nodes are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from plugins.msda import openvino_extension
from plugins.msda.reference import ms_deform_attn_reference

ov = pytest.importorskip("openvino")

BF16_EPS = 2.0**-8  # bf16 keeps 8 significant bits: a rounding is off by at most this much, relatively


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("M2F_CACHE", str(tmp_path_factory.mktemp("cache")))
        try:
            return openvino_extension.build()
        except openvino_extension.ExtensionUnavailable as err:
            pytest.skip(f"the OpenVINO extension does not build here: {err}")


def _inputs(rng: np.random.Generator, N: int, shapes: list[tuple[int, int]], M: int, D: int, Lq: int, P: int):
    L, S = len(shapes), sum(h * w for h, w in shapes)
    value = rng.standard_normal((N, S, M, D)).astype(np.float32)
    locations = rng.uniform(-0.15, 1.15, (N, Lq, M, L, P, 2)).astype(np.float32)  # some points off the map
    logits = rng.standard_normal((N, Lq, M, L * P))
    weights = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(N, Lq, M, L, P).astype(np.float32)
    return value, locations, weights


def _graph(path: Path, shapes: list[tuple[int, int]], value: np.ndarray, locations: np.ndarray,
           value_type: int = TensorProto.FLOAT, index_type: type = np.int32,
           locations_type: int = TensorProto.FLOAT) -> Path:  # fmt: skip
    """One fused node (``benchmarks.msda_openvino.fused_graph``) for these inputs."""
    from benchmarks.msda_openvino import fused_graph

    return fused_graph(path, shapes, value.shape, locations.shape, value_type, index_type, locations_type)


def _run(library: Path, path: Path, value, locations, weights, precision: str = "f32") -> np.ndarray:
    core = ov.Core()
    core.add_extension(str(library))
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return compiled({"value": value, "loc": locations, "w": weights})[compiled.output(0)]


def _as_bf16(a: np.ndarray) -> np.ndarray:
    """f32 rounded to bf16 (nearest even) and back, as OpenVINO's Convert does."""
    return torch.from_numpy(a).to(torch.bfloat16).float().numpy()


def _reference(value, shapes, locations, weights) -> np.ndarray:
    t = [torch.from_numpy(a) for a in (value, locations, weights)]
    return ms_deform_attn_reference(t[0], shapes, None, t[1], t[2]).numpy()


CASES = [  # N, levels, heads M, channels D, queries Lq, points P: odd sizes, every D, 1-4 levels, 1-8 points
    (1, [(13, 17)], 1, 16, 7, 1),
    (2, [(13, 17), (7, 9)], 4, 32, 50, 4),
    (3, [(19, 23), (10, 12), (5, 6), (3, 3)], 8, 64, 33, 8),
    (1, [(48, 60), (24, 30), (12, 15)], 4, 32, 4320, 4),  # the default model's layer: Lq = S
    (2, [(1, 1), (2, 3)], 8, 16, 5, 2),  # maps of one pixel: every point at an edge
    (1, [(9, 11), (5, 7)], 4, 30, 21, 3),  # D = 30: not a multiple of any vector width
    (1, [(11, 13), (6, 7)], 2, 48, 9, 5),  # D = 48, 10 points: a part-filled vector of points
]


@pytest.mark.parametrize(("N", "shapes", "M", "D", "Lq", "P"), CASES)
def test_f32_equals_the_reference(library: Path, tmp_path: Path, N, shapes, M, D, Lq, P) -> None:
    value, locations, weights = _inputs(np.random.default_rng(len(shapes) * 7 + D), N, shapes, M, D, Lq, P)
    out = _run(library, _graph(tmp_path / "m.onnx", shapes, value, locations), value, locations, weights)
    expected = _reference(value, shapes, locations, weights)
    assert out.shape == expected.shape == (N, Lq, M * D)
    assert np.abs(out - expected).max() <= 1e-5


_EVERY_CASE_UNDER = """
import sys
from pathlib import Path
import numpy as np
from onnx import TensorProto
from plugins.msda import openvino_extension
from tests.plugins.test_msda_openvino import BF16_EPS, CASES, _as_bf16, _graph, _inputs, _reference, _run
library, folder = Path(sys.argv[1]), Path(sys.argv[2])
print(openvino_extension.library_info(library)[1])
for index, (N, shapes, M, D, Lq, P) in enumerate(CASES):
    value, locations, weights = _inputs(np.random.default_rng(index), N, shapes, M, D, Lq, P)
    out = _run(library, _graph(folder / f"{index}.onnx", shapes, value, locations), value, locations, weights)
    assert np.abs(out - _reference(value, shapes, locations, weights)).max() <= 1e-5, (index, sys.argv)
    path = _graph(folder / f"{index}_bf16.onnx", shapes, value, locations, value_type=TensorProto.BFLOAT16)
    error = np.abs(_run(library, path, value, locations, weights) - _reference(value, shapes, locations, weights))
    assert error.max() <= 2 * BF16_EPS * np.abs(value).max(), (index, "bf16", sys.argv)
    path = _graph(folder / f"{index}_loc.onnx", shapes, value, locations, locations_type=TensorProto.BFLOAT16)
    rounded = [_as_bf16(a) for a in (locations, weights)]
    out = _run(library, path, value, locations, weights)
    assert np.abs(out - _reference(value, shapes, *rounded)).max() <= 1e-5, (index, "bf16 locations", sys.argv)
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_every_instruction_set_equals_the_reference(library: Path, tmp_path: Path, isa: str) -> None:
    """The kernel this CPU does not pick by itself (``M2F_MSDA_ISA`` names it; one process each, as the choice is
    made once per process): every case above in f32, and in bf16 within its bound."""
    import os
    import subprocess
    import sys

    from runtimes.cpu_features import cpu_features

    if isa == "avx2" and not {"avx2", "fma"} <= cpu_features().flags:
        pytest.skip("this CPU has no AVX2+FMA")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, openvino_extension.ISA_ENV: isa, "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-c", _EVERY_CASE_UNDER, str(library), str(tmp_path)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[0] == isa


def test_an_unknown_instruction_set_name_keeps_the_best(library: Path) -> None:
    """``M2F_MSDA_ISA`` only lowers the choice: a name that is no instruction set changes nothing."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = "import sys; from pathlib import Path; from plugins.msda import openvino_extension as e; "
    code += "print(e.library_info(Path(sys.argv[1]))[1])"
    chosen = {}
    for wanted in ("", "sse9"):
        env = {**os.environ, openvino_extension.ISA_ENV: wanted, "PYTHONPATH": str(root)}
        run = subprocess.run([sys.executable, "-c", code, str(library)], cwd=root, env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        chosen[wanted] = run.stdout.strip()
    assert chosen["sse9"] == chosen[""] == openvino_extension.library_info(library)[1]


def test_int64_shapes_and_the_bf16_hint_change_nothing(library: Path, tmp_path: Path) -> None:
    """int64 spatial shapes, and OpenVINO's bf16 inference hint: the op keeps f32 inputs in f32."""
    shapes = [(13, 17), (7, 9)]
    value, locations, weights = _inputs(np.random.default_rng(3), 2, shapes, 4, 32, 40, 4)
    path = _graph(tmp_path / "m.onnx", shapes, value, locations, index_type=np.int64)
    expected = _reference(value, shapes, locations, weights)
    from runtimes.cpu_features import cpu_features

    for precision in ("f32", "bf16") if cpu_features().native_bf16 else ("f32",):
        assert np.abs(_run(library, path, value, locations, weights, precision) - expected).max() <= 1e-5


def test_bf16_locations_and_weights_are_read_as_given(library: Path, tmp_path: Path) -> None:
    """Locations and weights in bf16 (the value in f32): the op samples where the rounded locations point, so it
    equals the reference fed the same rounded inputs."""
    shapes = [(19, 23), (10, 12), (5, 6)]
    value, locations, weights = _inputs(np.random.default_rng(6), 2, shapes, 8, 32, 60, 4)
    path = _graph(tmp_path / "m.onnx", shapes, value, locations, locations_type=TensorProto.BFLOAT16)
    out = _run(library, path, value, locations, weights)
    expected = _reference(value, shapes, _as_bf16(locations), _as_bf16(weights))
    assert np.abs(out - expected).max() <= 1e-5
    assert np.abs(out - _reference(value, shapes, locations, weights)).max() > 1e-5  # the rounding did happen


def test_bf16_values_within_the_derived_bound(library: Path, tmp_path: Path) -> None:
    """bf16 values, f32 locations and weights, f32 accumulation, the result rounded to bf16.

    With attention weights summing to 1 per (query, head) and bilinear corner weights summing to at most 1, the
    output is a combination sum(c_i v_i) with c_i >= 0 and sum(c_i) <= 1. Rounding each value to bf16 moves it by
    at most BF16_EPS |v_i|, so the sum by at most BF16_EPS max|v|; rounding the result (|out| <= max|v|) adds at
    most the same: |fused - reference| <= 2 * BF16_EPS * max|value| (f32 accumulation adds ~1e-7, far below).
    """
    shapes = [(19, 23), (10, 12), (5, 6)]
    value, locations, weights = _inputs(np.random.default_rng(5), 2, shapes, 8, 32, 60, 4)
    path = _graph(tmp_path / "m.onnx", shapes, value, locations, value_type=TensorProto.BFLOAT16)
    out = _run(library, path, value, locations, weights)
    error = np.abs(out - _reference(value, shapes, locations, weights)).max()
    bound = 2 * BF16_EPS * np.abs(value).max()
    assert error <= bound, (error, bound)
    from runtimes.cpu_features import cpu_features

    if cpu_features().native_bf16:  # where the CPU has bf16, OpenVINO keeps the Cast: the op's bf16 path ran
        assert error > 1e-5  # an f32 path would be ~1e-6 off


def test_an_artifact_record_is_checked(library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = openvino_extension.metadata_record()
    monkeypatch.setenv(openvino_extension.EXTENSION_ENV, str(library))
    assert openvino_extension.check_record(record, tmp_path / "a.onnx") == library
    abi, isa = openvino_extension.library_info(library)
    assert abi == openvino_extension.ABI_VERSION and isa in ("avx512", "avx2", "baseline")
    with pytest.raises(openvino_extension.ExtensionUnavailable, match=r"ABI 99.*re-export"):
        openvino_extension.check_record({**record, "abi": 99}, tmp_path / "a.onnx")
    with pytest.raises(openvino_extension.ExtensionUnavailable, match=r"does not have"):
        openvino_extension.check_record({**record, "library": "/tmp/evil.so"}, tmp_path / "a.onnx")
    monkeypatch.setenv(openvino_extension.EXTENSION_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(openvino_extension.ExtensionUnavailable, match=r"missing\.so is not a file"):
        openvino_extension.check_record(record, tmp_path / "a.onnx")


def test_the_build_key_covers_every_file_the_library_is_built_from() -> None:
    """The sources named in the CMake file and every local header they include (a change to any of them is a new
    build folder, never a stale library)."""
    import re

    folder = openvino_extension.SOURCE_DIR
    cmake = (folder / "openvino" / "CMakeLists.txt").read_text()
    listed = re.search(r"add_library\(m2f_msda_openvino MODULE([^)]*)\)", cmake).group(1).split()
    files = {(folder / "openvino" / name).resolve() for name in [*listed, "CMakeLists.txt"]}
    pending = list(files)
    while pending:
        for header in re.findall(r'#include "([^"]+)"', pending.pop().read_text()):
            path = (folder / header).resolve()
            if path not in files:
                files.add(path)
                pending.append(path)
    assert files == {p.resolve() for p in openvino_extension.EXTENSION_SOURCES}


def test_without_a_build_the_reason_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(openvino_extension.EXTENSION_ENV, raising=False)
    monkeypatch.setenv("M2F_CACHE", str(tmp_path / "empty"))
    assert "m2f build-plugins" in openvino_extension.unavailable_reason()
    with pytest.raises(openvino_extension.ExtensionUnavailable, match="m2f build-plugins"):
        openvino_extension.check_record(openvino_extension.metadata_record(), tmp_path / "a.onnx")


def test_an_openvino_export_writes_and_runs_the_fused_node(library: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``m2f export --target openvino`` at a static fp32 size: one fused node per deformable-attention layer, the
    library recorded, the gate passed; outputs as the standard-op export's (and torch's, which the gate checks)."""
    import cv2

    from compile.export import export
    from runtimes import load_backend
    from runtimes.artifact import read_metadata
    from tests.runtimes.deployable import tiny_checkpoint

    monkeypatch.setenv(openvino_extension.EXTENSION_ENV, str(library))
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(calib / f"{i}.png"), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    paths = {}
    for native in (True, False):
        paths[native] = export(checkpoint, "openvino", "fp32", tmp_path / f"native_{native}.onnx", input_size=(96, 128),
                               calib_dir=calib, gate_images=4, native_ops=native)  # fmt: skip
    fused = onnx.load(str(paths[True]))
    assert sum(n.domain == "m2f" and n.op_type == "MSDeformAttn" for n in fused.graph.node) == 1  # one encoder layer
    assert not any(n.op_type == "GridSample" for n in fused.graph.node)
    metadata = read_metadata(paths[True])
    assert metadata["native_ops"] == openvino_extension.metadata_record()
    assert metadata["accuracy"]["label_agreement"] >= 0.999
    assert "native_ops" not in read_metadata(paths[False])
    frame = rng.integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    with load_backend("openvino", paths[True]) as a, load_backend("openvino", paths[False]) as b:
        got, want = a.run({"images": frame}), b.run({"images": frame})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-3, rtol=0)
    monkeypatch.setenv(openvino_extension.EXTENSION_ENV, str(tmp_path / "gone.so"))
    with pytest.raises(openvino_extension.ExtensionUnavailable, match="no-native-ops"):
        load_backend("openvino", paths[True])


@pytest.fixture(scope="module")
def fused_exports(library: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model exported for OpenVINO with the fused node, fp32 and int8, and with standard ops in fp32."""
    import cv2

    from compile.export import export
    from tests.runtimes.deployable import tiny_checkpoint

    folder = tmp_path_factory.mktemp("fused_int8")
    checkpoint = tiny_checkpoint(folder / "tiny.pt")
    (folder / "calib").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        cv2.imwrite(str(folder / "calib" / f"{i}.png"), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    paths = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv(openvino_extension.EXTENSION_ENV, str(library))
        for name, precision, native in (("fp32", "fp32", True), ("int8", "int8", True), ("standard", "fp32", False)):
            paths[name] = export(checkpoint, "openvino", precision, folder / f"{name}.onnx", input_size=(96, 128),
                                 calib_dir=folder / "calib", gate_images=4, native_ops=native)  # fmt: skip
    return paths


def test_fused_files_carry_the_body_that_onnxruntime_runs(fused_exports: dict[str, Path], library: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Int8 keeps one fused node (quantised around it, folded back after NNCF) with its gate passed on OpenVINO;
    both files carry the standard-op body as an ONNX function, so ONNX Runtime runs them and agrees with the
    extension's kernel on OpenVINO."""
    from runtimes import load_backend
    from runtimes.artifact import read_metadata

    monkeypatch.setenv(openvino_extension.EXTENSION_ENV, str(library))
    frame = np.random.default_rng(2).integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    for name in ("fp32", "int8"):
        model = onnx.load(str(fused_exports[name]))
        assert sum(n.domain == "m2f" and n.op_type == "MSDeformAttn" for n in model.graph.node) == 1
        assert [(f.domain, f.name) for f in model.functions] == [("m2f", "MSDeformAttn")]
        assert not any(n.op_type == "GridSample" for n in model.graph.node)
        metadata = read_metadata(fused_exports[name])
        assert metadata["native_ops"] == openvino_extension.metadata_record()
        assert metadata["accuracy"]["label_agreement"] >= (0.99 if name == "fp32" else 0.5)  # random tiny weights
        path = fused_exports[name]
        with load_backend("openvino", path) as ov, load_backend("onnxruntime", path) as ort:
            ours, body = ov.run({"images": frame}), ort.run({"images": frame})
        assert ours.keys() == body.keys()
        for key in ours:  # int8: OpenVINO's and ONNX Runtime's int8 kernels round apart (seen: 4 % of the range)
            atol = 1e-4 if name == "fp32" else 0.1 * float(np.abs(body[key]).max())
            np.testing.assert_allclose(ours[key], body[key], atol=atol, rtol=0, err_msg=f"{name} {key}")
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(fused_exports["int8"])).graph.node)
    assert read_metadata(fused_exports["int8"])["accuracy"]["int8_execution"]["int8_share"] > 0.15


def test_a_site_that_reads_outside_itself_is_not_folded_back(fused_exports: dict[str, Path]) -> None:
    """After quantisation a region must read only its site's inputs: one that reads another value stays inlined
    (the export then keeps the standard ops and logs why)."""
    from compile.msda_function import collapse_sites, inline_sites

    inlined, sites, body = inline_sites(onnx.load(str(fused_exports["fp32"])))
    assert len(sites) == 1 and not inlined.functions
    folded = collapse_sites(onnx.load_from_string(inlined.SerializeToString()), sites, body)
    assert sum(n.op_type == "MSDeformAttn" for n in folded.graph.node) == 1
    onnx.checker.check_model(folded)
    region = next(n for n in inlined.graph.node if n.name.startswith("m2f_msda.0/") and n.input)
    region.input[0] = inlined.graph.input[0].name  # the image, which no site reads
    with pytest.raises(ValueError, match="reads"):
        collapse_sites(inlined, sites, body)


def test_the_packaged_default_runs_its_fused_file_where_the_op_loads_and_says_when_it_falls_back(
    library: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the extension, ``Segmenter("cpu")`` runs the fused int8 file; without it, the standard-op int8 file,
    and its repr says why; ONNX Runtime never takes the OpenVINO-only file."""
    from sdk import Segmenter
    from sdk.model_registry import MODELS_DIR

    if not (MODELS_DIR / "default_int8_msda.onnx").is_file():
        pytest.skip("this build packages no fused default")
    frame = np.random.default_rng(3).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    monkeypatch.setenv(openvino_extension.EXTENSION_ENV, str(library))
    with Segmenter("cpu", precision="int8") as fused:
        assert fused.model_path.name == "default_int8_msda.onnx" and "standard-op" not in repr(fused)
        fused_labels = fused.predict(frame).semantic
    monkeypatch.setenv(openvino_extension.EXTENSION_ENV, str(tmp_path / "absent.so"))
    with Segmenter("cpu", precision="int8") as standard:
        assert standard.model_path.name == "default_int8.onnx"
        assert "standard-op file (the fused MSDA op's OpenVINO extension:" in repr(standard)
        assert (standard.predict(frame).semantic == fused_labels).mean() > 0.95  # one network, two int8 graphs
    with Segmenter("onnxruntime", precision="int8") as ort:
        assert ort.model_path.name == "default_ort_int8.onnx"
