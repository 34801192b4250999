"""``m2f predict`` and the help texts, run as a user runs them: ``python -m sdk.cli`` in a subprocess, with the
packaged default model on ONNX Runtime, on image trees built here."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk.cli_predict import find_images, output_paths
from tests.conftest import REPO_ROOT, interruptible

TARGET = ("--target", "onnxruntime")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "M2F_CACHE": str(tmp_path / "cache")}


def m2f(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdk.cli", *args],
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _image(path: Path, seed: int, shape: tuple[int, ...] = (60, 80, 3), dtype: type = np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    high = np.iinfo(dtype).max
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, high, shape, dtype=dtype, endpoint=True))
    return path


def _no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_batch_of_folders_and_globs_mirrors_reports_and_goes_on(tmp_path):
    """Folders (recursive), globs, same names in one folder and in two, a 16-bit PNG, an unreadable file, a
    missing source: every image is segmented once, nothing overwritten, failures listed, one JSON line per image."""
    _image(tmp_path / "in" / "a" / "x.jpg", 0)
    wide = np.random.default_rng(1).integers(0, 65535, (60, 80, 3), dtype=np.uint16, endpoint=True)
    cv2.imwrite(str(tmp_path / "in" / "a" / "x.png"), wide)  # 16-bit, same stem as x.jpg
    cv2.imwrite(str(tmp_path / "in" / "a" / "x8.png"), (wide >> 8).astype(np.uint8))  # what 16 bits should become
    _image(tmp_path / "in" / "b" / "deeper" / "x.jpg", 2)  # same file name in another folder
    (tmp_path / "in" / "b" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "in" / "b" / "notes.txt").write_text("not an image, not a candidate")
    done = m2f("predict", "in", "in/**/*.jpg", "missing.png", "--out", "out", "--json", *TARGET, cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 1, done.stderr[-3000:]  # some failed: non-zero, and said which
    records = [json.loads(line) for line in done.stdout.splitlines()]  # every line one object
    by_file = {Path(r["file"]).relative_to("in").as_posix(): r for r in records}
    assert sorted(by_file) == ["a/x.jpg", "a/x.png", "a/x8.png", "b/broken.png", "b/deeper/x.jpg"]
    assert "decod" in by_file["b/broken.png"]["error"] and by_file["b/broken.png"]["output"] is None
    outputs = {name: r["output"] for name, r in by_file.items() if "error" not in r}
    assert outputs == {
        "a/x.jpg": "out/a/x_jpg_seg.png",
        "a/x.png": "out/a/x_png_seg.png",
        "a/x8.png": "out/a/x8_seg.png",
        "b/deeper/x.jpg": "out/b/deeper/x_seg.png",
    }
    for output in outputs.values():
        assert cv2.imread(str(tmp_path / output)).shape == (60, 80, 3)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == sorted(
        o.removeprefix("out/") for o in outputs.values()
    )
    # the 16-bit PNG is segmented as its 8-bit (>> 8) version
    assert by_file["a/x.png"]["classes"] == by_file["a/x8.png"]["classes"]
    assert by_file["a/x.png"]["size"] == [60, 80] and by_file["a/x.png"]["ms"] > 0
    assert "missing.png: no such file or folder" in done.stderr
    summary = done.stderr.strip().splitlines()[-1]
    assert "4 of 5 images segmented" in summary and "1 failed: in/b/broken.png" in summary
    assert "ms per image" in summary and "1 source(s) named no image" in summary


def test_one_image_prints_what_it_wrote_with_timing(tmp_path):
    _image(tmp_path / "street.jpg", 3)
    done = m2f("predict", "street.jpg", "--out", "seg", *TARGET, cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip()
    assert line.startswith("street.jpg -> seg/street_seg.png") and " ms " in line, line
    assert (tmp_path / "seg" / "street_seg.png").is_file()
    assert "1 of 1 images segmented" in done.stderr and "overlays under seg" in done.stderr
    again = m2f("predict", "street.jpg", "--json", *TARGET, cwd=tmp_path)
    assert again.returncode == 0 and isinstance(json.loads(again.stdout), dict)  # one image: the same one-line object


@pytest.mark.parametrize("out", ["afile", "afile/sub"])
def test_out_that_cannot_be_a_folder_is_a_message(tmp_path, out):
    _image(tmp_path / "street.jpg", 3)
    (tmp_path / "afile").write_text("a file, not a folder")
    done = m2f("predict", "street.jpg", "--out", out, *TARGET, cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 2
    assert f"m2f predict: --out {out}" in done.stderr and "afile is a file" in done.stderr


def test_bad_models_are_messages(tmp_path):
    _image(tmp_path / "street.jpg", 3)
    (tmp_path / "x.onnx").mkdir()
    import torch

    torch.save(torch.nn.Linear(2, 2), tmp_path / "foreign.pt")
    for model, said in (("x.onnx", "x.onnx is a directory"), ("foreign.pt", "foreign.pt is not an m2f checkpoint")):
        done = m2f("predict", "street.jpg", "--model", model, *TARGET, cwd=tmp_path)
        _no_traceback(done)
        assert done.returncode == 2 and said in done.stderr, done.stderr[-2000:]
        assert "weights_only" not in done.stderr


def test_ctrl_c_stops_the_batch_reports_and_exits_130(tmp_path):
    for i in range(30):
        _image(tmp_path / "many" / f"{i:02d}.jpg", i)
    process = subprocess.Popen(
        interruptible([sys.executable, "-m", "sdk.cli", "predict", "many", "--out", "out", *TARGET]),
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stdout.readline()  # one image done: the batch is running
    assert first.startswith("many/00.jpg -> out/00_seg.png"), first
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    summary = stderr.strip().splitlines()[-1]
    done = 1 + len(stdout.splitlines())
    assert f"{done} of 30 images segmented" in summary and "interrupted (Ctrl-C)" in summary, summary
    assert done < 30
    # every counted image was written (a signal between writing and counting would leave one more)
    assert done <= len(list((tmp_path / "out").glob("*.png"))) <= done + 1


def test_ctrl_c_inside_a_c_call_is_still_an_interrupt(tmp_path, monkeypatch, capsys):
    """Seen in the test above once: Ctrl-C while np.fromfile asked a Path for its name came out as a SystemError
    caused by the KeyboardInterrupt, and m2f predict died with a traceback (exit 1)."""
    from sdk import cli_predict
    from sdk.cli import main

    for i in range(3):
        _image(tmp_path / "many" / f"{i}.jpg", i)
    real = cli_predict.read_image

    def read_image(path: Path, max_pixels: int | None) -> np.ndarray:
        if path.name == "1.jpg":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as err:
                raise SystemError("<function PurePath.__str__> returned a result with an exception set") from err
        return real(path, max_pixels)

    monkeypatch.setattr(cli_predict, "read_image", read_image)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "many", "--out", "out", *TARGET]) == 130
    assert "1 of 3 images segmented" in capsys.readouterr().err
    monkeypatch.setattr(cli_predict, "read_image", lambda *args: (_ for _ in ()).throw(SystemError("a real bug")))
    with pytest.raises(SystemError, match="a real bug"):  # not a Ctrl-C: not hidden
        main(["predict", "many", "--out", "out", *TARGET])


def test_reader_leaving_early_stops_quietly(tmp_path):
    """``m2f predict DIR --json | head -1``: no traceback when the pipe closes."""
    for i in range(4):
        _image(tmp_path / "many" / f"{i}.jpg", i)
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli", "predict", "many", "--json", *TARGET],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert json.loads(process.stdout.readline())["file"] == "many/0.jpg"
    process.stdout.close()  # as head does after its line
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr[-3000:]


def test_progress_bar_only_on_a_terminal(tmp_path):
    _image(tmp_path / "street.jpg", 3)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a size
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli", "predict", "street.jpg", *TARGET],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    # the bar as tqdm draws it ("0/1 [..., ?image/s]"); whether it redraws at 1/1 before it closes depends on how
    # fast the image was (its refresh interval is 0.1 s), so any count of 1 will do
    assert b"/1 [" in seen and (b"image/s" in seen or b"s/image" in seen), seen[-2000:]
    piped = m2f("predict", "street.jpg", *TARGET, cwd=tmp_path)
    assert "/1 [" not in piped.stderr and "image/s" not in piped.stderr and "s/image" not in piped.stderr


def test_predict_and_stream_have_their_own_help(tmp_path):
    top, predict, stream = (m2f(*args, cwd=tmp_path) for args in (["-h"], ["predict", "-h"], ["stream", "-h"]))
    assert top.returncode == predict.returncode == stream.returncode == 0
    assert "On the device" in top.stdout and "m2f COMMAND -h" in top.stdout
    for command in ("predict", "stream", "export", "train", "info"):
        assert command in top.stdout
    for text in ("folder", "glob", ">> 8", "exit status", "130", "_seg.png"):
        assert text in predict.stdout, text
    assert predict.stdout != stream.stdout and "glob" not in stream.stdout


def test_output_paths_never_collide(tmp_path, monkeypatch):
    names = ["a/x.jpg", "a/x.png", "a/x_jpg.png", "b/x.jpg", "c/y.JPG", "c/y.jpg"]
    for name in names:
        _image(tmp_path / name, 0, (20, 20, 3))
    monkeypatch.chdir(tmp_path)
    images, problems = find_images(["a", "b/x.jpg", "c/*.jpg", "c/y.JPG", "a/x.jpg"])  # a/x.jpg: named twice
    assert problems == []
    assert [i.as_posix() for i, _ in images] == ["a/x.jpg", "a/x.png", "a/x_jpg.png", "b/x.jpg", "c/y.jpg", "c/y.JPG"]
    outputs = [p.as_posix() for p in output_paths(images, Path("out"))]
    assert outputs == [
        "out/a/x_jpg_seg.png",  # x.jpg and x.png share a stem: both keep their extension
        "out/a/x_png_seg.png",
        "out/a/x_jpg_seg_2.png",  # x_jpg.png's own name is taken by then: a counter
        "out/b/x_seg.png",  # another folder: its own name
        "out/c/y_jpg_seg.png",
        "out/c/y_jpg_seg_2.png",  # y.JPG: the extension is lower-cased, so a counter too
    ]
    assert find_images(["nothing", "a/*.gif"])[1] == [
        "nothing: no such file or folder",
        "a/*.gif: no image matches this pattern",
    ]


def test_predict_takes_precision_and_input_size_like_segmenter(tmp_path):
    """``--precision`` and ``--input-size`` reach the Segmenter; what runs is named on stderr; a bad value is a
    usage message."""
    _image(tmp_path / "street.jpg", 4)
    done = m2f("predict", "street.jpg", "--precision", "fp32", *TARGET, cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on onnxruntime (cpu), fp32: asked for" in done.stderr, done.stderr
    for bad in (("--input-size", "16x16"), ("--precision", "int4")):
        refused = m2f("predict", "street.jpg", *bad, *TARGET, cwd=tmp_path)
        _no_traceback(refused)
        assert refused.returncode == 2 and bad[0] in refused.stderr, refused.stderr


def test_info_prints_the_artifact_schema(tmp_path):
    shown = m2f("info", "--schema", cwd=tmp_path)
    assert shown.returncode == 0 and "format_version 1" in shown.stdout
    assert "\n    resize_policy: one of 'letterbox', 'shortest_edge'" in shown.stdout
