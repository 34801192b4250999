"""The benchmark's model: a model-zoo name, an HF ``config.json``, an HF folder or our checkpoint, made into our
``model.pt`` and, where HF has the architecture, the HF peer's folder with the same weights.

    prepared = prepare_model("ade20k-semantic-swin-t", Path("cache/models/swin"), seed=0)
    prepared.checkpoint, prepared.hf_dir   # our model.pt, the HF folder (None: no peer; prepared.peer_error says why)

Runs in the worker's ``prepare_model`` job (it imports torch); ``make gpu-check`` calls it directly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class PreparedModel:
    """What ``prepare_model`` made; kept as ``info.json`` beside the checkpoint (``to_dict``)."""

    model: str  # as given: a zoo name, a config.json, an HF folder or a checkpoint
    seed: int
    checkpoint: str  # our model.pt
    hf_dir: str | None = None  # the HF peer's folder with the same weights
    task: str | None = None  # a zoo entry's task
    weights: str  # where the weights came from: "random (seed 0)", "HF folder x", "checkpoint y.pt"
    peer_error: str | None = None  # why there is no HF peer

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k == "hf_dir"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreparedModel:
        """From ``to_dict``'s keys; other keys of a job's result (its ``job_s``) are the job runner's."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def prepare_model(model: str, out: Path, seed: int = 0) -> PreparedModel:
    """Resolve ``model`` into ``out``: our ``model.pt`` and, when HF has the architecture, ``hf/``."""
    from train.model.zoo import MODEL_ZOO

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.pt"
    path = Path(model)
    if model in MODEL_ZOO:
        return _from_zoo(model, checkpoint, seed)
    if path.suffix == ".json" or (path.is_dir() and not _has_weights(path)):
        hf_dict = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        random = PreparedModel(model=model, seed=seed, checkpoint=str(checkpoint), weights=f"random (seed {seed})")
        return _from_hf_config(hf_dict, None, random)
    if path.is_dir() or path.is_file():
        return _from_weights(model, checkpoint, seed)
    raise FileNotFoundError(f"--model {model!r} is neither a model-zoo name, an HF config.json nor a file")


def _from_zoo(name: str, checkpoint: Path, seed: int) -> PreparedModel:
    """A zoo entry with seeded random weights, through HF's model where transformers is there."""
    import torch

    from benchmarks import peers
    from train.model import Mask2Former, save_checkpoint
    from train.model.zoo import MODEL_ZOO

    entry = MODEL_ZOO[name]
    prepared = PreparedModel(
        model=name, seed=seed, checkpoint=str(checkpoint), task=entry.task, weights=f"random (seed {seed})"
    )
    try:
        hf_dict = peers.hf_config_dict(entry.config, entry.meta.class_names)
    except peers.PeerNotAvailable as err:
        torch.manual_seed(seed)
        save_checkpoint(checkpoint, Mask2Former(entry.config).eval(), entry.meta)
        return dataclasses.replace(prepared, peer_error=str(err))
    return _from_hf_config(hf_dict, entry.meta, prepared)


def _from_hf_config(hf_dict: dict, meta: Any, prepared: PreparedModel) -> PreparedModel:
    """HF's model with seeded random weights, saved as the peer's folder, and ours converted from it (ours alone,
    same seeded architecture, when transformers is missing)."""
    from benchmarks import peers
    from train.model import Mask2Former, ModelMeta, save_checkpoint
    from train.model.convert_hf import config_from_hf, state_dict_from_hf
    from train.model.zoo import find_dataset_by_classes

    try:
        hf_model = peers.random_hf_model(hf_dict, prepared.seed)
    except peers.PeerNotAvailable as err:
        hf_model, prepared = None, dataclasses.replace(prepared, peer_error=str(err))
    config, class_names = config_from_hf(hf_dict)
    if meta is None:
        meta = find_dataset_by_classes(class_names) or ModelMeta(class_names=tuple(class_names), dataset="hf")
    model = Mask2Former(config).eval()
    if hf_model is not None:
        hf_dir = Path(prepared.checkpoint).parent / "hf"
        model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), config.backbone.kind), strict=True)
        hf_model.save_pretrained(str(hf_dir))
        prepared = dataclasses.replace(prepared, hf_dir=str(hf_dir))
    save_checkpoint(Path(prepared.checkpoint), model, meta)
    return prepared


def _from_weights(model: str, checkpoint: Path, seed: int) -> PreparedModel:
    """An HF folder with weights (it is the peer) or our checkpoint (no converter back to HF: no peer)."""
    from train.model import load_pretrained, save_checkpoint

    path = Path(model)
    loaded = load_pretrained(path)
    save_checkpoint(checkpoint, loaded.model, loaded.meta)
    if path.is_dir():
        return PreparedModel(
            model=model, seed=seed, checkpoint=str(checkpoint), hf_dir=str(path), weights=f"HF folder {path.name}"
        )
    return PreparedModel(
        model=model,
        seed=seed,
        checkpoint=str(checkpoint),
        weights=f"checkpoint {path.name}",
        peer_error="the HF peers need the model as a zoo name, an HF config.json or an HF folder (our checkpoints "
        "have no converter back to HF)",
    )


def _has_weights(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / "pytorch_model.bin").exists()
