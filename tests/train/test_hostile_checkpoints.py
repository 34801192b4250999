"""Checkpoints from strangers: no reader runs code from a file or lets it claim more memory than it holds.

Each hostile file would, if obeyed, create a marker file (code ran) or allocate gigabytes; each must be refused with
a ValueError that names what was refused, and the marker must never appear.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from train.cli import convert_main
from train.model import load_pretrained
from train.model.checkpoint import read_checkpoint
from train.model.detectron2_pickle import UnsafePickleError, load_detectron2_pickle


class _Call:
    """Pickles as ``func(*args)``: what a hostile pickle asks the loader to run."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _hostile_payloads(marker: Path) -> dict[str, Any]:
    """name -> an object whose unpickling would create ``marker`` (or allocate without bound)."""
    cmd = _touch(marker)
    return {
        "os.system": _Call(os.system, cmd),
        "subprocess.call": _Call(subprocess.call, ["touch", str(marker)]),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Call(eval, f"__import__('os').system({cmd!r})"),
        "builtins.exec": _Call(exec, f"import os; os.system({cmd!r})"),
        "pathlib write": _Call(Path.write_text, marker, "x"),
        "nested in model": {"model": {"backbone.x": np.zeros(2), "backbone.y": _Call(os.system, cmd)}},
        "in a list": {"model": {"backbone.x": [np.zeros(1), _Call(os.system, cmd)]}},
        "as a dict key": {"model": {_Call(os.system, cmd): np.zeros(1)}},
        "object array": {"model": {"backbone.x": np.array([_Call(os.system, cmd)], dtype=object)}},
    }


def _hand_made(marker: Path) -> dict[str, bytes]:
    """Pickles no Python object produces: opcodes a hostile author writes by hand."""
    cmd = _touch(marker).encode()
    getattr_chain = (  # getattr(__import__("os"), "system")(cmd), protocol 0
        b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(Vos\ntRVsystem\ntR(V" + cmd + b"\ntR."
    )
    return {
        "getattr chain": getattr_chain,
        "numpy.ndarray called with a huge shape": b"cnumpy\nndarray\n((I1000000000000\nttR.",
        "_reconstruct with a huge shape": (
            b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I4000000000\ntVf8\ntR."
        ),
        "bytearray of a huge size": b"c__builtin__\nbytearray\n(I1000000000000\ntR.",
        "BUILD on a dict": b"(dp0\n(dVx\nI1\nsb.",
        "persistent id": b"Pfoo\n.",
        "numpy.load": b"cnumpy\nload\n(V/etc/passwd\ntR.",
        "copyreg reconstructor": b"ccopy_reg\n_reconstructor\n(cos\nsystem\nc__builtin__\nobject\nNtR.",
    }


def _write(path: Path, obj: Any, protocol: int) -> Path:
    with path.open("wb") as file:
        pickle.dump(obj, file, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_hostile_pickles_are_refused_and_run_nothing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    files = {name: _write(tmp_path / f"{i}.pkl", obj, protocol)
             for i, (name, obj) in enumerate(_hostile_payloads(marker).items())}  # fmt: skip
    for i, (name, data) in enumerate(_hand_made(marker).items()):
        files[name] = tmp_path / f"hand{i}.pkl"
        files[name].write_bytes(data)
    for name, path in files.items():
        with pytest.raises(UnsafePickleError, match="refused") as caught:
            load_detectron2_pickle(path)
        assert "Python global" in str(caught.value) or "persistent id" in str(caught.value), name
        with pytest.raises(ValueError, match=r"not a readable detectron2 pickle: .*refused"):
            load_pretrained(path, config="coco-panoptic-r50")
    assert not marker.exists()


def test_the_refusal_names_the_global(tmp_path: Path) -> None:
    path = _write(tmp_path / "model_final_evil.pkl", {"model": {"x": _Call(os.system, "true")}}, 2)
    with pytest.raises(UnsafePickleError, match=r"posix\.system|nt\.system"):
        load_detectron2_pickle(path)


def test_m2f_convert_of_a_hostile_pickle_exits_2_and_runs_nothing(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = _write(tmp_path / "model_final_evil.pkl", _Call(os.system, _touch(marker)), 2)
    code = convert_main([str(evil), "--config", "coco-panoptic-r50", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and not marker.exists() and not (tmp_path / "x.pt").exists()
    assert "refused" in capsys.readouterr().err


def test_a_dtype_state_cannot_make_numbers_hold_objects(tmp_path: Path) -> None:
    """dtype.__setstate__ carries flags; NPY_ITEM_HASOBJECT on a float type would make numpy read raw bytes as
    object pointers."""
    data = pickle.dumps(np.zeros(2), protocol=2)
    flags_zero = b"\xff\xff\xff\xffK\x00t"  # the end of the dtype state: (..., -1, -1, 0)
    assert data.count(flags_zero) == 1
    path = tmp_path / "flags.pkl"
    path.write_bytes(data.replace(flags_zero, b"\xff\xff\xff\xffK\x3ft"))
    with pytest.raises(UnsafePickleError, match="flags"):
        load_detectron2_pickle(path)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_official_pickles_load_bit_identically(tmp_path: Path, protocol: int) -> None:
    """What numpy writes for every dtype and layout a weights file has, at every protocol, as pickle.load reads it."""
    rng = np.random.default_rng(0)
    model = {
        "backbone.f32": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "backbone.f16": rng.standard_normal(7).astype(np.float16),
        "backbone.f64_fortran": np.asfortranarray(rng.standard_normal((4, 6))),
        "backbone.i64": np.arange(5, dtype=np.int64),
        "backbone.big_endian": np.arange(3, dtype=">f4"),
        "backbone.scalar": np.float32(2.5),
        "backbone.empty": np.zeros((0, 3), np.float32),
        "backbone.bool": np.array([True, False]),
    }
    payload = {"model": model, "__author__": "test", "matching_heuristics": True, "ids": {1, 2}, "t": (1, "a")}
    path = _write(tmp_path / "model_final.pkl", payload, protocol)
    with path.open("rb") as file:
        expected = pickle.load(file, encoding="latin1")
    loaded = load_detectron2_pickle(path)
    assert loaded.keys() == expected.keys() and loaded["ids"] == {1, 2} and loaded["t"] == (1, "a")
    for key, value in expected["model"].items():
        got = loaded["model"][key]
        assert type(got) is type(value) and got.dtype == value.dtype and got.shape == value.shape, key
        assert np.asarray(got).tobytes("A") == np.asarray(value).tobytes("A"), key
        if isinstance(value, np.ndarray):
            assert got.flags.f_contiguous == value.flags.f_contiguous, key


# ---------------------------------------------------------------------------------------------------------------
# torch files, HF folders, configs inside checkpoints


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    from tests.runtimes.deployable import tiny_checkpoint

    return tiny_checkpoint(tmp_path / "ours.pt")


def _rezip(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED, edit: Any = None) -> Path:
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w", compression) as out:
        for info in archive.infolist():
            data = archive.read(info.filename)
            out.writestr(info.filename, edit(info.filename, data) if edit else data)
    return dst


def test_a_compressed_torch_file_is_refused_before_it_inflates(checkpoint: Path, tmp_path: Path) -> None:
    bomb = _rezip(checkpoint, tmp_path / "bomb.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match=r"compressed, which torch.save never writes"):
        load_pretrained(bomb)


def test_a_legacy_or_non_zip_torch_file_is_refused(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"not a readable torch checkpoint .*zip archive"):
        read_checkpoint(legacy)


def test_a_config_asking_for_more_than_the_weights_is_refused_before_building(checkpoint: Path, tmp_path: Path) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    huge_width = {**payload, "config": {**payload["config"], "decoder": {**payload["config"]["decoder"],
                                                                          "ffn_dim": 1 << 40}}}  # fmt: skip
    torch.save(huge_width, tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"shape mismatches|does not build"):
        load_pretrained(tmp_path / "wide.pt")
    deep = {**payload, "config": {**payload["config"], "decoder": {**payload["config"]["decoder"],
                                                                    "num_layers": 1_000_000}}}  # fmt: skip
    torch.save(deep, tmp_path / "deep.pt")
    with pytest.raises(ValueError, match=r"more layers than its \d+ weights could fill"):
        load_pretrained(tmp_path / "deep.pt")


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: {**p, "config": "a string"},
        lambda p: {**p, "state_dict": {"w": [1, 2]}},
        lambda p: {**p, "state_dict": 7},
        lambda p: {**p, "meta": {**p["meta"], "class_names": 5}},
        lambda p: {**p, "config": {**p["config"], "backbone": {"kind": "nonsense"}}},
        lambda p: {**p, "config": {**p["config"], "num_classes": -3}},
    ],
)
def test_damaged_fields_of_our_checkpoint_are_value_errors(checkpoint: Path, tmp_path: Path, damage: Any) -> None:
    torch.save(damage(torch.load(checkpoint, weights_only=True)), tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match=r"damaged|does not build|not a tensor|unknown backbone|do not fit"):
        load_pretrained(tmp_path / "damaged.pt")


def test_hostile_hf_folders_are_refused(tmp_path: Path) -> None:
    cases = {
        "huge": lambda f: f.write_bytes(b" " * (17 << 20)),
        "nested": lambda f: f.write_text("[" * 100_000 + "]" * 100_000),
        "a list": lambda f: f.write_text("[1, 2]"),
        "not json": lambda f: f.write_bytes(b"\xff\xfe garbage"),
        "wrong types": lambda f: f.write_text(json.dumps({"backbone_config": 3, "id2label": "x"})),
    }
    for name, write in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "config.json")
        with pytest.raises(ValueError, match=r"config.json"):
            load_pretrained(folder)


def test_an_hf_weights_file_that_lies_about_its_size_is_refused(tmp_path: Path) -> None:
    from train.model.checkpoint import _load_hf_folder  # the weights reader, before any config is applied

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="safetensors"):
        _read_safetensors_only(folder, _load_hf_folder)
    (folder / "model.safetensors").unlink()
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buffer)
    (folder / "pytorch_model.bin").write_bytes(buffer.getvalue())
    _rezip(folder / "pytorch_model.bin", folder / "deflated.bin", zipfile.ZIP_DEFLATED)
    (folder / "deflated.bin").replace(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="compressed"):
        _read_safetensors_only(folder, _load_hf_folder)


def _read_safetensors_only(folder: Path, load: Any) -> None:
    """``load`` (the HF folder reader) with a config that would build: only the weights file can fail."""
    from tests.train.hf_models import RESNET, hf_config

    hf_config(RESNET, num_labels=3, num_queries=4).to_json_file(folder / "config.json")
    try:
        load(folder)
    except ValueError as err:
        if "config.json" in str(err):
            pytest.fail(f"the config was refused, not the weights: {err}")
        raise


def test_hostile_training_configs_are_refused(tmp_path: Path) -> None:
    from train.train_config import load_train_config

    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghij":
        previous = chr(ord(level) - 1)
        laughs.append(f"{level}: &{level} [{', '.join([f'*{previous}'] * 10)}]")  # 10^9 values once expanded
    cases = {
        "laughs.yaml": ("\n".join(laughs), r"expands to more than 100000 values"),
        "python.yaml": ("model: !!python/object/apply:os.system ['touch pwned']", r"does not parse"),
        "nested.json": ("[" * 100_000 + "]" * 100_000, r"nests deeper|does not parse"),
        "huge.yaml": ("x: 1\n" * 300_000, r"not a training config"),
        "list.yaml": ("- 1\n- 2", r"does not hold a mapping"),
    }
    for name, (text, said) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=said):
            load_train_config(tmp_path / name)
    assert not (tmp_path / "pwned").exists()
