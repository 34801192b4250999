"""sdk.batch and ``m2f batch`` without Ray (issue 40): an archive of videos and images segmented by local workers,
every decodable frame written exactly once and equal to the frame's labels from one stream through the same model
(so the frame ranges the videos are cut into start and end where they should), bad inputs as rows with their
reason, and resuming: a rerun finishes only what is missing, also after the job was killed mid-way.

The packaged model runs here (its labels differ from frame to frame, so a frame out of place would show); the
COCO / panoptic / overlay formats are tested with a tiny panoptic model in test_batch_outputs.py, Ray in
test_batch_ray.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import sdk
from sdk.batch_manifest import MANIFEST_DIR, BatchError, Manifest, input_key
from sdk.batch_ray import unreachable
from sdk.cli import main as m2f_main
from tests.conftest import REPO_ROOT
from tests.sdk.batch_archive import (
    DEFAULT_MODEL,
    check_destination,
    destination_files,
    make_archive,
    one_stream_labels,
    unit_records,
)


@pytest.fixture(scope="module")
def seg() -> sdk.Segmenter:
    with sdk.Segmenter(**DEFAULT_MODEL) as model:
        yield model


def test_every_frame_once_as_one_stream_gives_it_and_bad_inputs_are_rows(tmp_path: Path, seg) -> None:
    root, out = tmp_path / "archive", tmp_path / "out"
    expected = make_archive(root, frames=12, corrupt_middle=True)
    report = sdk.batch([root], out, DEFAULT_MODEL, chunk_frames=5, workers=2, histograms=True)
    rows = check_destination(out, root, expected)
    assert len(report.inputs) == len(expected) and len(report.failed) == 3
    assert {name.split("@")[0] for name in report.workers} == {"local0", "local1"}  # both workers took units
    assert rows[str(root / "day2/over.mp4")]["note"] == (
        f"decoded {expected['day2/over.mp4'][1]} frames, the container header says 16"
    )
    assert "not a video" in rows[str(root / "broken.mp4")]["note"]
    assert "corrupt from frame 20" in rows[str(root / "day2/mid.mp4")]["note"]
    assert int(rows[str(root / "street.mp4")]["units"]) == 3  # 12 frames in ranges of 5: 0-4, 5-9, 10-
    for name in ("street.mp4", "day2/over.mp4"):
        reference = one_stream_labels(seg, root / name)
        assert len(set(reference)) == len(reference)  # every frame's labels differ: a misplaced frame would show
        labels = out / rows[str(root / name)]["output"] / "labels"
        assert [(labels / f"{k:06d}.png").read_bytes() for k in range(len(reference))] == reference
        histograms = (out / rows[str(root / name)]["output"] / "histograms.csv").read_text().splitlines()
        assert histograms[0].split(",") == ["frame", *seg.metadata["class_names"]]
        assert [int(line.split(",")[0]) for line in histograms[1:]] == list(range(len(reference)))


def test_a_rerun_finishes_only_what_is_missing(tmp_path: Path) -> None:
    root, out = tmp_path / "archive", tmp_path / "out"
    make_archive(root, frames=14)
    listing = tmp_path / "inputs.txt"
    listing.write_text("# the videos by list, the images by pattern\narchive/street.mp4\n")
    sources = [f"@{listing}", str(root / "day2" / "*.png")]
    first = sdk.batch(sources, out, DEFAULT_MODEL, chunk_frames=5)
    assert [r["status"] for r in first.inputs] == ["done", "done"]
    before = destination_files(out)
    street = input_key(root / "street.mp4")
    folder = out / first.inputs[0]["folder"]
    (folder / "labels" / "000007.png").unlink()  # an output lost: its unit (frames 5-9) is redone
    Manifest(out).unit_path(street, 10).unlink()  # a unit whose worker died before its record: redone
    again = sdk.batch(sources, out, DEFAULT_MODEL, chunk_frames=5)
    assert destination_files(out) == before
    assert {start: record["run"] for start, record in unit_records(out, street).items()} == {0: 1, 5: 2, 10: 2}
    assert [r["run"] for r in again.inputs] == [2, 1]  # the still image was left as it was
    assert again.frames == 9 and sum(w["frames"] for w in again.workers.values()) == 9
    third = sdk.batch(sources, out, DEFAULT_MODEL, chunk_frames=5)
    assert third.frames == 0 and [r["run"] for r in third.inputs] == [2, 1]  # nothing left to do
    with pytest.raises(BatchError, match=r"other settings.*chunk_frames"):
        sdk.batch(sources, out, DEFAULT_MODEL, chunk_frames=4)  # outputs of other units are not mixed in


def test_a_job_killed_mid_way_leaves_no_half_file_and_the_rerun_completes(tmp_path: Path) -> None:
    root, out = tmp_path / "archive", tmp_path / "out"
    expected = make_archive(root, frames=24)
    for name in ("broken.mp4", "torn.png"):
        (root / name).unlink()
        del expected[name]
    argv = [sys.executable, "-m", "sdk.cli", "batch", str(root), "--out", str(out), "--target", "cpu",
            "--chunk-frames", "3", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    units = out / MANIFEST_DIR / "units" / input_key(root / "street.mp4")
    deadline = time.monotonic() + 300
    while len(list(units.glob("*.json"))) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    done_before = len(list(units.glob("*.json")))
    assert 2 <= done_before < 8, f"the job was to be killed mid-way: {done_before} of 8 units were done"
    sdk.batch([root], out, {"target": "cpu"}, chunk_frames=3)
    check_destination(out, root, expected)
    runs = [record["run"] for record in unit_records(out, input_key(root / "street.mp4")).values()]
    assert runs.count(1) == done_before and runs.count(2) == 8 - done_before


def test_one_job_per_destination_and_what_cannot_run_is_one_line(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "archive", tmp_path / "out"
    make_archive(root)
    with Manifest(out).lock(), pytest.raises(BatchError, match="another batch job is writing"):
        sdk.batch([root / "day2" / "still.png"], out, DEFAULT_MODEL)
    cases = [
        (["batch", str(tmp_path / "nothing"), "--out", str(out)], "no image or video to segment"),
        (["batch", str(root), "--out", str(root / "street.mp4")], "is a file, not a folder"),
        (["batch", str(root), "--out", str(out), "--no-labels"], "nothing to write"),
        (["batch", str(root), "--out", str(out), "--target", "cpu", "--panoptic"], "need a panoptic model"),
        (["batch", str(root), "--out", str(out), "--chunk-frames", "-1"], "chunk_frames must be >= 0"),
    ]
    for argv, message in cases:
        assert m2f_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert m2f_main(["batch", str(root / "day2" / "still.png"), "--out", str(out), "--target", "cpu", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["status"] for line in lines[:-1]] == ["done"]
    assert "frames_per_s" in json.loads(lines[-1])


def test_no_ray_or_no_cluster_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), np.zeros((60, 80, 3), np.uint8))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: ray.init would retry it for minutes
    assert "refused" in str(unreachable(f"127.0.0.1:{port}")).lower()
    assert unreachable("auto") is None and unreachable(None) is None
    no_ray = "import sys; sys.modules['ray'] = None; from sdk.cli import main; sys.exit(main())"  # no fleet extra
    argv = [sys.executable, "-c", no_ray, "batch", str(image), "--out", str(tmp_path / "out"), "--target", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    job = subprocess.run([*argv, "--ray"], env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 2 and "pip install 'm2f-edge[fleet]'" in job.stderr, job.stderr
    assert "Traceback" not in job.stderr, job.stderr


def test_options_are_one_frozen_dataclass_and_unknown_names_raise() -> None:
    options = sdk.BatchOptions(histograms=True)
    assert options.outputs() == {"labels": True, "overlay": False, "histograms": True, "coco": False,
                                 "panoptic": False}  # fmt: skip
    assert options.splits_videos() and not sdk.BatchOptions(overlay=True).splits_videos()
    with pytest.raises(TypeError, match=r"unknown batch option.*the options are"):
        sdk.BatchOptions.of(options, histogram=True)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        sdk.BatchOptions(workers=0)
