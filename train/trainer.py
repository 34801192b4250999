"""The training loop: one process or many through ``torchrun`` (gloo on CPU, nccl on GPU).

Determinism is by construction so a killed run resumes exactly: the global batch of iteration ``i`` is a fixed
slice of a seeded per-epoch permutation (split over the processes, so 1 and N processes see the same images),
each sample's augmentation is seeded by (seed, epoch, position), and the global RNG is reseeded from
(seed, rank, iteration) before every step (point sampling, drop path).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from train.criterion import SetCriterion
from train.data import build_dataset
from train.data.augmentation import build_augmentation
from train.data.collate import collate
from train.data.sample import Sample, SegmentationDataset
from train.evaluation.runner import HEADLINE, evaluate_model, normalize_images
from train.hungarian_matcher import HungarianMatcher
from train.model import Mask2Former, Mask2FormerConfig, ModelMeta, load_pretrained, save_checkpoint
from train.model.checkpoint import read_checkpoint
from train.model.zoo import get_zoo_entry
from train.train_config import TrainConfig

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
FINAL_CHECKPOINT = "model_final.pt"


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: the sample, augmented with the RNG seeded by ``seed`` (worker-independent)."""

    def __init__(self, dataset: SegmentationDataset, transform: Callable[[Sample], Sample]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            return self.transform(self.dataset[index])


class GlobalBatchSampler:
    """Yields this rank's share of every global batch from ``start_iter`` on, forever.

    Global batch ``i`` is positions ``[i*B, (i+1)*B)`` of an endless sequence of seeded epoch permutations
    (the epoch's incomplete tail is dropped); rank r takes every ``world``-th element of it.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int, start_iter: int = 0) -> None:
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} does not split evenly over {world} processes")
        if size < batch_size:
            raise ValueError(f"the training set has {size} images, fewer than one batch of {batch_size}")
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world
        self.seed, self.start_iter = seed, start_iter
        self.batches_per_epoch = size // batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iter
        while True:
            epoch, pos = divmod(iteration, self.batches_per_epoch)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            for b in range(pos, self.batches_per_epoch):
                start = b * self.batch_size
                batch = [
                    (order[start + j], _mix(self.seed, epoch, start + j))
                    for j in range(self.rank, self.batch_size, self.world)
                ]
                yield batch
            iteration = (epoch + 1) * self.batches_per_epoch


def _mix(*values: int) -> int:
    """A 63-bit seed from a few integers."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


MAX_AUTO_WORKERS = 12  # "auto" never starts more loader processes than this per training process


def resolve_num_workers(num_workers: int | str, world_size: int = 1) -> int:
    """``solver.num_workers`` as a count: "auto" is this process's share of the cores it may run on (its CPU
    affinity, not the machine's count) less one for the training loop itself, at most ``MAX_AUTO_WORKERS``."""
    if num_workers != "auto":
        return int(num_workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores // max(world_size, 1) - 1, MAX_AUTO_WORKERS))


def parameter_groups(model: Mask2Former, lr: float, weight_decay: float, backbone_mult: float) -> list[dict]:
    """Backbone at ``lr * backbone_mult``; no weight decay on norms, biases of norms and embeddings (official)."""
    no_decay_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Embedding)
    no_decay = set()
    for module in model.modules():
        if isinstance(module, no_decay_types):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    no_decay.update(id(p) for n, p in model.named_parameters() if n.endswith(("level_embed", "absolute_pos_embed")))
    no_decay.update(id(p) for n, p in model.named_parameters() if "relative_position_bias_table" in n)
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("backbone."), id(p) in no_decay), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * (backbone_mult if is_backbone else 1.0),
            "weight_decay": 0.0 if is_no_decay else weight_decay,
        }
        for (is_backbone, is_no_decay), params in groups.items()
    ]


def poly_with_warmup(max_iters: int, warmup_iters: int, power: float) -> Callable[[int], float]:
    """lr factor: linear warm-up from 0.001 over ``warmup_iters``, then (1 - it/max)^power."""

    def factor(it: int) -> float:
        poly = (1 - min(it, max_iters) / max_iters) ** power
        if it < warmup_iters:
            alpha = it / warmup_iters
            return poly * (0.001 * (1 - alpha) + alpha)
        return poly

    return factor


def build_model(config: TrainConfig, dataset_meta: ModelMeta) -> tuple[Mask2Former, ModelMeta]:
    """The model the config asks for, sized for the dataset's classes, initialised from ``model.init`` if set."""
    spec = config.model
    if "zoo" in spec:
        entry = get_zoo_entry(spec["zoo"])
        arch = dataclasses.replace(entry.config, num_classes=dataset_meta.num_classes)
        meta = dataclasses.replace(dataset_meta, pixel_mean=entry.meta.pixel_mean, pixel_std=entry.meta.pixel_std)
    else:
        arch = Mask2FormerConfig.from_dict({"num_classes": dataset_meta.num_classes, **spec["config"]})
        meta = dataset_meta
    if arch.num_classes != dataset_meta.num_classes:
        raise ValueError(f"model has {arch.num_classes} classes, the dataset {dataset_meta.num_classes}")
    model = Mask2Former(arch)
    load_weights = getattr(model.backbone, "load_weights", None)  # a backbone that names a local pretrained file
    normalisation = load_weights() if load_weights is not None else None
    if normalisation is not None:  # the file's own input normalisation travels with its weights
        meta = dataclasses.replace(meta, pixel_mean=normalisation[0], pixel_std=normalisation[1])
        logger.info("backbone weights from %s (input normalisation mean %s std %s)", arch.backbone.weights,
                    normalisation[0], normalisation[1])  # fmt: skip
    if spec.get("init"):
        source = load_pretrained(spec["init"], config=spec.get("init_config")).model.state_dict()
        own = model.state_dict()
        fitting = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(own) - set(fitting))
        model.load_state_dict(fitting, strict=False)
        logger.info("initialised from %s; %d tensors left at init: %s", spec["init"], len(skipped), skipped[:6])
    return model, meta


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def effective_amp(amp: str, device: torch.device) -> str:
    """The autocast mode to train with: ``amp``, except bf16 on a device that would emulate it, which trains in fp32.

    On a CPU without AVX512-BF16/AMX (e.g. an AVX2-only EPYC) bf16 autocast is emulated: the edge config's step went
    from ~2 s to over 300 s on such a 2-core CPU. Numerically fp32 only differs by being more precise.
    """
    if amp == "bf16" and not native_bf16(device):
        logger.warning("solver.amp bf16: %s has no native bf16 (it would be emulated, many times slower); "
                       "training in fp32", device)  # fmt: skip
        return "none"
    return amp


class Trainer:
    """``Trainer(config, output_dir).run()`` trains, checkpoints, evaluates and returns the last metrics."""

    def __init__(self, config: TrainConfig, output_dir: str | Path, resume: bool = False, progress: bool = True):
        self.config = config
        self.output_dir = Path(output_dir)
        self.dist = setup_distributed()
        self.progress = progress and self.dist.is_main
        s = config.solver
        torch.manual_seed(s.seed)
        self.train_set = build_dataset(config.train_data)
        self.val_set = build_dataset(config.val_data) if config.val_data else None
        self.model, self.meta = build_model(config, self.train_set.meta)
        self.model.to(self.dist.device)
        self.criterion = SetCriterion(
            num_classes=self.meta.num_classes,
            matcher=HungarianMatcher(
                cost_class=config.criterion.class_weight,
                cost_mask=config.criterion.mask_weight,
                cost_dice=config.criterion.dice_weight,
                num_points=config.criterion.num_points,
            ),
            eos_coef=config.criterion.no_object_weight,
            weights={
                "loss_ce": config.criterion.class_weight,
                "loss_mask": config.criterion.mask_weight,
                "loss_dice": config.criterion.dice_weight,
            },
            num_points=config.criterion.num_points,
            oversample_ratio=config.criterion.oversample_ratio,
            importance_sample_ratio=config.criterion.importance_sample_ratio,
        ).to(self.dist.device)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, s.lr, s.weight_decay, s.backbone_lr_mult), lr=s.lr, weight_decay=s.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_with_warmup(s.max_iters, s.warmup_iters, s.poly_power)
        )
        self.amp = effective_amp(s.amp, self.dist.device)
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.amp == "fp16")
        self.start_iter = 0
        if resume:
            self._resume()
        self.ddp = (
            nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None
            )
            if self.dist.world_size > 1
            else self.model
        )
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        path = self.output_dir / LAST_CHECKPOINT
        if not path.exists():
            logger.info("no checkpoint at %s: starting from scratch", path)
            return
        record = read_checkpoint(path)
        state = record.training_state
        self.model.load_state_dict(record.state_dict)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])
        self.start_iter = int(record.iteration)
        logger.info("resumed from %s at iteration %d", path, self.start_iter)

    def save(self, iteration: int, name: str = LAST_CHECKPOINT) -> Path | None:
        """Weights + optimiser, scheduler, scaler, RNG, iteration and the training config (main process only)."""
        if not self.dist.is_main:
            return None
        extra = {
            "iteration": iteration,
            "train_config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
        }
        return save_checkpoint(self.output_dir / name, self.model, self.meta, extra=extra)

    # ------------------------------------------------------------------ the loop
    def loader(self) -> DataLoader:
        """The training batches of this rank from ``start_iter`` on, augmented and collated as ``run`` takes them
        (built, not iterated: worker processes start on the first batch). Benchmarks and GPU checks step with it."""
        s = self.config.solver
        sampler = GlobalBatchSampler(
            len(self.train_set), s.batch_size, self.dist.rank, self.dist.world_size, s.seed, self.start_iter
        )
        dataset = SeededSamples(self.train_set, build_augmentation(self.config.augmentation))
        workers = resolve_num_workers(s.num_workers, self.dist.world_size)
        logger.info("data loader: %d worker process(es) (num_workers=%s)", workers, s.num_workers)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.dist.device.type == "cuda",  # page-locked batches: the copies below run asynchronously
        )

    def train_step(self, batch: dict[str, Any], iteration: int) -> dict[str, float]:
        """One optimisation step on this rank's share of the global batch."""
        s = self.config.solver
        torch.manual_seed(_mix(s.seed, self.dist.rank, iteration))  # point sampling, drop path
        device = self.dist.device
        non_blocking = device.type == "cuda"  # from pinned memory: the copies overlap the host work that follows
        images = batch["images"].to(device, non_blocking=non_blocking)  # (B, 3, Hp, Wp) uint8
        images = normalize_images(images, batch["image_sizes"], self.meta)
        targets = [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in batch["targets"]]
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = self.ddp(images)
        losses = self.criterion(_to_float(outputs), targets)
        total = self.criterion.weighted_total(losses)
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss {total.item()} at iteration {iteration}: {losses}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if s.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        names = ("loss", "loss_ce", "loss_mask", "loss_dice")
        values = torch.stack([total.detach(), *(losses[k].detach() for k in names[1:])]).float()
        if self.dist.world_size > 1:  # the mean over ranks is the global batch's loss (equal shares)
            dist.all_reduce(values)
            values /= self.dist.world_size
        return dict(zip(names, values.tolist(), strict=True))

    def evaluate(self) -> dict[str, float]:
        if self.val_set is None:
            return {}
        return evaluate_model(
            self.model, self.val_set, self.meta, self.config.task, self.config.eval_resize, progress=self.progress
        )

    def run(self) -> dict[str, float]:
        cfg, s = self.config, self.config.solver
        self.output_dir.mkdir(parents=True, exist_ok=True)
        logs = _Logs(self.output_dir) if self.dist.is_main else None
        self.model.train()
        metrics: dict[str, float] = {}
        bar = tqdm(total=s.max_iters, initial=self.start_iter, desc="train", disable=not self.progress)
        tick, images_done = time.perf_counter(), 0
        iteration = self.start_iter
        batches = iter(self.loader()) if iteration < s.max_iters else iter(())
        try:
            while iteration < s.max_iters:
                batch = next(batches)
                stats = self.train_step(batch, iteration)
                iteration += 1
                images_done += len(batch["image_sizes"]) * self.dist.world_size
                stats["lr"] = self.scheduler.get_last_lr()[0]
                self.history.append({"iteration": iteration, **stats})
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}")
                if logs and (iteration % cfg.log_every == 0 or iteration == s.max_iters):
                    elapsed = time.perf_counter() - tick
                    logs.write(iteration, {**stats, "images_per_s": images_done / max(elapsed, 1e-9)})
                    tick, images_done = time.perf_counter(), 0
                if iteration % cfg.checkpoint_every == 0 or iteration == s.max_iters:
                    self.save(iteration)
                if self.val_set is not None and (iteration % cfg.eval_every == 0 or iteration == s.max_iters):
                    metrics = self._evaluate_on_main(iteration, logs)
        finally:
            bar.close()
            if logs:
                logs.close()
        if self.dist.is_main:
            path = self.save(iteration, FINAL_CHECKPOINT)
            logger.info("training done at iteration %d: %s", iteration, path)
        return metrics

    def _evaluate_on_main(self, iteration: int, logs: _Logs | None) -> dict[str, float]:
        metrics = self.evaluate() if self.dist.is_main else {}
        if logs:
            logs.write(iteration, {f"val/{k}": v for k, v in metrics.items() if k in HEADLINE})
        if self.dist.world_size > 1:
            dist.barrier()
        return metrics


def _numpy_rng_state() -> tuple:
    """numpy's RNG state with its key array as a tensor, so checkpoints load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def _to_float(outputs: dict[str, Any]) -> dict[str, Any]:
    """Losses in fp32 whatever autocast produced."""
    out = {k: v.float() for k, v in outputs.items() if isinstance(v, Tensor)}
    out["aux_outputs"] = [{k: v.float() for k, v in a.items()} for a in outputs.get("aux_outputs", [])]
    return out


class _Logs:
    """Metrics to ``metrics.csv`` (one row per write, columns grow as needed) and TensorBoard if installed."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / "metrics.csv"
        self.rows: list[dict[str, float]] = []
        if self.path.exists():
            with self.path.open() as f:
                self.rows = [dict(r) for r in csv.DictReader(f)]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"))
        except ImportError:
            logger.info("tensorboard is not installed: metrics go to %s only", self.path)
            self.tb = None

    def write(self, iteration: int, values: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(float(v))}
        self.rows.append({"iteration": iteration, **clean})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        if self.tb:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
