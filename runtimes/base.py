"""The Backend interface: an engine session over one artifact; numpy in, numpy out, tensors by name."""

from __future__ import annotations

import abc
import logging
import queue
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Generic, TypeVar

import numpy as np

from runtimes.artifact import validate_metadata
from runtimes.artifact_file import engine_reads
from runtimes.errors import ArtifactError, M2FError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BackendInputError(M2FError, ValueError):
    """The inputs given to :meth:`Backend.run` do not match what the artifact expects."""


class RuntimeNotAvailable(M2FError, ImportError):
    """The runtime's Python package (or its backend module) is not installed; the message says what to install."""


class DeviceNotAvailable(M2FError, RuntimeError):
    """The runtime is installed but cannot reach the asked-for device (no GPU, wrong build, driver missing)."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dim) and numpy dtype of one engine input."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name!r} {self.dtype} ({dims})"


class ExclusivePool(Generic[T]):
    """Engine objects that serve one call at a time (OpenVINO infer requests, TensorRT execution contexts).

    ``with pool.borrow() as item:`` hands a free item to the calling thread alone and blocks while none is free.
    """

    def __init__(self, items: Iterable[T]) -> None:
        self._items = list(items)
        if not self._items:
            raise ValueError("an ExclusivePool needs at least one item")
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        for item in self._items:
            self._free.put(item)

    def __len__(self) -> int:
        return len(self._items)

    @contextmanager
    def borrow(self) -> Iterator[T]:
        item = self._free.get()
        try:
            yield item
        finally:
            self._free.put(item)


class Backend(abc.ABC):
    """One engine session over one artifact. Subclasses set ``name`` and implement the abstract members.

    What really runs, in the project's own words (``runtimes.vocabulary``), whatever the engine calls it:
    :attr:`runtime` (the engine: ``"openvino"``, ...), :attr:`device` (``"cpu"``, ``"cuda"``, ...) and
    :attr:`precision` (what the engine computes in: ``"fp32"``, ``"bf16"``, ``"int8"``, ...). Each engine sets
    the last two once it is loaded; the engine's own spelling, where it has one, keeps its own attribute name.

    Use as a context manager, or call :meth:`close` when done.

    Thread safety: one backend may be shared by any number of threads (and streams); :meth:`run` is safe to call
    concurrently and every call returns the outputs of its own inputs. How each engine holds that: OpenVINO runs
    each call on an infer request borrowed from a pool (:attr:`concurrency` requests) and copies the outputs out
    before the request is reused; ONNX Runtime's ``InferenceSession.run`` is re-entrant (outputs are fresh arrays
    per call); torch serialises calls with a lock; TensorRT gives each thread its own execution context. The
    input checks here only read the engine's specs, so they share nothing mutable between calls.
    """

    name: ClassVar[str] = "base"
    device: str
    precision: str

    def __init__(self, metadata: dict, path: str | Path | None = None) -> None:
        self._metadata = validate_metadata(metadata)
        self.path = None if path is None else Path(path)
        self._closed = False
        self.device = "cpu"
        self.precision = self._metadata["precision"]  # an engine that lowers it says so once loaded
        if self._metadata["target"] != self.name:
            logger.info("artifact was compiled for %r; running it on %r", self._metadata["target"], self.name)

    @property
    def runtime(self) -> str:
        """The engine's name in ``runtimes.registry.RUNTIMES``."""
        return self.name

    @property
    def metadata(self) -> dict:
        """The artifact's validated m2f metadata."""
        return self._metadata

    # set by each engine once it is loaded
    _input_specs: dict[str, TensorSpec]
    _output_names: list[str]

    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        """The engine's inputs by name."""
        return self._input_specs

    @property
    def output_names(self) -> list[str]:
        """The engine's outputs, in graph order."""
        return self._output_names

    @property
    def concurrency(self) -> int:
        """How many :meth:`run` calls the engine executes at the same time (more calls wait for a free slot).

        Callers that want throughput keep this many calls in flight (``Segmenter.predict_batch``, a multi-request
        stream); 1 means the engine gains nothing from concurrent calls (they are still safe).
        """
        return 1

    @abc.abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on checked, contiguous inputs; return every output by name."""

    def _close(self) -> None:  # noqa: B027 - optional hook, most engines free on garbage collection
        """Release engine resources."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine: {input name: array} -> {output name: array}. Inputs are checked first."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; load the artifact again")
        return self._run(self.check_inputs(inputs))

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, dtypes, ranks and static dims against :attr:`input_specs`; make arrays contiguous."""
        specs = self.input_specs
        expected = "; ".join(spec.describe() for spec in specs.values())
        if not isinstance(inputs, Mapping):
            raise BackendInputError(
                f"run() takes a dict {{input name: numpy array}}, got {type(inputs).__name__}; "
                f"this artifact's inputs: {expected}"
            )
        missing = [name for name in specs if name not in inputs]
        extra = [name for name in inputs if name not in specs]
        if missing or extra:
            parts = ([f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []) + (
                [f"unknown input(s) {', '.join(map(repr, extra))}"] if extra else []
            )
            raise BackendInputError(f"{' and '.join(parts)}; this artifact's inputs: {expected}")
        checked = {}
        for name, spec in specs.items():
            array = inputs[name]
            if not isinstance(array, np.ndarray):
                raise BackendInputError(
                    f"input {name!r}: expected a numpy array of {spec.dtype}, got {type(array).__name__}"
                )
            if array.dtype != spec.dtype:
                raise BackendInputError(
                    f"input {name!r}: expected dtype {spec.dtype}, got {array.dtype} "
                    f"(the artifact does its own normalisation: pass raw {spec.dtype} data)"
                    if spec.dtype == np.uint8 and array.dtype.kind == "f"
                    else f"input {name!r}: expected dtype {spec.dtype}, got {array.dtype}"
                )
            if array.ndim != len(spec.shape):
                raise BackendInputError(
                    f"input {name!r}: expected rank {len(spec.shape)} shape {spec.describe()}, "
                    f"got rank {array.ndim} shape {array.shape}"
                )
            wrong = [
                i for i, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)) if want not in (None, got)
            ]
            if wrong:
                raise BackendInputError(
                    f"input {name!r}: expected shape {spec.describe()}, got {array.shape} (dim {wrong[0]} differs)"
                )
            checked[name] = np.ascontiguousarray(array)
        return checked

    def _loading(self) -> AbstractContextManager[None]:
        """Wrap the engine's reading of the artifact: a damaged file raises ArtifactError naming it (not the engine's
        raw parser message)."""
        return nullcontext() if self.path is None else engine_reads(self.path, self.name)

    def _check_engine_matches_metadata(self) -> None:
        """Raise :class:`ArtifactError` when the metadata names tensors the engine does not have."""
        input_name = self._metadata["input"]["name"]
        if input_name not in self.input_specs:
            raise ArtifactError(
                f"metadata input.name {input_name!r} is not an input of the graph "
                f"(graph inputs: {', '.join(self.input_specs)}): re-export it with `m2f export`"
            )
        absent = [name for name in self._metadata["outputs"] if name not in self.output_names]
        if absent:
            raise ArtifactError(
                f"metadata outputs {absent} are not outputs of the graph "
                f"(graph outputs: {', '.join(self.output_names)}): re-export it with `m2f export`"
            )

    def close(self) -> None:
        """Release the engine; :meth:`run` raises afterwards."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" {self.path}" if self.path else ""
        return (
            f"<{type(self).__name__}{where} {self.device} {self.precision} inputs={list(self.input_specs)} "
            f"outputs={self.output_names}>"
        )
