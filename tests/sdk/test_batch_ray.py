"""sdk.batch on Ray Data (issue 40), on a two-CPU Ray cluster this module starts on the loopback and shuts down:
an archive with a corrupt video, a video whose header over-counts its frames and images, with one worker killed
in the middle of a frame range (its process exits on frame 9 of the street clip, once): Ray's retry redoes that
range, every decodable frame is written exactly once, the corrupt input is a row with its reason, the outputs and
records are those of the same job run without Ray, and a rerun finishes only what was missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sdk
from sdk.batch_manifest import input_key
from sdk.batch_plan import Unit
from sdk.batch_ray import UnitActor
from tests.conftest import REPO_ROOT
from tests.sdk.batch_archive import DEFAULT_MODEL, check_destination, destination_files, make_archive, unit_records

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'm2f-edge[fleet]' runs these tests")

KILLED_ON = ("street.mp4", 9)  # the worker holding frame 9 of street.mp4 exits there, the first time only
TIMINGS = {"seconds", "busy_s", "frames_per_s", "inference_ms", "worker", "workers", "run"}


class DiesOnce(UnitActor):
    """The pool's actor, except that the first one to write frame ``KILLED_ON`` exits at once (as a process killed
    by the system would), leaving a marker with its process id beside the destination."""

    def on_frame(self, unit: Unit, number: int) -> None:
        marker = self.manifest.out.parent / "killed.pid"
        if Path(unit.path).name == KILLED_ON[0] and number == KILLED_ON[1] and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module, with this checkout importable by its workers."""
    env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "M2F_CACHE": os.environ["M2F_CACHE"]}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env},
             _node_ip_address="127.0.0.1")  # fmt: skip
    yield
    ray.shutdown()


def _records(report: sdk.BatchReport) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in report.inputs]


def test_ray_job_survives_a_killed_worker_and_gives_what_the_local_job_gives(tmp_path: Path, cluster) -> None:
    root, out, local = tmp_path / "archive", tmp_path / "ray_out", tmp_path / "local_out"
    expected = make_archive(root, frames=14)
    report = sdk.batch([root], out, DEFAULT_MODEL, chunk_frames=5, ray=True, actor=DiesOnce)
    killed = (tmp_path / "killed.pid").read_text()  # the kill happened
    check_destination(out, root, expected)
    retried = unit_records(out, input_key(root / "street.mp4"))[5]  # the range of frames 5-9, redone
    assert retried["status"] == "done" and retried["frames"] == 5 and not retried["worker"].endswith(f":{killed}")
    assert "not a video" in next(r for r in report.inputs if r["input"].endswith("broken.mp4"))["note"]
    assert all(name.startswith("ray@") for name in report.workers) and len(report.workers) >= 2

    without_ray = sdk.batch([root], local, DEFAULT_MODEL, chunk_frames=5, workers=2)  # the same job
    assert destination_files(out) == destination_files(local)  # byte for byte, every label PNG
    assert _records(report) == _records(without_ray)

    street = next(r for r in report.inputs if r["input"].endswith("street.mp4"))
    (out / street["folder"] / "labels" / "000012.png").unlink()  # lost: the range 10- is redone, nothing else
    again = sdk.batch([root], out, DEFAULT_MODEL, chunk_frames=5, ray=True)
    assert {start: r["run"] for start, r in unit_records(out, input_key(root / "street.mp4")).items()} == {
        0: 1, 5: 1, 10: 2
    }  # fmt: skip
    assert again.frames == 4 and destination_files(out) == destination_files(local)
