"""Seeded fuzzing of every file a stranger can hand a user: artifacts, checkpoints and images.

Each case mutates a valid file (flipped bits, a cut, a span overwritten, bytes inserted or repeated) and hands it
to the reader a user calls. Whatever happens must be a result or one of our own errors (``sdk.M2FError``): no
other exception type, no crash, no hang (``faulthandler`` ends the process with a traceback after ``HANG_S``).
The seed is fixed, so a failure reproduces; ``M2F_FUZZ_SEED`` / ``M2F_FUZZ_CASES`` explore further.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

import sdk
from runtimes import load_backend
from runtimes.images import read_image
from tests.runtimes.tiny_artifact import build_tiny_artifact, random_image

SEED = int(os.environ.get("M2F_FUZZ_SEED", "20261207"))
SCALE = float(os.environ.get("M2F_FUZZ_CASES", "1"))  # multiplies every count below
HANG_S = 120


def _cases(n: int) -> int:
    return max(1, int(n * SCALE))


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage of ``data``: bit flips, a truncation, an overwritten span, inserted or repeated bytes."""
    out = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            at = int(rng.integers(len(out)))
            out[at] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        del out[int(rng.integers(len(out))) :]
    elif kind == 2:
        at, span = int(rng.integers(len(out))), int(rng.integers(1, 64))
        out[at : at + span] = rng.integers(0, 256, min(span, len(out) - at), dtype=np.uint8).tobytes()
    elif kind == 3:
        at = int(rng.integers(len(out) + 1))
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        at, span = int(rng.integers(len(out))), int(rng.integers(1, 256))
        out[at:at] = out[at : at + span] * int(rng.integers(2, 16))
    return bytes(out)


@contextmanager
def _no_hang() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _fuzz(original: Path, count: int, seed: int, use: Callable[[Path], object], folder: Path) -> Counter:
    """``use`` each of ``count`` mutations of ``original``; Counter of outcomes. Fails on any non-M2FError."""
    rng = np.random.default_rng(seed)
    data = original.read_bytes()
    outcomes: Counter = Counter()
    for case in range(count):
        path = folder / f"case{case}{original.suffix}"
        path.write_bytes(mutate(data, rng))
        with _no_hang():
            try:
                use(path)
            except sdk.M2FError as err:
                outcomes[type(err).__name__] += 1
            except Exception as err:  # the failure this test exists for: say which case, reproducibly
                where = f"case {case} (seed {seed}) of {original.name}"
                raise AssertionError(f"{where}: {type(err).__name__}: {err}") from err
            else:
                outcomes["ok"] += 1
        path.unlink()
    return outcomes


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fuzzed_artifacts(tmp_path: Path, runtime: str) -> None:
    artifact = build_tiny_artifact(tmp_path / "tiny.onnx")
    image = random_image()

    def use(path: Path) -> None:
        backend = load_backend(runtime, path)
        try:
            backend.run({"image": image})
        finally:
            backend.close()

    outcomes = _fuzz(artifact, _cases(150 if runtime == "onnxruntime" else 60), SEED, use, tmp_path)
    assert outcomes["ArtifactError"] > outcomes.total() // 2, outcomes  # most damage is seen, not run


def test_fuzzed_artifacts_through_the_segmenter(tmp_path: Path) -> None:
    artifact = build_tiny_artifact(tmp_path / "tiny.onnx")
    frame = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)

    def use(path: Path) -> None:
        with sdk.Segmenter("onnxruntime", model=path) as seg:
            seg.predict(frame)

    outcomes = _fuzz(artifact, _cases(60), SEED + 1, use, tmp_path)
    assert outcomes["ArtifactError"] > 0, outcomes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our tiny .pt and the same weights as an official detectron2 .pkl (our key prefixes mapped back)."""
    from tests.runtimes.deployable import tiny_checkpoint
    from train.model.checkpoint import _DETECTRON2_PREFIXES, read_checkpoint

    folder = tmp_path_factory.mktemp("checkpoints")
    ours = tiny_checkpoint(folder / "tiny.pt")
    official = {}
    for key, value in read_checkpoint(ours).state_dict.items():
        new = next(src + key[len(dst) :] for src, dst in _DETECTRON2_PREFIXES.items() if key.startswith(dst))
        official[new] = value.numpy()
    with (folder / "model_final_tiny.pkl").open("wb") as file:
        pickle.dump({"model": official, "__author__": "tests"}, file, protocol=2)
    return {"pt": ours, "pkl": folder / "model_final_tiny.pkl"}


@pytest.mark.parametrize("kind", ["pt", "pkl"])
def test_fuzzed_checkpoints(checkpoints: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """What ``Segmenter(model=...)`` and ``m2f export`` load a checkpoint with (``compile.export.load_checkpoint``)."""
    from compile.export import load_checkpoint
    from train.model.config import ModelMeta

    config = None
    if kind == "pkl":  # an official pickle needs its architecture: the tiny one, as a zoo name would give it
        from train.model.checkpoint import read_checkpoint

        record = read_checkpoint(checkpoints["pt"])
        config = (record.config, ModelMeta.from_dict(record.meta))

    def use(path: Path) -> None:
        if config is None:
            load_checkpoint(path)
            return
        from runtimes.errors import CheckpointError
        from train.model import Mask2FormerConfig, load_pretrained

        try:  # load_checkpoint's own wrapping, with the architecture a zoo name would give
            load_pretrained(path, config=Mask2FormerConfig.from_dict(config[0]), meta=config[1])
        except (ValueError, FileNotFoundError) as err:
            raise CheckpointError(str(err)) from err

    outcomes = _fuzz(checkpoints[kind], _cases(50), SEED + 2, use, tmp_path)
    assert outcomes["CheckpointError"] > 0, outcomes


IMAGE_FORMATS = [".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".jp2"]


@pytest.mark.parametrize("suffix", IMAGE_FORMATS)
def test_fuzzed_images(tmp_path: Path, suffix: str) -> None:
    """Read as ``m2f predict`` reads a file, then segmented; the limit stays the default."""
    rng = np.random.default_rng(SEED)
    original = tmp_path / f"frame{suffix}"
    assert cv2.imwrite(str(original), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    seg = sdk.Segmenter("onnxruntime", model=build_tiny_artifact(tmp_path / "tiny.onnx"))

    def use(path: Path) -> None:
        seg.predict(read_image(path))

    outcomes = _fuzz(original, _cases(30), SEED + 3, use, tmp_path)
    assert outcomes["FrameError"] > 0, outcomes
