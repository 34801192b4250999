"""Torch backend: an ``nn.Module`` behind the Backend interface, the "torch" target on CPU and the GPU runtime that
needs no TensorRT.

The module stands in for an exported artifact: its ``forward`` takes the artifact's inputs as keyword arguments
(the numpy arrays, via ``torch.from_numpy``) and returns a dict, a tuple/list in ``output_names`` order, or one
tensor. For the deployable Mask2Former (``compile.onnx_export.DeployableMask2Former``) the uint8 NHWC frame is all
that crosses to the device: layout change, normalisation and the semantic post-processing run in the module, on
the device. It is the only file under runtimes/ that imports torch.

On CUDA the whole forward is captured as one CUDA graph per input shape (``cuda_graph``, on by default there):
eager PyTorch at batch 1 is bound by kernel launches, a graph replays them all at once. Multi-scale deformable
attention runs the CUDA kernel (``plugins.msda`` dispatches CUDA tensors to it). ``precision`` fp16 / bf16 runs the
module under ``torch.autocast`` (weights stay fp32; softmax, norms and reductions stay fp32 as autocast decides).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import Backend, DeviceNotAvailable, RuntimeNotAvailable, TensorSpec
from runtimes.registry import RUNTIMES

try:
    import torch
except ImportError as err:
    raise RuntimeNotAvailable(f"the torch backend needs PyTorch: pip install 'm2f-edge[train]' ({err})") from err

logger = logging.getLogger(__name__)

TORCH_OPTIONS = RUNTIMES["torch"].options  # the backend options: the "torch" row of runtimes/registry.py
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAPH_WARMUP_RUNS = 2  # eager runs on a side stream before capture: lazy inits, cuDNN/cuBLAS handles, lru caches
GRAPH_CACHE_SIZE = 4  # captured shapes kept (least recently used goes); each holds its own memory pool


@dataclass
class _CapturedGraph:
    """One CUDA graph and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # copy each run's inputs in here, then replay
    outputs: list[torch.Tensor]  # the replay writes here, in output_names order


class TorchBackend(Backend):
    """Run a torch module that is equivalent to an exported artifact, on the CPU or a CUDA GPU.

    ``input_names`` defaults to the metadata's input; ``output_names`` to the metadata's outputs. Inputs other
    than the metadata's need an ``input_specs`` entry (shape with None for dynamic dims, numpy dtype).

    Options: ``device`` "cpu" (default), "cuda" or "cuda:N"; ``precision`` "fp32" (default), "fp16" or "bf16"
    (autocast); ``cuda_graph`` capture and replay CUDA graphs (default: on for CUDA; True on the CPU is an error);
    ``threads`` torch's intra-op CPU threads (``torch.set_num_threads``: process-wide).

    Attributes ``device``, ``precision`` and ``cuda_graph`` say what really runs. A capture that fails with
    ``cuda_graph`` left at its default is logged and the backend runs eagerly (``cuda_graph`` becomes False); an
    explicit ``cuda_graph=True`` raises instead.

    Thread safety: :meth:`run` holds a lock from the input copy to the numpy outputs. A graph replays from and into
    static device buffers, so two replays may not overlap; outputs are copied to fresh host arrays before the lock
    is released, so every result stays bound to its own input. Concurrent callers therefore run one at a time.
    """

    name = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        metadata: dict | None = None,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        input_specs: dict[str, TensorSpec] | None = None,
        device: str = "cpu",
        precision: str | None = None,
        cuda_graph: bool | None = None,
        threads: int | None = None,
    ) -> None:
        if isinstance(module, str | Path):
            raise TypeError(
                "the torch backend runs a module, not an .onnx artifact: build the module from its checkpoint "
                "and use TorchBackend.from_module(module, metadata, ...)"
            )
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if metadata is None:
            raise TypeError("the torch backend needs the artifact metadata the module stands in for")
        super().__init__(metadata)
        meta_input = self.metadata["input"]
        input_names = [meta_input["name"]] if input_names is None else list(input_names)
        self._output_names = list(self.metadata["outputs"]) if output_names is None else list(output_names)
        given = dict(input_specs or {})
        specs = {}
        for name in input_names:
            if name in given:
                specs[name] = given[name]
            elif name == meta_input["name"]:
                shape = tuple(meta_input["shape"])
                specs[name] = TensorSpec(name, shape, np.dtype(meta_input["dtype"]))
            else:
                raise ValueError(f"input {name!r} is not the metadata's input: give its TensorSpec in input_specs")
        self._input_specs = specs
        self._check_engine_matches_metadata()

        self._device = _torch_device(device)
        self.torch_device = str(self._device)  # torch's spelling ("cuda:0")
        self.device = self._device.type
        self.precision = _check_precision(precision or "fp32", self._device)
        self._autocast_dtype = AUTOCAST_DTYPES[self.precision]
        if cuda_graph and self._device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs device='cuda' (got device={device!r})")
        self.cuda_graph = self._device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        self._graph_required = bool(cuda_graph)
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive int, got {threads!r}")
            torch.set_num_threads(threads)
        self._module = module.to(self._device).eval()
        self._graphs: OrderedDict[tuple, _CapturedGraph] = OrderedDict()
        self._lock = threading.Lock()
        logger.info(
            "torch backend on %s, %s%s", self.device, self.precision, ", CUDA graphs" if self.cuda_graph else ""
        )

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        metadata: dict,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        **options: Any,
    ) -> TorchBackend:
        """A backend over ``module``; ``options`` are the backend options (see the class docstring)."""
        unknown = sorted(set(options) - TORCH_OPTIONS - {"input_specs"})
        if unknown:
            raise ValueError(
                f"the torch runtime does not take option(s) {', '.join(unknown)}; "
                f"it accepts {', '.join(sorted(TORCH_OPTIONS))}"
            )
        return cls(module, metadata, input_names, output_names, **options)

    # ------------------------------------------------------------------ running
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self.cuda_graph:
                with torch.cuda.device(self._device):  # capture and replay on this backend's GPU
                    outputs = self._run_graph(inputs)
            else:
                tensors = {name: torch.from_numpy(array).to(self._device) for name, array in inputs.items()}
                with torch.inference_mode():
                    outputs = self._forward(tensors)
            arrays = list(inputs.values())
            return {name: _to_numpy(value, arrays) for name, value in zip(self._output_names, outputs, strict=True)}

    def _forward(self, tensors: dict[str, torch.Tensor], autocast_cache: bool = True) -> list[torch.Tensor]:
        """The module's outputs in ``output_names`` order; half-precision float outputs come back as float32."""
        enabled = self._autocast_dtype is not None
        with torch.autocast(self._device.type, self._autocast_dtype, enabled=enabled, cache_enabled=autocast_cache):
            result = self._module(**tensors)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            missing = [name for name in self._output_names if name not in result]
            if missing:
                raise RuntimeError(f"the module's output dict lacks {missing} (it has {list(result)})")
            values = [result[name] for name in self._output_names]
        else:
            values = list(result)
            if len(values) != len(self._output_names):
                raise RuntimeError(f"the module returned {len(values)} outputs for output_names {self._output_names}")
        return [v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for v in values]

    def _run_graph(self, inputs: dict[str, np.ndarray]) -> list[torch.Tensor]:
        key = tuple((name, array.shape) for name, array in inputs.items())
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._capture(inputs)
            except Exception as exc:
                if self._graph_required:
                    raise RuntimeError(f"capturing the module as a CUDA graph failed: {exc}") from exc
                logger.warning("CUDA graph capture failed (%s: %s); running eagerly", type(exc).__name__, exc)
                self.cuda_graph = False
                self._graphs.clear()
                tensors = {name: torch.from_numpy(array).to(self._device) for name, array in inputs.items()}
                with torch.inference_mode():
                    return self._forward(tensors)
            self._graphs[key] = captured
            while len(self._graphs) > GRAPH_CACHE_SIZE:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
            with torch.inference_mode():  # the static buffers are inference tensors
                for name, array in inputs.items():
                    captured.inputs[name].copy_(torch.from_numpy(array))
        captured.graph.replay()
        return captured.outputs

    def _capture(self, inputs: dict[str, np.ndarray]) -> _CapturedGraph:
        """Static inputs filled with ``inputs``, warm-up on a side stream, then the capture (which runs nothing)."""
        logger.info("capturing a CUDA graph for input shapes %s", {n: a.shape for n, a in inputs.items()})
        with torch.inference_mode():
            static = {name: torch.from_numpy(array).to(self._device) for name, array in inputs.items()}
            side = torch.cuda.Stream(self._device)
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_RUNS):
                    self._forward(static, autocast_cache=False)
            torch.cuda.current_stream(self._device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (other backends, a stream's decoder) may go on meanwhile.
            # autocast's weight cache must be off while capturing.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self._forward(static, autocast_cache=False)
        return _CapturedGraph(graph, static, outputs)

    def _close(self) -> None:
        with self._lock:
            self._graphs.clear()
            del self._module


def _torch_device(device: str) -> torch.device:
    """The torch device for the ``device`` option; DeviceNotAvailable when CUDA is asked for and absent."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"the torch runtime runs on device 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceNotAvailable(f"device={device!r}: torch {torch.__version__} ({build}) sees no CUDA GPU")
        index = torch.cuda.current_device() if parsed.index is None else parsed.index
        if index >= torch.cuda.device_count():
            raise DeviceNotAvailable(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        parsed = torch.device("cuda", index)
    return parsed


def _check_precision(precision: str, device: torch.device) -> str:
    precision = precision.lower()
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(
            f"the torch runtime runs precision {', '.join(AUTOCAST_DTYPES)}, not {precision!r} "
            "(int8 needs a quantised artifact: the openvino, onnxruntime or tensorrt runtime)"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceNotAvailable(f"{torch.cuda.get_device_name(device)} has no bfloat16: use precision='fp16'")
    return precision


def _to_numpy(tensor: torch.Tensor, inputs: list[np.ndarray]) -> np.ndarray:
    """The output as a numpy array the caller owns: a device tensor (a static graph buffer too) is copied to the
    host; a CPU tensor is copied only when it may share memory with an input (a module that returns its input)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    if tensor.device.type != "cpu":
        return tensor.cpu().numpy()
    array = tensor.numpy()
    return array.copy() if any(np.may_share_memory(array, x) for x in inputs) else array


def device_unavailable(device: str) -> str | None:
    """None if this torch can run on ``device`` ("cpu", "cuda", "cuda:N"), else why not (``runtimes``'s check)."""
    try:
        _torch_device(device)
    except (DeviceNotAvailable, ValueError) as err:
        return str(err)
    return None
