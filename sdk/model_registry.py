"""The packaged models by name: ``Segmenter("cpu", model="street-fast")``, ``m2f ... --model street-fast``.

One small registry, ``sdk/models/registry.json``, like timm's pretrained configs: each name lists its artifact files
(packaged beside it), the checkpoint and recipe it was made from (in a source checkout), its licence and its
measured figures (each with the command that made it). Input size, classes and task are not repeated here: they are
read from the artifacts' own metadata, the one place the export writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from runtimes import read_metadata

MODELS_DIR = Path(__file__).parent / "models"
REPO_ROOT = Path(__file__).resolve().parents[1]  # where a source checkout keeps checkpoints/ and configs/
REGISTRY_FILE = MODELS_DIR / "registry.json"
_REQUIRED = ("files", "summary", "licence")
MODEL_OPTION_HELP = (  # every command's --model takes these three
    "a packaged model's name (m2f info lists them), an artifact (.onnx) or a checkpoint (.pt); default: the packaged "
    "default"
)


@dataclass(frozen=True)
class NamedModel:
    """One entry of the registry; ``artifacts()`` opens its files' metadata."""

    name: str
    files: tuple[str, ...]
    summary: str
    licence: str
    checkpoint: str | None = None  # relative to the repository root: present in a source checkout only
    recipe: str | None = None
    figures: dict[str, Any] = field(default_factory=dict, compare=False)

    def paths(self) -> list[Path]:
        return [MODELS_DIR / name for name in self.files]

    def artifacts(self) -> list[tuple[Path, dict]]:
        """(path, metadata) of each file; FileNotFoundError naming the missing one (a build without it)."""
        missing = [path.name for path in self.paths() if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"model {self.name!r} is registered but its file(s) {', '.join(missing)} are not in this build "
                f"({MODELS_DIR})"
            )
        return [(path, read_metadata(path)) for path in self.paths()]

    def checkpoint_path(self) -> Path:
        """The committed checkpoint its files were exported from; FileNotFoundError outside a source checkout."""
        path = REPO_ROOT / (self.checkpoint or "")
        if not self.checkpoint or not path.is_file():
            raise FileNotFoundError(
                f"model {self.name!r}: its checkpoint ({self.checkpoint or 'none recorded'}) is in a source checkout "
                "of m2f-edge only; pass a checkpoint file"
            )
        return path

    def describe(self) -> str:
        """One line for ``m2f info``: input size, classes, size on disk, summary."""
        try:
            meta = self.artifacts()[0][1]
        except (FileNotFoundError, ValueError) as err:
            return f"not usable here ({err})"
        size = "x".join(map(str, meta["input"].get("size") or ())) or "dynamic"
        mib = sum(path.stat().st_size for path in self.paths()) / 2**20
        return f"{size}, {len(meta['class_names'])} classes, {mib:.1f} MiB; {self.summary}"


@cache
def _registry(path: Path = REGISTRY_FILE) -> tuple[str, dict[str, NamedModel]]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return "", {}
    models = {}
    for name, entry in raw["models"].items():
        absent = [key for key in _REQUIRED if key not in entry]
        if absent:
            raise ValueError(f"{path}: model {name!r} lacks {', '.join(absent)}")
        models[name] = NamedModel(name=name, **{**entry, "files": tuple(entry["files"])})
    if raw["default"] not in models:
        raise ValueError(f"{path}: the default {raw['default']!r} is not a registered model")
    return raw["default"], models


def named_models() -> dict[str, NamedModel]:
    """Every registered model, in the registry's order (fastest first)."""
    return dict(_registry()[1])


def default_model_name() -> str:
    """The model ``Segmenter`` runs when none is given."""
    default, models = _registry()
    if not models:
        raise FileNotFoundError(
            f"no model is packaged in this build ({REGISTRY_FILE} is absent): pass model=<artifact .onnx or checkpoint>"
        )
    return default


def is_model_name(model: object) -> bool:
    """``model`` is a registered name (a string without a file suffix that the registry lists)."""
    return isinstance(model, str) and not Path(model).suffix and model in _registry()[1]


def is_packaged(model: object) -> bool:
    """``model`` names a packaged model: None (the default) or a registered name, not a file."""
    return model is None or is_model_name(model)


def with_checkpoint_for_name(argv: list[str]) -> list[str]:
    """``m2f export NAME ...``: the registered name replaced by the checkpoint the model was exported from."""
    return [str(named_model(arg).checkpoint_path()) if is_model_name(arg) else arg for arg in argv]


def named_model(name: str | None = None) -> NamedModel:
    """The registered model ``name`` (the default when None); ValueError listing the names for an unknown one."""
    models = _registry()[1]
    name = name or default_model_name()
    if name not in models:
        raise ValueError(f"no packaged model named {name!r}; the names are {', '.join(models) or 'none'}")
    return models[name]
