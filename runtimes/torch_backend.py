"""Torch backend: an ``nn.Module`` behind the Backend interface, for parity checks and the "torch" target.

The module stands in for an exported artifact: its ``forward`` takes the artifact's inputs as keyword arguments
(the numpy arrays, via ``torch.from_numpy``) and returns a dict, a tuple/list in ``output_names`` order, or one
tensor. It is the only file under runtimes/ that imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import Backend, RuntimeNotAvailable, TensorSpec

try:
    import torch
except ImportError as err:
    raise RuntimeNotAvailable(f"the torch backend needs PyTorch: pip install 'm2f-edge[train]' ({err})") from err

logger = logging.getLogger(__name__)


class TorchBackend(Backend):
    """Run a torch module that is equivalent to an exported artifact.

    ``input_names`` defaults to the metadata's input; ``output_names`` to the metadata's outputs. Inputs other
    than the metadata's need an ``input_specs`` entry (shape with None for dynamic dims, numpy dtype).
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
        self.device = torch.device(device)
        self._module = module.to(self.device).eval()
        self._check_engine_matches_metadata()

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        metadata: dict,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        **options: Any,
    ) -> TorchBackend:
        """A backend over ``module``; see the class docstring."""
        return cls(module, metadata, input_names, output_names, **options)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {name: torch.from_numpy(array).to(self.device) for name, array in inputs.items()}
        with torch.inference_mode():
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
        return {name: _to_numpy(value) for name, value in zip(self._output_names, values, strict=True)}

    def _close(self) -> None:
        del self._module


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()
