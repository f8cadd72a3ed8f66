"""Training and scoring a build's models: the built-in loop on the CPU or a GPU (options.py, loop.py), the
user's own train_fn / eval_fn (trainer.py), ImageFolder augmentation (augment.py) and DDP under torchrun
(distributed.py)."""
from __future__ import annotations

from .loop import TrainStatus, accuracy_torch, fit
from .options import TrainOptions
from .trainer import Trainer

__all__ = ["TrainOptions", "TrainStatus", "Trainer", "accuracy_torch", "fit"]
