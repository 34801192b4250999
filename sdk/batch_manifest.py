"""A batch job's record in its destination: what is done, what failed and why. The source of truth for resuming.

    OUT/.m2f-batch/
        job.json                  what the outputs depend on: the model file's hash, task, outputs asked, chunk size
        lock                      held (flock) while a job writes to OUT: one job per destination at a time
        units/<key>/<start>.json  one piece of work done (an image, or a video's frame range), written last
        parts/<key>/<start>.*     its share of the per-input files (histogram rows, COCO, panoptic annotations)
        inputs/<key>.json         one input finished (done or failed), written after its files were assembled
        runs.jsonl                one line per run: frames, wall time, throughput per worker
    OUT/summary.csv               one row per input of the last run, from inputs/*.json (or summary.parquet)

Every file is written whole or not at all (a temporary file in the same folder, then a rename): a worker killed
mid-write leaves a temporary file that no record names, never a half file that counts as done. A record claims
only files that exist with the sizes it lists, and a rerun checks that before it skips anything.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runtimes.errors import M2FError

MANIFEST_DIR = ".m2f-batch"
MANIFEST_FORMAT = 1  # job.json's "format": a record of another format is not read as this one
TEMP_MARK = ".tmp-"  # in the name of a file being written; no record ever names one
SUMMARY_COLUMNS = (
    "input", "kind", "status", "note", "frames", "frames_in_header", "height", "width", "units", "busy_s",
    "frames_per_s", "inference_ms", "output", "run",
)  # fmt: skip


class BatchError(M2FError, RuntimeError):
    """A batch job cannot start or go on (its destination, its settings or its inputs); the message says why."""


def atomic_write(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` whole or not at all (temporary file, then rename); the size written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return len(data)


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path`` with its suffix (a video writer picks its container from it)."""
    return path.with_name(f".{path.stem}{TEMP_MARK}{uuid.uuid4().hex[:12]}{path.suffix}")


def atomic_json(path: Path, record: Mapping[str, Any]) -> int:
    return atomic_write(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None when there is none (or it is not one of ours: then it does not count as done)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def csv_text(header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """CSV of ``rows`` under ``header`` (None: rows only)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def input_key(path: str | Path) -> str:
    """The name of an input's records: a hash of its absolute path (stable across runs, safe as a file name)."""
    return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:20]


def fingerprint(path: str | Path) -> dict[str, int]:
    """What says a file changed since its record was written: its size and modification time."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def label_name(frame: int) -> str:
    """The file name of a frame's per-frame outputs (``labels/``, ``panoptic/``)."""
    return f"{frame:06d}.png"


def files_present(root: Path, files: Mapping[str, int]) -> bool:
    """Whether every file a record names exists under ``root`` with the size it records."""
    for name, size in files.items():
        try:
            if (root / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def frames_present(folder: Path, first: int, count: int, kinds: Sequence[str]) -> bool:
    """Whether the per-frame files of frames ``first .. first + count - 1`` exist (non-empty) in each of the
    ``kinds`` folders (``labels``, ``panoptic``) of an input's output ``folder``."""
    for kind in kinds:
        for frame in range(first, first + count):
            try:
                if (folder / kind / label_name(frame)).stat().st_size == 0:
                    return False
            except OSError:
                return False
    return True


class Manifest:
    """The records under ``OUT/.m2f-batch``; ``lock()`` while writing."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.root = self.out / MANIFEST_DIR

    def unit_path(self, key: str, start: int) -> Path:
        return self.root / "units" / key / f"{start}.json"

    def part_path(self, key: str, start: int, kind: str) -> Path:
        return self.root / "parts" / key / f"{start}.{kind}"

    def input_path(self, key: str) -> Path:
        return self.root / "inputs" / f"{key}.json"

    def unit(self, key: str, start: int) -> dict[str, Any] | None:
        return read_json(self.unit_path(key, start))

    def input(self, key: str) -> dict[str, Any] | None:
        return read_json(self.input_path(key))

    def write_unit(self, record: Mapping[str, Any]) -> None:
        atomic_json(self.unit_path(record["key"], record["start"]), record)

    def write_input(self, record: Mapping[str, Any]) -> None:
        atomic_json(self.input_path(record["key"]), record)

    def stale(self, key: str, stamp: Mapping[str, int]) -> bool:
        """Whether a record of this input was made from another version of its file (``fingerprint``)."""
        records = [self.input(key)] + [read_json(p) for p in sorted((self.root / "units" / key).glob("*.json"))]
        return any(r is not None and r.get("fingerprint") != stamp for r in records)

    def forget(self, key: str) -> None:
        """Drop an input's records (its file changed: everything of it is redone)."""
        for folder in (self.root / "units" / key, self.root / "parts" / key):
            if folder.is_dir():
                for path in folder.iterdir():
                    path.unlink(missing_ok=True)
        self.input_path(key).unlink(missing_ok=True)

    def check_job(self, settings: Mapping[str, Any]) -> None:
        """Record the job's settings, or check them against the ones the destination was made with: outputs made
        with another model or other options must not be mixed with these (``BatchError`` naming the difference)."""
        path = self.root / "job.json"
        settings = {"format": MANIFEST_FORMAT, **settings}
        before = read_json(path)
        if before is None:
            atomic_json(path, settings)
            return
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            what = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise BatchError(
                f"{self.out} holds the outputs of a job with other settings ({what}); write to another --out, or "
                f"delete {self.root} to start this one afresh"
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the destination's lock for the life of a job (a second job on it fails at once, naming it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one job per destination is then the user's to keep
            yield
            return
        with (self.root / "lock").open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                handle.seek(0)
                raise BatchError(f"another batch job is writing to {self.out} ({handle.read().strip()})") from err
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append_run(self, record: Mapping[str, Any]) -> None:
        """One line of ``runs.jsonl`` (``{"run": n, "event": "start"}`` when a run starts, its figures at its end)."""
        with (self.root / "runs.jsonl").open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def next_run(self) -> int:
        """The number of the run about to start (1 for a fresh destination): records say which run made them."""
        try:
            lines = (self.root / "runs.jsonl").read_text().splitlines()
        except OSError:
            return 1
        runs = [json.loads(line).get("run", 0) for line in lines if line.strip()]
        return max(runs, default=0) + 1

    def folders(self, wanted: Mapping[str, str]) -> dict[str, str]:
        """Each input key's output folder (relative to OUT), for good: the one recorded for it before, else the one
        ``wanted`` (with a counter if another input holds it). Recorded, so that a rerun with other sources finds
        the outputs where they are."""
        path = self.root / "folders.json"
        known: dict[str, str] = read_json(path) or {}
        taken = set(known.values()) | {MANIFEST_DIR, "summary.csv", "summary.parquet"}
        for key, folder in wanted.items():
            if key in known:
                continue
            candidate, n = folder, 2
            while candidate in taken:
                candidate, n = f"{folder}_{n}", n + 1
            known[key] = candidate
            taken.add(candidate)
        atomic_json(path, known)
        return {key: known[key] for key in wanted}

    def write_summary(self, records: Sequence[Mapping[str, Any]], form: str = "csv") -> Path:
        """``OUT/summary.csv`` or ``OUT/summary.parquet`` (``form``): one row per input, in input order
        (``SUMMARY_COLUMNS``; in Parquet a missing value is null, in CSV an empty cell)."""
        path = self.out / f"summary.{form}"
        if form == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            sink = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in SUMMARY_COLUMNS} for r in records]), sink)
            atomic_write(path, sink.getvalue().to_pybytes())
            return path
        rows = [[_cell(record.get(column)) for column in SUMMARY_COLUMNS] for record in records]
        atomic_write(path, csv_text(SUMMARY_COLUMNS, rows).encode())
        return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value
