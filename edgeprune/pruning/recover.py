"""Accuracy recovery after pruning: BN statistics recalibration and fine-tuning; also the base training."""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from ..data import DataBundle

log = logging.getLogger(__name__)


def train(model: nn.Module, data: DataBundle, epochs: int, lr: float = 0.05, batch_size: int = 64, seed: int = 0,
          progress: Callable[[int, int, float], None] | None = None, teacher: nn.Module | None = None,
          temperature: float = 4.0, alpha: float = 0.5) -> nn.Module:
    """SGD with momentum and a one-cycle schedule; seeded, so the same inputs give the same weights.
    With a `teacher`, the loss mixes cross-entropy with the KL divergence to the teacher's softened outputs
    (Hinton et al. 2015): alpha * CE + (1 - alpha) * T^2 * KL."""
    if epochs <= 0:
        return model
    torch.manual_seed(seed)
    loader = data.loader("train", batch_size, shuffle=True, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = torch.softmax(teacher(x) / temperature, dim=1)
                kd = nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
                loss = alpha * loss + (1 - alpha) * temperature ** 2 * kd
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
        log.debug("epoch %d/%d loss %.4f", epoch + 1, epochs, total / max(n, 1))
        if progress:
            progress(epoch + 1, epochs, total / max(n, 1))
    model.eval()
    return model


def finetune(model: nn.Module, data: DataBundle, epochs: int, seed: int = 0, lr: float = 0.03,
             progress: Callable[[int, int, float], None] | None = None,
             teacher: nn.Module | None = None) -> nn.Module:
    """A short, lower-rate run of `train` after pruning: every pruned model starts near chance on digits."""
    if teacher is not None:
        teacher.eval()
    return train(model, data, epochs, lr=lr, seed=seed, progress=progress, teacher=teacher)


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


@torch.no_grad()
def accuracy_torch(model: nn.Module, data: DataBundle, batch_size: int = 256) -> float:
    model.eval()
    correct = n = 0
    for x, y in data.loader("val", batch_size):
        correct += int((model(x).argmax(1) == y).sum())
        n += len(y)
    return 100.0 * correct / max(n, 1)
