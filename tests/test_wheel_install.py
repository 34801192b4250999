"""The wheel as an edge device installs it: a fresh venv with ``m2f-edge[openvino]`` and no torch segments a frame
with the packaged default model, builds the OpenVINO MSDA extension from the sources the wheel carries
(``m2f build-plugins``) and segments one with an artifact holding the fused node, torch blocked.

Needs the package registry (the venv installs numpy, OpenCV and OpenVINO), cmake and a C++ compiler; skipped with
the reason where one is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plugins.msda import openvino_extension
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

_PREDICT = r"""
import sys
sys.modules["torch"] = None  # an edge device: any import of torch fails
import json, numpy as np, sdk
frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
from sdk.model_registry import named_models
packaged_shape, packaged_fused = [], []
for name in [None, *named_models()]:  # the default, as a device runs it out of the box, then every model by name
    with sdk.Segmenter("cpu", model=name) as packaged:
        packaged_shape.append(list(packaged.predict(frame).semantic.shape))
        packaged_fused.append(packaged.backend.native_ops)
with sdk.Segmenter("cpu", model=sys.argv[1]) as seg:
    result = seg.predict(frame)
    print(json.dumps({"runtime": seg.runtime, "shape": list(result.semantic.shape), "sdk": sdk.__file__,
                      "native_ops": seg.backend.native_ops, "packaged_shape": packaged_shape,
                      "packaged_fused": packaged_fused}))
"""


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def fused_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model exported for OpenVINO with the fused node (the extension built for this test's own cache)."""
    import cv2

    from compile.export import export
    from tests.runtimes.deployable import tiny_checkpoint

    folder = tmp_path_factory.mktemp("fused")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("M2F_CACHE", str(folder / "cache"))
        try:
            openvino_extension.build()
        except openvino_extension.ExtensionUnavailable as err:
            pytest.skip(f"the OpenVINO extension does not build here: {err}")
        checkpoint = tiny_checkpoint(folder / "tiny.pt")
        (folder / "calib").mkdir()
        cv2.imwrite(str(folder / "calib" / "0.png"), np.zeros((96, 128, 3), np.uint8))
        return export(checkpoint, "openvino", "fp32", folder / "fused.onnx", input_size=(96, 128), task="semantic",
                      calib_dir=folder / "calib", gate_images=1, native_ops=True)  # fmt: skip


def test_a_fresh_venv_without_torch_builds_the_extension_and_predicts(fused_artifact: Path, tmp_path: Path) -> None:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["M2F_CACHE"] = str(tmp_path / "cache")  # nothing built there yet
    env.pop(openvino_extension.EXTENSION_ENV, None)
    source = tmp_path / "source"  # the project's files, copied: building in the checkout would leave build/ there
    listed = _run(["git", "ls-files", "-co", "--exclude-standard"], env, REPO_ROOT).stdout.splitlines()
    for name in listed:
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
         env, tmp_path)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("m2f_edge-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp_path)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[openvino]"], env, tmp_path)
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env).returncode != 0
    built = _run([str(venv / "bin" / "m2f"), "build-plugins"], env, tmp_path).stdout.strip().splitlines()[-1]
    assert Path(built).is_file() and Path(built).is_relative_to(tmp_path / "cache")
    said = _run([str(python), "-c", _PREDICT, str(fused_artifact)], env, tmp_path)
    result = json.loads(said.stdout.strip().splitlines()[-1])
    assert result["sdk"].startswith(str(venv))  # the installed wheel ran, not the checkout
    from sdk.model_registry import named_models

    assert result == {**result, "runtime": "openvino", "shape": [96, 128], "native_ops": True,
                      "packaged_shape": [[96, 128]] * (1 + len(named_models()))}  # fmt: skip
    fused_models = [any(meta.get("native_ops") for _, meta in model.artifacts()) for model in named_models().values()]
    assert result["packaged_fused"][1:] == fused_models  # the extension just built: each model's fused file runs
