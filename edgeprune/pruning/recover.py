"""Accuracy recovery after pruning: BN statistics recalibration, and fine-tuning through the training package."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch
from torch import nn

from ..data import DataBundle
from ..training.loop import TrainStatus, accuracy_torch, fit
from ..training.options import FINETUNE_LR, TRAIN_LR, TrainOptions

__all__ = ["accuracy_torch", "finetune", "recalibrate_bn", "train"]

log = logging.getLogger(__name__)


def train(model: nn.Module, data: DataBundle, epochs: int, lr: float = TRAIN_LR, batch_size: int = 64,
          seed: int = 0, progress: Callable[[TrainStatus], None] | None = None, teacher: nn.Module | None = None,
          temperature: float = 4.0, alpha: float = 0.5, options: TrainOptions | None = None) -> nn.Module:
    """The built-in loop (training/loop.py): SGD with Nesterov momentum and a one-cycle schedule, seeded; on
    the device and with the optimizer `options` give (default: the CPU, the recipe as it always was)."""
    options = options or TrainOptions(device="cpu")
    if batch_size != options.batch_size:
        options = dataclasses.replace(options, batch_size=batch_size)
    return fit(model, data, epochs, options, lr=lr, seed=seed, progress=progress, teacher=teacher,
               temperature=temperature, alpha=alpha)


def finetune(model: nn.Module, data: DataBundle, epochs: int, seed: int = 0, lr: float = FINETUNE_LR,
             progress: Callable[[TrainStatus], None] | None = None, teacher: nn.Module | None = None,
             options: TrainOptions | None = None) -> nn.Module:
    """A short, lower-rate run of `train` after pruning: every pruned model starts near chance on digits."""
    if teacher is not None:
        teacher.eval()
    return train(model, data, epochs, lr=lr, seed=seed, progress=progress, teacher=teacher, options=options)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Re-estimate BatchNorm running statistics on calibration batches (cumulative average, no weight change)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return model
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()  # only the norms learn statistics: dropout stays off, and train-only branches (Inception's
    for m in bns:  # auxiliary head, which fails on small inputs) stay out of the way
        m.train()
    for x in batches:
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()
