"""Segment an archive of videos and images, resumably: ``batch(sources, out)`` here, ``m2f batch`` on the shell.

    import sdk
    report = sdk.batch(["footage/", "stills/*.jpg"], "labelled/", {"target": "cpu"}, histograms=True, coco=True)
    print(report.summary())            # inputs done / failed, frames, frames/s per worker; labelled/summary.csv
    sdk.batch(["footage/"], "labelled/", ray="auto")   # the same job on the Ray cluster `ray start` runs here

The job is planned here (``sdk.batch_plan``: inputs, units of work, what an earlier run already finished), run by
local worker threads (the default; no Ray needed) or by a pool of Ray Data actors (``sdk.batch_ray``), both calling
``sdk.batch_work.run_unit`` per unit, and each input is assembled here as soon as its last unit is in
(``sdk.batch_outputs.assemble``: every frame exactly once, then its per-input files). The destination's manifest
(``sdk.batch_manifest``) is the source of truth: a rerun skips what is done and redoes what is not.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from runtimes.cache import file_sha256
from sdk.batch_manifest import BatchError, Manifest
from sdk.batch_options import BatchOptions
from sdk.batch_outputs import assemble, failed_record
from sdk.batch_plan import Input, Plan, Unit, find_inputs, make_plan
from sdk.batch_work import open_segmenter, run_unit, worker_name
from sdk.cli_predict import out_problem
from sdk.segmenter import Segmenter

__all__ = ["BatchError", "BatchOptions", "BatchReport", "batch"]

logger = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What a batch run did: every input's record (input order; ``status`` done or failed, ``note`` why), the
    frames segmented in this run, its wall time and each worker's figures; ``summary_path``: the table."""

    out: Path
    run: int
    inputs: list[dict[str, Any]]
    frames: int = 0
    wall_s: float = 0.0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    summary_path: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [record for record in self.inputs if record.get("status") != "done"]

    @property
    def fps(self) -> float:
        """Frames segmented in this run per second of its wall time."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> str:
        """A few lines for a command line to print at the end."""
        done_now = sum(1 for r in self.inputs if r.get("status") == "done" and r.get("run") == self.run)
        before = sum(1 for r in self.inputs if r.get("run") != self.run)
        lines = [
            f"{len(self.inputs) - len(self.failed)} of {len(self.inputs)} inputs done ({done_now} in this run, "
            f"{before} left as an earlier run finished them), {len(self.failed)} failed; {self.frames} frames in "
            f"{self.wall_s:.1f} s = {self.fps:.2f} frames/s; table: {self.summary_path}"
        ]
        for name, figures in sorted(self.workers.items()):
            lines.append(
                f"  worker {name}: {figures['units']} units, {figures['frames']} frames, "
                f"{figures['frames_per_s']:.2f} frames/s while busy"
            )
        for record in self.failed:
            lines.append(f"  failed: {record['input']}: {record.get('note')}")
        return "\n".join(lines)


def batch(
    sources: str | Path | Sequence[str | Path],
    out: str | Path,
    segmenter: Mapping[str, Any] | None = None,
    options: BatchOptions | None = None,
    *,
    progress: bool | None = False,
    actor: type | None = None,
    **overrides: Any,
) -> BatchReport:
    """Segment every image and video ``sources`` name into ``out``; resumable, each frame written exactly once.

    ``sources``: files, folders (searched recursively), glob patterns and ``@FILE`` lists (one path a line).
    ``segmenter``: the ``Segmenter`` keyword arguments (target, model, task, precision, ...; default: the packaged
    model on ``"auto"``). ``options``: a ``BatchOptions``; ``overrides``: any of its fields by name. ``progress``:
    a progress bar on stderr (None: when stderr is a terminal). ``actor``: with ``ray``, the actor class (a subclass
    of ``sdk.batch_ray.UnitActor``). Inputs that cannot be read or segmented are failed rows of the report, not
    errors; ``BatchError`` when the job cannot run at all (no input, a destination made with other settings, ...).
    """
    options = BatchOptions.of(options, **overrides)
    names = [str(s) for s in ([sources] if isinstance(sources, str | Path) else sources)]
    manifest = Manifest(out)
    problem = out_problem(manifest.out)
    if problem:
        raise BatchError(problem.replace("--out ", "the destination "))
    started = time.perf_counter()
    with manifest.lock():
        inputs, problems = find_inputs(names, manifest)
        if not inputs:
            raise BatchError("no image or video to segment" + (": " + "; ".join(problems) if problems else ""))
        workers, threads = _local_workers(options)
        seg = open_segmenter(segmenter or {}, threads)
        try:
            _check_outputs(seg, options)
            manifest.check_job(_settings(seg, options))
            plan = make_plan(inputs, manifest, options, seg.max_pixels)
            run = manifest.next_run()
            manifest.append_run({"run": run, "event": "start", "time": time.time(), "units": len(plan.todo)})
            tracker = _Tracker(plan, manifest, options, seg.metadata, run, progress)
            with tracker.bar:
                tracker.assemble_ready()
                if plan.todo and options.ray:
                    _run_on_ray(plan, manifest, options, segmenter or {}, run, tracker, actor)
                elif plan.todo:
                    _run_locally(plan.todo, seg, segmenter or {}, workers, threads, manifest, options, run, tracker)
            records = tracker.finish()
        finally:
            seg.close()
        table = manifest.write_summary(records, options.summary)
        report = BatchReport(manifest.out, run, records, tracker.frames, time.perf_counter() - started,
                             tracker.worker_figures(), problems, table)  # fmt: skip
        manifest.append_run({"run": run, "event": "end", "time": time.time(), "frames": report.frames,
                             "wall_s": round(report.wall_s, 3), "workers": report.workers})  # fmt: skip
    return report


def _local_workers(options: BatchOptions) -> tuple[int, int]:
    """(workers, engine threads per worker) here: one worker by default, the cores shared between the workers."""
    workers = options.workers or 1
    return workers, options.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)


def _check_outputs(seg: Segmenter, options: BatchOptions) -> None:
    """Refuse, before any work, outputs this model cannot give."""
    if options.labels and seg.task == "instance":
        raise BatchError("label PNGs need a semantic or panoptic model; this one gives instances (no_labels, coco)")
    if options.panoptic and seg.task != "panoptic":
        raise BatchError(f"COCO panoptic outputs need a panoptic model; this one gives {seg.task} results")
    needs = {"coco": ("pycocotools.mask", "COCO outputs need pycocotools: pip install pycocotools")}
    if options.summary == "parquet":
        needs["summary"] = ("pyarrow.parquet", "a Parquet summary needs pyarrow: pip install 'm2f-edge[fleet]'")
    for option, (module, hint) in needs.items():
        if getattr(options, option):
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise BatchError(hint) from err


def _settings(seg: Segmenter, options: BatchOptions) -> dict[str, Any]:
    """What the outputs depend on: a destination made with other settings is not mixed with this job's."""
    model = seg.model_path
    return {
        "model_sha256": file_sha256(model) if model is not None else None,
        "task": seg.task,
        "precision": seg.precision,
        "outputs": options.outputs(),
        "chunk_frames": options.chunk_frames if options.splits_videos() else 0,
    }


class _Tracker:
    """Records as they come in: the progress bar, each worker's figures, and an input assembled when its last unit
    is in (then its record written: from here on it counts as finished)."""

    def __init__(
        self, plan: Plan, manifest: Manifest, options: BatchOptions, metadata: Any, run: int, progress: bool | None
    ) -> None:
        self.plan, self.manifest, self.options, self.metadata, self.run = plan, manifest, options, metadata, run
        self.pending = {key: {u.start for u in units} - set(plan.records[key]) for key, units in plan.units.items()}
        self.by_key: dict[str, Input] = {item.key: item for item in plan.inputs}
        self.finished: dict[str, dict[str, Any]] = dict(plan.finished)
        self.frames = 0
        self.workers: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        disable = None if progress is None else not progress
        self.bar = tqdm(total=plan.frames_to_do(), unit="frame", disable=disable, dynamic_ncols=True)
        self._postfix()

    def on_frame(self, unit: Unit, number: int) -> None:
        with self.lock:
            self.bar.update()

    def on_record(self, record: dict[str, Any], counted: bool = False) -> None:
        """A unit's record; ``counted``: its frames were already shown frame by frame."""
        key, start = record["key"], int(record["start"])
        self.plan.records[key][start] = record
        self.pending[key].discard(start)
        self.frames += int(record["frames"])
        figures = self.workers.setdefault(str(record.get("worker")), {"units": 0, "frames": 0, "busy_s": 0.0})
        figures["units"] += 1
        figures["frames"] += int(record["frames"])
        figures["busy_s"] += float(record.get("seconds") or 0.0)
        if not counted:
            with self.lock:
                self.bar.update(int(record["frames"]))
        if not self.pending[key]:
            self._assemble(key)

    def assemble_ready(self) -> None:
        """Inputs every unit of which an earlier run finished (only their assembly is left)."""
        for key, pending in self.pending.items():
            if not pending:
                self._assemble(key)

    def _assemble(self, key: str) -> None:
        item = self.by_key[key]
        record = assemble(self.manifest, item, self.plan.units[key], self.plan.records[key], self.options,
                          self.metadata)  # fmt: skip
        record["run"] = self.run
        self.manifest.write_input(record)
        self.finished[key] = record
        if record["status"] != "done":
            logger.warning("%s failed: %s", item.path, record["note"])
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"inputs {len(self.finished) + len(self.plan.failed)}/{len(self.plan.inputs)}")

    def missing(self, reason: str) -> None:
        """Units still without a record when the workers are done: failed records saying why."""
        for key, pending in self.pending.items():
            for unit in [u for u in self.plan.units[key] if u.start in pending]:
                record = {**unit.to_dict(), "status": "failed", "note": reason, "first": unit.start, "frames": 0}
                self.on_record({**record, "ended_short": False, "files": {}, "worker": None, "run": self.run})

    def finish(self) -> list[dict[str, Any]]:
        """Every input's record, in input order."""
        records = []
        for item in self.plan.inputs:
            if item.key in self.plan.failed:
                record = {**failed_record(item, self.plan.failed[item.key]), "run": self.run}
                self.manifest.write_input(record)
            else:
                record = self.finished.get(item.key) or failed_record(item, "not finished (interrupted)")
            records.append(record)
        return records

    def worker_figures(self) -> dict[str, dict[str, Any]]:
        figures = {}
        for name, f in self.workers.items():
            if name != "None":  # units no worker finished (Ray's retries exhausted)
                speed = f["frames"] / f["busy_s"] if f["busy_s"] else 0.0
                figures[name] = {**f, "busy_s": round(f["busy_s"], 3), "frames_per_s": round(speed, 3)}
        return figures


class _Stopped(Exception):
    """The job is stopping (Ctrl-C, or another worker failed): a worker leaves its unit unfinished."""


def _run_locally(
    units: list[Unit],
    seg: Segmenter,
    arguments: Mapping[str, Any],
    workers: int,
    threads: int,
    manifest: Manifest,
    options: BatchOptions,
    run: int,
    tracker: _Tracker,
) -> None:
    """The units on ``workers`` threads here, each with its own Segmenter (the first one uses ``seg``)."""
    todo: queue.Queue[Unit] = queue.Queue()
    for unit in units:
        todo.put(unit)
    results: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    done = object()

    def on_frame(unit: Unit, number: int) -> None:
        if stop.is_set():
            raise _Stopped
        tracker.on_frame(unit, number)

    def work(index: int) -> None:
        own = seg
        try:
            own = seg if index == 0 else open_segmenter(arguments, threads)
            name = worker_name(f"local{index}")
            while not stop.is_set():
                try:
                    unit = todo.get_nowait()
                except queue.Empty:
                    break
                results.put(run_unit(own, unit, manifest, options, name, run, on_frame))
        except _Stopped:
            pass
        except BaseException as err:  # a bug, or a model that cannot load: the job stops with it
            results.put(err)
        finally:
            if own is not seg:
                own.close()
            results.put(done)

    count = min(workers, len(units))
    pool = [threading.Thread(target=work, args=(i,), name=f"m2f-batch{i}", daemon=True) for i in range(count)]
    for thread in pool:
        thread.start()
    try:
        running = count
        while running:
            item = results.get()
            if item is done:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                tracker.on_record(item, counted=True)
    finally:
        stop.set()
        for thread in pool:
            thread.join()


def _run_on_ray(
    plan: Plan,
    manifest: Manifest,
    options: BatchOptions,
    arguments: Mapping[str, Any],
    run: int,
    tracker: _Tracker,
    actor: type | None,
) -> None:
    from sdk import batch_ray

    job = {"out": str(manifest.out), "options": options.outputs() | {"chunk_frames": options.chunk_frames},
           "segmenter": dict(arguments), "run": run, "threads": options.threads_per_worker or 1}  # fmt: skip
    batch_ray.run_on_ray(plan.todo, job, options, tracker.on_record, actor or batch_ray.UnitActor)
    tracker.missing(f"no record after Ray's {batch_ray.MAX_TASK_RETRIES} retries: its worker died on it every time")
