"""Our checkpoint format, and ``load_pretrained`` for ours, official detectron2 and HF transformers weights.

Our ``.pt``: ``{"format": "m2f-checkpoint", "version": 1, "config": ..., "meta": ..., "state_dict": ...}`` —
weights plus the full model config, class names, thing classes, colours and normalisation.

Every file here may come from a stranger, so no reader runs code from it or lets it claim more memory than it holds:
torch files load with ``weights_only=True`` from an uncompressed zip whose entries fit the file (no zip bomb, no
legacy format); detectron2 pickles through an allow-list unpickler (``detectron2_pickle``); JSON is size-capped;
and a model is built only after a copy on the meta device (no memory) shows the weights fit its config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from train.model.config import IMAGENET_MEAN, IMAGENET_STD, Mask2FormerConfig, ModelMeta
from train.model.detectron2_pickle import load_detectron2_pickle
from train.model.mask2former import Mask2Former
from train.model.zoo import get_zoo_entry

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "m2f-checkpoint"
CHECKPOINT_VERSION = 1
# official detectron2 module prefixes -> ours
_DETECTRON2_PREFIXES = {
    "sem_seg_head.pixel_decoder.": "pixel_decoder.",
    "sem_seg_head.predictor.": "transformer_decoder.",
    "backbone.": "backbone.",
}
_DETECTRON2_DROPPED = ("criterion.empty_weight",)
ACCEPTED = (
    "m2f reads its own .pt (from `m2f train` or `m2f convert`), official detectron2 Mask2Former weights "
    "(.pkl / .pth, with config=<model zoo name>) and Hugging Face transformers Mask2Former folders"
)


@dataclass
class LoadedModel:
    """A model in eval mode with everything needed to use it."""

    model: Mask2Former
    config: Mask2FormerConfig
    meta: ModelMeta
    source: str  # "m2f", "detectron2" or "huggingface"


def save_checkpoint(path: str | Path, model: Mask2Former, meta: ModelMeta, extra: dict[str, Any] | None = None) -> Path:
    """Write our checkpoint format; ``extra`` (optimiser state, iteration, ...) is stored beside the weights."""
    if model.config.num_classes != meta.num_classes:
        raise ValueError(f"model has {model.config.num_classes} classes, meta names {meta.num_classes}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "meta": meta.to_dict(),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint behind
    return path


@dataclass(frozen=True)
class CheckpointRecord:
    """Our ``.pt`` as the rest of the project reads it: the one reader of that layout (``read_checkpoint``).

    ``train_config``: the training run's config as a dict (task, val_data, eval_resize, ...), None for a
    ``m2f convert`` result. ``iteration`` and ``training_state`` (optimizer, scheduler, scaler, rng: what
    ``m2f train --resume`` restores) only in a trainer's checkpoints.
    """

    path: Path
    config: dict[str, Any]  # Mask2FormerConfig.to_dict()
    meta: dict[str, Any]  # ModelMeta.to_dict()
    state_dict: dict[str, Tensor]
    train_config: dict[str, Any] | None = None
    iteration: int | None = None
    training_state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def task(self) -> str | None:
        return (self.train_config or {}).get("task")

    @property
    def val_data(self) -> dict[str, Any] | None:
        return (self.train_config or {}).get("val_data")

    @property
    def eval_resize(self) -> dict[str, Any] | None:
        """How its training resized evaluation frames (``InferenceResize`` as a dict), if it says."""
        return (self.train_config or {}).get("eval_resize")

    @property
    def eval_min_size(self) -> int | None:
        """The short side its training evaluated at (``eval_resize.min_size``), if it says."""
        return (self.eval_resize or {}).get("min_size")


_TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")


def read_checkpoint(path: str | Path) -> CheckpointRecord:
    """Read our ``.pt`` (``m2f train`` / ``m2f convert``); ``ValueError`` naming what the file is otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an m2f checkpoint. {ACCEPTED}")
    return _record(path, payload)


def read_checkpoint_if_ours(path: str | Path) -> CheckpointRecord | None:
    """``read_checkpoint`` for a ``.pt`` / ``.pth`` file of ours; None for an official or HF one (or a folder)."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth") or not path.is_file():
        return None
    try:
        return read_checkpoint(path)
    except ValueError:
        return None


def _record(path: Path, payload: dict[str, Any]) -> CheckpointRecord:
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is checkpoint format version {payload.get('version')!r:.40}; this build reads {CHECKPOINT_VERSION}"
        )
    for key, kind in (("config", dict), ("meta", dict), ("state_dict", dict), ("train_config", dict | None)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{path} is a damaged m2f checkpoint: its {key!r} is {type(payload.get(key)).__name__}")
    state = _tensors(payload["state_dict"], path)
    return CheckpointRecord(
        path=path,
        config=payload["config"],
        meta=payload["meta"],
        state_dict=state,
        train_config=payload.get("train_config"),
        iteration=payload.get("iteration"),
        training_state={k: payload[k] for k in _TRAINING_STATE if k in payload},
    )


def _tensors(state: dict[Any, Any], path: Path) -> dict[str, Tensor]:
    """``state`` if it maps names to tensors, else ValueError naming the first entry that does not."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ValueError(
                f"{path}: its weights hold {type(value).__name__} under {key!r:.60}, not a tensor under a name"
            )
    return dict(state)


def state_dict_from_detectron2(state: dict[str, Any]) -> dict[str, Tensor]:
    """Official Mask2Former (detectron2) keys -> ours; numpy arrays (model-zoo ``.pkl``) become tensors."""
    out = {}
    for key, value in state.items():
        if key in _DETECTRON2_DROPPED or key.endswith(("pixel_mean", "pixel_std")):
            continue
        if not isinstance(key, str) or not isinstance(value, np.ndarray | np.generic | Tensor):
            raise ValueError(f"{key!r:.60} holds {type(value).__name__}, not an array, in a detectron2 checkpoint")
        for src, dst in _DETECTRON2_PREFIXES.items():
            if key.startswith(src):
                out[dst + key[len(src) :]] = (
                    torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
                )
                break
        else:
            raise ValueError(f"unexpected key {key!r:.80} in a detectron2 Mask2Former checkpoint")
    return out


def _read_detectron2(path: Path, payload: Any = None) -> dict[str, Any]:
    """The state dict of an official detectron2 checkpoint (``payload``: the already loaded .pth, None for .pkl)."""
    if path.suffix == ".pkl":
        try:
            payload = load_detectron2_pickle(path)
        except Exception as err:  # a damaged pickle fails in any of a dozen ways; none is a bug of ours
            detail = " ".join(str(err).split())[:300] or type(err).__name__
            raise ValueError(f"{path} is not a readable detectron2 pickle: {detail}. {ACCEPTED}") from err
    data = payload
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path} is not an m2f checkpoint: it holds {type(data).__name__}, not a state dict. {ACCEPTED}"
        )
    if not any(str(key).startswith(tuple(_DETECTRON2_PREFIXES)) for key in data):
        keys = ", ".join(map(str, list(data)[:3]))
        raise ValueError(
            f"{path} is not an m2f checkpoint: its {len(data)} keys (e.g. {keys}) are neither m2f's format nor a "
            f"detectron2 Mask2Former's. {ACCEPTED}"
        )
    return data


_OPTIONAL_KEY = "num_batches_tracked"  # trainable BN carries a counter that detectron2's FrozenBN does not


def build_with_weights(config: Mask2FormerConfig, state: dict[str, Tensor], source: Path) -> Mask2Former:
    """``Mask2Former(config)`` holding ``state``. The config comes from the file too, so the model is first built
    on the meta device (no memory), with no more submodules than the weights could fill, and compared with
    ``state``; a config that asks for more than the file holds is refused before anything is allocated."""
    try:
        with _submodule_budget(len(state), source), torch.device("meta"):
            shapes = {k: v.shape for k, v in Mask2Former(config).state_dict().items()}
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise ValueError(f"{source}: its config does not build a Mask2Former ({err})") from err
    missing = sorted(k for k in set(shapes) - set(state) if not k.endswith(_OPTIONAL_KEY))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit the config: {len(missing)} missing (e.g. {missing[:5]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})"
        )
    bad = [k for k in state if shapes[k] != state[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{source}: {len(bad)} shape mismatches, e.g. {k}: {tuple(state[k].shape)} vs {tuple(shapes[k])}"
        )
    model = Mask2Former(config)
    own = model.state_dict()
    model.load_state_dict({**{k: own[k] for k in own if k not in state}, **state}, strict=True)
    return model


class _TooManyModules(Exception):
    """Internal: a config asked for more submodules than ``_submodule_budget`` allows."""


_budget = threading.local()


def _count_module(module: torch.nn.Module, name: str, submodule: torch.nn.Module | None) -> None:
    left = getattr(_budget, "left", None)
    if left is None:  # another thread's construction: not counted
        return
    _budget.left = left - 1
    if left <= 0:
        raise _TooManyModules


@contextmanager
def _submodule_budget(tensors: int, source: Path) -> Iterator[None]:
    """Refuse (ValueError) a model construction in this thread that registers more submodules than ``tensors``
    weights could fill (a layer has at least one; activations and dropouts have none, hence the margin)."""
    limit = 4 * tensors + 256
    handle = torch.nn.modules.module.register_module_module_registration_hook(_count_module)
    _budget.left = limit
    try:
        yield
    except _TooManyModules:
        raise ValueError(
            f"{source}: its config asks for over {limit} modules, more layers than its {tensors} weights could "
            "fill; refused before building it"
        ) from None
    finally:
        _budget.left = None
        handle.remove()


def _resolve_config(config: str | Mask2FormerConfig | None, meta: ModelMeta | None, path: Path):
    if isinstance(config, str):
        entry = get_zoo_entry(config)
        return entry.config, meta or entry.meta
    if config is None:
        raise ValueError(
            f"{path} is a detectron2 checkpoint without a config: pass config=<model zoo name> "
            "(see `m2f convert --list`) or a Mask2FormerConfig with its ModelMeta"
        )
    if meta is None:
        raise ValueError("a Mask2FormerConfig needs its ModelMeta (class names, normalisation) too")
    return config, meta


def _load_hf_folder(path: Path) -> tuple[Mask2FormerConfig, ModelMeta, dict[str, Tensor]]:
    from train.model.convert_hf import config_from_hf, state_dict_from_hf

    hf_config = _read_json(path / "config.json")
    try:
        config, class_names = config_from_hf(hf_config)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"{path / 'config.json'} is not an HF Mask2Former config ({type(err).__name__}: {err})"
        ) from err
    if (path / "model.safetensors").exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:  # the library checks the header (size-capped) and every offset against the file before reading
            hf_state = load_file(str(path / "model.safetensors"))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path / 'model.safetensors'} is not a readable safetensors file ({err})") from err
    elif (path / "pytorch_model.bin").exists():
        hf_state = _read_payload(path / "pytorch_model.bin")
        if not isinstance(hf_state, dict):
            raise ValueError(f"{path / 'pytorch_model.bin'} holds {type(hf_state).__name__}, not a state dict")
        hf_state = _tensors(hf_state, path / "pytorch_model.bin")
    else:
        raise FileNotFoundError(f"{path} has config.json but neither model.safetensors nor pytorch_model.bin")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = path / "preprocessor_config.json"
    if processor.exists():
        pp = _read_json(processor)
        scale = 255.0 if pp.get("do_rescale", True) else 1.0
        mean = tuple(float(m) * scale for m in pp.get("image_mean", np.array(IMAGENET_MEAN) / 255))
        std = tuple(float(s) * scale for s in pp.get("image_std", np.array(IMAGENET_STD) / 255))
    meta = ModelMeta(class_names=tuple(class_names), pixel_mean=mean, pixel_std=std, dataset="huggingface")
    meta = _with_known_dataset(meta)
    return config, meta, state_dict_from_hf(hf_state, config.backbone.kind)


def _with_known_dataset(meta: ModelMeta) -> ModelMeta:
    """HF configs carry no thing/stuff split or colours: take them from a zoo dataset with the same classes."""
    from train.model.zoo import find_dataset_by_classes

    known = find_dataset_by_classes(meta.class_names)
    if known is None:
        logger.warning("class list matches no known dataset: every class is treated as stuff, colours generated")
        return meta
    return dataclasses.replace(known, pixel_mean=meta.pixel_mean, pixel_std=meta.pixel_std, dataset=known.dataset)


def load_pretrained(
    path: str | Path,
    config: str | Mask2FormerConfig | None = None,
    meta: ModelMeta | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load Mask2Former weights in eval mode with their config, class names and normalisation.

    ``path``: our ``.pt``; an official detectron2 ``.pkl`` (model zoo) or ``.pth`` (training output), which
    need ``config`` (a model zoo name such as ``"coco-panoptic-r50"``); or an HF transformers folder with
    ``config.json`` and ``model.safetensors``/``pytorch_model.bin``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is a folder without config.json: not an HF transformers model")
        cfg, meta_, state = _load_hf_folder(path)
        source = "huggingface"
    else:
        payload = _read_payload(path)
        if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
            record = _record(path, payload)
            try:
                cfg = Mask2FormerConfig.from_dict(record.config)
                meta_ = ModelMeta.from_dict(record.meta)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise ValueError(
                    f"{path}: its config or class metadata is damaged ({type(err).__name__}: {err})"
                ) from err
            state = record.state_dict
            source = "m2f"
        else:
            if isinstance(config, str):
                get_zoo_entry(config)  # a misspelt zoo name is reported before a large pickle is read
            official = _read_detectron2(path, payload)
            cfg, meta_ = _resolve_config(config, meta, path)
            state = state_dict_from_detectron2(official)
            source = "detectron2"
    model = build_with_weights(cfg, state, path)
    return LoadedModel(model=model.to(device).eval(), config=cfg, meta=meta_, source=source)


_JSON_LIMIT = 16 << 20  # bytes: a model's config.json is a few KB


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (at most ``_JSON_LIMIT`` bytes); ValueError naming the file otherwise."""
    size = path.stat().st_size
    if size > _JSON_LIMIT:
        raise ValueError(f"{path} is {size} bytes, not a model config (at most {_JSON_LIMIT} read)")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # RecursionError: nested thousands deep
        raise ValueError(f"{path} is not valid JSON ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _check_torch_zip(path: Path) -> None:
    """Refuse a torch file that could claim more memory than it holds: torch.save writes an uncompressed zip (since
    torch 1.6), but torch.load also inflates compressed entries (a zip bomb) and reads the legacy
    format, whose sizes come from the file."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ValueError(
            f"{path} is not a readable torch checkpoint (not the zip archive torch.save writes since torch 1.6: "
            f"{err}). {ACCEPTED}"
        ) from err
    compressed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise ValueError(
            f"{path} is not a readable torch checkpoint: {compressed[0]!r:.80} is compressed, which torch.save never "
            f"writes; refused, as it could inflate past memory. {ACCEPTED}"
        )
    claimed = sum(e.file_size for e in entries)
    if claimed > size:
        raise ValueError(
            f"{path} is a damaged torch checkpoint: its entries claim {claimed} bytes, the file has {size}"
        )


def _read_payload(path: Path) -> Any:
    if path.suffix == ".pkl":
        return None  # detectron2 pickles are read by _read_detectron2
    _check_torch_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file; its safe loader's text is a page long
        text = " ".join(str(err).split())
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)  # a Python object the safe loader refused
        if found:
            raise ValueError(
                f"{path} is not an m2f checkpoint: it holds pickled Python objects (e.g. {found.group(1)}), as "
                f"torch.save(model) writes, which m2f does not load. {ACCEPTED}"
            ) from err
        unpickler = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        detail = unpickler.group(1) if unpickler else text.split(". ")[0][:200] or type(err).__name__
        raise ValueError(f"{path} is not a readable torch checkpoint ({detail}). {ACCEPTED}") from err
