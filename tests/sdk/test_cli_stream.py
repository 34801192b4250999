"""``m2f stream``: header accounting, Ctrl-C, bad output paths, the progress bar, one summary, its own help.

Runs the real command line (in-process, or as a subprocess where signals and terminals matter) on the tiny
ONNX Runtime artifact and clips written here with OpenCV.
"""

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
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import sdk
from sdk import cli
from tests.conftest import REPO_ROOT, interruptible
from tests.sdk.clips import header_and_decoded, over_counting_clip, write_clip

SUMMARY = "mean ms per stage"  # a phrase of StreamStats.summary()


def m2f_stream(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sdk.cli", "stream", *map(str, args)]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def test_clip_whose_header_over_counts_exits_0_with_its_json_line(artifacts, tmp_path, capsys) -> None:
    clip = over_counting_clip(tmp_path / "over.mp4", 60)
    declared, decodable = header_and_decoded(clip)
    assert declared == 60 > decodable > 0
    out = tmp_path / "out.mp4"
    model = ["--model", str(artifacts["semantic"]), "--target", "onnxruntime"]
    assert cli.main(["stream", str(clip), *model, "--out", str(out), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (figures["frames"], figures["frames_decoded"], figures["frames_in_header"]) == (decodable, decodable, 60)
    assert figures["written"] == decodable and not figures["interrupted"]
    assert header_and_decoded(out) == (decodable, decodable)

    assert cli.main(["stream", str(clip), *model, "--strict", "--json"]) == 2
    captured = capsys.readouterr()
    assert "m2f stream: decoded" in captured.err and "strict" in captured.err and captured.out == ""


def test_out_whose_parent_is_a_file_is_a_message_not_a_traceback(artifacts, tmp_path, capsys) -> None:
    clip = write_clip(tmp_path / "clip.mp4", 5)
    (tmp_path / "file").write_text("not a folder")
    argv = ["stream", str(clip), "--model", str(artifacts["semantic"]), "--out", str(tmp_path / "file" / "o.mp4")]
    assert cli.main(argv) == 2
    assert "m2f stream: cannot write" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_finishes_the_video_and_prints_the_stats(artifacts, tmp_path) -> None:
    clip = write_clip(tmp_path / "long.mp4", 2000)
    out = tmp_path / "out.mp4"
    argv = m2f_stream(clip, "--model", artifacts["semantic"], "--target", "onnxruntime", "--out", out, "--json")
    process = subprocess.Popen(
        interruptible(argv), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    err_lines: list[str] = []
    writing = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            err_lines.append(line)
            if "writing" in line:  # the first frame is being written
                writing.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert writing.wait(120), "".join(err_lines)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        stdout = process.stdout.read()  # not communicate(): it would read stderr too, racing the reader thread
    finally:
        process.kill()
    reader.join(10)
    stderr = "".join(err_lines)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "m2f stream: interrupted after" in stderr and stderr.count(SUMMARY) == 1, stderr
    figures = json.loads(stdout.strip().splitlines()[-1])
    assert figures["interrupted"] and 0 < figures["frames"] < 2000
    assert header_and_decoded(out) == (figures["written"], figures["written"])  # a finished, readable video


def run_with_stderr(argv: list[str], terminal: bool) -> tuple[int, str]:
    """Run ``argv``; its stderr through a pseudo-terminal (``terminal``) or a pipe."""
    if not terminal:
        done = subprocess.run(argv, env=environment(), capture_output=True, text=True, timeout=120)
        return done.returncode, done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 x 120: a new pty has no size
    process = subprocess.Popen(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(60), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_progress_bar_only_on_a_terminal_and_the_summary_once(artifacts, tmp_path, terminal: bool) -> None:
    clip = write_clip(tmp_path / "clip.mp4", 40)
    code, stderr = run_with_stderr(
        m2f_stream(clip, "--model", artifacts["semantic"], "--target", "onnxruntime"), terminal
    )
    assert code == 0, stderr
    assert ("40/40" in stderr) == terminal, stderr
    assert stderr.count(SUMMARY) == 1, stderr


def test_stream_has_its_own_help(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["stream", "--help"])
    text = capsys.readouterr().out
    assert "--strict" in text and "--max-frames" in text and "Exit status: 0 done, 2 error, 130 interrupted" in text
    assert "output folder (predict)" not in text


def test_file_streams_are_stabilised_by_default_live_ones_not_and_the_flags_force_it(artifacts, tmp_path, capsys):
    """Issue 38: ``m2f stream`` of a file (like ``seg.stream`` and ``m2f demo``) holds labels still unless told not
    to; a live source (here a file played on its clock) does not by default: the stabiliser's time per frame would
    drop frames (``benchmarks.live``)."""
    from sdk.stream_options import StreamOptions

    assert StreamOptions().for_source("file").stabilize and not StreamOptions().for_source("camera").stabilize
    assert StreamOptions(stabilize=True).for_source("camera").stabilize
    clip = write_clip(tmp_path / "clip.mp4", 6)
    model = ["--model", str(artifacts["semantic"]), "--target", "onnxruntime", "--json"]
    stages = []
    for flag in ([], ["--no-stabilize"], ["--stabilize"], ["--realtime"], ["--realtime", "--stabilize"]):
        assert cli.main(["stream", str(clip), *model, *flag]) == 0
        stages.append("stabilize" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stage_ms"])
    assert stages == [True, False, True, False, True]


def test_realtime_carry_gives_every_frame_and_a_file_without_realtime_is_refused(artifacts, tmp_path, capsys) -> None:
    clip = write_clip(tmp_path / "clip.mp4", 30, fps=30.0)
    model = ["--model", str(artifacts["semantic"]), "--target", "onnxruntime"]
    assert cli.main(["stream", str(clip), *model, "--realtime", "--carry", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["frames"] == figures["frames_decoded"] == 30 and figures["dropped"] == 0
    assert 0 <= figures["frames_carried"] < 30
    assert cli.main(["stream", str(clip), *model, "--carry"]) == 2  # a file played as fast as it decodes
    assert "carry skips model runs" in capsys.readouterr().err


def test_a_source_without_one_decodable_frame_is_an_error(artifacts, tmp_path, capsys) -> None:
    """A corrupt image whose header OpenCV accepts (it declares one frame) yielded nothing and exited 0."""
    image = tmp_path / "broken.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # the header intact, half the pixels gone
    model = ["--model", str(artifacts["semantic"]), "--target", "onnxruntime"]
    assert cli.main(["stream", str(image), *model, "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "no decodable frames" in err and "Traceback" not in err  # this OpenCV refuses it when opening
    with sdk.Segmenter("onnxruntime", model=artifacts["semantic"]) as seg, pytest.raises(sdk.StreamError):
        list(seg.stream(image))
