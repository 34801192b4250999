"""A batch job's local workers (``--workers N`` above 1): N processes, each a ``UnitWorker`` with its own
``Segmenter``, taking units from one queue (a long video's frame ranges go to several of them).

Processes, not threads: two models in one process share its interpreter lock (the post-processing and the
writing of files are Python) and its engine's thread pinning, and in one measurement gave half the frames per
second per worker that the same workers gave as Ray's processes (docs/batch.md). The processes are spawned (a
fresh interpreter: the parent's engine threads are not forked), so a script that calls ``sdk.batch(...,
workers=2)`` keeps its top level under ``if __name__ == "__main__":``, as with ``multiprocessing``.

A worker sends each frame's progress and each unit's record to this process, which does all the bookkeeping. A
worker that dies (killed, out of memory) leaves its unit without a record: a failed row now, redone by
``--retry-failed``; a worker whose parent is gone stops before writing another frame.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sdk.batch_manifest import BatchError
from sdk.batch_plan import Unit
from sdk.batch_work import UnitWorker

POLL_S = 1.0  # how often the parent looks for a worker that died without a word


class _LocalWorker(UnitWorker):
    """A ``UnitWorker`` that reports each frame to the parent, and stops when the parent is gone."""

    def __init__(self, job: Mapping[str, Any], index: int, messages: Any, parent: int) -> None:
        super().__init__(job, f"local{index}")
        self.messages, self.parent = messages, parent

    def on_frame(self, unit: Unit, number: int) -> None:
        if os.getppid() != self.parent:  # the job was killed: write nothing more
            os._exit(1)
        self.messages.put(("frame", number))


def _serve(job: Mapping[str, Any], index: int, todo: Any, messages: Any, parent: int) -> None:
    """A worker process: units from ``todo`` until its ``None``; records, errors and its end to ``messages``."""
    try:
        worker = _LocalWorker(job, index, messages, parent)
        try:
            for data in iter(todo.get, None):
                messages.put(("record", worker.run(Unit.from_dict(data))))
        finally:
            worker.seg.close()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        pass
    except BaseException as err:  # a bug, or a model that cannot load: the job stops with it
        messages.put(("error", f"{type(err).__name__}: {' '.join(str(err).split())}"))
    finally:
        messages.put(("done", index))


def run_in_processes(
    units: Sequence[Unit],
    job: Mapping[str, Any],
    workers: int,
    on_frame: Callable[[], None],
    on_record: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``units`` on ``workers`` worker processes (``job``: ``sdk.batch_work.job_spec``); ``on_frame`` for
    each frame written, ``on_record`` for each unit's record, both called here as they come."""
    context = multiprocessing.get_context("spawn")
    todo, messages = context.Queue(), context.Queue()
    count = min(workers, len(units))
    for data in [unit.to_dict() for unit in units] + [None] * count:
        todo.put(data)
    pool = [
        context.Process(target=_serve, args=(job, i, todo, messages, os.getpid()), name=f"m2f-batch{i}", daemon=True)
        for i in range(count)
    ]
    for process in pool:
        process.start()
    running = set(range(count))
    try:
        while running:
            try:
                kind, value = messages.get(timeout=POLL_S)
            except queue.Empty:
                running -= {i for i in running if pool[i].exitcode is not None}  # died without a word
                continue
            if kind == "frame":
                on_frame()
            elif kind == "record":
                on_record(value)
            elif kind == "done":
                running.discard(value)
            else:
                raise BatchError(f"a local worker failed: {value}")
    finally:
        for process in pool:
            if process.is_alive():
                process.terminate()
            process.join()
