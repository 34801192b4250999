"""The training recipe as frozen dataclasses, read from a YAML (or JSON) file.

Defaults are the paper's: AdamW lr 1e-4, weight decay 0.05, backbone lr x0.1, poly schedule, gradient clipping
at total norm 0.01, 12544 sampled points, class/mask/dice weights 2/5/5, no-object weight 0.1.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes.vocabulary import TASKS

AMP_MODES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class SolverConfig:
    batch_size: int = 16  # global, split evenly over the processes
    max_iters: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_mult: float = 0.1
    warmup_iters: int = 10
    poly_power: float = 0.9
    clip_grad_norm: float = 0.01  # official "full_model" clipping; 0 disables
    amp: str = "none"  # "bf16" (CPU, Ampere+) or "fp16" (CUDA, with a grad scaler)
    num_workers: int | str = "auto"  # data-loader processes per training process; "auto": the cores it may use
    seed: int = 0

    def __post_init__(self) -> None:
        workers = self.num_workers
        if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ValueError(f"solver.num_workers must be 'auto' or an int >= 0, got {workers!r}")


@dataclass(frozen=True)
class CriterionConfig:
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """``model``: {"zoo": name} or {"config": Mask2FormerConfig dict (num_classes optional)}, plus an optional
    {"init": checkpoint} to fine-tune from. ``train_data``/``val_data``: ``build_dataset`` specs
    ({"format": ..., **kwargs}); a ``root`` given on the command line replaces theirs."""

    task: str
    model: dict[str, Any]
    train_data: dict[str, Any]
    val_data: dict[str, Any] | None = None
    augmentation: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    eval_resize: dict[str, Any] | None = None  # {"min_size": .., "max_size": ..}; None keeps the image size
    solver: SolverConfig = field(default_factory=SolverConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    checkpoint_every: int = 500
    eval_every: int = 500
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.solver.amp not in AMP_MODES:
            raise ValueError(f"solver.amp must be one of {AMP_MODES}, got {self.solver.amp!r}")
        if not ({"zoo", "config"} & set(self.model)):
            raise ValueError("model needs 'zoo' (a model zoo name) or 'config' (an architecture dict)")
        if self.solver.batch_size < 1 or self.solver.max_iters < 1:
            raise ValueError("solver.batch_size and solver.max_iters must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        data["solver"] = SolverConfig(**data.get("solver", {}))
        data["criterion"] = CriterionConfig(**data.get("criterion", {}))
        return cls(**data)

    def with_overrides(
        self, data_root: str | None = None, max_iters: int | None = None, batch_size: int | None = None
    ) -> TrainConfig:
        """The command line's ``--data-root``/``--max-iters`` applied."""
        cfg = self
        if data_root is not None:
            cfg = dataclasses.replace(
                cfg,
                train_data={**cfg.train_data, "root": data_root},
                val_data={**cfg.val_data, "root": data_root} if cfg.val_data else None,
            )
        solver = cfg.solver
        if max_iters is not None:
            solver = dataclasses.replace(solver, max_iters=max_iters)
        if batch_size is not None:
            solver = dataclasses.replace(solver, batch_size=batch_size)
        return dataclasses.replace(cfg, solver=solver)


_CONFIG_BYTES = 1 << 20  # a training config is a few KB
_CONFIG_NODES = 100_000  # values in the config once YAML aliases are expanded (ours have ~100)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training config from ``.yaml``/``.yml`` (``safe_load``: plain data only) or ``.json``; ValueError for
    a file over ``_CONFIG_BYTES``, one that does not parse, or YAML whose aliases expand past ``_CONFIG_NODES``
    values (a "billion laughs" file is a few hundred bytes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training config at {path}")
    if path.stat().st_size > _CONFIG_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, not a training config (at most {_CONFIG_BYTES})")
    text = path.read_text(errors="replace")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{path} nests deeper than any training config") from None
    except Exception as err:  # yaml.YAMLError, json.JSONDecodeError: the parser's own message says where
        raise ValueError(f"{path} does not parse: {' '.join(str(err).split())[:300]}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping")
    _check_expanded_size(data, path)
    return TrainConfig.from_dict(data)


def _check_expanded_size(data: Any, path: Path) -> None:
    """ValueError when ``data`` holds more than ``_CONFIG_NODES`` values counting every alias expanded: shared
    references are cheap to load but every later walk (dataclasses, the copy in each checkpoint) expands them."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _CONFIG_NODES:
            raise ValueError(f"{path} expands to more than {_CONFIG_NODES} values (YAML aliases?): not a config")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
