"""BuildConfig: every option of a build, validated up front so a bad value fails before any work starts."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PERCENTILES = ("p50", "p90", "p99", "mean")
MEMORY_METRICS = ("weights", "peak")
DEFAULT_LATENCY_BUDGET = "0.5x"
DEFAULT_MAX_ACCURACY_DROP = 0.5


@dataclass(frozen=True)
class LatencyBudget:
    """A latency budget: absolute milliseconds, or a fraction of the unpruned model measured in the same run."""

    kind: str  # "absolute" | "relative"
    value: float

    def __str__(self) -> str:
        return f"{self.value:g}x" if self.kind == "relative" else f"{self.value:g}ms"

    def target_ms(self, baseline_ms: float) -> float:
        return self.value * baseline_ms if self.kind == "relative" else self.value


_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(x|ms)?\s*$")


def parse_budget(text: str | float) -> LatencyBudget:
    """'0.5x' -> half the unpruned latency; '3ms' or '3' -> 3 milliseconds."""
    m = _BUDGET_RE.match(str(text))
    if not m:
        raise ConfigError(
            f"latency budget {text!r} is malformed: write a fraction of the unpruned latency like '0.5x' "
            "or milliseconds like '2.5ms'"
        )
    value, unit = float(m.group(1)), m.group(2) or "ms"
    if not math.isfinite(value):  # '1e999ms' reads as inf: a target no measurement can compare with
        raise ConfigError(f"latency budget {text!r} is not a finite number: write e.g. '0.5x' or '2.5ms'")
    if value <= 0:
        raise ConfigError(f"latency budget {text!r} must be greater than zero")
    return LatencyBudget("relative" if unit == "x" else "absolute", value)


@dataclass(frozen=True)
class BuildConfig:
    """Everything `edgeprune build` needs. Field names are the YAML keys; CLI flags are the same with dashes."""

    model: str = "resnet20"
    weights: str | None = None
    trust_pickle: bool = False  # unpickle a whole-module --model .pt (runs its code); command line only
    input_shape: tuple[int, ...] | None = None  # (C, H, W); zoo models on digits default to (1, 32, 32)
    data: str = "digits"
    device: str = "cpu"
    policy: str = "auto"  # auto: from the budgets given; none given -> latency-sensitive at 0.5x
    latency_budget: str | None = None
    max_accuracy_drop: float | None = None  # points; accuracy-critical defaults to 0.5
    memory_budget_mb: float | None = None
    memory_metric: str = "weights"  # weights: ONNX initializer bytes; peak: the runtime's measured peak
    percentile: str = "p50"
    batch_size: int = 1
    threads: int | None = None  # None: the device spec's default
    criterion: str = "l1"
    allocation: str = "uniform"
    channel_multiple: int | None = None  # None: the device's (on the CPU, the host's SIMD width)
    finetune_epochs: int = 5
    bn_recalibration: bool = True
    distill: bool = False  # knowledge distillation from the unpruned model while fine-tuning
    train_epochs: int = 10  # only for built-in zoo models trained on the fly (cached)
    # How fine-tuning runs (edgeprune/training/); the defaults keep the built-in recipe (SGD, lr 0.05 / 0.03)
    train_device: str = "auto"  # auto | cpu | cuda | cuda:N | mps; auto: the best present
    amp: str = "auto"  # auto | off | bf16 | fp16; auto: bf16 on a GPU that has it, else fp16; off on the CPU
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # None: the recipe's (sgd 0.05 base training, 0.03 fine-tuning)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    workers: int = 0  # DataLoader worker processes
    augment: str = "standard"  # ImageFolder training: standard (random resized crop + flip) | crop | none
    train_fn: str | None = None  # pkg.module:fn, train_fn(model, epochs) -> model: the user's own loop
    eval_fn: str | None = None  # pkg.module:fn, eval_fn(model_or_session) -> float: the user's metric
    max_iterations: int = 6
    measure_blocks: int = 6
    measure_iters: int = 200
    seed: int = 0
    # The precision stage (export/precision.py): fp32 as exported, fp16 (strongly typed mixed precision), int8
    # (explicit Q/DQ, activations calibrated on `calibration_images` training images), or auto: every precision
    # the device lists, each measured on the target runtime and dropped where it is slower or misses parity.
    precision: str | None = None  # None: the device's default_precision
    calibration_method: str = "minmax"  # minmax | entropy | percentile (int8 activations)
    calibration_images: int = 256
    out: str = "out"
    resume: bool = False  # continue the interrupted build of `out` from its checkpoint (pipeline/resume.py)
    overwrite: bool = True
    force: bool = False  # replace a non-empty --out that edgeprune did not write (files.check_replaceable)
    remote: str | None = None  # user@host[:port] (or a ~/.ssh/config host): measure there over SSH
    remote_python: str = "python3"  # the far side's Python, with edgeprune installed
    remote_dir: str | None = None  # where the far side works (a temporary directory inside it, removed after)
    remote_ssh_options: tuple[str, ...] = ()  # ssh -o Key=Value options, e.g. IdentityFile=~/.ssh/jetson
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        from .registry import ALLOCATIONS, CRITERIA

        self._resolve_policy()
        if self.latency_budget is not None:
            parse_budget(self.latency_budget)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        if self.memory_metric not in MEMORY_METRICS:
            raise ConfigError(f"memory metric {self.memory_metric!r} is unknown: use weights or peak")
        check_choice("percentile", self.percentile, PERCENTILES)
        self._check_precision()
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion {self.criterion!r} is unknown: use one of {', '.join(CRITERIA)}")
        minimum = {"calibration_images": 1, "batch_size": 1, "max_iterations": 1, "measure_blocks": 1, "measure_iters": 1,
                   "finetune_epochs": 0, "train_epochs": 0, "seed": 0}
        for name, low in minimum.items():
            value = _as_int(name, getattr(self, name))
            if value < low:
                raise ConfigError(f"{name.replace('_', '-')} must be at least {low}, got {value}")
            object.__setattr__(self, name, value)
        if self.channel_multiple is not None:
            multiple = _as_int("channel_multiple", self.channel_multiple)
            if multiple < 1:
                raise ConfigError(f"channel-multiple must be at least 1, got {multiple}")
            object.__setattr__(self, "channel_multiple", multiple)
        if self.threads is not None:
            threads = _as_int("threads", self.threads)
            if threads < 1:
                raise ConfigError(f"threads must be at least 1, got {threads}")
            object.__setattr__(self, "threads", threads)
        self._check_remote()
        self._check_training()
        if self.input_shape is not None:
            try:
                shape = tuple(int(s) for s in self.input_shape)
            except (TypeError, ValueError):
                shape = ()
            if len(shape) != 3 or min(shape) < 1:
                raise ConfigError(f"input shape {self.input_shape} must be C,H,W with positive sizes, e.g. 3,224,224")
            object.__setattr__(self, "input_shape", shape)

    def _check_precision(self) -> None:
        from .export.precision import PRECISIONS
        from .export.quantize import CALIBRATION_METHODS

        if self.precision is not None and self.precision not in ("auto", *PRECISIONS):
            raise ConfigError(f"precision {self.precision!r} is unknown: use auto, {', '.join(PRECISIONS)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration method {self.calibration_method!r} is unknown: use one of "
                              f"{', '.join(CALIBRATION_METHODS)}")

    def _check_training(self) -> None:
        from .training.options import TrainOptions

        object.__setattr__(self, "workers", _as_int("workers", self.workers))
        options = TrainOptions.from_config(self)  # the values; whether the device is present is checked at build
        for name in ("lr", "weight_decay", "label_smoothing"):
            object.__setattr__(self, name, getattr(options, name))

    def _check_remote(self) -> None:
        options = self.remote_ssh_options
        object.__setattr__(self, "remote_ssh_options", (options,) if isinstance(options, str) else
                           tuple(options or ()))
        if not isinstance(self.remote_python, str) or not self.remote_python.strip():
            raise ConfigError("remote-python must name the far side's Python, e.g. python3 or ~/venv/bin/python")
        if self.remote is None:
            return
        from .backends.remote.runner import check_ssh_options, parse_target

        parse_target(self.remote)
        check_ssh_options(self.remote_ssh_options)

    def _resolve_policy(self) -> None:
        """Fill in what the policy implies, and refuse a policy without the budget it needs."""
        from .registry import POLICIES

        if self.policy != "auto" and self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r} is unknown: use one of auto, {', '.join(POLICIES)}")
        for name in ("max_accuracy_drop", "memory_budget_mb"):
            value = getattr(self, name)
            if value is None:
                continue
            value = finite_number(name, value)
            if value < 0 or (name == "memory_budget_mb" and value == 0):
                raise ConfigError(f"{name.replace('_', '-')} must be {'positive' if name == 'memory_budget_mb' else 'zero or more'}, got {value}")
            object.__setattr__(self, name, value)
        budgets = [self.latency_budget, self.max_accuracy_drop, self.memory_budget_mb]
        if self.policy == "auto" and all(b is None for b in budgets):
            object.__setattr__(self, "latency_budget", DEFAULT_LATENCY_BUDGET)
        elif self.policy == "latency-sensitive" and self.latency_budget is None:
            object.__setattr__(self, "latency_budget", DEFAULT_LATENCY_BUDGET)
        elif self.policy == "accuracy-critical" and self.max_accuracy_drop is None:
            object.__setattr__(self, "max_accuracy_drop", DEFAULT_MAX_ACCURACY_DROP)
        elif self.policy == "memory-constrained" and self.memory_budget_mb is None:
            raise ConfigError("the memory-constrained policy needs --memory-budget-mb")

    @property
    def effective_policy(self) -> str:
        """What `auto` means for the budgets given: accuracy-critical when accuracy is the only constraint,
        memory-constrained when memory is the only one, latency-sensitive otherwise."""
        if self.policy != "auto":
            return self.policy
        if self.max_accuracy_drop is not None and self.latency_budget is None and self.memory_budget_mb is None:
            return "accuracy-critical"
        if self.memory_budget_mb is not None and self.latency_budget is None:
            return "memory-constrained"
        return "latency-sensitive"

    @property
    def budget(self) -> LatencyBudget | None:
        return parse_budget(self.latency_budget) if self.latency_budget is not None else None

    def replace(self, **changes: Any) -> "BuildConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        if d["input_shape"] is not None:
            d["input_shape"] = list(d["input_shape"])
        d["remote_ssh_options"] = list(d["remote_ssh_options"])
        return d

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "BuildConfig":
        raw = load_yaml_mapping(Path(path), "config file")
        if any(str(k).replace("-", "_") == "trust_pickle" for k in raw):  # a config from elsewhere must not opt in
            raise ConfigError(f"config file {path} sets trust-pickle: pass --trust-pickle on the command line, "
                              "and only for a model file you trust")
        if "force" in raw:  # a config from a pull request must not be able to let a build replace a user's folder
            raise ConfigError(f"config file {path} sets force: replacing a directory edgeprune did not write is "
                              "allowed only by --force on the command line; remove the key")
        return cls.from_dict({**raw, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "BuildConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        clean = {str(k).replace("-", "_"): v for k, v in raw.items()}
        unknown = sorted(set(clean) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}: known keys are {', '.join(sorted(names))}")
        if isinstance(clean.get("input_shape"), str):
            clean["input_shape"] = parse_shape(clean["input_shape"])
        return cls(**clean)


def as_finite(value: Any) -> float | None:
    """`value` as a float if it is a finite number, else None. Every number from a user goes through here: NaN
    compares false with everything, so it would pass any range check after this; infinity divides into nonsense."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def finite_number(name: str, value: Any) -> float:
    """An option's value as a finite float, or a ConfigError naming the option as its flag is spelled."""
    number = as_finite(value)
    if number is None:
        raise ConfigError(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
    return number


def check_choice(what: str, value: Any, choices) -> None:
    """A ConfigError naming `what` and the choices when `value` is not one of them."""
    if value not in choices:
        raise ConfigError(f"{what} {value!r} is unknown: use one of {', '.join(choices)}")


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding option: value pairs, or a ConfigError naming `what` and the problem."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of option: value")
    return raw


def _as_int(name: str, value: Any) -> int:
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise ConfigError(f"{name.replace('_', '-')} must be a whole number, got {value!r}") from None


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in re.split(r"[,x ]+", text.strip()) if p)
    except ValueError:
        raise ConfigError(f"input shape {text!r} is malformed: write C,H,W such as 3,224,224") from None
