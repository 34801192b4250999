"""Segmenter end to end on real artifacts: targets, frames of every kind, torch blocked, streaming a real clip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from runtimes.base import DeviceNotAvailable
from runtimes.errors import ArtifactError
from sdk.preprocess import FrameError
from sdk.segmenter import Segmenter
from sdk.targets import TargetNotAvailable
from tests.conftest import REPO_ROOT, data_root


def frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    return {
        "bgr": bgr,
        "grey": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
        "grey1": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None],
        "bgra": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
    }


@pytest.mark.parametrize("target", ["onnxruntime", "openvino", "cpu"])
@pytest.mark.parametrize("kind", list(frames()))
def test_predict_any_frame_kind(artifacts, target, kind):
    with Segmenter(target, model=artifacts["semantic"]) as seg:
        result = seg.predict(frames()[kind])
    assert result.semantic.shape == (100, 200)
    assert result.semantic.max() < len(result.class_names)
    assert {"preprocess_ms", "inference_ms", "postprocess_ms"} <= set(result.timings)


def test_semantic_results_carry_class_scores_at_a_quarter_of_the_frame(artifacts):
    """The semantic graph's score output reaches the result in frame coordinates (letterbox cropped), at 1/4 size:
    the argmax there agrees with the labels; a panoptic artifact has none."""
    frame = frames()["bgr"]  # 100 x 200 into a 128 x 160 input
    with Segmenter("onnxruntime", model=artifacts["semantic"]) as seg:
        result = seg.predict(frame)
    scores = result.class_scores
    assert scores.shape == (len(result.class_names), 25, 50) and scores.dtype == np.float32
    assert (scores.argmax(0) == result.semantic[2::4, 2::4]).mean() > 0.8
    with Segmenter("onnxruntime", model=artifacts["panoptic"]) as seg:
        assert seg.predict(frame).class_scores is None


def test_panoptic_artifact_gives_every_view(artifacts):
    with Segmenter("onnxruntime", model=artifacts["panoptic"]) as seg:
        result = seg.predict(frames()["bgr"])
        assert result.task == "panoptic" and result.panoptic.shape == (100, 200)
        assert result.semantic.shape == (100, 200)
        assert seg.predict_batch([frames()["bgr"], frames()["bgra"]])[1].panoptic.shape == (100, 200)
    with Segmenter("onnxruntime", model=artifacts["panoptic"], task="instance") as seg:
        assert seg.predict(frames()["bgr"]).task == "instance"
    with pytest.raises(ValueError, match="cannot give instance"):
        Segmenter("onnxruntime", model=artifacts["semantic"], task="instance")


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        ("not an image", "numpy array"),
    ],
)
def test_bad_frames_raise_clearly(artifacts, frame, match):
    with Segmenter("onnxruntime", model=artifacts["semantic"]) as seg, pytest.raises(FrameError, match=match):
        seg.predict(frame)


def test_missing_runtimes_and_devices_are_named(artifacts):
    for target in ("tensorrt", "jetson", "cuda"):
        with pytest.raises(TargetNotAvailable, match=r"tensorrt|GPU") as raised:
            Segmenter(target, model=artifacts["semantic"])
        reasons = str(raised.value).split(": ", 1)[1].split("; ")
        assert len(reasons) == len(set(reasons)), reasons  # runtimes missing the same GPU say so once
    with pytest.raises(ValueError, match="unknown profile or runtime 'tpu'"):
        Segmenter("tpu", model=artifacts["semantic"])
    with pytest.raises(ValueError, match="did you mean 'onnxruntime'"):
        Segmenter("onnxruntim", model=artifacts["semantic"])
    with pytest.raises(FileNotFoundError, match="no model"):
        Segmenter("onnxruntime", model="missing.onnx")


def test_artifact_from_an_unknown_format_version(artifacts, tmp_path):
    model = onnx.load(str(artifacts["semantic"]))
    for prop in model.metadata_props:
        if prop.key == "m2f":
            doc = json.loads(prop.value)
            doc["format_version"] = 99
            prop.value = json.dumps(doc)
    onnx.save(model, str(tmp_path / "future.onnx"))
    with pytest.raises(ArtifactError, match="newer m2f"):
        Segmenter("onnxruntime", model=tmp_path / "future.onnx")


def test_checkpoint_is_compiled_once_and_cached(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("M2F_CACHE", str(tmp_path / "cache"))
    with Segmenter("onnxruntime", model=checkpoint, input_size=(96, 128)) as seg:
        assert seg.predict(frames()["bgr"]).semantic.shape == (100, 200)
    cached = list((tmp_path / "cache" / "artifacts").glob("*.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    with Segmenter("onnxruntime", model=checkpoint, input_size=(96, 128)):
        pass
    assert cached[0].stat().st_mtime_ns == stamp


def test_a_compiler_change_compiles_the_checkpoint_again(checkpoint, tmp_path, monkeypatch):
    """The cache key of a compiled checkpoint holds the compiler's code (runtimes.cache.graph_code_key): after a
    change to it, Segmenter(model="x.pt") no longer runs the artifact the old code made."""
    from runtimes import cache

    monkeypatch.setenv("M2F_CACHE", str(tmp_path / "cache"))
    compiler_change = tmp_path / "compiler_change.py"  # stands for an edit of compile/ or train/model/
    compiler_change.write_text("x = 1\n")
    monkeypatch.setattr(cache, "GRAPH_SOURCES", (*cache.GRAPH_SOURCES, str(compiler_change)))
    with Segmenter("onnxruntime", model=checkpoint, input_size=(96, 128)):
        pass
    compiler_change.write_text("x = 2\n")
    with Segmenter("onnxruntime", model=checkpoint, input_size=(96, 128)) as seg:
        artifacts = sorted((tmp_path / "cache" / "artifacts").glob("*.onnx"))
        assert len(artifacts) == 2 and seg.model_path == max(artifacts, key=lambda p: p.stat().st_mtime_ns)


def test_full_predict_with_torch_blocked(artifacts):
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "import numpy as np, sdk\n"
        "frame = np.zeros((90, 120, 3), np.uint8)\n"
        "shapes = {}\n"
        "for target in ('onnxruntime', 'openvino'):\n"
        "    with sdk.Segmenter(target, model=sys.argv[1]) as seg:\n"
        "        shapes[target] = list(seg.predict(frame).panoptic.shape)\n"
        "print(json.dumps(shapes))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(artifacts["panoptic"])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"onnxruntime": [90, 120], "openvino": [90, 120]}


@pytest.mark.slow
def test_stream_real_clip_every_frame_in_order(artifacts, tmp_path):
    clip = data_root() / "videos" / "solidWhiteRight.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} is absent (set M2F_DATA)")
    expected = int(cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT))
    with Segmenter("openvino", model=artifacts["semantic"]) as seg:
        running = seg.stream(clip, output=tmp_path / "out.mp4")
        indices = [result.frame_index for result in running]
    assert indices == list(range(expected)) and expected == 221
    written = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    count = 0
    while written.read()[0]:
        count += 1
    assert count == expected
    assert running.stats.frames == expected and running.stats.fps > 0


def test_cli_stream_json_last_line(artifacts, tmp_path):
    clip = data_root() / "videos" / "car-detection.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} is absent (set M2F_DATA)")
    m2f = shutil.which("m2f", path=str(Path(sys.executable).parent)) or "m2f"
    done = subprocess.run(
        [
            m2f,
            "stream",
            str(clip),
            "--target",
            "onnxruntime",
            "--model",
            str(artifacts["semantic"]),
            "--max-frames",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["frames"] == 20 and stats["fps"] > 0
    assert {"p50", "p90", "p99"} <= set(stats["latency_ms"]) and "inference" in stats["stage_ms"]


def test_precision_says_what_runs(artifacts):
    with Segmenter("onnxruntime", model=artifacts["semantic"], precision="int8") as seg:
        assert seg.precision == "fp32"  # the artifact's own precision, whatever was asked
    if _cpu_has_bf16():
        with Segmenter("openvino", model=artifacts["semantic"], precision="bf16") as seg:
            assert seg.precision == "bf16" and seg.backend.inference_precision == "bf16"
    else:  # e.g. an AVX2-only CPU: asked for bf16 explicitly, it says so instead of running something else
        with pytest.raises(DeviceNotAvailable, match="no BF16 support"):
            Segmenter("openvino", model=artifacts["semantic"], precision="bf16")


def _cpu_has_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_compact_export_is_smaller_and_segments_alike(checkpoint, artifacts, tmp_path):
    from compile.export import export

    compact = export(
        checkpoint, "onnxruntime", "fp32", tmp_path / "c.onnx", input_size=(128, 160), task="semantic", compact=True
    )
    assert compact.stat().st_size < 0.7 * artifacts["semantic"].stat().st_size
    frame = frames()["bgr"]
    with Segmenter("onnxruntime", model=compact) as seg, Segmenter("onnxruntime", model=artifacts["semantic"]) as ref:
        assert seg.metadata["weight_storage"] == "fp16"
        assert (seg.predict(frame).semantic == ref.predict(frame).semantic).mean() > 0.99


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_bgra_and_grey_segment_as_their_bgr_equivalents(target):
    """The packaged model (real weights: a random frame gives many classes, unlike the tiny random model)."""
    rng = np.random.default_rng(1)
    bgr = frames()["bgr"]
    bgra = np.dstack([bgr, rng.integers(0, 256, bgr.shape[:2], dtype=np.uint8)])  # alpha is dropped, not blended
    grey = frames()["grey"]
    with Segmenter(target) as seg:
        from_bgr, from_bgra = seg.predict(bgr), seg.predict(bgra)
        from_grey, from_grey1 = seg.predict(grey), seg.predict(grey[..., None])
        from_replicated = seg.predict(np.repeat(grey[..., None], 3, axis=2))
    for got, want in ((from_bgra, from_bgr), (from_grey, from_replicated), (from_grey1, from_replicated)):
        np.testing.assert_array_equal(got.semantic, want.semantic)
    # the comparison means something: several classes, and the grey frame segments differently from the colour one
    assert len(np.unique(from_bgr.semantic)) > 3
    assert (from_bgr.semantic != from_replicated.semantic).mean() > 0.05


# --- targets from runtimes.registry: what reaches the backend, what really runs ------------------------------------


def test_torch_target_builds_from_a_checkpoint_and_agrees_with_the_artifact(checkpoint, artifacts):
    """Regression: Segmenter("torch", model=ckpt) failed on every machine (metadata with opset 0)."""
    frame = frames()["bgr"]
    with Segmenter("torch", model=checkpoint, task="semantic", input_size=(128, 160)) as seg:
        assert (seg.runtime, seg.device, seg.precision) == ("torch", "cpu", "fp32")
        assert seg.metadata["opset"] > 0 and seg.metadata["input"]["size"] == [128, 160]
        labels = seg.predict(frame).semantic
    with Segmenter("onnxruntime", model=artifacts["semantic"]) as artifact:
        assert (labels == artifact.predict(frame).semantic).mean() > 0.99  # the same model, exported
    with Segmenter("torch", model=checkpoint) as dynamic:  # no size: the dynamic shortest-edge input
        assert dynamic.metadata["input"]["resize_policy"] == "shortest_edge"
        assert dynamic.predict(frame).semantic.shape == (100, 200)


def test_what_runs_is_reported(artifacts):
    with Segmenter("onnxruntime", model=artifacts["semantic"]) as seg:
        assert (seg.target.name, seg.runtime, seg.device, seg.precision) == (
            "onnxruntime",
            "onnxruntime",
            "cpu",
            "fp32",
        )
        assert seg.backend.providers == ["CPUExecutionProvider"]
    with Segmenter("cpu", model=artifacts["semantic"]) as seg:
        assert (seg.runtime, seg.device, seg.precision) == ("openvino", "cpu", "fp32")
        assert (
            seg.backend.ov_device == "CPU" and seg.backend.device == "cpu" and seg.backend.inference_precision == "f32"
        )


def test_unknown_backend_option_raises_with_the_accepted_ones(artifacts):
    with pytest.raises(ValueError, match=r"'openvino' does not take option\(s\) workspace_mb; it accepts cache_dir"):
        Segmenter("openvino", model=artifacts["semantic"], workspace_mb=64)
    with Segmenter("openvino", model=artifacts["semantic"], threads=1, cache_dir=None) as seg:  # accepted ones pass
        assert seg.backend.cache_dir is None


def test_cuda_target_on_onnxruntime_sets_the_cuda_provider(artifacts, monkeypatch):
    """Regression: the cuda target's ONNX Runtime fallback opened a CPU session. Here every runtime but ONNX Runtime
    is declared unusable, so the cuda target resolves to it: the target's device must reach the backend, and this
    CPU-only ONNX Runtime must refuse, not run on the CPU."""
    import onnxruntime

    import sdk.targets
    from runtimes import DeviceNotAvailable, RuntimeNotAvailable

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: see the gpu-marked test")
    monkeypatch.setattr(
        sdk.targets, "runtime_usable", lambda runtime, device: None if runtime == "onnxruntime" else "x"
    )
    with pytest.raises((RuntimeNotAvailable, DeviceNotAvailable), match="CUDAExecutionProvider"):
        Segmenter("cuda", model=artifacts["semantic"])


@pytest.mark.gpu
def test_cuda_target_runs_on_the_gpu_and_says_so(checkpoint):
    """On a GPU machine: the cuda target (TensorRT, else torch on CUDA, else ONNX Runtime CUDA) runs a checkpoint on
    the GPU, reports it, and labels like the torch target on the CPU."""
    from sdk.targets import has_cuda_device

    if not has_cuda_device():
        pytest.skip("no CUDA device")
    frame = frames()["bgr"]
    with Segmenter("torch", model=checkpoint, task="semantic", input_size=(128, 160)) as cpu:
        want = cpu.predict(frame).semantic
    with Segmenter("cuda", model=checkpoint, task="semantic", input_size=(128, 160)) as seg:
        assert seg.device == "cuda" and seg.target.name == "cuda"
        if seg.runtime == "onnxruntime":
            assert seg.backend.providers[0] == "CUDAExecutionProvider"
        if seg.runtime == "torch":
            assert seg.precision == "fp16"  # the profile's precision reached the torch backend
        assert (seg.predict(frame).semantic == want).mean() >= 0.99


def test_torch_target_runs_checkpoints_not_artifacts(artifacts):
    with pytest.raises(TargetNotAvailable, match="runtime 'torch' runs a checkpoint, not an artifact"):
        Segmenter("torch", model=artifacts["semantic"])


def test_profile_precision_reaches_the_backend(artifacts, monkeypatch):
    """A target's default precision lowers an fp32 artifact on a runtime that takes ``precision``; a reduced
    artifact runs as it is; an explicit precision wins."""
    from runtimes.registry import TARGETS, TargetSpec
    from sdk.segmenter import _set_precision

    for asked, default, artifact, sent in [
        (None, "fp16", "fp32", "fp16"),  # jetson / cuda on an fp32 artifact
        (None, "fp16", "int8", None),  # a calibrated artifact keeps its int8
        (None, "fp32", "bf16", None),  # cpu on a bf16 artifact: the artifact's own
        ("fp32", "fp16", "fp32", None),  # asked for what the artifact is: nothing to change
        ("bf16", "fp32", "fp32", "bf16"),
    ]:
        options: dict = {}
        _set_precision(options, asked, default, artifact)
        assert options.get("precision") == sent, (asked, default, artifact)
    if not _cpu_has_bf16():
        pytest.skip("this CPU has no BF16")
    monkeypatch.setitem(TARGETS, "cpu-bf16", TargetSpec("cpu-bf16", ("openvino",), "cpu", "bf16"))
    with Segmenter("cpu-bf16", model=artifacts["semantic"]) as seg:
        assert seg.precision == "bf16" and seg.backend.inference_precision == "bf16"


def test_from_backend_is_a_segmenter_over_an_open_backend(artifacts):
    from runtimes import load_backend

    frame = frames()["bgr"]
    with Segmenter("onnxruntime", model=artifacts["semantic"]) as seg:
        want = seg.predict(frame).semantic
    seg = Segmenter.from_backend(load_backend("onnxruntime", artifacts["semantic"]))
    with seg:
        assert (seg.target.name, seg.runtime, seg.device, seg.precision) == (
            "onnxruntime",
            "onnxruntime",
            "cpu",
            "fp32",
        )
        np.testing.assert_array_equal(seg.predict(frame).semantic, want)


def test_fixed_size_target_defaults_to_the_checkpoints_input_size(tmp_path, monkeypatch):
    """The TensorRT export is fixed-size: a checkpoint without input_size gets its own (here the eval_resize it was
    trained with), not a ValueError. TensorRT cannot run here, so the artifact the jetson target would build is
    made and checked directly."""
    pytest.importorskip("torch")
    from compile.export import default_input_size
    from runtimes.artifact import read_metadata
    from sdk.artifact_choice import compile_checkpoint
    from tests.sdk.conftest import TINY
    from train.data.synthetic import synthetic_meta
    from train.model import Mask2Former, Mask2FormerConfig, save_checkpoint
    from train.model.zoo import dataset_meta

    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **TINY})).eval()
    plain = save_checkpoint(tmp_path / "plain.pt", model, meta)
    assert default_input_size(plain) == (512, 512)  # nothing known: the export's default short side
    trained = save_checkpoint(
        tmp_path / "trained.pt", model, meta, {"train_config": {"task": "semantic", "eval_resize": {"min_size": 64}}}
    )
    assert default_input_size(trained) == (64, 64)
    city = dataset_meta("cityscapes_semantic")
    city_model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": city.num_classes, **TINY})).eval()
    assert default_input_size(save_checkpoint(tmp_path / "city.pt", city_model, city)) == (1024, 1024)  # official

    monkeypatch.setenv("M2F_CACHE", str(tmp_path / "cache"))
    artifact = compile_checkpoint(trained, "tensorrt", "fp16", None)
    meta_out = read_metadata(artifact)
    assert (meta_out["target"], meta_out["precision"], meta_out["input"]["size"]) == ("tensorrt", "fp16", [64, 64])
