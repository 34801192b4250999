"""A batch job on Ray Data (``m2f batch --ray [ADDRESS]``, ``sdk.batch(..., ray=...)``); needs the ``fleet`` extra.

The units become a dataset of JSON texts (plain data: nothing a worker receives from the job is code), one block
each; ``map_batches`` runs them on a fixed pool of ``UnitActor`` actors, each holding one ``Segmenter`` loaded once.
A worker opens the source file itself (decoding happens on the workers: a video's frame ranges go to many of them)
and writes straight into the destination, which must be a folder every node sees at the same path (a shared file
system). Each actor returns its units' records, which the driver collects for progress and assembly.

A worker that dies mid-unit (killed, out of memory, a crashing decoder) is restarted by Ray and the unit retried
(``MAX_TASK_RETRIES`` times): the retry writes the same files again, whole, so nothing is half or twice there. A unit
that kills its worker every time is left without a record and becomes a failed row, not a stopped job.
"""

from __future__ import annotations

import json
import logging
import socket
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sdk.batch_manifest import BatchError, Manifest
from sdk.batch_options import BatchOptions
from sdk.batch_plan import Unit
from sdk.batch_work import open_segmenter, run_unit, worker_name

logger = logging.getLogger(__name__)

MAX_TASK_RETRIES = 3  # tries of a unit after the first whose worker died; its actor is restarted each time
FLEET_HINT = "pip install 'm2f-edge[fleet]' (Ray Data)"


class UnitActor:
    """One Ray actor of the pool: a ``Segmenter`` loaded once, then ``run_unit`` for every unit it is given.

    ``job``: the destination (``out``), the outputs asked (``options``), the ``Segmenter`` arguments
    (``segmenter``), engine ``threads`` and the ``run`` number. Subclasses may override ``on_frame``, which is
    called after each frame's files are written.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.manifest = Manifest(job["out"])
        self.options = BatchOptions(**job["options"])
        self.run = int(job["run"])
        self.seg = open_segmenter(job["segmenter"], int(job["threads"]))
        self.name = worker_name("ray")

    def on_frame(self, unit: Unit, number: int) -> None:
        """After frame ``number`` of ``unit`` is written (nothing here)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        records = []
        for text in batch["unit"]:
            unit = Unit.from_dict(json.loads(str(text)))
            record = run_unit(self.seg, unit, self.manifest, self.options, self.name, self.run, self.on_frame)
            records.append(json.dumps(record))
        return {"record": records}


def unreachable(address: str | None, timeout_s: float = 5.0) -> str | None:
    """Why a ``host:port`` (or ``ray://host:port``) cluster address takes no connection, or None (also for None,
    ``auto`` and other names Ray resolves itself): ``ray.init`` would retry an address that is down for minutes."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        return str(err.strerror or err)
    return None


def run_on_ray(
    units: Sequence[Unit],
    job: dict[str, Any],
    options: BatchOptions,
    on_record: Callable[[dict[str, Any]], None],
    actor: type = UnitActor,
) -> int:
    """Run ``units`` on a pool of ``actor`` on the Ray cluster ``options.ray`` names (a cluster already joined with
    ``ray.init`` is used as it is); ``on_record`` gets each unit's record as it comes. The pool's size."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise BatchError(f"--ray needs Ray: {FLEET_HINT}") from err
    started_here = not ray.is_initialized()
    if started_here:
        address = None if options.ray is True else str(options.ray)
        refused = unreachable(address)
        if refused:
            raise BatchError(f"cannot reach the Ray cluster at {address}: {refused}")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise BatchError(f"cannot reach the Ray cluster {address or '(default)'}: {err}") from err
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.max_errored_blocks, context.print_on_execution_start)
    try:
        context.enable_progress_bars = False  # the job's own bar counts frames and inputs
        context.print_on_execution_start = False
        context.max_errored_blocks = len(units)  # a unit whose worker always dies becomes a failed row
        threads = int(job["threads"])
        size = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        size = min(size, len(units))
        logger.info("Ray: %d units on %d actors of %d CPU each", len(units), size, threads)
        items = [{"unit": json.dumps(unit.to_dict())} for unit in units]
        with warnings.catch_warnings():
            # max_task_retries has no named parameter in Ray 2.60 (the fleet extra stops before 2.64, which drops
            # the keyword); without it a unit that kills its worker would be retried for ever
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                actor,
                fn_constructor_kwargs={"job": job},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=threads,
                max_task_retries=MAX_TASK_RETRIES,
            )
        for row in dataset.iter_rows():
            on_record(json.loads(row["record"]))
        return size
    finally:
        context.enable_progress_bars, context.max_errored_blocks, context.print_on_execution_start = saved
        if started_here:
            ray.shutdown()
