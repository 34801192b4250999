"""Training on CUDA through the real trainer: finite losses, the MSDA CUDA kernel in the loop, and gradients equal
to those of the pure-torch reference path (stochastic depth off, TF32 off)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from tests.gpu import GPU
from tests.train.test_training import tiny_train_config
from train.data.synthetic import write_synthetic_dataset
from train.model.pixel_decoder import MSDeformAttn
from train.train_config import TrainConfig
from train.trainer import Trainer

pytestmark = GPU

SWIN = {"kind": "swin", "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [2, 2, 4, 4], "window_size": 4}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "train", num_images=16, seed=1)
    return root


def swin_trainer(scenes: Path, out: Path, **solver) -> Trainer:
    config = tiny_train_config(scenes, max_iters=4, val_data=None, solver={"num_workers": "auto", **solver})
    config["model"] = {"config": {**config["model"]["config"], "backbone": {**SWIN, "drop_path_rate": 0.0}}}
    trainer = Trainer(TrainConfig.from_dict(config), out, progress=False)
    assert trainer.dist.device.type == "cuda"
    return trainer


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_training_steps_on_cuda(scenes: Path, tmp_path: Path, amp: str, msda_kernel_calls: list) -> None:
    trainer = swin_trainer(scenes, tmp_path, amp=amp)
    trainer.run()
    losses = [row["loss"] for row in trainer.history]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    assert msda_kernel_calls, "training did not run the MSDA CUDA kernel"
    assert all(p.is_cuda for p in trainer.model.parameters())
    assert (tmp_path / "model_final.pt").exists()


def off_the_lattice(model: torch.nn.Module) -> None:
    """Move every deformable-attention sample a fraction of a pixel off the pixel grid.

    Deformable DETR's init (zero offset weights, integer offset biases, references at pixel centres) puts every
    sample exactly on a pixel centre, where bilinear sampling has a kink and no derivative: the kernel and
    ``grid_sample`` round the coordinate differently (a fused multiply-add moves some to the other side) and take
    different slopes (on an H200: one offset row's gradient 16 % apart). Off the lattice both must agree.
    """
    attentions = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    assert attentions, "the model has no deformable attention"
    with torch.no_grad():
        for attention in attentions:
            bias = attention.sampling_offsets.bias.view(-1, 2)  # (x, y) pixels of each head, level and point
            bias.add_(torch.tensor([0.3, 0.2], device=bias.device))


def test_gradients_match_the_reference_path(
    scenes: Path, tmp_path: Path, exact_fp32: None, msda_kernel_calls: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = swin_trainer(scenes, tmp_path, amp="none", clip_grad_norm=0.0)
    off_the_lattice(trainer.model)
    batch = next(iter(trainer.loader()))
    start = {
        "model": copy.deepcopy(trainer.model.state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scheduler": copy.deepcopy(trainer.scheduler.state_dict()),
    }
    grads, losses = {}, {}
    for mode in ("cuda", "reference"):  # M2F_MSDA: the kernel (an error if it cannot run), then pure torch
        monkeypatch.setenv("M2F_MSDA", mode)
        trainer.model.load_state_dict(start["model"])
        trainer.optimizer.load_state_dict(start["optimizer"])
        trainer.scheduler.load_state_dict(start["scheduler"])
        calls = len(msda_kernel_calls)
        losses[mode] = trainer.train_step(batch, iteration=0)  # same seed: same sampled points
        assert (len(msda_kernel_calls) > calls) == (mode == "cuda")
        grads[mode] = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert losses["cuda"]["loss"] == pytest.approx(losses["reference"]["loss"], rel=1e-5)
    assert grads["cuda"].keys() == grads["reference"].keys() and len(grads["cuda"]) > 50
    for name, want in grads["reference"].items():
        got = grads["cuda"][name]
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 1e-3 * scale + 1e-7, name
