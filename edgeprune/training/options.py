"""How fine-tuning runs: the device, mixed precision, the optimizer and the input pipeline, resolved up front so a
device that is not present or a precision it lacks fails with one line before any work starts."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config import check_choice, finite_number
from ..errors import ConfigError

DEVICES_HELP = "use --train-device auto, cpu, cuda, cuda:N or mps"
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTATIONS = ("standard", "crop", "none")
TRAIN_LR, FINETUNE_LR = 0.05, 0.03  # SGD rates of the built-in recipe (base training, fine-tuning after a prune)


@dataclass(frozen=True)
class TrainOptions:
    """What BuildConfig says about training. The defaults keep the built-in recipe: SGD with Nesterov momentum,
    weight decay 5e-4, a one-cycle schedule, batches of 64 in a seeded order, on the CPU in fp32."""

    device: str = "auto"          # auto: cuda (this rank's GPU under torchrun), else mps, else cpu
    amp: str = "auto"             # auto: bf16 on a GPU that has it, else fp16 with a GradScaler; off on the CPU
    optimizer: str = "sgd"
    lr: float | None = None       # None: 0.05 to train a built-in model, 0.03 to fine-tune after a prune
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    batch_size: int = 64          # the global batch: split across the ranks of a torchrun job
    workers: int = 0              # DataLoader worker processes (0: load in the training process)
    augment: str = "standard"     # ImageFolder training only: standard = random resized crop + flip

    def __post_init__(self) -> None:
        for what, value, choices in (("optimizer", self.optimizer, OPTIMIZERS), ("amp", self.amp, AMP_CHOICES),
                                     ("augment", self.augment, AUGMENTATIONS)):
            check_choice(what, value, choices)
        for name, low, high in (("lr", 0.0, 10.0), ("weight_decay", 0.0, 1.0), ("label_smoothing", 0.0, 0.999)):
            value = getattr(self, name)
            if value is None:
                continue
            value = finite_number(name, value)
            if not (low <= value <= high) or (name == "lr" and value == 0):
                raise ConfigError(f"{name.replace('_', '-')} must be in ({low:g}, {high:g}], got {value!r}"
                                  if name == "lr" else
                                  f"{name.replace('_', '-')} must be in [{low:g}, {high:g}], got {value!r}")
            object.__setattr__(self, name, value)
        for name, low in (("workers", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name.replace('_', '-')} must be a whole number of at least {low}, got {value!r}")

    @classmethod
    def from_config(cls, config) -> "TrainOptions":
        return cls(device=config.train_device, amp=config.amp, optimizer=config.optimizer, lr=config.lr,
                   weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                   workers=config.workers, augment=config.augment)

    def resolve(self) -> "Resolved":
        """The torch device and autocast dtype this host gives these options; ConfigError if it cannot."""
        device = resolve_device(self.device)
        return Resolved(device, resolve_amp(self.amp, device))

    def recipe(self, data_name: str, world_size: int = 1) -> dict | None:
        """What the trained weights depend on beyond the built-in recipe, for a cache key: None when training
        computes what it computed before these options existed (the CPU, SGD's defaults, no augmentation, one
        process), so the cache entries of earlier versions stay valid."""
        resolved = self.resolve().describe()
        augmented = data_name.startswith("imagefolder:") and self.augment != "none"
        default = (self.optimizer, self.weight_decay, self.label_smoothing, self.lr) == ("sgd", 5e-4, 0.0, None)
        if default and resolved["device"] == "cpu" and not augmented and world_size == 1:
            return None
        return {**resolved, "world_size": world_size, "optimizer": self.optimizer, "lr": self.lr,
                "weight_decay": self.weight_decay, "label_smoothing": self.label_smoothing,
                "augment": self.augment if augmented else "none", "workers": self.workers if augmented else 0}


@dataclass(frozen=True)
class Resolved:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32

    @property
    def channels_last(self) -> bool:
        # NHWC pays on GPUs, where cuDNN's tensor-core convolutions want it under mixed precision; on the CPU
        # and MPS it would only add layout conversions to a model that is exported NCHW anyway
        return self.device.type == "cuda" and self.amp_dtype is not None

    @property
    def scaler_needed(self) -> bool:
        return self.amp_dtype == torch.float16 and self.device.type == "cuda"

    def describe(self) -> dict:
        return {"device": str(self.device), "amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            self.amp_dtype, "off"), "channels_last": self.channels_last}


def resolve_device(spec: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> a device present on this host (under torchrun, cuda means this rank's
    GPU, LOCAL_RANK)."""
    spec = str(spec).strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("train device mps is not present on this host (no Apple-silicon GPU in this "
                              f"PyTorch): {DEVICES_HELP}")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise ConfigError(f"train device {spec!r} is malformed: write cuda or cuda:N, e.g. cuda:0")
        if not torch.cuda.is_available():
            why = "this PyTorch has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"train device {spec} is not present on this host ({why}): {DEVICES_HELP}")
        index = int(index_text) if index_text else local
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train device {spec} is not present: this host has {torch.cuda.device_count()} "
                              f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    raise ConfigError(f"train device {spec!r} is unknown: {DEVICES_HELP}")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on a GPU: bf16 where the GPU has it (no loss scaling needed), else fp16 with a scaler."""
    if amp == "off":
        return None
    if device.type == "cpu":
        if amp == "auto":
            return None
        raise ConfigError(f"amp {amp} needs a GPU, but training runs on the CPU: use --amp off, or "
                          "--train-device cuda on a host with one")
    if device.type == "mps":
        if amp == "bf16":
            raise ConfigError("amp bf16 is not supported on mps: use --amp fp16 or --amp off")
        return torch.float16 if amp in ("auto", "fp16") else None
    bf16 = torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16:
        raise ConfigError(f"amp bf16 is not supported by {torch.cuda.get_device_name(device)}: use --amp fp16 "
                          "or --amp auto")
    if amp == "auto":
        return torch.bfloat16 if bf16 else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
