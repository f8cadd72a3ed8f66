"""The built-in training loop: base training of a zoo model and fine-tuning after a prune, on the CPU or a GPU,
with mixed precision, DataLoader workers, and DistributedDataParallel when launched by torchrun."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data import DataBundle
from . import distributed
from .augment import train_dataset
from .options import FINETUNE_LR, TRAIN_LR, TrainOptions

log = logging.getLogger(__name__)

ADAMW_LR = {TRAIN_LR: 1e-3, FINETUNE_LR: 5e-4}  # AdamW's rates where the recipe's SGD rates are asked for
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class TrainStatus:
    """What a progress callback is told: at the end of every epoch, and every few seconds within one."""

    epoch: int          # 1-based; the epoch in progress
    epochs: int
    step: int           # batches done in this epoch
    steps: int          # batches per epoch
    loss: float         # mean loss so far in this epoch (over every rank at an epoch's end)
    images_per_s: float  # over every rank
    eta_s: float        # to the end of the run

    @property
    def epoch_done(self) -> bool:
        return self.step == self.steps

    def describe(self) -> str:
        where = f"epoch {self.epoch}/{self.epochs}" + ("" if self.epoch_done else f" ({self.step}/{self.steps})")
        return f"{where}, loss {self.loss:.3f}, {self.images_per_s:,.0f} images/s, ETA {_clock(self.eta_s)}"


def fit(model: nn.Module, data: DataBundle, epochs: int, options: TrainOptions | None = None,
        lr: float = TRAIN_LR, seed: int = 0, progress: Callable[[TrainStatus], None] | None = None,
        teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.5) -> nn.Module:
    """SGD with Nesterov momentum (or AdamW) and a one-cycle schedule; seeded, so the same inputs give the same
    weights. With a `teacher`, the loss mixes cross-entropy with the KL divergence to the teacher's softened
    outputs (Hinton et al. 2015): alpha * CE + (1 - alpha) * T^2 * KL. The model comes back on the CPU, in
    eval mode, in the contiguous layout (pruning and export work on it there).

    Under torchrun, rank 0 calls this and the other ranks join through distributed.follow(): the model, its
    teacher and the step's settings are broadcast, and DDP keeps the replicas' weights equal."""
    if epochs <= 0:
        return model
    options = options or TrainOptions()
    lr = options.lr if options.lr is not None else (ADAMW_LR.get(lr, lr) if options.optimizer == "adamw" else lr)
    group = distributed.current()
    if group is not None and group.rank == 0:
        group.command("fit", model=model, shape=list(data.input_shape), options=options, epochs=epochs, lr=lr,
                      seed=seed, teacher=teacher, temperature=temperature, alpha=alpha)
    return fit_here(model, data, epochs, options, lr, seed, progress, teacher, temperature, alpha, group)


def fit_here(model, data, epochs, options, lr, seed, progress, teacher, temperature, alpha, group) -> nn.Module:
    """The loop itself, in this process: every rank of a torchrun job runs it for the step rank 0 broadcast."""
    resolved = options.resolve()
    device, amp_dtype = resolved.device, resolved.amp_dtype
    world, rank = (group.world, group.rank) if group is not None else (1, 0)
    torch.manual_seed(seed)
    loader, sampler = _loader(data, options, seed, device, world, rank)
    layout = torch.channels_last if resolved.channels_last else torch.preserve_format
    model.to(device=device, memory_format=layout)
    if teacher is not None:
        teacher.to(device=device, memory_format=layout).eval()
    net = group.wrap(model, device) if group is not None else model
    opt = _optimizer(options, model, lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.15)
    scaler = torch.amp.GradScaler(device.type, enabled=resolved.scaler_needed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
    clock = _Clock(epochs * len(loader), world)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    net.train()
    try:
        for epoch in range(epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            total, n = 0.0, 0
            for step, (x, y) in enumerate(loader, 1):
                x = x.to(device, non_blocking=True, memory_format=layout) if x.dim() == 4 else x.to(device)
                y = y.to(device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                with autocast:
                    logits = net(x)
                    loss = loss_fn(logits, y)
                    if teacher is not None:
                        with torch.no_grad():
                            soft = torch.softmax(teacher(x) / temperature, dim=1)
                        kd = nn.functional.kl_div(torch.log_softmax(logits.float() / temperature, dim=1),
                                                  soft.float(), reduction="batchmean")
                        loss = alpha * loss + (1 - alpha) * temperature ** 2 * kd
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                total, n = total + float(loss.detach()) * len(y), n + len(y)
                clock.tick(len(y))
                if progress and step < len(loader) and clock.due():
                    progress(clock.status(epoch + 1, epochs, step, len(loader), total / max(n, 1)))
            mean = group.mean(total, n) if group is not None else total / max(n, 1)
            log.debug("epoch %d/%d loss %.4f", epoch + 1, epochs, mean)
            if progress:
                progress(clock.status(epoch + 1, epochs, len(loader), len(loader), mean))
    finally:
        model.to(device="cpu", memory_format=torch.contiguous_format)
        if teacher is not None:
            teacher.to(device="cpu", memory_format=torch.contiguous_format)
    model.eval()
    return model


def _loader(data: DataBundle, options: TrainOptions, seed: int, device: torch.device, world: int, rank: int):
    """The training batches: in one process, the seeded order DataBundle.loader gives (so the built-in recipe's
    figures stand); across ranks, each rank's share of the same global batch through a DistributedSampler."""
    ds = train_dataset(data, options.augment)
    pin = device.type == "cuda"
    extra = {"num_workers": options.workers, "pin_memory": pin, "persistent_workers": False}
    if options.workers > 0:
        extra["prefetch_factor"] = 4
    if world == 1:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=options.batch_size, shuffle=True, generator=gen, **extra), None
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    per_rank = max(1, options.batch_size // world)  # the same global batch, so the same schedule and lr
    return DataLoader(ds, batch_size=per_rank, sampler=sampler, **extra), sampler


def _optimizer(options: TrainOptions, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if options.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=options.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=options.weight_decay,
                           nesterov=True)


@torch.no_grad()
def accuracy_torch(model: nn.Module, data: DataBundle, batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of a PyTorch model on the validation split, on the CPU."""
    model.eval()
    correct = n = 0
    for x, y in data.loader("val", batch_size):
        correct += int((model(x).argmax(1) == y).sum())
        n += len(y)
    return 100.0 * correct / max(n, 1)


class _Clock:
    """Images per second and the time left, over the whole run (every rank's images)."""

    def __init__(self, total_steps: int, world: int):
        self.total, self.world, self.done, self.images = total_steps, world, 0, 0
        self.t0 = self.last = time.perf_counter()

    def tick(self, images: int) -> None:
        self.done += 1
        self.images += images * self.world

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S:
            return False
        self.last = now
        return True

    def status(self, epoch: int, epochs: int, step: int, steps: int, loss: float) -> TrainStatus:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        eta = elapsed / max(self.done, 1) * (self.total - self.done)
        return TrainStatus(epoch, epochs, step, steps, loss, self.images / elapsed, eta)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
